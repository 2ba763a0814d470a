"""Command line of the tracking stage: frame predictions (info/DESIGN.md#frame-predictions) to the official results
JSON with the heuristic tracker of info/DESIGN.md#tracker. Does not import TensorFlow.

    python -m tracking.track --pred runs/demo/valid_frames.json --out runs/demo/results.json [--lam 0.5] [--zip]

--zip also writes the challenge submission (a zip with results.json at its root; default: --out with .zip).
"""
import argparse
import dataclasses
import os
import sys
import time

from config import TrackConfig, load_config, validate_track
from fileio import InputError, check_writable_file
from tracking.io import FramePredictionsError, read_frame_predictions, write_results, write_submission_zip
from tracking.tracks import track_predictions


def build_parser():
    d = TrackConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", required=True, help="frame-predictions JSON written by tracker.py")
    p.add_argument("--out", required=True, help="results JSON to write (official YouTube-VIS format)")
    p.add_argument("--zip", nargs="?", const="", default=None, metavar="PATH",
                   help="also write the YouTube-VIS challenge submission zip (results.json at its root) here "
                        "(default: --out with the extension .zip)")
    p.add_argument("--config", default=None,
                   help="a run's config.yaml/.json; its `track` section replaces the defaults below")
    p.add_argument("--lam", type=float, default=None, help=f"class-mismatch cost (default {d.lam})")
    p.add_argument("--tau", type=float, default=None, help=f"gate: a pair passes iff cost < tau (default {d.tau})")
    p.add_argument("--gamma", type=float, default=None, help=f"Lonely Best Friend margin (default {d.gamma})")
    p.add_argument("--score-floor", type=float, default=None,
                   help=f"detections with score >= floor take part (default {d.score_floor})")
    p.add_argument("--min-hits", type=int, default=None,
                   help=f"a track is kept iff it has >= this many detections (default {d.min_hits})")
    p.add_argument("--min-score", type=float, default=None,
                   help=f"... and its mean score is > this (default {d.min_score})")
    p.add_argument("--max-age", type=int, default=None,
                   help="a track takes part in frame t iff t - last_hit <= max_age (default: never expires)")
    p.add_argument("--keep-doubtful", action="store_true", default=None,
                   help="start new tracks from detections failing Best Friend / Lonely Best Friend")
    p.add_argument("--motion", action="store_true", default=None,
                   help="compare detections with each track's last mask moved at the track's velocity (not in the "
                        "original tracker)")
    p.add_argument("--refind", type=float, default=None,
                   help="give a detection that matched no track to the nearest same-class track unmatched in its "
                        "frame within this many object sizes (default 0: off; not in the original tracker)")
    return p


def resolve_config(args) -> TrackConfig:
    cfg = load_config(args.config).track if args.config else TrackConfig()
    flags = {"lam": args.lam, "tau": args.tau, "gamma": args.gamma, "score_floor": args.score_floor,
             "min_hits": args.min_hits, "min_score": args.min_score, "max_age": args.max_age,
             "keep_doubtful": args.keep_doubtful, "motion": args.motion, "refind": args.refind}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    return validate_track(cfg, prefix="--")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
        check_writable_file(args.out, "--out")
        if args.zip is not None:
            check_writable_file(args.zip or os.path.splitext(args.out)[0] + ".zip", "--zip")
        start = time.time()
        data = read_frame_predictions(args.pred)
    except InputError as e:
        sys.exit(f"tracking.track: {e}")
    num_frames = sum(int(v["length"]) for v in data["videos"])
    print(f"read {len(data['videos'])} videos, {num_frames} frames from {args.pred}", flush=True)
    print("tracking with " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items()), flush=True)

    def progress(position, num_videos, video, tracks, kept):
        print(f"[{position + 1}/{num_videos}] video {video['id']}: {video['length']} frames, "
              f"{len(tracks)} tracks, {len(kept)} kept", flush=True)

    try:
        results = track_predictions(data, cfg, source=args.pred, progress=progress, validate=False)
    except (FramePredictionsError, ValueError) as e:
        sys.exit(f"tracking.track: {e}")
    write_results(args.out, results)
    elapsed = time.time() - start
    print(f"wrote {len(results)} tracks to {args.out} "
          f"({elapsed:.1f} s, {num_frames / max(elapsed, 1e-9):.1f} frames/s)")
    if args.zip is not None:
        zip_path = args.zip or os.path.splitext(args.out)[0] + ".zip"
        try:
            size = write_submission_zip(zip_path, results)
        except OSError as e:
            sys.exit(f"tracking.track: cannot write the submission zip: {e}")
        print(f"wrote the submission {zip_path} (results.json at its root, {len(results)} tracks, read back; "
              f"{size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
