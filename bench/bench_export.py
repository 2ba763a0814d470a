"""Per-frame inference time of the exported forms (export.py: SavedModel, TFLite float32 / fp16, OpenVINO FP32 /
FP16 weights / bf16 hint / NNCF INT8) beside the Keras inference model, on random weights: one frame in,
the M12 outputs out (letterbox included in every form),
plus export / conversion time and file sizes. With `--run-dir` a trained run is exported instead, and with
`--frames` each form's detections are compared with the Keras model's on those frames (the agreement table:
random weights say little about float16, whose small weight errors a random network amplifies).

    python bench/bench_export.py [--preset tiny] [--runs 5] [--height 720 --width 1280] [--formats sm,tflite,fp16]
    python bench/bench_export.py --preset yolov4p1 --runs 3
    python bench/bench_export.py --run-dir runs/demo --frames 'data/shapes/valid/JPEGImages/*/*.jpg'
    python bench/bench_export.py --run-dir runs/demo --frames '...' --formats sm,tflite,ov,ov_bf16,ov_int8 \
        --calibrate data/shapes/train
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import checkpoints  # noqa: E402
import config  # noqa: E402
import export  # noqa: E402
import model as model_lib  # noqa: E402

# form -> (export folder, export.export keyword arguments, ExportedModel keyword arguments); "int8" is filled in
# with --calibrate. ov_bf16 runs the ov export with OpenVINO's bf16 precision hint.
FORMS = {"sm": ("sm", {"fmt": "saved_model"}, {}), "tflite": ("tflite", {"fmt": "tflite"}, {}),
         "fp16": ("fp16", {"fmt": "tflite", "fp16": True}, {}),
         "ov": ("ov", {"fmt": "openvino"}, {}), "ov_fp16": ("ov_fp16", {"fmt": "openvino", "fp16": True}, {}),
         "ov_bf16": ("ov", {"fmt": "openvino"}, {"precision": "bf16"}),
         "ov_int8": ("ov_int8", {"fmt": "openvino", "int8": None}, {})}
folder_mb = export.folder_mb


def make_run(cfg, run_dir):
    """A run directory with the random initial weights (what export.py reads: config.yaml + checkpoints/)."""
    net = model_lib.build_model(cfg, "train")
    checkpoints.ensure_alb_built(net)
    os.makedirs(run_dir)
    config.save_config(cfg, os.path.join(run_dir, "config.yaml"))
    ckpt, _ = checkpoints.make_checkpoint(net)
    tf.train.CheckpointManager(ckpt, os.path.join(run_dir, "checkpoints"), 1).save()


def time_calls(fn, frame, runs):
    fn(frame)                                                    # warm-up (tracing, tensor allocation)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(frame)
        times.append(time.perf_counter() - t0)
    return np.asarray(times) * 1000


def agreement(exported, keras_frame, frames, cfg, top=10):
    """Each of the Keras model's `top` best detections a frame matched, order-free, to the exported form's
    detection with the nearest box: a near-tie in score may swap two detections' slots without changing either.
    Returns max box difference (px), max score difference, the share of same classes and the mask agreement
    (pixels of the 28x28 probabilities on the same side of 0.5), over all matched detections."""
    box, score, same, mask, count = [], [], [], [], []
    ids = np.asarray(cfg.category_ids())
    for f in frames:
        ref, out = keras_frame(f), exported(f)
        ref = {k: v[0] for k, v in ref.items()}
        n, m = int(ref["num_valid"]), int(out["num_valid"])
        count.append(n == m)
        for i in range(min(n, top)):
            j = int(np.argmin(np.abs(out["boxes"][:m] - ref["boxes"][i]).max(1))) if m else None
            if j is None:
                continue
            box.append(np.abs(out["boxes"][j] - ref["boxes"][i]).max())
            score.append(abs(float(out["scores"][j]) - float(ref["scores"][i])))
            same.append(out["category_ids"][j] == ids[int(ref["classes"][i]) - 1])
            mask.append(np.mean((out["masks"][j] >= 0.5) == (ref["masks"][i] >= 0.5)))
    box, score, mask = np.asarray(box), np.asarray(score), np.asarray(mask)
    return {"frames": len(frames), "detections": len(box), "same_count": float(np.mean(count)),
            "box_median": float(np.median(box)), "box_p99": float(np.percentile(box, 99)), "box_max": float(box.max()),
            "score_median": float(np.median(score)), "score_max": float(score.max()),
            "same_class": float(np.mean(same)), "mask_mean": float(mask.mean()), "mask_min": float(mask.min())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    config.add_config_args(ap)
    ap.add_argument("--runs", type=int, default=5, help="timed frames after one warm-up")
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--formats", default="sm,tflite,fp16", help="comma list of " + ", ".join(FORMS))
    ap.add_argument("--calibrate", default=os.path.join(ROOT, "data", "shapes", "train"),
                    help="dataset split root whose frames calibrate ov_int8 (default: data/shapes/train)")
    ap.add_argument("--calibrate-frames", type=int, default=300, help="calibration frames for ov_int8")
    ap.add_argument("--keep", default=None, help="keep the run and exports in this folder (default: a temp dir)")
    ap.add_argument("--run-dir", default=None, help="export this trained run (default: random weights)")
    ap.add_argument("--frames", default=None, metavar="GLOB",
                    help="compare detections with the Keras model on these frames (every 3rd, up to 40)")
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
    rows = []
    try:
        run_dir = args.run_dir or os.path.join(work, "run")
        if not os.path.exists(run_dir):
            make_run(cfg, run_dir)
        cfg, net = checkpoints.load_run(run_dir)
        print(f"{'run ' + run_dir if args.run_dir else 'random weights'}, preset {cfg.preset}: input "
              f"{cfg.model.input_size}, width {cfg.model.width}, P {cfg.model.max_prop}, frame {args.width}x"
              f"{args.height}, {args.runs} timed frames, CPU threads {os.cpu_count()}", flush=True)
        call = tf.function(lambda x: net(x, training=False))

        def keras_frame(f):                                      # what tracker.FramePredictor does for one frame
            canvas = model_lib.letterbox_image(f, cfg.model.input_size)[None]
            out = call({"image": canvas, "image_hw": np.array([f.shape[:2]], np.int32)})
            return {k: v.numpy() for k, v in out.items()}
        t = time_calls(keras_frame, frame, args.runs)
        rows.append(("keras (tf.function)", None, None, t, None))
        frames = []
        if args.frames:
            paths = sorted(glob.glob(args.frames))[::3][:40]
            if not paths:
                ap.error(f"--frames {args.frames!r} matches no file")
            frames = [cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in paths]
        print(f"keras: median {np.median(t):.1f} ms", flush=True)
        for f in forms:
            folder, kwargs, load = FORMS[f]
            if "int8" in kwargs:
                kwargs = dict(kwargs, int8=args.calibrate, int8_frames=args.calibrate_frames)
            out = os.path.join(work, folder)
            t0 = time.perf_counter()
            if not os.path.exists(out):
                export.export(run_dir, out=out, log=lambda *a, **k: None, **kwargs)
            t_export = time.perf_counter() - t0
            exported = export.ExportedModel(out, **load)
            t = time_calls(exported, frame, args.runs)
            agree = agreement(exported, keras_frame, frames, cfg) if frames else None
            rows.append((f"{f} ({exported.meta['graph']} graph)", t_export,
                         folder_mb(os.path.join(out, exported.meta["file"])), t, agree))
            print(f"{f}: export {t_export:.1f} s, median {np.median(t):.1f} ms", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'form':28s} {'export s':>9s} {'size MiB':>9s} {'median ms':>10s} {'min ms':>8s} {'frames/s':>9s}")
    for name, t_exp, mb, t, _ in rows:
        print(f"{name:28s} {'' if t_exp is None else f'{t_exp:9.1f}':>9s} {'' if mb is None else f'{mb:9.1f}':>9s} "
              f"{np.median(t):10.1f} {t.min():8.1f} {1000 / np.median(t):9.2f}")
    agreed = [(name, a) for name, _, _, _, a in rows if a]
    if agreed:
        a0 = agreed[0][1]
        print(f"\nagreement with the Keras model on {a0['frames']} frames ({args.frames}), its top-10 detections a "
              f"frame matched to the nearest exported box")
        print(f"{'form':28s} {'dets':>5s} {'same n':>7s} {'box px med/p99/max':>20s} {'score med/max':>18s} "
              f"{'same class':>10s} {'mask mean/min':>14s}")
        for name, a in agreed:
            print(f"{name:28s} {a['detections']:5d} {a['same_count']:7.2f} "
                  f"{a['box_median']:6.3f}/{a['box_p99']:6.2f}/{a['box_max']:6.2f} "
                  f"{a['score_median']:8.1e}/{a['score_max']:8.1e} {a['same_class']:10.4f} "
                  f"{a['mask_mean']:6.4f}/{a['mask_min']:6.4f}")
    if args.keep:
        print(f"run and exports kept in {work}")


if __name__ == "__main__":
    main()
