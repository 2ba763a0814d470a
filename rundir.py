"""The run directory of train.py (info/DESIGN.md, training): what a run leaves there and the guards that keep it
from damage. A run already there is continued (--resume) or replaced (--overwrite), never started over by accident;
an unwritable folder is found before any work; SIGINT/SIGTERM are turned into a checkpoint and a clean stop;
`ckpt-N_temp/` folders of a killed save are removed; metrics.jsonl is rewritten atomically.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import tempfile

import checkpoints
import config as config_lib
from config import atomic_write_text

# What train.py writes into a run directory (other files there, a user's predictions or plots, are left alone).
RUN_FILES = ("config.yaml", "metrics.jsonl", "train_done.json", "confusion_matrix.png", "checkpoints", "logs",
             "budget.json")


class RunDirError(RuntimeError):
    """A run directory that cannot take a new run: unwritable, or holding a run the command does not name."""


def run_contents(run_dir: str) -> list:
    """The entries of RUN_FILES present in `run_dir` (an empty checkpoints/ or logs/ does not count)."""
    found = []
    for name in RUN_FILES:
        path = os.path.join(run_dir, name)
        if os.path.isfile(path) or (os.path.isdir(path) and os.listdir(path)):
            found.append(name)
    return found


def remove_run(run_dir: str) -> list:
    """Removes what train.py wrote into `run_dir`; returns the names removed."""
    removed = run_contents(run_dir)
    for name in removed:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    return removed


def check_writable(folder: str):
    """Creates `folder` if needed and writes a probe file into it, so a folder that cannot take the run's outputs
    is named before the work starts."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write_probe_")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise RunDirError(f"--run-dir {folder} is not a writable folder ({e.strerror or e})") from None


def remove_if_empty(folder: str) -> bool:
    """Removes `folder` if it is an empty folder (what a run that stopped before writing anything leaves behind);
    True if it did."""
    try:
        os.rmdir(folder)
    except OSError:          # not empty, not there, or not ours to remove
        return False
    return True


def guard(run_dir: str, resume: bool, overwrite: bool):
    """The checks before a run starts in `run_dir`: writable, and a run already there named by the command."""
    check_writable(run_dir)
    found = run_contents(run_dir)
    if found and not (resume or overwrite):
        raise RunDirError(f"{run_dir} already holds a run ({', '.join(found)}): continue it with --resume, start "
                          f"it over with --overwrite, or choose another --run-dir")


def resolve_config(args):
    """Preset + --config + --set, or on --resume the run's saved config with the new --set on top."""
    saved = os.path.join(args.run_dir, "config.yaml")
    if args.resume and os.path.exists(saved):
        cfg = config_lib.apply_overrides(config_lib.load_config(saved), args.overrides)
    else:
        cfg = config_lib.config_from_args(args)
    if args.epochs is not None:
        cfg.train.epochs = int(args.epochs)
    return cfg


def add_dataset_classes(cfg, ytvis: dict, ann_path: str):
    """The dataset's categories (sorted by id) as the run's classes; a resumed run's must be the same."""
    cats = ytvis.get("categories")
    if not cats:
        raise config_lib.ConfigError(f"{ann_path}: no 'categories' in the annotation file")
    cats = [{"id": int(c["id"]), "name": str(c["name"])} for c in sorted(cats, key=lambda c: int(c["id"]))]
    if cfg.data.categories and cfg.data.categories != cats:
        raise config_lib.ConfigError(f"{ann_path}: its categories differ from the run's saved config (data.categories)")
    cfg.data.categories = cats
    cfg.model.num_classes = len(cats)
    return config_lib.validate(cfg)


def remove_stale_temps(run_dir: str) -> list:
    """Removes the `ckpt-N_temp/` folders that a save killed half-way leaves in checkpoints/; returns their names."""
    folder = checkpoints.checkpoint_folder(run_dir)
    stale = sorted(p for p in glob.glob(os.path.join(folder, "*_temp")) if os.path.isdir(p))
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return [os.path.basename(p) for p in stale]


class MetricsFile:
    """metrics.jsonl: one JSON line per epoch, rewritten atomically (rows past a resumed epoch are dropped)."""

    def __init__(self, path: str, keep_through_epoch: int):
        self.path = path
        self.rows = []
        if os.path.exists(path):
            with open(path) as f:
                self.rows = [json.loads(line) for line in f if line.strip()]
            self.rows = [r for r in self.rows if r.get("epoch", 0) <= keep_through_epoch]

    def append(self, row: dict):
        self.rows.append(row)
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM are remembered, not raised, while the context is open: the training loop acts on
    them between steps (a checkpoint at the current step, then a one-line exit), so no signal lands inside a
    checkpoint save."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._previous = {}
        self.plan = "stopping after this step with a checkpoint"    # what the signal's one line announces

    def __enter__(self):
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._remember)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    def _remember(self, signum, frame):
        if self.signum is None:
            print(f"{signal.Signals(signum).name}: {self.plan} ...", flush=True)
        self.signum = signum
