"""YOLOV4+1 per-frame inference beside OpenCV DNN's YOLOv4, in one run, and the arithmetic behind both.

Ours: tracker.FramePredictor on a 1280x720 frame (letterbox, forward: backbone to NMS and mask head, then paste
and RLE-encode every kept mask), random weights. OpenCV: cv2.dnn running bench/data/yolov4.cfg (a copy of Darknet's
YOLOv4) with a random Darknet weights file at the same input size, detection only (blobFromImage, forward, decode,
NMSBoxes) - what a user would pick for YOLOv4 on a CPU. The variants run interleaved, one frame each per round,
so a machine shared with other jobs slows them alike; wall and CPU (process) time are both shown.
Then GFLOPs per frame counted from the layers (bench/flops.py), the rate each side achieves and the CPU's peak.
Variants of ours (tracker.FramePredictor options): the published graph (a mask for each of the 50 proposal
slots); the default gate (masks for proposals >= the score floor: same detections); a cap of k masks; bfloat16.

    python bench/bench_vs_opencv.py [--rounds 5] [--size 416] [--mask-rois 10] [--set model.conv_init=normal]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import darknet_cfg  # noqa: E402
import flops  # noqa: E402

YOLOV4_CFG = os.path.join(BENCH, "data", "yolov4.cfg")


class OpenCVYolo:
    """YOLOv4 in cv2.dnn from a Darknet cfg and a random weights file written to `tmp`; detection only."""

    def __init__(self, cfg_path, size, tmp, conf=0.25, nms=0.45):
        self.layers = darknet_cfg.walk_cfg(cfg_path, size)
        weights = os.path.join(tmp, "yolov4_random.weights")
        darknet_cfg.write_random_weights(self.layers, weights)
        self.net = cv2.dnn.readNetFromDarknet(cfg_path, weights)
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self.names = self.net.getUnconnectedOutLayersNames()
        self.size, self.conf, self.nms = size, conf, nms

    def __call__(self, frame_rgb):
        """Boxes [N, 4] (x, y, w, h px), scores [N], classes [N] after NMS, as the OpenCV samples do it."""
        h, w = frame_rgb.shape[:2]
        blob = cv2.dnn.blobFromImage(frame_rgb, 1 / 255.0, (self.size, self.size), swapRB=False, crop=False)
        self.net.setInput(blob)
        rows = np.concatenate(self.net.forward(self.names), axis=0)               # [N, 5 + 80] cx, cy, w, h, obj
        cls = rows[:, 5:].argmax(1)
        score = rows[:, 4] * rows[np.arange(len(rows)), 5 + cls]
        keep = score > self.conf
        cx, cy, bw, bh = (rows[keep, i] * s for i, s in enumerate((w, h, w, h)))
        boxes = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], 1)
        idx = np.asarray(cv2.dnn.NMSBoxes(boxes.tolist(), score[keep].tolist(), self.conf, self.nms),
                         np.int64).reshape(-1)
        return boxes[idx], score[keep][idx], cls[keep][idx]


def fmt(values, unit=1000.0):
    v = np.asarray(values) * unit
    return f"{np.median(v):8.0f} {v.min():8.0f} {v.max():8.0f}"


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main(argv=None):
    import config
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    config.add_config_args(ap)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (each variant one frame a round)")
    ap.add_argument("--size", type=int, default=416, help="input size of both networks")
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--mask-rois", type=int, default=10, help="k of the capped variant (masks for the k best)")
    ap.add_argument("--score-floor", type=float, default=0.05, help="floor of the gated variant (tracker default)")
    ap.add_argument("--clock-ghz", type=float, default=None, help="clock for the peak (default: /proc/cpuinfo)")
    args = ap.parse_args(argv)
    # He-initialised kernels give unit-scale activations, as a trained network has (the default N(0, 0.01)
    # shrinks them layer after layer); --set model.conv_init=normal overrides this
    args.overrides = ["model.conv_init=he", f"model.input_size={args.size}"] + args.overrides
    cfg = config.config_from_args(args)
    cfg.model.sync_bn = False

    import keras
    import tensorflow as tf

    import export
    import model as model_lib
    from tracker import FramePredictor

    threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    print(f"one {args.width}x{args.height} RGB frame, input {args.size}, preset {cfg.preset} (width "
          f"{cfg.model.width}, P {cfg.model.max_prop}, random {cfg.model.conv_init} weights), TF intra-op threads "
          f"{threads}, OpenCV threads {cv2.getNumThreads()}; {args.rounds} rounds after a warm-up", flush=True)
    frame = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        if os.path.isfile(YOLOV4_CFG):
            t0 = time.perf_counter()
            cv_yolo = OpenCVYolo(YOLOV4_CFG, args.size, tmp)
            print(f"OpenCV {cv2.__version__}: random weights written and net read in {time.perf_counter() - t0:.1f} s",
                  flush=True)
            variants["OpenCV DNN YOLOv4 (detection only)"] = (lambda: cv_yolo(frame), None)
        else:
            cv_yolo = None
            print(f"skipping OpenCV: {YOLOV4_CFG} not found (a copy of Darknet's yolov4.cfg)", flush=True)
        t0 = time.perf_counter()
        keras.utils.set_random_seed(0)
        net = model_lib.build_model(cfg, "infer")
        print(f"ours: built in {time.perf_counter() - t0:.1f} s, {net.count_params():,} parameters", flush=True)
        k, floor = args.mask_rois, args.score_floor
        predictors = {
            f"ours, published graph ({cfg.model.max_prop} masks)": FramePredictor(cfg, net, 1, 0.0, gate_masks=False),
            f"ours, gated at score >= {floor:g}": FramePredictor(cfg, net, 1, floor),
            f"ours, {k} best masks (mask_rois={k})": FramePredictor(cfg, net, 1, 0.0, mask_rois=k),
            "ours, 1 mask (~ detection only)": FramePredictor(cfg, net, 1, 0.0, mask_rois=1),
        }
        if export.bfloat16_capped_off():
            print(f"skipping the bfloat16 rows: ONEDNN_MAX_CPU_ISA={export.onednn_isa_cap()} caps oneDNN below "
                  f"this CPU's bfloat16", flush=True)
        else:
            predictors[f"ours, bfloat16, {k} best masks"] = FramePredictor(cfg, net, 1, 0.0, mask_rois=k,
                                                                           bfloat16=True)
            predictors["ours, bfloat16, 1 mask"] = FramePredictor(cfg, net, 1, 0.0, mask_rois=1, bfloat16=True)
        for name, p in predictors.items():
            variants[name] = (lambda p=p: p([frame]), p)
        stages = {name: {"forward": [], "post": []} for name in predictors}
        times = {name: ([], []) for name in variants}
        summary, rois = {}, {}      # per variant: what it output; ROIs its mask head ran on
        names = list(variants)
        for r in range(args.rounds + 1):
            for name in names[r % len(names):] + names[:r % len(names)]:             # rotate the order
                fn, pred = variants[name]
                if pred is None:
                    out, wall, cpu = timed(fn)
                    summary[name] = f"{len(out[0])} dets"
                else:
                    outs, wall_f, cpu_f = timed(lambda: pred.forward([frame]))
                    dets, wall_p, cpu_p = timed(lambda: pred.postprocess(outs, cfg, score_floor=pred.score_floor))
                    wall, cpu = wall_f + wall_p, cpu_f + cpu_p
                    # the published graph runs the head on all P slots; a gated one on the slots with a mask (a
                    # computed mask is a softmax, never 0 everywhere; a skipped slot is)
                    gated = any(layer.name == "mask_gate" for layer in pred.model.layers)
                    computed = int((outs["masks"][0].reshape(cfg.model.max_prop, -1).max(1) > 0).sum())
                    rois[name] = max(1, computed) if gated else cfg.model.max_prop
                    summary[name] = f"{len(dets[0])} dets, {rois[name]} masks computed"
                    if r:
                        stages[name]["forward"].append(wall_f)
                        stages[name]["post"].append(wall_p)
                if r:
                    times[name][0].append(wall)
                    times[name][1].append(cpu)
            print(f"  round {r}/{args.rounds}{' (warm-up)' if r == 0 else ''} done", file=sys.stderr, flush=True)

    print(f"\nper frame, ms ({args.rounds} rounds)       {'wall: median':>12} {'min':>8} {'max':>8}   "
          f"{'CPU median':>10}   output")
    for name in names:
        wall, cpu = times[name]
        print(f"{name:<38} {fmt(wall)}   {np.median(cpu) * 1000:10.0f}   {summary[name]}")
    print(f"\nours, split (wall ms, median min max)   {'forward':>26}   {'postprocess (paste + RLE)':>26}")
    for name, st in stages.items():
        print(f"{name:<38} {fmt(st['forward'])}   {fmt(st['post'])}")

    # ---- arithmetic -------------------------------------------------------------------------------------
    counts = flops.model_flops(net, rois=1)
    per_roi = counts["mask_head"]
    trunk = counts["total"] - per_roi
    peak, how = flops.cpu_peak(args.clock_ghz)
    print("\nGFLOPs per frame (2 x MACs of conv / deconv / dense, counted from the layers; bench/flops.py)")
    for part in ("backbone", "neck", "heads"):
        print(f"  {part:<28} {counts[part] / 1e9:8.2f}")
    print(f"  {'mask head, per ROI':<28} {per_roi / 1e9:8.2f}   (x {cfg.model.max_prop} ROIs = "
          f"{per_roi * cfg.model.max_prop / 1e9:.2f}; x {k} = {per_roi * k / 1e9:.2f})")
    print(f"  {'ours, all ' + str(cfg.model.max_prop) + ' masks':<28} "
          f"{(trunk + per_roi * cfg.model.max_prop) / 1e9:8.2f}")
    if cv_yolo is not None:
        print(f"  {'YOLOv4 (cfg walk)':<28} {darknet_cfg.cfg_flops(cv_yolo.layers) / 1e9:8.2f}   (Darknet prints "
              f"~60.1 BFLOPS at 416)")
    print(f"CPU peak FP32: {how}")
    print(f"{'achieved':<38} {'GFLOP':>8} {'GFLOP/s wall':>13} {'% of peak':>10} {'GFLOP/s per CPU-s':>18}")
    work = {name: trunk + per_roi * n for name, n in rois.items()}
    if cv_yolo is not None:
        work = {names[0]: darknet_cfg.cfg_flops(cv_yolo.layers), **work}
    for name, gflop in work.items():
        wall, cpu = np.median(times[name][0]), np.median(times[name][1])
        print(f"{name:<38} {gflop / 1e9:8.1f} {gflop / wall / 1e9:13.1f} {100 * gflop / wall / peak:9.1f}% "
              f"{gflop / cpu / 1e9:18.1f}")
    share = np.median([np.median(c) / np.median(w) for w, c in times.values()])
    per_core = peak / (os.cpu_count() or 1) / 1e9
    print(f"The gap to the peak: (1) cores: CPU time / wall time is {share:.2f} here (2.00 = both cores ours all "
          f"the time; other jobs on the machine take the rest), so the per-CPU-second rate is the one to set against "
          f"one core's peak, {per_core:.0f} GFLOP/s; (2) BN, Mish/leaky, upsampling, concatenation, NMS, ROI align, "
          f"letterbox and paste/RLE "
          f"move memory without FLOPs; (3) the late layers (26x26, 13x13) and the 14x14 mask ROIs give oneDNN small "
          f"GEMMs that keep few vector lanes busy; (4) the peak assumes both FMA ports busy every cycle at the stated "
          f"clock. bfloat16 rows are set against the FP32 peak (AMX's bfloat16 peak is several times higher).")


if __name__ == "__main__":
    main()
