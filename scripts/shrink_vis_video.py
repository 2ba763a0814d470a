"""Shrink an overlay video: keep its first frames to meet a size budget or a fraction, or export a looping GIF.

Merges `shrink_vis_video.py` and `video_to_gif.py` of the original (info/DESIGN.md#visualisation-scripts; same fps, size
for mp4; GIF frames sampled at the requested fps from the first seconds, resized to the requested width).

    python scripts/shrink_vis_video.py -i overlay_all.mp4 -o overlay_10mb.mp4 --max-mb 10
    python scripts/shrink_vis_video.py -i overlay_all.mp4 -o demo.gif --gif --seconds 4 --fps 5 --width 480
"""
from __future__ import annotations

import argparse
import os
import sys

import cv2
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's modules
from fileio import InputError, check_writable_file  # noqa: E402
from vis_common import AtomicVideoWriter, VisError, count_frames, make_temp, open_video, read_frames  # noqa: E402

SIZE_SAFETY = 0.75  # first guess of the frames to keep leaves room, as the original did (mp4v size varies)


def trim_video(src, dst, keep):
    """Write the first `keep` frames of `src` to `dst` with the same fps and frame size. Returns frames written."""
    cap, fps, _, w, h = open_video(src)
    cap.release()
    with AtomicVideoWriter(dst, fps or 25.0, (w, h)) as writer:
        for frame in read_frames(src, limit=keep):
            writer.write(frame)
        return writer.close()


def shrink_to_size(src, dst, max_mb, tries=4):
    """Keep the first frames of `src` so that `dst` is at most `max_mb` MB; re-trims if the estimate overshoots."""
    total = count_frames(src)
    if total == 0:
        raise VisError(f"video {src}: no decodable frames")
    in_mb = os.path.getsize(src) / 1e6
    keep = total if in_mb <= max_mb else max(1, int(total * SIZE_SAFETY * max_mb / in_mb))
    for _ in range(tries):
        n = trim_video(src, dst, keep)
        out_mb = os.path.getsize(dst) / 1e6
        if out_mb <= max_mb or keep == 1:
            return n, out_mb
        keep = max(1, int(keep * SIZE_SAFETY * max_mb / out_mb))
    raise VisError(f"video {dst}: still {out_mb:.2f} MB > {max_mb} MB after {tries} attempts")


def gif_frame_indices(video_fps, total, seconds, fps, max_frames=None):
    """Source frame of each GIF frame: the frame shown at time k / fps, for k < seconds * fps, within the video."""
    n = int(round(seconds * fps))
    idx = [int(round(k / fps * video_fps)) for k in range(n)]
    idx = [i for i in idx if i < total]
    return idx[:max_frames] if max_frames else idx


def export_gif(src, dst, seconds=4.0, fps=5.0, width=480, max_frames=None):
    """GIF of the first `seconds` of `src` at `fps`, `width` px wide (even height), looping forever."""
    cap, video_fps, _, w, h = open_video(src)
    cap.release()
    # Only the first seconds are needed; a combined overlay can be far too long to hold in memory.
    frames = list(read_frames(src, limit=int(round(seconds * (video_fps or 25.0))) + 1))
    if not frames:
        raise VisError(f"video {src}: no decodable frames")
    idx = gif_frame_indices(video_fps or 25.0, len(frames), seconds, fps, max_frames)
    height = max(2, int(round(frames[0].shape[0] * width / frames[0].shape[1] / 2)) * 2)
    images = [Image.fromarray(cv2.cvtColor(cv2.resize(frames[i], (width, height), interpolation=cv2.INTER_AREA),
                                           cv2.COLOR_BGR2RGB)) for i in idx]
    folder = os.path.dirname(os.path.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    tmp = make_temp(folder, ".gif")
    try:
        # Pillow merges consecutive identical frames (adding their durations), so a still scene gives fewer frames.
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / fps)),
                       loop=0)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return len(images), (width, height)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Trim an overlay video to a size budget or fraction, or export a GIF.")
    ap.add_argument("-i", "--input", required=True, help="input video")
    ap.add_argument("-o", "--output", default=None, help="output .mp4 or .gif (default: beside the input)")
    ap.add_argument("-m", "--max-mb", type=float, default=None, help="size budget of the mp4 in MB")
    ap.add_argument("-f", "--fraction", type=float, default=None, help="keep this fraction of the frames")
    ap.add_argument("--gif", action="store_true", help="export a GIF (also implied by an output ending in .gif)")
    ap.add_argument("-s", "--seconds", type=float, default=4.0, help="GIF: length taken from the start")
    ap.add_argument("--fps", type=float, default=5.0, help="GIF: frame rate")
    ap.add_argument("-w", "--width", type=int, default=480, help="GIF: width in pixels")
    ap.add_argument("--max-frames", type=int, default=None, help="GIF: cap on frames")
    args = ap.parse_args(argv)
    gif = args.gif or (args.output or "").lower().endswith(".gif")
    stem = os.path.splitext(args.input)[0]
    if gif:
        if args.fps <= 0 or args.seconds <= 0 or args.width < 2:
            raise SystemExit("error: --fps and --seconds must be positive and --width at least 2")
        out = args.output or stem + ".gif"
        check_writable_file(out, "--output")
        n, (w, h) = export_gif(args.input, out, args.seconds, args.fps, args.width, args.max_frames)
        print(f"wrote {out} ({n} frames, {w}x{h}, {args.fps:g} fps, loops forever)")
        return out
    if args.max_mb is not None and args.fraction is not None:
        raise SystemExit("error: give --max-mb or --fraction, not both")
    if args.max_mb is not None:
        if args.max_mb <= 0:
            raise SystemExit("error: --max-mb must be positive")
        out = args.output or f"{stem}_under{args.max_mb:g}mb.mp4"
        check_writable_file(out, "--output")
        n, mb = shrink_to_size(args.input, out, args.max_mb)
    else:
        fraction = 0.5 if args.fraction is None else args.fraction
        if not 0 < fraction <= 1:
            raise SystemExit(f"error: --fraction must be in (0, 1], got {fraction}")
        out = args.output or f"{stem}_{fraction:g}.mp4"
        check_writable_file(out, "--output")
        total = count_frames(args.input)
        if total == 0:
            raise VisError(f"video {args.input}: no decodable frames")
        n = trim_video(args.input, out, max(1, int(round(total * fraction))))
        mb = os.path.getsize(out) / 1e6
    print(f"wrote {out} ({n} frames, {mb:.2f} MB)")
    return out


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
