"""No run lost (train.py; info/DESIGN.md#training): the NaN guard keeps the last good checkpoint, a SIGKILL or Ctrl-C
run resumes where it stopped, and a run directory is never started over. Each run is a train.py subprocess."""
import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
from train_runs import PY, ROOT, SMALL, ckpt_key, read_ckpt, run_train, train_env


@pytest.mark.slow
def test_nan_guard_stops_naming_the_step_and_keeps_the_last_good_checkpoint(shapes, tmp_path):
    run = tmp_path / "run"
    res = run_train(SMALL + ["--data", shapes, "--run-dir", str(run), "--epochs", "2", "--set", "train.ckpt_every=2",
                        "--set", "train.val_fraction=0"], YOLOV4P1_TEST_NAN_AT_STEP=5)
    assert res.returncode != 0
    assert "non-finite loss at step 5" in res.stderr, res.stderr[-2000:]
    import tensorflow as tf
    latest = tf.train.latest_checkpoint(str(run / "checkpoints"))
    assert latest.endswith("ckpt-4")              # saved at step 4 (ckpt_every), nothing after the bad step
    values = read_ckpt(latest)
    assert int(values[ckpt_key(values, "step")]) == 4
    assert all(np.all(np.isfinite(v)) for v in values.values() if np.asarray(v).dtype.kind == "f")
    import checkpoints
    cfg, model = checkpoints.load_run(str(run), mode="train")
    np.testing.assert_array_equal(model.alb.alb_log_vars.numpy(), values[ckpt_key(values, "alb", "VARIABLE_VALUE")])
    # The inference model (what tracker.py loads) gets the trained weights by layer name.
    _, infer = checkpoints.load_run(str(run), mode="infer")
    for name in ("bb_conv_0", "head_det_bn_2"):
        for a, b in zip(model.get_layer(name).get_weights(), infer.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    # With infer.scale the inference model is built on the larger canvas (64 x 1.5 = 96), same weights, and the
    # returned config says so (tracker.py letterboxes to it).
    import config as config_lib
    cfg2 = config_lib.apply_overrides(config_lib.load_config(str(run / "config.yaml")), ["infer.scale=1.5"])
    config_lib.save_config(cfg2, str(run / "config.yaml"))
    icfg, infer96 = checkpoints.load_run(str(run), mode="infer")
    assert icfg.model.input_size == 96 and infer96.input["image"].shape[1:3] == (96, 96)
    assert icfg.model.anchors == cfg.model.anchors
    for a, b in zip(model.get_layer("bb_conv_0").get_weights(), infer96.get_layer("bb_conv_0").get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_resume_after_sigkill_continues_from_the_saved_state(shapes, tmp_path):
    run = tmp_path / "run"
    args = SMALL + ["--data", shapes, "--run-dir", str(run), "--epochs", "3", "--set", "train.ckpt_every=2",
                    "--set", "train.val_fraction=0"]
    p = subprocess.Popen([PY, os.path.join(ROOT, "train.py")] + args, cwd=ROOT, env=train_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = run / "checkpoints" / "checkpoint"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and p.poll() is None:
            if state.exists() and "ckpt-4" in state.read_text():
                break
            time.sleep(0.2)
        assert p.poll() is None, "the run ended before it could be killed"
        os.kill(p.pid, signal.SIGKILL)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)
    import tensorflow as tf

    import checkpoints
    latest = checkpoints.latest_checkpoint(str(run))   # what --resume reads (it also sees a save the state lacks)
    saved = read_ckpt(latest)
    saved_step = int(saved[ckpt_key(saved, "step")])
    assert saved_step >= 4
    # Nothing in the run directory is corrupt: config, metrics lines, every listed checkpoint.
    import config
    cfg = config.load_config(str(run / "config.yaml"))
    assert cfg.model.num_classes == 6
    if (run / "metrics.jsonl").exists():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            json.loads(line)
    for prefix in tf.train.get_checkpoint_state(str(run / "checkpoints")).all_model_checkpoint_paths:
        read_ckpt(prefix)
    # The resume path restores weights, optimizer slots and ALB exactly as saved.
    import train
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    model, opt, _, ckpt, parts = train.build_state(cfg, strategy, 9)
    ckpt.restore(latest).assert_existing_objects_matched()
    np.testing.assert_array_equal(model.alb.alb_log_vars.numpy(), saved[ckpt_key(saved, "alb", "VARIABLE_VALUE")])
    # Optimizer state (iterations and momentum slots) is tracked as optimizer/_variables/<i>.
    opt_vars = list(opt.variables)
    slots = sorted(int(k.split("/")[2]) for k in saved if k.startswith("optimizer/_variables/"))
    assert len(slots) > 100
    for i in slots:
        np.testing.assert_array_equal(opt_vars[i].numpy(),
                                      saved[f"optimizer/_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE"])
    moments = opt.momentums if hasattr(opt, "momentums") else opt._momentums   # SGD | Adam (the tiny preset)
    assert sum(float(np.abs(m.numpy()).sum()) for m in moments) > 0          # real, non-zero slots came back
    assert int(opt.iterations.numpy()) == saved_step
    # Restarted with --resume it continues at the next step and finishes the 9 steps.
    res = run_train(args + ["--resume"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from {latest} (step {saved_step}" in res.stdout
    first = [ln for ln in res.stdout.splitlines() if "(global " in ln][0]
    assert f"(global {saved_step + 1})" in first
    # The data stream continues too: pass and batch from the saved step (train_data.resume_position).
    m = re.search(r"data stream resumed at pass (\d+), batch (\d+) of (\d+)", res.stdout)
    assert m, res.stdout[-2000:]
    per_pass = int(m.group(3))
    assert (int(m.group(1)) - 1, int(m.group(2)) - 1) == (saved_step // per_pass, saved_step % per_pass)
    assert (run / "train_done.json").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows][-1] == 3 and rows[-1]["step"] == 9


@pytest.mark.slow
def test_a_run_is_never_started_over_and_a_resume_that_does_not_fit_writes_nothing(shapes, tmp_path):
    """Without --resume or --overwrite train.py refuses a --run-dir holding a run; --resume with a --set that
    changes the model stops in one line naming the layer, before config.yaml or anything else is written; --resume
    of a finished run says there is nothing to train and leaves its files as they were."""
    run = tmp_path / "run"
    args = SMALL + ["--data", shapes, "--run-dir", str(run), "--epochs", "1", "--set", "train.val_fraction=0"]
    res = run_train(args, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]

    def snapshot():
        return {p: (run / p).read_bytes() for p in ("config.yaml", "metrics.jsonl", "train_done.json",
                                                       "checkpoints/checkpoint")}
    before = snapshot()
    res = run_train(args + ["--epochs", "2"], timeout=600)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        f"train.py: {run} already holds a run (config.yaml, metrics.jsonl, train_done.json, checkpoints, logs): "
        f"continue it with --resume, start it over with --overwrite, or choose another --run-dir")
    res = run_train(args + ["--epochs", "2", "--resume", "--set", "model.width=0.5"], timeout=600)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        f"train.py: --resume: checkpoint {run}/checkpoints/ckpt-3 does not fit the config: layer bb_conv_0 holds "
        f"weights of shapes [[3, 3, 3, 8]], the config needs [[3, 3, 3, 16]] (a checkpoint of another "
        f"configuration?); the run directory is left as it was")
    assert snapshot() == before
    assert sorted(os.listdir(run / "checkpoints")) == ["checkpoint", "ckpt-3.data-00000-of-00001", "ckpt-3.index"]
    # --resume of a finished run: nothing to train, said in one line, and train_done.json keeps the run's record.
    res = run_train(args + ["--resume"], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert ("--resume: the run finished its 1 epoch(s) at step 3; nothing left to train (a larger --epochs trains "
            "on)") in res.stdout
    assert snapshot() == before


@pytest.mark.slow
def test_sigint_saves_at_the_current_step_and_the_resumed_epoch_says_so(shapes, tmp_path):
    """Ctrl-C: a checkpoint at the step reached, one line, exit code 130; --resume removes a stale ckpt-N_temp/,
    continues from that step, and the resumed epoch's metrics row says which steps its means cover."""
    run = tmp_path / "run"
    args = SMALL + ["--data", shapes, "--run-dir", str(run), "--epochs", "2", "--set", "train.val_fraction=0",
                    "--set", "train.ckpt_every=100"]
    p = subprocess.Popen([PY, os.path.join(ROOT, "train.py")] + args, cwd=ROOT, env=train_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:
            if "(global 1)" in line:
                p.send_signal(signal.SIGINT)
                break
        out, err = p.communicate(timeout=600)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + signal.SIGINT, err[-3000:]
    m = re.fullmatch(r"train.py: stopped by SIGINT at step (\d) \(0 epoch\(s\) done\); saved (.*); continue with "
                     r"--resume", err.strip().splitlines()[-1])
    assert m, err[-2000:]
    stopped = int(m.group(1))
    assert stopped in (1, 2) and m.group(2) == f"{run}/checkpoints/ckpt-{stopped}"
    import checkpoints
    assert checkpoints.latest_checkpoint(str(run)) == m.group(2)
    os.makedirs(run / "checkpoints" / "ckpt-7_temp")           # what a SIGKILL during a save leaves
    res = run_train(args + ["--resume"], timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "removed ckpt-7_temp/ (a checkpoint save that was killed half-way)" in res.stdout
    assert not (run / "checkpoints" / "ckpt-7_temp").exists()
    assert f"resumed from {run}/checkpoints/ckpt-{stopped} (step {stopped}, epoch 0)" in res.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["resumed_at_step"] == stopped and rows[0]["steps_averaged"] == 3 - stopped
    assert "resumed_at_step" not in rows[1]
