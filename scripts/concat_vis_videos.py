"""Concatenate per-video overlays (vis_v<N>.mp4) into one video, in numeric order of N, letterboxed to one size.

Re-implements `concat_vis_videos.py` of the original with `--pattern` honoured (info/DESIGN.md#visualisation-scripts).

    python scripts/concat_vis_videos.py --input runs/demo/overlay --output runs/demo/overlay_all.mp4
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's modules
from fileio import InputError, check_writable_file  # noqa: E402
from vis_common import AtomicVideoWriter, VisError, letterbox_into, natural_key, read_frames  # noqa: E402


def list_inputs(folder: str, pattern: str = "vis_v*.mp4"):
    """Files of `folder` matching `pattern` (case-insensitive), numbers in the name sorted numerically."""
    if not os.path.isdir(folder):
        raise VisError(f"input folder {folder}: not a directory")
    names = [n for n in os.listdir(folder)
             if fnmatch.fnmatch(n.lower(), pattern.lower()) and os.path.isfile(os.path.join(folder, n))]
    if not names:
        raise VisError(f"input folder {folder}: no file matches {pattern!r}")
    return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


def concat_videos(paths, output, width=640, height=360, fps=10.0, progress=True):
    """Write every frame of `paths` in order, letterboxed into width x height, to `output`. Returns the count."""
    with AtomicVideoWriter(output, fps, (width, height)) as writer:
        for k, p in enumerate(paths, 1):
            before = writer.frames
            for frame in read_frames(p):
                writer.write(letterbox_into(frame, width, height))
            if writer.frames == before:
                raise VisError(f"video {p}: no decodable frames")
            if progress:
                print(f"[{k}/{len(paths)}] {os.path.basename(p)}: {writer.frames - before} frames", flush=True)
        return writer.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Concatenate vis_v<N>.mp4 overlays in numeric order of N.")
    ap.add_argument("--input", "-i", default="vis_results", help="folder of the per-video overlays")
    ap.add_argument("--output", "-o", default="vis_results_combined.mp4", help="output mp4")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--pattern", default="vis_v*.mp4", help="glob of the inputs (case-insensitive)")
    args = ap.parse_args(argv)
    if args.width < 2 or args.height < 2 or args.fps <= 0:
        raise SystemExit("error: --width/--height must be >= 2 and --fps positive")
    check_writable_file(args.output, "--output")
    paths = list_inputs(args.input, args.pattern)
    n = concat_videos(paths, args.output, args.width, args.height, args.fps)
    print(f"wrote {args.output} ({len(paths)} videos, {n} frames)")
    return args.output


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
