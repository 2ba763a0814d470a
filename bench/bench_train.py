"""Training-step cost of YOLOV4+1 on this machine: seconds per step and images/s of the distributed train step
(forward, targets, losses, backward, all-reduce, clip, SGDW) for the tiny preset at its size and the full preset
at 416 (batch 2), on synthetic batches; peak RSS. The mask head runs on every proposal here, the most a step can
cost: train.py runs it on the positive proposals only, which random weights would all but skip (`--run-dir` times
both with a trained run's weights). Then, side by side for the same configurations, the frames/s the augmented
data pipeline (loader_ytvos.build_dataset on the built-in synthetic dataset) delivers against the images/s the step
consumes: a ratio above 1 means the step, not the data, bounds training.

    python bench/bench_train.py [--steps 5] [--configs tiny:192:8,yolov4p1:416:2] [--pipeline-frames 96]
    python bench/bench_train.py --run-dir runs/demo --data data/shapes/train     # the mask gate, trained weights
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")   # as config.py: oneDNN on AVX2-only CPUs too
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402


def synthetic_batch(cfg, batch: int, seed: int = 0):
    """Random images with 3 rectangles a frame (boxes, labels, full-canvas masks at data.mask_res)."""
    rng = np.random.default_rng(seed)
    s, r, n = cfg.model.input_size, cfg.mask_res, cfg.data.max_instances
    boxes = np.zeros((batch, n, 4), np.float32)
    labels = np.zeros((batch, n), np.int32)
    masks = np.zeros((batch, n, r, r), np.uint8)
    for b in range(batch):
        for i in range(min(3, n)):
            w, h = rng.uniform(0.1, 0.5, 2) * s
            x1, y1 = rng.uniform(0, s - w), rng.uniform(0, s - h)
            boxes[b, i] = [x1, y1, x1 + w, y1 + h]
            labels[b, i] = 1 + i % cfg.model.num_classes
            k = r / s
            masks[b, i, int(y1 * k):int((y1 + h) * k), int(x1 * k):int((x1 + w) * k)] = 1
    return {"image": rng.uniform(0, 1, (batch, s, s, 3)).astype(np.float32), "boxes": boxes, "labels": labels,
            "masks": masks, "num_instances": (labels > 0).sum(1).astype(np.int32)}


def bench_one(preset: str, size: int, batch: int, steps: int):
    import tensorflow as tf

    import config
    import train
    cfg = config.apply_overrides(config.get_preset(preset), [f"model.input_size={size}", f"train.batch_size={batch}"])
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    t0 = time.perf_counter()
    model, opt, _, _, _ = train.build_state(cfg, strategy, 1000, mask_positives=False)   # every proposal's mask
    build = time.perf_counter() - t0
    step = train.make_train_step(model, opt, cfg, strategy, train.trainable_vars(model))
    data = tf.data.Dataset.from_tensors(synthetic_batch(cfg, batch)).repeat()
    it = iter(strategy.experimental_distribute_dataset(data))
    t0 = time.perf_counter()
    float(step(next(it), tf.constant(0.0))["total"])            # trace + first step
    first = time.perf_counter() - t0
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        float(step(next(it), tf.constant(0.0))["total"])
        times.append(time.perf_counter() - t0)
        print(f"  {preset}@{size} b{batch}: step {i + 1}/{steps} {times[-1]:.2f} s", file=sys.stderr, flush=True)
    t = np.asarray(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    line = (f"{preset:<9} {size:>5} {batch:>5} {model.count_params():>12,} {build:>8.1f} {first:>9.1f} "
            f"{np.median(t):>9.2f} {t.min():>7.2f} {t.max():>7.2f} {batch / np.median(t):>8.2f} {peak:>10.0f}")
    return line, batch / np.median(t)


def pipeline_rates(preset: str, size: int, batch: int, split_root: str, frames: int, passes: int = 3):
    """Frames/s of the training pipeline (augmentation on) for one configuration: `passes` timed passes of
    `frames` frames each, after the first batch and two more to let tf.data's autotuning settle."""
    import config
    import loader_ytvos as L
    cfg = config.apply_overrides(config.get_preset(preset), [f"model.input_size={size}", f"train.batch_size={batch}"])
    ds = L.build_dataset(cfg, os.path.join(split_root, "instances.json"), os.path.join(split_root, "JPEGImages"),
                         training=True).repeat()
    it = iter(ds)
    for _ in range(3):
        next(it)
    rates = []
    for _ in range(passes):
        t0 = time.perf_counter()
        for _ in range(max(1, frames // batch)):
            next(it)
        rates.append(max(1, frames // batch) * batch / (time.perf_counter() - t0))
    return np.asarray(rates)


def bench_mask_gate(run_dir: str, split_root: str, batches: int = 6, rounds: int = 4):
    """Seconds per train step of a trained run's weights on real augmented batches, the mask head on the positive
    proposals only (what train.py runs) against the full head over all proposals; the rounds interleave the two."""
    import tensorflow as tf

    import checkpoints
    import config
    import loader_ytvos
    import model as model_lib
    import train
    cfg = config.load_config(os.path.join(run_dir, "config.yaml"))
    ds = loader_ytvos.build_dataset(cfg, os.path.join(split_root, "instances.json"),
                                    os.path.join(split_root, "JPEGImages"), training=True, seed=1)
    data = [b for b in ds.take(batches)]
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    path = checkpoints.latest_checkpoint(run_dir)
    if path is None:
        sys.exit(f"bench_train: no checkpoint in {run_dir}/checkpoints (train a run first, e.g. make demo)")
    steps, rois = {}, {}
    for gated in (True, False):
        with strategy.scope():
            model = model_lib.build_model(cfg, "train", mask_positives=gated)
            checkpoints.ensure_alb_built(model)
            checkpoints.restore_weights(model, path)
            opt = train.make_optimizer(cfg, train.make_schedule(cfg, 1000))
            opt.build(train.trainable_vars(model))
        steps[gated] = train.make_train_step(model, opt, cfg, strategy, train.trainable_vars(model))
        outs = [model(model_lib.train_inputs(model, b), training=True) for b in data]
        # ROIs through the mask subnet: the positives (at least one a batch), or every proposal slot
        rois[gated] = np.mean([max(1, int(tf.reduce_sum(o["mask_num"]))) / int(o["mask_num"].shape[0]) if gated
                               else o["mask_logits"].shape[1] for o in outs])
    dist = [next(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(b)))) for b in data]
    times = {True: [], False: []}
    for gated in (True, False):
        float(steps[gated](dist[0], tf.constant(0.0))["total"])          # trace
    for _ in range(rounds):
        for gated in (True, False):
            for b in dist:
                t0 = time.perf_counter()
                float(steps[gated](b, tf.constant(0.0))["total"])
                times[gated].append(time.perf_counter() - t0)
    print(f"\nmask head on the positive proposals only, trained weights of {os.path.relpath(path, ROOT)}, "
          f"{batches} augmented batches of {cfg.train.batch_size} x {rounds} rounds")
    print(f"{'mask head':<22} {'ROIs an image':>14} {'median s':>9} {'min':>7} {'max':>7}")
    for gated, name in ((True, "positives (train.py)"), (False, f"all {cfg.model.max_prop} proposals")):
        t = np.asarray(times[gated])
        print(f"{name:<22} {rois[gated]:>14.1f} {np.median(t):>9.3f} {t.min():>7.3f} {t.max():>7.3f}")
    print(f"step time saved: {1 - np.median(times[True]) / np.median(times[False]):.1%}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps after the traced first one")
    ap.add_argument("--configs", default="tiny:192:8,yolov4p1:416:2", help="preset:size:batch, comma-separated")
    ap.add_argument("--pipeline-frames", type=int, default=96, help="frames a timed pass of the data pipeline")
    ap.add_argument("--run-dir", help="a trained run (e.g. runs/demo after make demo): only time its step with the "
                                      "mask head on the positives against the full head, on --data batches")
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "shapes", "train"), help="split for --run-dir")
    args = ap.parse_args(argv)
    if args.run_dir:
        bench_mask_gate(args.run_dir, args.data)
        return
    print(f"train step on CPU, one device, {args.steps} timed steps after the first (trace) step")
    print(f"{'preset':<9} {'size':>5} {'batch':>5} {'params':>12} {'build s':>8} {'1st step':>9} "
          f"{'median s':>9} {'min':>7} {'max':>7} {'img/s':>8} {'peak MiB':>10}")
    # Peak RSS is the process's high-water mark, so configurations are run smallest first.
    configs = [(preset, int(size), int(batch))
               for preset, size, batch in (c.split(":") for c in args.configs.split(","))]
    consumed = {}
    for preset, size, batch in configs:
        line, consumed[preset, size, batch] = bench_one(preset, size, batch, args.steps)
        print(line, flush=True)

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import make_synthetic_ytvis as gen
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(sys.stderr):      # the generator's summary lines are not figures
            gen.main(["--out", os.path.join(tmp, "shapes"), "--train-videos", "12", "--valid-videos", "0", "--quiet"])
        split = os.path.join(tmp, "shapes", "train")
        print(f"\ndata pipeline (synthetic 320x180 JPEG, augmentation on, measured alone: in training it shares the "
              f"cores with the step) beside the step's consumption, 3 passes of {args.pipeline_frames} frames")
        print(f"{'preset':<9} {'size':>5} {'batch':>5} {'pipeline frames/s: median':>26} {'min':>7} {'max':>7} "
              f"{'step img/s':>11} {'pipeline / step':>16}")
        for preset, size, batch in configs:
            rates = pipeline_rates(preset, size, batch, split, args.pipeline_frames)
            step = consumed[preset, size, batch]
            print(f"{preset:<9} {size:>5} {batch:>5} {np.median(rates):>26.1f} {rates.min():>7.1f} {rates.max():>7.1f} "
                  f"{step:>11.2f} {np.median(rates) / step:>15.1f}x", flush=True)


if __name__ == "__main__":
    main()
