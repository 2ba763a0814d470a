"""Training-step cost of YOLOV4+1 on this machine: seconds per step and images/s of the distributed train step
(forward, targets, losses, backward, all-reduce, clip, SGDW) for the tiny preset at its size and the full preset
at 416 (batch 2), on synthetic batches; peak RSS.

    python bench/bench_train.py [--steps 5] [--configs tiny:256:8,yolov4p1:416:2]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402


def synthetic_batch(cfg, batch: int, seed: int = 0):
    """Random images with 3 rectangles a frame (boxes, labels, full-canvas masks at data.mask_res)."""
    rng = np.random.default_rng(seed)
    s, r, n = cfg.model.input_size, cfg.data.mask_res, cfg.data.max_instances
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
    model, opt, _, _, _ = train.build_state(cfg, strategy, 1000)
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
    return (f"{preset:<9} {size:>5} {batch:>5} {model.count_params():>12,} {build:>8.1f} {first:>9.1f} "
            f"{np.median(t):>9.2f} {t.min():>7.2f} {t.max():>7.2f} {batch / np.median(t):>8.2f} {peak:>10.0f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps after the traced first one")
    ap.add_argument("--configs", default="tiny:256:8,yolov4p1:416:2", help="preset:size:batch, comma-separated")
    args = ap.parse_args(argv)
    print(f"train step on CPU, one device, {args.steps} timed steps after the first (trace) step")
    print(f"{'preset':<9} {'size':>5} {'batch':>5} {'params':>12} {'build s':>8} {'1st step':>9} "
          f"{'median s':>9} {'min':>7} {'max':>7} {'img/s':>8} {'peak MiB':>10}")
    # Peak RSS is the process's high-water mark, so configurations are run smallest first.
    for item in args.configs.split(","):
        preset, size, batch = item.split(":")
        print(bench_one(preset, int(size), int(batch), args.steps), flush=True)


if __name__ == "__main__":
    main()
