"""The training loop (train.py; info/DESIGN.md#training): the optimizer (decoupled decay, exclusions, ALB step, Adam
to the bit), the LR schedule, backbone phases, checkpoints holding the ALB, mixed precision, the time budget, and
that the tiny preset overfits a few frames. Distributed runs: test_train_distributed.py; interrupted and resumed
runs: test_train_resume.py."""
import json
import os

import numpy as np
import pytest
from train_runs import SMALL, run_train

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


def test_adam_is_keras_adam_to_the_bit_with_fewer_ops_a_step(tiny_cfg):
    """train.optimizer=adamw without decay is Keras's Adam bit for bit, eagerly and traced, over 3 steps; its traced
    step shares the bias corrections among the variables (Keras computes them once per variable), so the graph of
    one step over 40 variables has at most 65 % of the ops (measured: 984 against 1,688)."""
    import keras
    import tensorflow as tf

    import train
    cfg = tiny_cfg(weight_decay=0.0, optimizer="adamw", alb_lr_mult=1)
    rng = np.random.default_rng(0)
    shapes = [(3, 3, 4, 8), (8,), (5,), (2, 7)] * 10
    init = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = [[rng.normal(size=s).astype(np.float32) * 10.0 ** rng.integers(-3, 2) for s in shapes] for _ in range(3)]
    results, op_counts = [], []
    for make in (lambda: train.make_optimizer(cfg, 0.01), lambda: keras.optimizers.Adam(0.01)):
        for traced in (False, True):
            variables = [keras.Variable(w, name=f"w{i}") for i, w in enumerate(init)]
            opt = make()
            opt.build(variables)

            def applier(opt, variables):
                return lambda grad_list: opt.apply(grad_list, variables)
            fn = tf.function(applier(opt, variables)) if traced else applier(opt, variables)
            for gs in grads:
                fn([tf.constant(g) for g in gs])
            results.append([v.numpy() for v in variables])
            if traced:
                op_counts.append(len(fn.get_concrete_function([tf.constant(g) for g in grads[0]]).graph
                                     .get_operations()))
    assert isinstance(train.make_optimizer(cfg, 0.01), train.DecoupledAdam)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(results[0][0], init[0])
    ours, theirs = op_counts
    assert ours <= 0.65 * theirs, (ours, theirs)


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
    res = run_train(["--data", shapes, "--run-dir", str(run), "--epochs", "2", "--budget-minutes", "0.05"] + SMALL,
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
