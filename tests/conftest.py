"""Shared fixtures: a quiet TensorFlow, the `tiny` config with overrides, and a small synthetic dataset.

The repository root, scripts/ and bench/ are on sys.path through `pythonpath` in pyproject.toml."""
import dataclasses
import json
import os
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")     # as config.py: oneDNN on every x86 CPU, not only VNNI/AMX


def pytest_addoption(parser):
    parser.addoption("--shuffle", type=int, default=None, metavar="SEED",
                     help="run the test files, and the tests within each, in an order shuffled with SEED")


# The files whose tests take minutes (train.py and export.py subprocesses, exported-run fixtures), heaviest first. The
# Makefile runs the suite on 2 pytest-xdist workers a file at a time (--dist loadfile): started first, these keep
# the two workers busy to the end instead of leaving one of them a long file at the end.
HEAVY_FILES = ("test_train_distributed.py", "test_train_resume.py", "test_export_openvino.py", "test_export.py",
               "test_tracker.py", "test_train.py")


def pytest_collection_modifyitems(config, items):
    """The HEAVY_FILES first, in that order, then the others as collected.

    --shuffle SEED instead: the test files in a shuffled order and the tests of each file shuffled among themselves
    (so that a module-scoped fixture is still built once)."""
    seed = config.getoption("--shuffle")
    if seed is None:
        def rank(item):
            name = os.path.basename(item.nodeid.split("::")[0])
            return HEAVY_FILES.index(name) if name in HEAVY_FILES else len(HEAVY_FILES)
        items.sort(key=rank)           # stable: the order within a file and among the others is kept
        return
    import random
    rng = random.Random(seed)
    files = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    groups = list(files.values())
    rng.shuffle(groups)
    for group in groups:
        rng.shuffle(group)
    items[:] = [item for group in groups for item in group]


def pytest_report_header(config):
    seed = config.getoption("--shuffle")
    return None if seed is None else f"test order shuffled with seed {seed}"


def tiny_config(**overrides):
    """The `tiny` preset with `overrides` given by field name, validated as `--set` would be.

    `tiny_config(input_size=64, num_classes=3)` sets model.input_size and model.num_classes; a name found in two
    sections takes its section before a double underscore (`train__batch_size=2`, `infer__batch_size=1`)."""
    import config

    cfg = config.get_preset("tiny")
    sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                if dataclasses.is_dataclass(getattr(cfg, f.name))}
    items = []
    for name, value in overrides.items():
        if "__" in name:
            key = name.replace("__", ".", 1)
        else:
            owners = [s for s, sub in sections.items() if name in {f.name for f in dataclasses.fields(sub)}]
            if len(owners) != 1:
                raise KeyError(f"tiny_cfg: {name!r} is a field of {owners or 'no section'}; "
                               f"write <section>__{name}")
            key = f"{owners[0]}.{name}"
        items.append(f"{key}={json.dumps(value)}")     # JSON is YAML: true/false, numbers, quoted strings, lists
    return config.apply_overrides(cfg, items)


@pytest.fixture(scope="session", autouse=True)
def _temporary_files_under_basetemp(tmp_path_factory):
    """The temporary files of the tests and of the processes they start go under pytest's basetemp, not the system's
    temporary folder: TensorFlow writes a source file there for every function autograph converts and removes it at
    exit, so a train.py that a test kills (SIGKILL) would leave its files behind in /tmp at every run."""
    folder = tmp_path_factory.mktemp("tmp")
    patch = pytest.MonkeyPatch()
    patch.setenv("TMPDIR", str(folder))
    patch.setattr(tempfile, "tempdir", None)       # tempfile caches the folder it found first
    yield
    patch.undo()


@pytest.fixture(scope="session")
def tiny_cfg():
    """tiny_cfg(**overrides) -> Config: see `tiny_config`."""
    return tiny_config


def _make_synthetic(out, **sizes):
    """The built-in generator (scripts/make_synthetic_ytvis.py, seed 0) into `out`."""
    import make_synthetic_ytvis as gen
    args = ["--out", str(out), "--seed", "0", "--quiet"]
    for k, v in sizes.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    gen.main(args)
    return str(out)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small built-in dataset (4 train / 2 valid videos of 6-8 frames at 160x90): returns its root folder,
    holding train/ and valid/ in the YouTube-VIS layout (scripts/make_synthetic_ytvis.py)."""
    return _make_synthetic(tmp_path_factory.mktemp("synthetic") / "shapes", train_videos=4, valid_videos=2,
                           min_frames=6, max_frames=8, width=160, height=90)


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """A tiny synthetic training split: 4 videos x 4 frames of 96x64 (and one validation video); returns the
    train/ folder."""
    root = _make_synthetic(tmp_path_factory.mktemp("shapes"), train_videos=4, valid_videos=1, min_frames=4,
                           max_frames=4, width=96, height=64)
    return os.path.join(root, "train")

