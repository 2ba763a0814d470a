"""Runs a trained YOLOV4+1 model over videos and writes per-frame predictions (decisions §6.2).

Sources: a dataset split (JPEGImages/ + the split's JSON), a folder of frames, or a video file (OpenCV). For a
video file or a frame folder it then runs the tracker (tracking/, decisions §4) and the overlay, so one command
turns `clip.mp4` into `results.json` and an annotated mp4 (original-tracking-eval.md §1.1-§1.2, re-done).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.abspath(__file__))
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class FrameError(RuntimeError):
    """A frame cannot be read or does not fit its video."""


# ---- frame sources: each yields (video record, iterator of (index, rgb uint8 frame)) -----------------------

def read_rgb(path: str, video_id, index: int) -> np.ndarray:
    """Read an image file as RGB uint8 (grayscale, CMYK and PNG with alpha come out as 3-channel RGB)."""
    data = np.fromfile(path, np.uint8) if os.path.exists(path) else None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if img is None:
        raise FrameError(f"video {video_id}, frame {index}: cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def dataset_source(data_root: str, ann_path: str | None = None):
    """Videos of a YouTube-VIS split in JSON order; frames in `file_names` order."""
    ann_path = ann_path or os.path.join(data_root, "instances.json")
    try:
        with open(ann_path) as f:
            ann = json.load(f)
    except FileNotFoundError:
        raise FrameError(f"annotation file not found: {ann_path}") from None
    except json.JSONDecodeError as e:
        raise FrameError(f"{ann_path}: not valid JSON ({e})") from None
    for key in ("videos", "categories"):
        if key not in ann:
            raise FrameError(f"{ann_path}: missing key '{key}'")
    image_root = os.path.join(data_root, "JPEGImages")
    videos = []
    for i, v in enumerate(ann["videos"]):
        for key in ("id", "width", "height", "length", "file_names"):
            if key not in v:
                raise FrameError(f"{ann_path}: videos[{i}] has no '{key}'")
        if len(v["file_names"]) != v["length"]:
            raise FrameError(f"{ann_path}: video {v['id']} has {len(v['file_names'])} file_names but length "
                             f"{v['length']}")
        rec = {k: v[k] for k in ("id", "width", "height", "length", "file_names")}

        def frames(v=v):
            for t, name in enumerate(v["file_names"]):
                yield t, read_rgb(os.path.join(image_root, name), v["id"], t)
        videos.append((rec, frames))
    cats = [{"id": int(c["id"]), "name": c["name"]} for c in ann["categories"]]
    return videos, cats


def folder_source(folder: str, video_id: int = 1):
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise FrameError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    first = read_rgb(os.path.join(folder, names[0]), video_id, 0)
    base = os.path.basename(os.path.normpath(folder))
    rec = {"id": video_id, "width": int(first.shape[1]), "height": int(first.shape[0]), "length": len(names),
           "file_names": [f"{base}/{n}" for n in names]}

    def frames():
        for t, n in enumerate(names):
            yield t, read_rgb(os.path.join(folder, n), video_id, t)
    return [(rec, frames)]


def video_source(path: str, video_id: int = 1):
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise FrameError(f"cannot open video file {path}")
    n = 0
    width = height = None
    while True:  # count by decoding: CAP_PROP_FRAME_COUNT is an estimate for many containers
        ok, frame = cap.read()
        if not ok:
            break
        if width is None:
            height, width = frame.shape[:2]
        n += 1
    cap.release()
    if n == 0:
        raise FrameError(f"video file {path} has no readable frame")
    base = os.path.splitext(os.path.basename(path))[0]
    rec = {"id": video_id, "width": int(width), "height": int(height), "length": n,
           "file_names": [f"{base}/{t:05d}.jpg" for t in range(n)]}

    def frames():
        cap = cv2.VideoCapture(path)
        try:
            for t in range(n):
                ok, frame = cap.read()
                if not ok:
                    raise FrameError(f"video {path}: frame {t} cannot be decoded")
                yield t, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()
    return [(rec, frames)]


# ---- inference ---------------------------------------------------------------------------------------------

class FramePredictor:
    """Batched per-frame inference with one traced graph: batches are padded to a fixed size so the graph is
    traced once, whatever the video lengths.

    The mask head runs only on the proposals that postprocess keeps (score >= score_floor; `model.inference_model`),
    which leaves every stored detection as the ungated model gives it; `gate_masks=False` runs the published graph
    (a mask for every one of max_prop slots). Off by default, as they change the output: `mask_rois` (k) caps the
    masks at the k best proposals a frame (detections past the k-th get empty masks); `bfloat16` computes the
    convolutions in bfloat16 (about 2x faster on CPUs with AMX / AVX512-BF16, approximate).
    """

    def __init__(self, cfg, model, batch_size: int, score_floor: float, gate_masks: bool = True,
                 mask_rois: int | None = None, bfloat16: bool = False):
        import tensorflow as tf
        import model as model_lib
        if bfloat16:
            from export import warn_without_native_bfloat16
            warn_without_native_bfloat16("--bfloat16")
        model = model_lib.inference_model(model, cfg, mask_rois, score_floor if gate_masks else None, bfloat16)
        self.cfg, self.model, self.batch_size, self.score_floor = cfg, model, batch_size, score_floor
        self.letterbox = model_lib.letterbox_image
        self.postprocess = model_lib.postprocess
        size = cfg.model.input_size
        spec = {"image": tf.TensorSpec([batch_size, size, size, 3], tf.float32),
                "image_hw": tf.TensorSpec([batch_size, 2], tf.int32)}
        self._call = tf.function(lambda x: model(x, training=False), input_signature=[spec])

    def forward(self, frames_rgb):
        """Letterbox up to batch_size frames and run the traced graph: the infer model's outputs (numpy)."""
        n = len(frames_rgb)
        if not 1 <= n <= self.batch_size:
            raise ValueError(f"FramePredictor: got {n} frames, expected 1..{self.batch_size} (the batch size)")
        size = self.cfg.model.input_size
        images = np.empty((self.batch_size, size, size, 3), np.float32)
        hw = np.empty((self.batch_size, 2), np.int32)
        for i, f in enumerate(frames_rgb):
            images[i] = self.letterbox(f, size)
            hw[i] = f.shape[:2]
        # pad a short batch with its last frame, not a blank one: the mask gate's ROI count is the batch's largest,
        # and a blank canvas's proposals would set it
        images[n:], hw[n:] = images[n - 1], hw[n - 1]
        out = self._call({"image": images, "image_hw": hw})
        return {k: v.numpy()[:n] for k, v in out.items()}

    def __call__(self, frames_rgb):
        """Frames (RGB uint8) -> per frame, the detections of `model.postprocess` above score_floor."""
        return self.postprocess(self.forward(frames_rgb), self.cfg, score_floor=self.score_floor)


def predict_videos(predictor, videos, categories, log=print):
    """Run `predictor` over every video; returns the frame-predictions document (decisions §6.2)."""
    out_videos = []
    t_start, n_frames = time.time(), 0
    for k, (rec, frames) in enumerate(videos):
        t0 = time.time()
        frame_recs, batch, idx = [], [], []

        def flush():
            for t, dets in zip(idx, predictor(batch)):
                frame_recs.append({"index": t, "detections": dets})
            batch.clear(), idx.clear()

        for t, img in frames():
            if img.shape[0] != rec["height"] or img.shape[1] != rec["width"]:
                raise FrameError(f"video {rec['id']}, frame {t} ({rec['file_names'][t]}): size "
                                 f"{img.shape[1]}x{img.shape[0]} differs from the video's "
                                 f"{rec['width']}x{rec['height']}")
            batch.append(img)
            idx.append(t)
            if len(batch) == predictor.batch_size:
                flush()
        if batch:
            flush()
        if len(frame_recs) != rec["length"]:
            raise FrameError(f"video {rec['id']}: read {len(frame_recs)} frames, expected {rec['length']}")
        out_videos.append({**rec, "frames": frame_recs})
        n_frames += len(frame_recs)
        dets = sum(len(f["detections"]) for f in frame_recs)
        dt = time.time() - t0
        log(f"[{k + 1}/{len(videos)}] video {rec['id']}: {rec['length']} frames, {dets} detections, "
            f"{rec['length'] / max(dt, 1e-9):.1f} frames/s", flush=True)
    log(f"{n_frames} frames in {time.time() - t_start:.1f} s", flush=True)
    return {"format": "ytvis-frame-predictions", "version": 1, "categories": categories, "videos": out_videos}


def track_flags(track_cfg) -> list:
    """`python -m tracking.track` flags that reproduce a config's `track` section."""
    flags = ["--lam", str(track_cfg.lam), "--tau", str(track_cfg.tau), "--gamma", str(track_cfg.gamma),
             "--score-floor", str(track_cfg.score_floor), "--min-hits", str(track_cfg.min_hits),
             "--min-score", str(track_cfg.min_score)]
    if track_cfg.max_age is not None:
        flags += ["--max-age", str(track_cfg.max_age)]
    flags += ["--keep-doubtful"] if track_cfg.keep_doubtful else []
    flags += ["--motion"] if track_cfg.motion else []
    return flags + (["--refind", str(track_cfg.refind)] if track_cfg.refind else [])


def main(argv=None):
    ap = argparse.ArgumentParser(description="Per-frame YOLOV4+1 predictions over a dataset split, a frame folder "
                                             "or a video file (then tracking and an overlay video).")
    model_src = ap.add_mutually_exclusive_group(required=True)
    model_src.add_argument("--run-dir", help="training run directory (config + checkpoints)")
    model_src.add_argument("--exported", help="a folder written by export.py (SavedModel, TFLite or OpenVINO), run one frame "
                                              "at a time (--batch-size does not apply) instead of the Keras model")
    ap.add_argument("--checkpoint", default=None, help="checkpoint path or prefix (default: the latest)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="dataset split root holding JPEGImages/ and the split JSON")
    src.add_argument("--video", help="a video file or a folder of frames")
    ap.add_argument("--ann", default=None, help="split JSON (default: <data>/instances.json)")
    ap.add_argument("--out", default=None, help="frame-predictions JSON (with --data)")
    ap.add_argument("--out-dir", default=None, help="output folder (with --video): frames.json, results.json, "
                                                    "overlay")
    ap.add_argument("--batch-size", type=int, default=None, help="frames per forward pass (default: config)")
    ap.add_argument("--score-floor", type=float, default=None, help="lowest score stored (default: config, 0.05)")
    ap.add_argument("--mask-rois", type=int, default=None, metavar="K",
                    help="masks for at most K detections a frame, the best-scoring (faster; the rest get empty "
                         "masks). Default: every detection above the score floor")
    ap.add_argument("--bfloat16", action="store_true",
                    help="run the convolutions in bfloat16: about 2x faster on CPUs with AMX / AVX512-BF16, "
                         "approximate (scores move by ~1e-3..1e-2)")
    ap.add_argument("--max-videos", type=int, default=None, help="only the first N videos (with --data)")
    ap.add_argument("--fps", type=float, default=None, help="overlay fps (with --video; default: the video's)")
    ap.add_argument("--lam", type=float, default=None, help="tracking class-mismatch cost (with --video)")
    args = ap.parse_args(argv)
    if args.data and not args.out:
        ap.error("--data needs --out (the frame-predictions JSON)")
    if args.video and not args.out_dir:
        ap.error("--video needs --out-dir")
    if args.exported and args.checkpoint:
        ap.error("--checkpoint goes with --run-dir (an export holds one checkpoint's weights)")
    if args.exported and (args.mask_rois is not None or args.bfloat16):
        ap.error("--mask-rois and --bfloat16 go with --run-dir (an export's graph is fixed when it is written)")
    if args.mask_rois is not None and args.mask_rois < 1:
        ap.error("--mask-rois must be at least 1")

    from tracking.io import write_frame_predictions
    from train import load_run
    errors = (FrameError,)
    if args.exported:
        import export
        errors += (export.ExportError,)
    try:
        if args.data:
            videos, _ = dataset_source(args.data, args.ann)
            videos = videos[:args.max_videos] if args.max_videos else videos
        elif os.path.isdir(args.video):
            videos = folder_source(args.video)
        else:
            videos = video_source(args.video)
        if args.exported:
            exported = export.ExportedModel(args.exported)
            cfg = exported.cfg
            predictor = export.ExportedFramePredictor(
                exported, cfg.infer.score_floor if args.score_floor is None else args.score_floor)
        else:
            cfg, model = load_run(args.run_dir, checkpoint=args.checkpoint, mode="infer")
            predictor = FramePredictor(cfg, model, args.batch_size or cfg.infer.batch_size,
                                       cfg.infer.score_floor if args.score_floor is None else args.score_floor,
                                       mask_rois=args.mask_rois, bfloat16=args.bfloat16)
        categories = [{"id": i, "name": n} for i, n in zip(cfg.category_ids(), cfg.class_names())]
        doc = predict_videos(predictor, videos, categories)
    except errors as e:
        sys.exit(f"tracker.py: {e}")

    if args.data:
        write_frame_predictions(args.out, doc)
        print(f"frame predictions written to {args.out}")
        return
    os.makedirs(args.out_dir, exist_ok=True)
    frames_json = os.path.join(args.out_dir, "frames.json")
    results_json = os.path.join(args.out_dir, "results.json")
    write_frame_predictions(frames_json, doc)
    print(f"frame predictions written to {frames_json}")
    track_cmd = [sys.executable, "-m", "tracking.track", "--pred", frames_json, "--out", results_json]
    track_cmd += track_flags(cfg.track)   # the run's tracker settings (a preset may match them to its scores)
    if args.lam is not None:
        track_cmd += ["--lam", str(args.lam)]
    overlay_cmd = [sys.executable, os.path.join(ROOT, "scripts", "overlay_vis_on_video.py"), "--results",
                   results_json, "--out-dir", os.path.join(args.out_dir, "overlay")]
    if os.path.isdir(args.video):
        overlay_cmd += ["--pred", frames_json, "--frames-root", os.path.dirname(os.path.normpath(args.video))]
    else:
        overlay_cmd += ["--video", args.video]
    if args.fps:
        overlay_cmd += ["--fps", str(args.fps)]
    for cmd in (track_cmd, overlay_cmd):
        r = subprocess.run(cmd, cwd=ROOT)
        if r.returncode:
            sys.exit(f"tracker.py: '{' '.join(cmd[1:3])}' failed with exit code {r.returncode}")
    print(f"results written to {results_json}; overlay in {os.path.join(args.out_dir, 'overlay')}")


if __name__ == "__main__":
    main()
