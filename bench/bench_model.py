"""Per-frame inference cost of YOLOV4+1 on this CPU: the model's forward pass (backbone to NMS and mask head, one
frame) and, separately, postprocess (mask paste at 1280x720 + RLE encode); frames/s and peak RSS.

    python bench/bench_model.py [--preset yolov4p1] [--runs 5] [--height 720 --width 1280]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")   # as config.py: oneDNN on AVX2-only CPUs too
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import config  # noqa: E402
import model as M  # noqa: E402


def rss_mb():
    """Current resident set size in MiB (Linux /proc), or the peak if /proc is unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stats(times):
    t = np.asarray(times) * 1000
    return f"median {np.median(t):8.1f} ms   min {t.min():8.1f}   max {t.max():8.1f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    config.add_config_args(ap)
    ap.add_argument("--runs", type=int, default=5, help="timed runs after one warm-up")
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--score-floor", type=float, default=0.0,
                    help="postprocess floor (0: paste every valid proposal, the worst case)")
    args = ap.parse_args(argv)
    cfg = config.config_from_args(args).for_inference()   # the inference canvas, as tracker.py runs it
    cfg.model.sync_bn = False
    print(f"preset {cfg.preset}: input {cfg.model.input_size}, width {cfg.model.width}, "
          f"P {cfg.model.max_prop}, batch 1, frame {args.width}x{args.height}, TF threads "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()}", flush=True)
    rss0 = rss_mb()
    t0 = time.perf_counter()
    net = M.build_model(cfg, "infer")
    print(f"build {time.perf_counter() - t0:.1f} s, {net.count_params():,} parameters, RSS {rss_mb():.0f} MiB "
          f"(+{rss_mb() - rss0:.0f})", flush=True)
    infer = tf.function(lambda x: net(x, training=False), reduce_retracing=True)

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (args.height, args.width, 3), dtype=np.uint8)
    inputs = {"image": tf.constant(M.letterbox_image(frame, cfg.model.input_size)[None]),
              "image_hw": tf.constant([[args.height, args.width]], tf.int32)}
    t0 = time.perf_counter()
    out = infer(inputs)
    print(f"warm-up (trace + first run) {time.perf_counter() - t0:.1f} s", flush=True)
    fwd, post = [], []
    for r in range(args.runs):
        t0 = time.perf_counter()
        out = {k: v.numpy() for k, v in infer(inputs).items()}
        fwd.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        dets = M.postprocess(out, cfg, score_floor=args.score_floor)
        post.append(time.perf_counter() - t0)
        print(f"  run {r + 1}/{args.runs}: forward {fwd[-1] * 1000:.0f} ms, postprocess {post[-1] * 1000:.0f} ms "
              f"({len(dets[0])} masks)", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"forward (letterboxed frame -> boxes, NMS, masks)  {stats(fwd)}")
    print(f"postprocess (paste {len(dets[0])} masks + RLE)        {stats(post)}")
    total = np.median(fwd) + np.median(post)
    print(f"frames/s: forward only {1 / np.median(fwd):.2f}, forward + postprocess {1 / total:.2f}")
    print(f"peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
