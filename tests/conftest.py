"""Shared fixtures: the repository root on sys.path, a quiet TensorFlow, and temporary folders."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")     # as config.py: oneDNN on every x86 CPU, not only VNNI/AMX

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small built-in dataset (4 train / 2 valid videos of 6-8 frames at 160x90): returns its root folder,
    holding train/ and valid/ in the YouTube-VIS layout (scripts/make_synthetic_ytvis.py)."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import make_synthetic_ytvis as gen
    out = str(tmp_path_factory.mktemp("synthetic") / "shapes")
    gen.main(["--out", out, "--seed", "0", "--train-videos", "4", "--valid-videos", "2", "--min-frames", "6",
              "--max-frames", "8", "--width", "160", "--height", "90", "--quiet"])
    return out
