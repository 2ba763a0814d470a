"""Draw a YouTube-VIS results JSON (info/DESIGN.md#results-json) over its frames: one annotated mp4 per video.

Re-implements the original's overlay (info/DESIGN.md#visualisation-scripts): frames come from a dataset split, a
frame-predictions file or a video file, both RLE kinds decode, and mismatches are errors, never skips.

    python scripts/overlay_vis_on_video.py --results runs/demo/results.json --data data/shapes/valid \
        --out-dir runs/demo/overlay
"""
from __future__ import annotations

import argparse
import os
import sys

import cv2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's modules
from fileio import InputError, check_writable_dir, confined_path  # noqa: E402
from progress import Progress  # noqa: E402
from vis_common import (  # noqa: E402
    AtomicVideoWriter,
    VisError,
    _is_int,
    category_names,
    count_frames,
    decode_rle,
    draw_frame,
    load_results,
    read_frames,
    read_json,
)

# ---- frame sources: {video_id: {"paths": [...]} or {"video": path}} plus class names ------------------------

def _videos_with_file_names(data, path, frames_root, what):
    """{video_id: list of frame paths} from a `videos` list whose entries give `file_names` in frame order."""
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
        raise VisError(f"{what} {path}: expected an object with a 'videos' list")
    videos = {}
    for i, v in enumerate(data["videos"]):
        if not isinstance(v, dict) or "id" not in v or not isinstance(v.get("file_names"), list):
            raise VisError(f"{what} {path}: videos[{i}] needs 'id' and a 'file_names' list")
        vid = v["id"]
        if not _is_int(vid):
            raise VisError(f"{what} {path}: videos[{i}]: 'id' must be an integer, got {vid!r}")
        if "length" in v and v["length"] is not None and v["length"] != len(v["file_names"]):
            raise VisError(f"{what} {path}: video {vid} has length {v['length']!r} but {len(v['file_names'])} "
                           f"file_names")
        videos[vid] = [confined_path(frames_root, fn, f"{what} {path}: video {vid}, file_names[{t}]", VisError)
                       for t, fn in enumerate(v["file_names"])]
    return videos


def dataset_source(split_root):
    ann = os.path.join(split_root, "instances.json")
    data = read_json(ann, "dataset annotation file")
    videos = _videos_with_file_names(data, ann, os.path.join(split_root, "JPEGImages"), "dataset annotation file")
    return videos, category_names(data.get("categories"))


def predictions_source(pred_path, frames_root):
    data = read_json(pred_path, "frame-predictions file")
    videos = _videos_with_file_names(data, pred_path, frames_root, "frame-predictions file")
    return videos, category_names(data.get("categories"))


def _image_frames(video_id, paths):
    for f, p in enumerate(paths):
        img = cv2.imread(p, cv2.IMREAD_COLOR)
        if img is None:
            raise VisError(f"video {video_id}, frame {f}: cannot read image {p}")
        yield img


# ---- one video -----------------------------------------------------------------------------------------------

def _warn(msg):
    print(f"warning: {msg}", file=sys.stderr)


def frame_tracks(tracks, f, frame_hw, where_v="video", lenient=False, size_warned=None):
    """The tracks present in frame f, each with its decoded "mask", ready for draw_frame.

    A mask whose size differs from frame_hw is an error naming the video, track and frame; with `lenient` it
    is left out with one warning per track (recorded in `size_warned`).
    """
    size_warned = set() if size_warned is None else size_warned
    present = []
    for t in tracks:
        seg = t["segmentations"][f] if f < len(t["segmentations"]) else None
        if seg is None:
            continue
        mask = decode_rle(seg, f"{where_v}, track #{t['track_id']}, frame {f}")
        if mask.shape != tuple(frame_hw):
            msg = (f"{where_v}, track #{t['track_id']}, frame {f}: mask size {mask.shape[0]}x{mask.shape[1]} "
                   f"(HxW) differs from the frame's {frame_hw[0]}x{frame_hw[1]}")
            if not lenient:
                raise VisError(msg + " (use --lenient to skip such masks)")
            if t["track_id"] not in size_warned:
                _warn(msg + "; mask not drawn (further frames of this track not reported)")
                size_warned.add(t["track_id"])
            continue
        present.append({**t, "mask": mask})
    return present


def render_video(video_id, frames, n_frames, tracks, out_path, names=None, fps=6.0, alpha=0.45,
                 draw_boxes=True, lenient=False, results_path="results"):
    """Draw `tracks` (from load_results) over `frames` (an iterable of n_frames BGR images) into `out_path`."""
    where_v = f"results file {results_path}, video {video_id}"
    for t in tracks:
        n_seg = len(t["segmentations"])
        if n_seg != n_frames:
            msg = f"{where_v}: track #{t['track_id']} has {n_seg} segmentations, the video has {n_frames} frames"
            if not lenient:
                raise VisError(msg + " (use --lenient to draw anyway)")
            _warn(msg + "; frames without a segmentation are drawn without this track")
    size_warned = set()
    writer = None
    try:
        for f, frame in enumerate(frames):
            present = frame_tracks(tracks, f, frame.shape[:2], where_v, lenient, size_warned)
            img = draw_frame(frame, present, names, alpha=alpha, draw_boxes=draw_boxes,
                             header=f"video {video_id}  frame {f + 1}/{n_frames}")
            if writer is None:
                writer = AtomicVideoWriter(out_path, fps, (img.shape[1], img.shape[0]))
            writer.write(img)
        if writer is None:
            raise VisError(f"video {video_id}: no frames to draw")
        return writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


# ---- command line ----------------------------------------------------------------------------------------------

def build_parser():
    ap = argparse.ArgumentParser(description="Overlay a YouTube-VIS results JSON on its frames "
                                             "(one vis_v<id>.mp4 per video).")
    ap.add_argument("--results", required=True, help="results JSON: list of {video_id, category_id, score, "
                                                     "segmentations}")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="split root holding JPEGImages/ and instances.json (frame order from it)")
    src.add_argument("--pred", help="frame-predictions JSON (info/DESIGN.md#frame-predictions); needs --frames-root")
    src.add_argument("--video", help="a video file; the results must hold one video (or give --video-id)")
    ap.add_argument("--frames-root", help="folder the --pred file_names are relative to")
    ap.add_argument("--out-dir", required=True, help="output folder")
    ap.add_argument("--video-id", type=int, default=None,
                    help="draw only this video (default: every video of --data/--pred, with or without tracks)")
    ap.add_argument("--fps", type=float, default=6.0, help="output frame rate")
    ap.add_argument("--alpha", type=float, default=0.45, help="mask opacity")
    ap.add_argument("--no-boxes", action="store_true", help="do not draw the masks' boxes")
    ap.add_argument("--max-videos", type=int, default=None, help="draw at most this many videos (by id)")
    ap.add_argument("--lenient", action="store_true",
                    help="warn instead of failing on length/size mismatches or unknown video ids")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.pred and not args.frames_root:
        raise SystemExit("error: --pred needs --frames-root (the folder its file_names are relative to)")
    if not 0.0 <= args.alpha <= 1.0:
        raise SystemExit(f"error: --alpha must be in [0, 1], got {args.alpha}")
    check_writable_dir(args.out_dir, "--out-dir")
    results = load_results(args.results)

    if args.video:
        if args.video_id is None and len(results) > 1:
            raise VisError(f"results file {args.results}: holds {len(results)} videos "
                           f"({sorted(results)[:10]}); a video file needs one, or give --video-id")
        if not results:
            _warn(f"results file {args.results} holds no tracks; drawing the video without any")
        vid = args.video_id if args.video_id is not None else next(iter(results), 0)
        n = count_frames(args.video)
        if n == 0:
            raise VisError(f"video {args.video}: no decodable frames")
        jobs = [(vid, lambda p=args.video: read_frames(p), n)]
        names = {}
    else:
        videos, names = (dataset_source(args.data) if args.data
                         else predictions_source(args.pred, args.frames_root))
        source = args.data or args.pred
        unknown = sorted(set(results) - set(videos))
        if unknown:
            msg = f"results file {args.results}: video ids {unknown[:10]} are not in {source}"
            if not args.lenient:
                raise VisError(msg + " (use --lenient to skip them)")
            _warn(msg + "; skipped")
        if args.video_id is not None:
            if args.video_id not in videos:
                raise VisError(f"--video-id {args.video_id} is not a video of {source}")
            ids = [args.video_id]
        else:
            # Every video of the source, tracked or not: an empty overlay shows what the tracker missed.
            ids = sorted(videos)
        jobs = [(v, lambda v=v: _image_frames(v, videos[v]), len(videos[v])) for v in ids]
    if args.max_videos is not None:
        jobs = jobs[:args.max_videos]
    if not jobs:
        raise VisError(f"{args.data or args.pred}: no video to draw")

    written = []
    with Progress(sum(n for _, _, n in jobs), "overlay", unit="frame") as bar:
        for k, (vid, frames, n) in enumerate(jobs, 1):
            out = os.path.join(args.out_dir, f"vis_v{vid}.mp4")
            tracks = results.get(vid, [])
            render_video(vid, frames(), n, tracks, out, names, fps=args.fps, alpha=args.alpha,
                         draw_boxes=not args.no_boxes, lenient=args.lenient, results_path=args.results)
            bar.update(n, video=f"{k}/{len(jobs)}")
            print(f"wrote {out} (video {vid}: {n} frames, {len(tracks)} tracks)", flush=True)
            written.append(out)
    return written


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
