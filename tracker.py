"""Runs a trained YOLOV4+1 model over videos and writes per-frame predictions (info/DESIGN.md#frame-predictions).

Sources: a dataset split (JPEGImages/ + the split's JSON), a folder of frames, or a video file (OpenCV). For a
video file or a frame folder it then runs the tracker (info/DESIGN.md#tracker) and the overlay in this process,
so one command turns `clip.mp4` into `results.json` and an annotated mp4 (the original's pipeline, re-done).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

import cv2
import numpy as np

from fileio import InputError, check_writable_dir, check_writable_file, confined_path, read_json

ROOT = os.path.dirname(os.path.abspath(__file__))
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class FrameError(InputError):
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
    ann = read_json(ann_path, "annotation file", FrameError)
    if not isinstance(ann, dict):
        raise FrameError(f"{ann_path}: the top level must be a JSON object")
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
        paths = [confined_path(image_root, name, f"{ann_path}: video {v['id']}, file_names[{t}]", FrameError)
                 for t, name in enumerate(v["file_names"])]

        def frames(v=v, paths=paths):
            for t, path in enumerate(paths):
                yield t, read_rgb(path, v["id"], t)
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
            from export import check_bfloat16
            check_bfloat16("--bfloat16")
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
    """Run `predictor` over every video; returns the frame-predictions document (info/DESIGN.md#frame-predictions)."""
    from progress import Progress
    out_videos = []
    t_start, n_frames = time.time(), 0
    bar = Progress(sum(int(rec["length"]) for rec, _ in videos), "inference", unit="frame")
    for k, (rec, frames) in enumerate(videos):
        frame_recs, batch, idx = [], [], []

        def flush():
            for t, dets in zip(idx, predictor(batch)):
                frame_recs.append({"index": t, "detections": dets})
            bar.update(len(idx), video=f"{k + 1}/{len(videos)}")
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
    bar.close()
    n_dets = sum(len(f["detections"]) for v in out_videos for f in v["frames"])
    log(f"{len(out_videos)} videos, {n_frames} frames, {n_dets} detections in {time.time() - t_start:.1f} s",
        flush=True)
    return {"format": "ytvis-frame-predictions", "version": 1, "categories": categories, "videos": out_videos}


def _scripts_on_path():
    """The overlay lives in scripts/, a folder of standalone commands, not a package: import it from there."""
    folder = os.path.join(ROOT, "scripts")
    if folder not in sys.path:
        sys.path.insert(0, folder)


def track_and_draw(doc, videos, track_cfg, out_dir: str, fps: float | None = None, source: str = "<frames>",
                   log=print):
    """Track the frame predictions `doc` of `videos` (as the frame sources above give them) with `track_cfg`
    (tracking.tracks, info/DESIGN.md#tracker) and draw each video's tracks over its frames, labelled with the doc's
    category names (scripts/overlay_vis_on_video.py). Writes <out_dir>/results.json and
    <out_dir>/overlay/vis_v<id>.mp4; returns their paths."""
    from tracking.io import write_results
    from tracking.tracks import track_predictions
    _scripts_on_path()
    import overlay_vis_on_video as overlay
    from vis_common import category_names

    def progress(position, num_videos, video, tracks, kept):
        log(f"tracking [{position + 1}/{num_videos}] video {video['id']}: {len(tracks)} tracks, {len(kept)} kept",
            flush=True)

    results = track_predictions(doc, track_cfg, source=source, progress=progress)
    results_json = os.path.join(out_dir, "results.json")
    write_results(results_json, results)
    log(f"wrote {len(results)} tracks to {results_json}", flush=True)
    names = category_names(doc["categories"])
    fps = fps or overlay.build_parser().get_default("fps")
    written = [results_json]
    for rec, frames in videos:
        # the tracks as the overlay reads them from a results file (vis_common.load_results): numbered from 1 in
        # creation order within their video, which picks their colours
        tracks = [{"track_id": k + 1, "category_id": int(r["category_id"]), "score": float(r["score"]),
                   "segmentations": r["segmentations"]}
                  for k, r in enumerate(r for r in results if r["video_id"] == rec["id"])]
        out = os.path.join(out_dir, "overlay", f"vis_v{rec['id']}.mp4")
        bgr = (cv2.cvtColor(img, cv2.COLOR_RGB2BGR) for _, img in frames())
        overlay.render_video(rec["id"], bgr, rec["length"], tracks, out, names, fps=fps, results_path=results_json)
        log(f"wrote {out}", flush=True)
        written.append(out)
    return written


def build_parser():
    ap = argparse.ArgumentParser(description="Per-frame YOLOV4+1 predictions over a dataset split, a frame folder "
                                             "or a video file (then tracking and an overlay video).")
    model_src = ap.add_mutually_exclusive_group(required=True)
    model_src.add_argument("--run-dir", help="training run directory (config + checkpoints)")
    model_src.add_argument("--exported",
                           help="a folder written by export.py (SavedModel, TFLite or OpenVINO), run one frame "
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
    ap.add_argument("--fps", type=float, default=None, help="overlay fps (with --video; default 6)")
    ap.add_argument("--lam", type=float, default=None, help="tracking class-mismatch cost (with --video)")
    return ap


def check_args(ap, args):
    """The combinations and ranges argparse cannot check (ap.error exits with the usage)."""
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
    if args.lam is not None and not (math.isfinite(args.lam) and args.lam >= 0):
        ap.error(f"--lam must be a finite number >= 0, got {args.lam}")
    if args.score_floor is not None and not 0.0 <= args.score_floor <= 1.0:
        ap.error(f"--score-floor is a score, in [0, 1]; got {args.score_floor}")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        ap.error(f"--fps must be a positive number, got {args.fps}")



def open_videos(args):
    """The videos of --data (the first --max-videos), a --video frame folder or a --video file."""
    if args.data:
        videos, _ = dataset_source(args.data, args.ann)
        return videos[:args.max_videos] if args.max_videos else videos
    if os.path.isdir(args.video):
        return folder_source(args.video)
    return video_source(args.video)


def make_predictor(args):
    """(cfg, frame predictor) of --exported or else of --run-dir's checkpoint."""
    score_floor = args.score_floor
    if args.exported:
        import export
        exported = export.ExportedModel(args.exported)
        cfg = exported.cfg
        return cfg, export.ExportedFramePredictor(
            exported, cfg.infer.score_floor if score_floor is None else score_floor)
    from checkpoints import load_run  # its CheckpointError is an InputError
    cfg, model = load_run(args.run_dir, checkpoint=args.checkpoint, mode="infer")
    return cfg, FramePredictor(cfg, model, args.batch_size or cfg.infer.batch_size,
                               cfg.infer.score_floor if score_floor is None else score_floor,
                               mask_rois=args.mask_rois, bfloat16=args.bfloat16)


def track_outputs(args, cfg, doc, videos):
    """--video: frames.json, then the tracks (results.json) and the overlay videos in --out-dir."""
    from tracking.io import FramePredictionsError, write_frame_predictions
    os.makedirs(args.out_dir, exist_ok=True)
    frames_json = os.path.join(args.out_dir, "frames.json")
    write_frame_predictions(frames_json, doc)
    print(f"frame predictions written to {frames_json}")
    # the run's tracker settings (a preset may match them to its scores)
    track_cfg = cfg.track if args.lam is None else dataclasses.replace(cfg.track, lam=args.lam)
    _scripts_on_path()
    from vis_common import VisError
    try:
        results_json = track_and_draw(doc, videos, track_cfg, args.out_dir, args.fps, frames_json)[0]
    except (FrameError, FramePredictionsError, VisError) as e:
        sys.exit(f"tracker.py: {e}")
    print(f"results written to {results_json}; overlay in {os.path.join(args.out_dir, 'overlay')}")


def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    check_args(ap, args)

    from tracking.io import write_frame_predictions
    errors = (InputError,)
    if args.exported or args.bfloat16:          # an export that cannot be read; bfloat16 the CPU cannot run
        import export
        errors += (export.ExportError,)
    try:
        # an output that cannot be written is found now, not after the inference
        if args.data:
            check_writable_file(args.out, "--out")
        else:
            check_writable_dir(args.out_dir, "--out-dir")
        videos = open_videos(args)
        cfg, predictor = make_predictor(args)
        categories = cfg.categories()
        doc = predict_videos(predictor, videos, categories)
    except errors as e:
        sys.exit(f"tracker.py: {e}")

    if args.data:
        write_frame_predictions(args.out, doc)
        print(f"frame predictions written to {args.out}")
        return
    track_outputs(args, cfg, doc, videos)


if __name__ == "__main__":
    main()
