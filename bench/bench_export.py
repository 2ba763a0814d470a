"""Per-frame inference time of the exported forms (export.py: SavedModel, TFLite float32, TFLite fp16) beside the
Keras inference model, on random weights: one frame in, the M12 outputs out (letterbox included in every form),
plus export / conversion time and file sizes.

    python bench/bench_export.py [--preset tiny] [--runs 5] [--height 720 --width 1280] [--formats sm,tflite,fp16]
    python bench/bench_export.py --preset yolov4p1 --runs 3
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import config  # noqa: E402
import export  # noqa: E402
import model as model_lib  # noqa: E402
import train  # noqa: E402

FORMS = {"sm": ("saved_model", False), "tflite": ("tflite", False), "fp16": ("tflite", True)}


def folder_mb(path):
    if os.path.isfile(path):
        return os.path.getsize(path) / 2**20
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 2**20


def make_run(cfg, run_dir):
    """A run directory with the random initial weights (what export.py reads: config.yaml + checkpoints/)."""
    net = model_lib.build_model(cfg, "train")
    train.ensure_alb_built(net)
    os.makedirs(run_dir)
    config.save_config(cfg, os.path.join(run_dir, "config.yaml"))
    ckpt, _ = train.make_checkpoint(net)
    tf.train.CheckpointManager(ckpt, os.path.join(run_dir, "checkpoints"), 1).save()


def time_calls(fn, frame, runs):
    fn(frame)                                                    # warm-up (tracing, tensor allocation)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(frame)
        times.append(time.perf_counter() - t0)
    return np.asarray(times) * 1000


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    config.add_config_args(ap)
    ap.add_argument("--runs", type=int, default=5, help="timed frames after one warm-up")
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--formats", default="sm,tflite,fp16", help="comma list of sm, tflite, fp16")
    ap.add_argument("--keep", default=None, help="keep the run and exports in this folder (default: a temp dir)")
    args = ap.parse_args(argv)
    cfg = config.config_from_args(args)
    cfg.model.sync_bn = False
    forms = [f.strip() for f in args.formats.split(",") if f.strip()]
    for f in forms:
        if f not in FORMS:
            ap.error(f"unknown form {f!r}; choose from {', '.join(FORMS)}")
    work = args.keep or tempfile.mkdtemp(prefix="bench_export_")
    os.makedirs(work, exist_ok=True)
    frame = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    print(f"preset {cfg.preset}: input {cfg.model.input_size}, width {cfg.model.width}, P {cfg.model.max_prop}, "
          f"frame {args.width}x{args.height}, {args.runs} timed frames, CPU threads {os.cpu_count()}", flush=True)
    rows = []
    try:
        run_dir = os.path.join(work, "run")
        if not os.path.exists(run_dir):
            make_run(cfg, run_dir)
        cfg, net = train.load_run(run_dir)
        call = tf.function(lambda x: net(x, training=False))

        def keras_frame(f):                                      # what tracker.FramePredictor does for one frame
            canvas = model_lib.letterbox_image(f, cfg.model.input_size)[None]
            out = call({"image": canvas, "image_hw": np.array([f.shape[:2]], np.int32)})
            return {k: v.numpy() for k, v in out.items()}
        t = time_calls(keras_frame, frame, args.runs)
        rows.append(("keras (tf.function)", None, None, t))
        print(f"keras: median {np.median(t):.1f} ms", flush=True)
        for f in forms:
            fmt, fp16 = FORMS[f]
            out = os.path.join(work, f)
            t0 = time.perf_counter()
            if not os.path.exists(out):
                export.export(run_dir, fmt, out, fp16=fp16, log=lambda *a, **k: None)
            t_export = time.perf_counter() - t0
            exported = export.ExportedModel(out)
            t = time_calls(exported, frame, args.runs)
            rows.append((f"{f} ({exported.meta['graph']} graph)", t_export,
                         folder_mb(os.path.join(out, exported.meta["file"])), t))
            print(f"{f}: export {t_export:.1f} s, median {np.median(t):.1f} ms", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'form':28s} {'export s':>9s} {'size MiB':>9s} {'median ms':>10s} {'min ms':>8s} {'frames/s':>9s}")
    for name, t_exp, mb, t in rows:
        print(f"{name:28s} {'' if t_exp is None else f'{t_exp:9.1f}':>9s} {'' if mb is None else f'{mb:9.1f}':>9s} "
              f"{np.median(t):10.1f} {t.min():8.1f} {1000 / np.median(t):9.2f}")
    if args.keep:
        print(f"run and exports kept in {work}")


if __name__ == "__main__":
    main()
