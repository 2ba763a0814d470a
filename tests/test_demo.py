"""scripts/demo.py: the summary's machine and training lines, from a run's train_done.json."""
import json
import os
import sys
import types

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import demo  # noqa: E402


def _demo(run_dir):
    return demo.Demo(types.SimpleNamespace(data=str(run_dir), run_dir=str(run_dir)))


def test_summary_names_budget_steps_and_rate(tmp_path):
    (tmp_path / "train_done.json").write_text(json.dumps({
        "step": 1200, "epochs": 4, "images_per_s": 7.46, "train_seconds": 720.0, "budget_minutes": 13.0,
        "machine": {"cpu": "AMD EPYC 7B13", "cores": 2, "isa": ["AVX2"], "onednn_max_cpu_isa": None}}))
    machine, line = _demo(tmp_path).machine_and_budget()
    from budget import describe_machine
    from budget import machine as this_machine
    assert machine == describe_machine(this_machine())                      # the machine running the summary
    assert line == "1200 steps at 7.5 img/s in 12.0 min, budget 13 min (trained on AMD EPYC 7B13, 2 cores, AVX2)"


def test_summary_without_a_budget(tmp_path):
    (tmp_path / "train_done.json").write_text(json.dumps({"step": 1360, "epochs": 4}))
    _, line = _demo(tmp_path).machine_and_budget()
    assert line == "1360 steps (fixed step count, no budget)"
