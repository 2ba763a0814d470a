"""CPU deployment forms side by side, in one run: per-frame time of the Keras/TensorFlow model, OpenVINO FP32,
OpenVINO bf16 (INFERENCE_PRECISION_HINT; only on a CPU with native bfloat16), OpenVINO INT8 (NNCF post-training
quantisation), TFLite and OpenCV DNN's YOLOv4 (detection only), with the GFLOP/s each achieves against the CPU's
FP32 peak, then OpenVINO's throughput with several frames in flight (THROUGHPUT hint, AsyncInferQueue) against
one frame at a time.

Cases: `yolov4p1` at 416 with the published graph (a mask for each of the P proposal slots) and at the tracker's
operating point (masks for the `--mask-rois` best), and `tiny` (its published graph), on random He-initialised
weights (speed does not depend on the weights; bench_export.py measures agreement on a trained run). One
1280x720 frame: letterbox, network, NMS, mask head (every form; OpenCV: blobFromImage, forward, decode, NMS).
The forms run interleaved, one frame each per round, so other jobs on the machine slow them alike.

    python bench/bench_deploy.py [--cases p1_published,p1_k,tiny] [--rounds 3] [--forms keras,ov,ov_bf16,...]
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)
sys.path.insert(0, BENCH)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import flops  # noqa: E402

FORMS = ("keras", "ov", "ov_bf16", "ov_int8", "tflite", "opencv")
LABELS = {"keras": "Keras/TF (tf.function)", "ov": "OpenVINO FP32", "ov_bf16": "OpenVINO bf16 hint",
          "ov_int8": "OpenVINO INT8 (NNCF)", "tflite": "TFLite FP32 (XNNPACK)", "opencv": "OpenCV DNN YOLOv4 (det.)"}


def case_config(preset, size):
    import config
    overrides = ["model.conv_init=he"] + ([f"model.input_size={size}"] if size else [])
    cfg = config.apply_overrides(config.get_preset(preset), overrides)
    cfg.model.sync_bn = False
    return cfg


def calibration_frames(split_root, count):
    import export
    if not glob.glob(os.path.join(split_root, "JPEGImages", "*", "*.jpg")):
        print(f"no frames under {split_root}: calibrating ov_int8 on noise frames", flush=True)
        rng = np.random.default_rng(1)
        return [rng.integers(0, 256, (180, 320, 3), dtype=np.uint8) for _ in range(count)]
    return export.calibration_frames(split_root, count)


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def throughput(compiled_throughput, frame, frames):
    """Frames per second with OpenVINO's optimal number of infer requests in flight (frames submitted in order)."""
    import openvino as ov
    queue = ov.AsyncInferQueue(compiled_throughput)
    n = max(frames, 2 * len(queue))
    queue.start_async([frame])                                   # warm-up of one request
    queue.wait_all()
    t0 = time.perf_counter()
    for _ in range(n):
        queue.start_async([frame])
    queue.wait_all()
    return n / (time.perf_counter() - t0), len(queue)


def run_case(name, cfg, mask_rois, forms, args, frame, calib, tmp):
    import keras
    import openvino as ov
    import tensorflow as tf

    import export
    import model as model_lib
    from tracker import FramePredictor

    m = cfg.model
    k = m.max_prop if mask_rois is None else min(mask_rois, m.max_prop)
    print(f"\n== {name}: preset {cfg.preset}, input {m.input_size}, width {m.width}, P {m.max_prop}, masks for "
          f"{'all ' + str(k) if mask_rois is None else f'the {k} best'} proposals", flush=True)
    keras.utils.set_random_seed(0)
    net = model_lib.build_model(cfg, "infer")
    gated = dict(gate_masks=False) if mask_rois is None else dict(mask_rois=k)
    calls = {}
    if "keras" in forms:
        pred = FramePredictor(cfg, net, 1, 0.0, **gated)
        calls["keras"] = lambda: pred.forward([frame])
    sm_dir = os.path.join(tmp, f"{name}_sm")
    t0 = time.perf_counter()
    export._write_saved_model(net, cfg, sm_dir, "portable", mask_rois)
    print(f"SavedModel (portable graph) written in {time.perf_counter() - t0:.0f} s", flush=True)
    core = ov.Core()
    compiled_tp = {}
    if {"ov", "ov_bf16", "ov_int8"} & set(forms):
        t0 = time.perf_counter()
        ov_model = export.openvino_model(sm_dir)
        print(f"OpenVINO model converted in {time.perf_counter() - t0:.0f} s", flush=True)
        variants = []
        if "ov" in forms:
            variants.append(("ov", ov_model, "f32"))
        if "ov_bf16" in forms:
            if export.native_bfloat16():
                variants.append(("ov_bf16", ov_model, "bf16"))
            else:
                print("skipping ov_bf16: this CPU has no native bfloat16 (no avx512_bf16 / amx_bf16, or "
                      "ONEDNN_MAX_CPU_ISA caps oneDNN below it)", flush=True)
        if "ov_int8" in forms:
            t0 = time.perf_counter()
            int8 = export.openvino_model(sm_dir, calib, log=lambda *a, **kw: None)
            print(f"NNCF INT8 quantisation ({len(calib)} calibration frames) in {time.perf_counter() - t0:.0f} s",
                  flush=True)
            variants.append(("ov_int8", int8, "f32"))
        for form, model, precision in variants:
            compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                         "PERFORMANCE_HINT": "LATENCY"})
            request = compiled.create_infer_request()
            calls[form] = lambda r=request: r.infer([frame])
            if args.throughput_frames:
                compiled_tp[form] = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                                      "PERFORMANCE_HINT": "THROUGHPUT"})
    if "tflite" in forms:
        t0 = time.perf_counter()
        data = export._convert_tflite(sm_dir, fp16=False, select_tf_ops=False)
        runner = tf.lite.Interpreter(model_content=data, num_threads=os.cpu_count()).get_signature_runner(
            export.SIGNATURE)
        calls["tflite"] = lambda: runner(image=frame)
        print(f"TFLite converted in {time.perf_counter() - t0:.0f} s", flush=True)
    if "opencv" in forms:
        from bench_vs_opencv import YOLOV4_CFG, OpenCVYolo
        if os.path.isfile(YOLOV4_CFG):
            cv_yolo = OpenCVYolo(YOLOV4_CFG, m.input_size, tmp)
            calls["opencv"] = lambda: cv_yolo(frame)
        else:
            print(f"skipping opencv: {YOLOV4_CFG} not found", flush=True)

    names = [f for f in forms if f in calls]
    times = {f: ([], []) for f in names}
    for r in range(args.rounds + 1):
        for f in names[r % len(names):] + names[:r % len(names)]:                 # rotate the order
            wall, cpu = timed(calls[f])
            if r:
                times[f][0].append(wall)
                times[f][1].append(cpu)
        print(f"  round {r}/{args.rounds}{' (warm-up)' if r == 0 else ''} done", file=sys.stderr, flush=True)

    counts = flops.model_flops(net, rois=1)
    per_roi = counts["mask_head"]
    ours = counts["total"] - per_roi + per_roi * k
    work = {f: ours for f in names}
    if "opencv" in names:
        import darknet_cfg
        work["opencv"] = darknet_cfg.cfg_flops(cv_yolo.layers)
    peak, _ = flops.cpu_peak(args.clock_ghz)
    rows = []
    print(f"\n{name}: per frame, ms ({args.rounds} rounds)  {'wall median':>11} {'min':>7} {'CPU':>7} {'GFLOP':>6} "
          f"{'GFLOP/s':>8} {'% peak':>7} {'frames/s 1 in flight':>21} {'frames/s async (requests)':>26}")
    for f in names:
        wall, cpu = np.median(times[f][0]), np.median(times[f][1])
        tp = ""
        if f in compiled_tp:
            fps, nreq = throughput(compiled_tp[f], frame, args.throughput_frames)
            tp = f"{fps:.2f} ({nreq})"
        gflop = work[f] / 1e9
        rows.append((f, wall, cpu, gflop, tp))
        print(f"{LABELS[f]:<34} {wall * 1000:11.0f} {min(times[f][0]) * 1000:7.0f} {cpu * 1000:7.0f} {gflop:6.1f} "
              f"{gflop / wall:8.1f} {100 * gflop * 1e9 / wall / peak:6.1f}% {1 / wall:21.2f} {tp:>26}", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="p1_published,p1_k,tiny",
                    help="comma list: p1_published (yolov4p1, all P masks), p1_k (yolov4p1, --mask-rois best), tiny")
    ap.add_argument("--forms", default=",".join(FORMS), help="comma list of " + ", ".join(FORMS))
    ap.add_argument("--size", type=int, default=416, help="yolov4p1 input size (and OpenCV's)")
    ap.add_argument("--mask-rois", type=int, default=10, help="k of the p1_k case (the tracker's operating point)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after a warm-up (each form one frame a round)")
    ap.add_argument("--throughput-frames", type=int, default=8,
                    help="frames pushed through the THROUGHPUT-hint queue per OpenVINO form (0: skip)")
    ap.add_argument("--calibrate", default=os.path.join(ROOT, "data", "shapes", "train"),
                    help="dataset split root for the INT8 calibration frames (noise frames if it has none)")
    ap.add_argument("--calibrate-frames", type=int, default=32,
                    help="calibration frames (speed does not depend on them; export.py uses 300 for accuracy)")
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--clock-ghz", type=float, default=None, help="clock for the peak (default: /proc/cpuinfo)")
    args = ap.parse_args(argv)
    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for f in forms:
        if f not in FORMS:
            ap.error(f"unknown form {f!r}; choose from {', '.join(FORMS)}")
    for c in cases:
        if c not in ("p1_published", "p1_k", "tiny"):
            ap.error(f"unknown case {c!r}; choose from p1_published, p1_k, tiny")
    import export
    try:
        import nncf  # noqa: F401
        import openvino as ov
    except ImportError:
        sys.exit("bench_deploy.py: needs openvino and nncf (pip install -r requirements.txt)")
    flags = export.cpu_flags()
    print(f"OpenVINO {ov.__version__}, OpenCV {cv2.__version__}; {os.cpu_count()} CPU threads; "
          f"{', '.join(sorted(flags & {'avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'amx_bf16', 'amx_int8'}))}; "
          f"load average {os.getloadavg()[0]:.1f}; frame {args.width}x{args.height}; peak: "
          f"{flops.cpu_peak(args.clock_ghz)[1]}", flush=True)
    frame = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    calib = calibration_frames(args.calibrate, args.calibrate_frames) if "ov_int8" in forms else None
    with tempfile.TemporaryDirectory(prefix="bench_deploy_") as tmp:
        for c in cases:
            if c == "tiny":
                run_case("tiny", case_config("tiny", None), None, [f for f in forms if f != "opencv"], args, frame,
                         calib, tmp)
            else:
                run_case(c, case_config("yolov4p1", args.size), None if c == "p1_published" else args.mask_rois,
                         forms, args, frame, calib, tmp)
    print(f"\nload average after the run {os.getloadavg()[0]:.1f} (2 cores: above 2 means other jobs shared them). "
          f"GFLOP counts conv / deconv / dense as 2 x MACs (bench/flops.py); INT8 and bf16 rows are set against "
          f"the FP32 peak too (their own peaks are several times higher).")


if __name__ == "__main__":
    main()
