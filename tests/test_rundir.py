"""The run directory's guards (rundir.py): an existing run is never started over by accident, an unwritable folder
is named first, --overwrite removes only what train.py wrote, a run stopped before writing leaves no folder it
made, stale `ckpt-N_temp/` folders go, signals are remembered rather than raised."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rundir

ROOT = Path(__file__).resolve().parents[1]


def _fake_run(folder):
    os.makedirs(folder / "checkpoints" / "ckpt-4_temp")
    (folder / "checkpoints" / "ckpt-4_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    (folder / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-2"\n')
    (folder / "config.yaml").write_text("preset: tiny\n")
    (folder / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (folder / "valid_frames.json").write_text("{}")          # a user's output: never train.py's to remove


def test_an_existing_run_needs_resume_or_overwrite(tmp_path):
    rundir.guard(str(tmp_path / "new"), resume=False, overwrite=False)        # a new folder is made
    assert os.path.isdir(tmp_path / "new")
    os.makedirs(tmp_path / "empty" / "checkpoints")                            # empty folders are no run
    rundir.guard(str(tmp_path / "empty"), resume=False, overwrite=False)
    _fake_run(tmp_path / "run")
    with pytest.raises(rundir.RunDirError, match=r"run already holds a run \(config.yaml, metrics.jsonl, "
                                                 r"checkpoints\): continue it with --resume, start it over with "
                                                 r"--overwrite"):
        rundir.guard(str(tmp_path / "run"), resume=False, overwrite=False)
    rundir.guard(str(tmp_path / "run"), resume=True, overwrite=False)
    rundir.guard(str(tmp_path / "run"), resume=False, overwrite=True)


def test_overwrite_removes_only_what_train_wrote(tmp_path):
    _fake_run(tmp_path)
    assert rundir.remove_run(str(tmp_path)) == ["config.yaml", "metrics.jsonl", "checkpoints"]
    assert sorted(os.listdir(tmp_path)) == ["valid_frames.json"]


def test_an_unwritable_run_dir_is_named(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(rundir.RunDirError, match=r"--run-dir .*a_file/run is not a writable folder \(Not a dir"):
        rundir.guard(str(tmp_path / "a_file" / "run"), resume=False, overwrite=False)


def test_a_run_stopped_before_writing_leaves_no_folder_it_made(tmp_path):
    """train.py stopped by bad input before writing anything removes the --run-dir its writability check made, not
    one that was there before it, and never a folder holding anything."""
    import train
    for run_dir, existed in ((tmp_path / "runs" / "new", False), (tmp_path / "kept", True)):
        if existed:
            os.makedirs(run_dir)
        with pytest.raises(SystemExit, match=r"train.py: annotation file .*missing/instances.json: cannot read"):
            train.main(["--preset", "tiny", "--data", str(tmp_path / "missing"), "--run-dir", str(run_dir)])
        assert run_dir.is_dir() == existed
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    assert not rundir.remove_if_empty(str(tmp_path / "kept")) and (tmp_path / "kept" / "notes.txt").exists()
    assert rundir.remove_if_empty(str(tmp_path / "runs")) and not (tmp_path / "runs").exists()


def test_stale_temp_folders_are_removed(tmp_path):
    _fake_run(tmp_path)
    assert rundir.remove_stale_temps(str(tmp_path)) == ["ckpt-4_temp"]
    assert os.listdir(tmp_path / "checkpoints") == ["checkpoint"]
    assert rundir.remove_stale_temps(str(tmp_path / "nothing_here")) == []


def test_signals_are_remembered_not_raised():
    # In a fresh interpreter: a process-wide signal in the suite's own process can land in a thread that an
    # earlier test's native library left behind (the CI of 2026-12-04 died with a segmentation fault here).
    code = (
        "import os, signal, rundir\n"
        "before = signal.getsignal(signal.SIGINT)\n"
        "with rundir.StopRequest() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"       # a KeyboardInterrupt without the context
        "    os.kill(os.getpid(), signal.SIGTERM)\n"      # the end of the process without it
        "    print('remembered', stop.name)\n"
        "print('restored', signal.getsignal(signal.SIGINT) is before)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["SIGINT: stopping after this step with a checkpoint ...",
                                       "remembered SIGTERM", "restored True"]


def test_add_dataset_classes_sorts_by_id_and_refuses_other_categories():
    import config
    cfg = config.get_preset("tiny")
    ytvis = {"categories": [{"id": 7, "name": "b"}, {"id": 2, "name": "a"}]}
    cfg = rundir.add_dataset_classes(cfg, ytvis, "ann.json")
    assert cfg.data.categories == [{"id": 2, "name": "a"}, {"id": 7, "name": "b"}] and cfg.model.num_classes == 2
    with pytest.raises(config.ConfigError, match=r"ann.json: its categories differ from the run's saved config"):
        rundir.add_dataset_classes(cfg, {"categories": [{"id": 2, "name": "a"}]}, "ann.json")
