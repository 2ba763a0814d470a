"""The training loop (train.py; info/DESIGN.md#training): replica invariance, multi-worker, resume after SIGKILL, the
NaN guard, checkpoints holding the ALB, weight-decay exclusions, and that the tiny preset overfits a few frames.
Runs that need their own TensorFlow process (logical devices, workers, kills) go through subprocesses."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
# Small enough for 2 shared cores: 64 px input, 2-frame batches, 3 steps an epoch, a 1-video validation split.
SMALL = ["--preset", "tiny", "--set", "model.input_size=64", "--set", "train.batch_size=2",
         "--set", "train.steps_per_epoch=3", "--set", "train.log_every=1", "--set", "data.mask_res=32",
         "--set", "train.warmup_steps=0", "--set", "train.val_max_frames=4", "--set", "data.max_instances=4"]


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run(args, timeout=180, **env):
    return subprocess.run([PY, os.path.join(ROOT, "train.py")] + args, cwd=ROOT, env=_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def _read_ckpt(prefix):
    import tensorflow as tf
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def _key(values, *parts):
    hits = sorted(k for k in values if all(p in k for p in parts))
    assert hits, f"no checkpoint key containing {parts}"
    return hits[0]


# ---- in-process checks --------------------------------------------------------------------------------------

def test_weight_decay_excludes_alb_norm_and_bias_and_is_decoupled(tiny_cfg):
    import keras
    import tensorflow as tf

    import train
    cfg = tiny_cfg(weight_decay=0.1, momentum=0, optimizer="sgd", alb_lr_mult=1)
    kernel = keras.Variable(np.full((2, 2), 2.0, np.float32), name="kernel")
    bias = keras.Variable(np.full((2,), 2.0, np.float32), name="bias")
    gamma = keras.Variable(np.full((2,), 2.0, np.float32), name="gamma")
    alb = keras.Variable(np.full((13,), 2.0, np.float32), name="alb_log_vars")
    opt = train.make_optimizer(cfg, 0.5)
    opt.build([kernel, bias, gamma, alb])
    assert [train.is_decayed(v) for v in (kernel, bias, gamma, alb)] == [True, False, False, False]
    opt.apply([tf.ones_like(v) for v in (kernel, bias, gamma, alb)], [kernel, bias, gamma, alb])
    # SGDW: kernel 2 -> 2 - 0.1 * 2 (not scaled by the LR 0.5) - 0.5 * 1 = 1.3; the others only 2 - 0.5 = 1.5.
    np.testing.assert_allclose(kernel.numpy(), 1.3, rtol=1e-6)
    for v in (bias, gamma, alb):
        np.testing.assert_allclose(v.numpy(), 1.5, rtol=1e-6)


def test_lr_schedule_warmup_and_cosine(tiny_cfg):
    import config
    import train
    cfg = tiny_cfg(lr=0.1, warmup_steps=4, lr_schedule="cosine")
    sched = train.make_schedule(cfg, 14)
    # warm-up: (step + 1) / 4 of the peak; cosine from step 4 to 14: halfway (step 9) gives half the peak.
    np.testing.assert_allclose([float(sched(s)) for s in (0, 3, 9, 14)], [0.025, 0.1, 0.05, 0.0], atol=1e-7)
    sched.set_total(24)              # a time budget's plan: cosine from step 4 to 24, halfway at step 14
    np.testing.assert_allclose([float(sched(s)) for s in (3, 14, 24)], [0.1, 0.05, 0.0], atol=1e-7)
    const = train.make_schedule(config.apply_overrides(cfg, ["train.lr_schedule=constant", "train.warmup_steps=0"]),
                                14)
    assert float(const(0)) == pytest.approx(0.1) and float(const(100)) == pytest.approx(0.1)


def test_backbone_phases_and_alb_in_checkpoint(tmp_path, tiny_cfg):
    import tensorflow as tf

    import config
    import train
    cfg = tiny_cfg(input_size=64, num_classes=2, optimizer="sgd")
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    model, opt, _, ckpt, parts = train.build_state(cfg, strategy, 10)
    n_all = len(train.trainable_vars(model))
    train.set_backbone_phase(model, cfg, frozen=True)
    frozen = train.trainable_vars(model)
    assert not any(v.path.startswith("bb_") for v in frozen)
    assert any("alb" in v.path for v in frozen)
    train.set_backbone_phase(model, config.apply_overrides(cfg, ["train.unfreeze=outputs"]), frozen=False)
    names = sorted({v.path.split("/")[0] for v in train.trainable_vars(model) if v.path.startswith("bb_")})
    assert names == sorted(f"bb_{k}_{i}" for k in ("conv", "bn") for i in (16, 37, 58, 77))
    train.set_backbone_phase(model, cfg, frozen=False)            # tiny: unfreeze=all
    assert len(train.trainable_vars(model)) == n_all
    # ALB values and a momentum slot survive a checkpoint round trip into a fresh state.
    model.alb.alb_log_vars.assign(np.arange(13, dtype=np.float32) / 10)
    opt.momentums[0].assign(tf.fill(opt.momentums[0].shape, 0.25))
    parts["step"].assign(7)
    path = tf.train.CheckpointManager(ckpt, str(tmp_path), 2).save()
    model2, opt2, _, ckpt2, parts2 = train.build_state(cfg, strategy, 10)
    ckpt2.restore(path).assert_existing_objects_matched()
    np.testing.assert_allclose(model2.alb.alb_log_vars.numpy(), np.arange(13) / 10, rtol=1e-6)
    np.testing.assert_allclose(opt2.momentums[0].numpy(), 0.25)
    assert int(parts2["step"]) == 7
    for a, b in zip(model.get_weights(), model2.get_weights()):
        np.testing.assert_array_equal(a, b)


# ---- subprocess checks ------------------------------------------------------------------------------------

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
                         env=_env(PYTHONPATH=ROOT), capture_output=True, text=True, timeout=1800)
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


def _two_workers(tmp_path, data, run_dirs, extra, dumps=True):
    """Runs train.py as the 2 workers of a MultiWorkerMirroredStrategy on localhost; [(returncode, out, err)]."""
    hosts = ",".join(f"127.0.0.1:{p}" for p in _free_ports(2))
    procs = []
    for i, run_dir in enumerate(run_dirs):
        # sync_bn on (info/DESIGN.md#m14-synchronised-bn): per-worker statistics would give per-worker BN averages.
        args = SMALL + ["--data", data, "--run-dir", str(run_dir), "--set", "train.val_fraction=0",
                        "--set", "model.sync_bn=true", "--strategy", "multi_worker", "--worker", hosts,
                        "--worker-index", str(i)] + extra
        if dumps:
            args += ["--dump-weights", str(tmp_path / f"w{i}.npz")]
        procs.append(subprocess.Popen([PY, os.path.join(ROOT, "train.py")] + args, cwd=ROOT, env=_env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        for p in procs:
            outs.append((*p.communicate(timeout=300),))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


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
def test_nan_guard_stops_naming_the_step_and_keeps_the_last_good_checkpoint(shapes, tmp_path):
    run = tmp_path / "run"
    res = _run(SMALL + ["--data", shapes, "--run-dir", str(run), "--epochs", "2", "--set", "train.ckpt_every=2",
                        "--set", "train.val_fraction=0"], YOLOV4P1_TEST_NAN_AT_STEP=5)
    assert res.returncode != 0
    assert "non-finite loss at step 5" in res.stderr, res.stderr[-2000:]
    import tensorflow as tf
    latest = tf.train.latest_checkpoint(str(run / "checkpoints"))
    assert latest.endswith("ckpt-4")              # saved at step 4 (ckpt_every), nothing after the bad step
    values = _read_ckpt(latest)
    assert int(values[_key(values, "step")]) == 4
    assert all(np.all(np.isfinite(v)) for v in values.values() if np.asarray(v).dtype.kind == "f")
    import checkpoints
    cfg, model = checkpoints.load_run(str(run), mode="train")
    np.testing.assert_array_equal(model.alb.alb_log_vars.numpy(), values[_key(values, "alb", "VARIABLE_VALUE")])
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
    p = subprocess.Popen([PY, os.path.join(ROOT, "train.py")] + args, cwd=ROOT, env=_env(),
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
    saved = _read_ckpt(latest)
    saved_step = int(saved[_key(saved, "step")])
    assert saved_step >= 4
    # Nothing in the run directory is corrupt: config, metrics lines, every listed checkpoint.
    import config
    cfg = config.load_config(str(run / "config.yaml"))
    assert cfg.model.num_classes == 6
    if (run / "metrics.jsonl").exists():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            json.loads(line)
    for prefix in tf.train.get_checkpoint_state(str(run / "checkpoints")).all_model_checkpoint_paths:
        _read_ckpt(prefix)
    # The resume path restores weights, optimizer slots and ALB exactly as saved.
    import train
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    model, opt, _, ckpt, parts = train.build_state(cfg, strategy, 9)
    ckpt.restore(latest).assert_existing_objects_matched()
    np.testing.assert_array_equal(model.alb.alb_log_vars.numpy(), saved[_key(saved, "alb", "VARIABLE_VALUE")])
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
    res = _run(args + ["--resume"])
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
    res = _run(args, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]

    def snapshot():
        return {p: (run / p).read_bytes() for p in ("config.yaml", "metrics.jsonl", "train_done.json",
                                                       "checkpoints/checkpoint")}
    before = snapshot()
    res = _run(args + ["--epochs", "2"], timeout=600)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        f"train.py: {run} already holds a run (config.yaml, metrics.jsonl, train_done.json, checkpoints, logs): "
        f"continue it with --resume, start it over with --overwrite, or choose another --run-dir")
    res = _run(args + ["--epochs", "2", "--resume", "--set", "model.width=0.5"], timeout=600)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        f"train.py: --resume: checkpoint {run}/checkpoints/ckpt-3 does not fit the config: layer bb_conv_0 holds "
        f"weights of shapes [[3, 3, 3, 8]], the config needs [[3, 3, 3, 16]] (a checkpoint of another "
        f"configuration?); the run directory is left as it was")
    assert snapshot() == before
    assert sorted(os.listdir(run / "checkpoints")) == ["checkpoint", "ckpt-3.data-00000-of-00001", "ckpt-3.index"]
    # --resume of a finished run: nothing to train, said in one line, and train_done.json keeps the run's record.
    res = _run(args + ["--resume"], timeout=600)
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
    p = subprocess.Popen([PY, os.path.join(ROOT, "train.py")] + args, cwd=ROOT, env=_env(),
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
    res = _run(args + ["--resume"], timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "removed ckpt-7_temp/ (a checkpoint save that was killed half-way)" in res.stdout
    assert not (run / "checkpoints" / "ckpt-7_temp").exists()
    assert f"resumed from {run}/checkpoints/ckpt-{stopped} (step {stopped}, epoch 0)" in res.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["resumed_at_step"] == stopped and rows[0]["steps_averaged"] == 3 - stopped
    assert "resumed_at_step" not in rows[1]


def _tiny_two_frames(shapes, overrides):
    """The tiny preset at 64 px with a constant LR (plus `overrides`) and the first 2 frames of the first training
    video, unaugmented: (cfg, batch dict). The anchors keep the preset's 192 px sizes: scaled to 64 px, the ~20 px
    objects of these frames fall to the stride-16 level's 4x4 grid and the overfit test's top proposals miss them
    after its 120 steps (seed 0)."""
    import config
    import loader_ytvos
    import rundir
    tiny = config.get_preset("tiny")
    cfg = config.apply_overrides(tiny, [
        "model.input_size=64", f"model.anchors={tiny.model.anchors}", "data.mask_res=32", "data.max_instances=4",
        "data.augment=false", "train.batch_size=2", "train.warmup_steps=0", "train.lr_schedule=constant"]
        + list(overrides))
    ann = os.path.join(shapes, "instances.json")
    ytvis = loader_ytvos.load_annotations(ann)
    cfg = rundir.add_dataset_classes(cfg, ytvis, ann)
    ds = loader_ytvos.build_dataset(cfg, ann, os.path.join(shapes, "JPEGImages"),
                                    video_ids=[ytvis["videos"][0]["id"]], training=False, batch_size=2)
    return cfg, {k: v for k, v in next(iter(ds)).items()}


@pytest.mark.slow
def test_tiny_preset_overfits_a_few_frames(shapes):
    """Overfit 2 frames: the summed raw losses fall by at least half and the top proposals land on the objects."""
    import keras
    import tensorflow as tf

    import train
    import utils
    cfg, batch = _tiny_two_frames(shapes, ["train.lr=0.01"])
    assert int(tf.reduce_sum(batch["num_instances"])) >= 1
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    keras.utils.set_random_seed(int(os.environ.get("OVERFIT_SEED", "0")))
    model, opt, _, _, _ = train.build_state(cfg, strategy, 1000)
    step = train.make_train_step(model, opt, cfg, strategy, train.trainable_vars(model))
    dist = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat())
    it = iter(dist)
    raw = []
    for _ in range(120):
        logs = step(next(it), tf.constant(0.0))
        raw.append(sum(float(logs[k]) for k in ("box", "obj", "cls", "mask")))
    first, last = np.mean(raw[:3]), np.mean(raw[-3:])
    assert last <= 0.5 * first, (first, last)
    # Batch statistics (training=True) on the batch it overfits: after 120 steps the BN moving averages
    # (momentum 0.99) have not caught up yet, which is about BN, not about what the heads learnt.
    import model as model_lib
    out = model(model_lib.train_inputs(model, batch), training=True)
    props, n_valid = out["proposals"].numpy(), out["num_valid"].numpy()
    size = cfg.model.input_size
    for b in range(props.shape[0]):
        gt = batch["boxes"][b][: int(batch["num_instances"][b])].numpy()
        if not len(gt):
            continue
        # The largest object of each frame has a top-ranked proposal on it (slivers of a few pixels at a 64 px
        # input take longer than this test's 120 steps).
        biggest = gt[np.argmax((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))][None] / size
        top = props[b, : min(int(n_valid[b]), 2 * len(gt)), :4]
        iou = utils.box_iou(tf.constant(biggest), tf.constant(top)).numpy()
        assert iou.max() >= 0.5, (biggest, top)


def test_adamw_option_keeps_the_decoupled_decay_and_exclusions(tiny_cfg):
    import keras
    import tensorflow as tf

    import config
    import train
    cfg = tiny_cfg(weight_decay=0.1, optimizer="adamw")
    kernel = keras.Variable(np.full((2, 2), 2.0, np.float32), name="kernel")
    bias = keras.Variable(np.full((2,), 2.0, np.float32), name="bias")
    opt = train.make_optimizer(cfg, 0.5)
    assert isinstance(opt, keras.optimizers.Adam)
    opt.build([kernel, bias])
    opt.apply([3.0 * tf.ones_like(kernel), 3.0 * tf.ones_like(bias)], [kernel, bias])
    # Adam's first step is lr * g / |g| = 0.5 whatever the gradient's scale (here 3); the kernel also loses
    # 0.1 * 2 (decoupled, not LR-scaled): 2 - 0.2 - 0.5 = 1.3; the bias is not decayed: 1.5.
    np.testing.assert_allclose(kernel.numpy(), 1.3, rtol=1e-5)
    np.testing.assert_allclose(bias.numpy(), 1.5, rtol=1e-5)
    # the published preset stays SGD (info/DESIGN.md#optimizer)
    assert isinstance(train.make_optimizer(config.get_preset("yolov4p1"), 0.1), keras.optimizers.SGD)


def test_alb_lr_mult_scales_only_the_alb_step(tiny_cfg):
    import keras
    import tensorflow as tf

    import train
    cfg = tiny_cfg(weight_decay=0, momentum=0, optimizer="sgd", alb_lr_mult=10)
    kernel = keras.Variable(np.full((2,), 2.0, np.float32), name="kernel")
    alb = keras.Variable(np.full((13,), 2.0, np.float32), name="alb_log_vars")
    opt = train.make_optimizer(cfg, 0.1)
    opt.build([kernel, alb])
    opt.apply([tf.ones_like(kernel), tf.ones_like(alb)], [kernel, alb])
    # plain SGD at lr 0.1: kernel 2 - 0.1 = 1.9; the ALB log-variances at 10 x 0.1: 2 - 1 = 1
    np.testing.assert_allclose(kernel.numpy(), 1.9, rtol=1e-6)
    np.testing.assert_allclose(alb.numpy(), 1.0, rtol=1e-6)


@pytest.mark.slow
def test_mixed_precision_trains_in_float16_and_skips_overflowing_steps(shapes):
    """model.mixed_precision (info/DESIGN.md#m13-mixed-precision): float16 convolutions, float32 weights, the losses are
    float32 and finite, a step moves the weights; a loss scale so large that the float16 gradients overflow skips
    the step (weights unchanged) and halves the scale, as dynamic loss scaling does."""
    import keras
    import tensorflow as tf

    import train
    cfg, batch = _tiny_two_frames(shapes, ["model.mixed_precision=true"])
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    model, opt, _, _, _ = train.build_state(cfg, strategy, 100)
    assert keras.config.dtype_policy().name == "float32"          # the global policy is left as it was
    conv = model.get_layer("bb_conv_0")
    assert conv.compute_dtype == "float16" and conv.kernel.dtype == "float32"
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
    step = train.make_train_step(model, opt, cfg, strategy, train.trainable_vars(model))
    it = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat()))

    opt.dynamic_scale.assign(8.0)                                  # small enough that nothing overflows
    before = conv.kernel.numpy().copy()
    logs = step(next(it), tf.constant(0.0))
    assert all(np.isfinite(float(logs[k])) for k in ("total", "box", "obj", "cls"))
    assert float(logs["grad_norm"]) > 0 and not np.allclose(conv.kernel.numpy(), before)
    assert float(opt.dynamic_scale.numpy()) == 8.0

    opt.dynamic_scale.assign(2.0 ** 60)                            # float16 gradients overflow at this scale
    before = conv.kernel.numpy().copy()
    logs = step(next(it), tf.constant(0.0))
    np.testing.assert_array_equal(conv.kernel.numpy(), before)
    assert float(opt.dynamic_scale.numpy()) == 2.0 ** 59 and float(logs["grad_norm"]) == 0.0
    assert np.isfinite(float(logs["total"]))                       # the float32 loss itself is fine


@pytest.mark.slow
def test_budget_spent_on_set_up_still_gives_each_epoch_a_step_and_records_the_run(shapes, tmp_path):
    """--budget-minutes: a budget already spent by set-up and the 23 warm-up steps (3 left out, 20 timed) plans
    one more step for the second epoch (budget.py gives every epoch one step at least); the plan, the epochs and
    the record of the run agree."""
    run = tmp_path / "run"
    res = _run(["--data", shapes, "--run-dir", str(run), "--epochs", "2", "--budget-minutes", "0.05"] + SMALL,
               timeout=600)                                  # the budget, not train.steps_per_epoch, sets the steps
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "plan: 24 steps of 2 images (1 to go, 2 epoch(s) with validation)" in res.stdout
    assert "epoch 1/2 step 23/23 (global 23)" in res.stdout and "epoch 2/2 step 1/1 (global 24)" in res.stdout
    plan = json.loads((run / "budget.json").read_text())
    assert plan["total_steps"] == 24 and plan["epoch_ends"] == [23, 24] and plan["budget_minutes"] == 3 / 60
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [23, 24] and rows[0]["planned_steps"] == 24
    done = json.loads((run / "train_done.json").read_text())
    assert done["step"] == 24 and done["budget_minutes"] == 0.05 and done["images_per_s"] > 0
    assert done["machine"]["cores"] == os.cpu_count()
