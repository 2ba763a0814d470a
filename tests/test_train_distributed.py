"""Distributed training (train.py; info/DESIGN.md#training): one step on 1 and on 2 replicas gives the same update,
and two MultiWorkerMirroredStrategy workers on localhost train, save and resume in step. Each run is a subprocess
(logical devices and workers need their own TensorFlow process)."""
import json
import os
import re
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
from train_runs import PY, ROOT, SMALL, train_env


@pytest.mark.slow
def test_one_step_is_replica_invariant():
    """One SGD step from the same weights and global batch on 1 device and on 2 logical CPUs (MirroredStrategy),
    and once more on 2 with the losses normalised per replica (tests/_replica_step.py).

    BN runs in inference mode here, so each example's forward pass is the same function in both runs and the
    updates may differ only by float32 summation order: measured 1.8e-6 of the update on an Intel Xeon (AVX-512,
    AMX) and 7e-7 with ONEDNN_MAX_CPU_ISA=AVX2; the bound, 1e-4, leaves 50x. TF's own ROI-align gradient, which
    loses updates on the CPU, gave 2.3e-3 (info/RESULTS.md#2026-12-04-roi-align-gradient). Per-replica
    normalisation (the replicas hold 3 and 4 objects) moves the update by 0.63 of its size, a double gradient sum
    by 1."""
    res = subprocess.run([PY, os.path.join(ROOT, "tests", "_replica_step.py"), "frozen_bn"], cwd=ROOT,
                         env=train_env(PYTHONPATH=ROOT), capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["update_norm"] > 1e-4 and out["logs_one"]["mask"] > 0     # the mask head has positives
    assert out["diff_norm"] <= 1e-4 * out["update_norm"], out
    assert out["bug_diff_norm"] >= 0.1 * out["update_norm"], out          # the comparison sees the bug
    for k, v in out["logs_one"].items():
        assert out["logs_two"][k] == pytest.approx(v, rel=1e-4, abs=1e-6), k


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_workers(tmp_path, data, run_dirs, extra, dumps=True):
    """Starts train.py as the 2 workers of a MultiWorkerMirroredStrategy on localhost; the Popen objects."""
    hosts = ",".join(f"127.0.0.1:{p}" for p in _free_ports(2))
    procs = []
    for i, run_dir in enumerate(run_dirs):
        # sync_bn on (info/DESIGN.md#m14-synchronised-bn): per-worker statistics would give per-worker BN averages.
        args = SMALL + ["--data", data, "--run-dir", str(run_dir), "--set", "train.val_fraction=0",
                        "--set", "model.sync_bn=true", "--strategy", "multi_worker", "--worker", hosts,
                        "--worker-index", str(i)] + extra
        if dumps:
            args += ["--dump-weights", str(tmp_path / f"w{i}.npz")]
        procs.append(subprocess.Popen([PY, os.path.join(ROOT, "train.py")] + args, cwd=ROOT, env=train_env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _wait(procs, timeout=300):
    """[(returncode, out, err)] of the workers, killed if they outlive `timeout` seconds."""
    outs = []
    try:
        for p in procs:
            outs.append((*p.communicate(timeout=timeout),))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


def _two_workers(tmp_path, data, run_dirs, extra, dumps=True):
    """Runs train.py as the 2 workers of a MultiWorkerMirroredStrategy on localhost; [(returncode, out, err)]."""
    return _wait(_start_workers(tmp_path, data, run_dirs, extra, dumps))


def _same_dumps(tmp_path):
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert sorted(w0.files) == sorted(w1.files)
    for k in w0.files:
        np.testing.assert_array_equal(w0[k], w1[k], err_msg=k)


@pytest.mark.slow
def test_two_workers_end_with_identical_weights_only_worker0_writes_and_resume_together(shapes, tmp_path):
    run0, run1 = tmp_path / "run0", tmp_path / "run1"
    (rc0, out0, err0), (rc1, out1, err1) = _two_workers(tmp_path, shapes, [run0, run1], ["--epochs", "1"])
    assert rc0 == 0, err0[-3000:]
    assert rc1 == 0, err1[-3000:]
    assert "(global 3)" in out0 and "(global 3)" in out1
    _same_dumps(tmp_path)
    assert os.path.exists(run0 / "checkpoints" / "checkpoint")
    assert os.path.exists(run0 / "metrics.jsonl")
    assert not os.path.exists(run1)
    # --resume: a worker that cannot see the chief's checkpoints (its --run-dir has none) would start over while
    # the chief resumes; both stop at once instead, with a message naming the steps found.
    res = _two_workers(tmp_path, shapes, [run0, run1], ["--epochs", "2", "--resume"], dumps=False)
    for i, (rc, _out, err) in enumerate(res):
        assert rc != 0
        assert f"--resume: worker {i} found step {3 if i == 0 else 0}" in err, err[-3000:]
        assert "the workers found steps 0 to 3" in err
    # Given the chief's run directory (a shared filesystem), every worker resumes at its step and they go on in step.
    (rc0, out0, err0), (rc1, out1, err1) = _two_workers(tmp_path, shapes, [run0, run0], ["--epochs", "2", "--resume"])
    assert rc0 == 0, err0[-3000:]
    assert rc1 == 0, err1[-3000:]
    for out in (out0, out1):
        assert f"resumed from {run0 / 'checkpoints' / 'ckpt-3'} (step 3, epoch 1)" in out
        assert "(global 4)" in out and "(global 6)" in out and "(global 1)" not in out
    _same_dumps(tmp_path)
    import tensorflow as tf
    assert tf.train.latest_checkpoint(str(run0 / "checkpoints")).endswith("ckpt-6")


@pytest.mark.slow
def test_a_signal_to_one_worker_stops_every_worker_after_the_same_step(shapes, tmp_path):
    """SIGINT to worker 1 alone: the request travels in the next step's reduction, and both workers stop after that
    step, worker 0 saving its checkpoint. Before, worker 1 stopped alone and worker 0 died in the next collective
    with a traceback, its last checkpoint the periodic one, steps behind."""
    run = tmp_path / "run"
    procs = _start_workers(tmp_path, shapes, [run, tmp_path / "run1"],
                           ["--epochs", "30", "--set", "train.ckpt_every=2"], dumps=False)
    state, deadline = run / "checkpoints" / "checkpoint", time.time() + 240
    try:
        while time.time() < deadline and all(p.poll() is None for p in procs):
            if state.exists() and "ckpt-2" in state.read_text():
                break
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGINT)
    finally:
        (rc0, _, err0), (rc1, out1, err1) = _wait(procs, timeout=180)
    found = re.search(r"train.py: stopped by SIGINT at step (\d+) ", err1)
    assert rc1 == 130 and found, err1[-3000:]
    assert "SIGINT: stopping after the next step, every worker with it, worker 0 saving a checkpoint ..." in out1
    step = int(found.group(1))
    assert rc0 == 1 and f"train.py: stopped: another worker was asked to stop at step {step} " in err0, err0[-3000:]
    assert "Traceback" not in err0 and step >= 3
    import tensorflow as tf
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith(f"ckpt-{step}")
