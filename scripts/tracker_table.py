"""The tracker's options side by side on one run's frame predictions: video AP and HOTA / DetA / AssA for lam 0, 0.5
and 1, with the two options the original tracker does not have (`motion`, `refind`) off and on.

Every cell tracks the same frame predictions (tracking.tracks.track_predictions) with the run's `track` section
changed in lam, motion and refind only, then evaluates the results with compute_ap (AP, AP50) and TrackEval
(HOTA, DetA, AssA). DetA follows the detections the tracker keeps, AssA the association. numpy + pycocotools +
trackeval only (no TensorFlow).

    python scripts/tracker_table.py --gt data/shapes/valid/instances.json --pred runs/demo/valid_frames.json \
        --config runs/demo/config.yaml --out runs/demo/tracker_table.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from compute_ap import EvalInputError, evaluate_vis, load_gt  # noqa: E402
from compute_hota import evaluate_hota  # noqa: E402
from config import ConfigError, TrackConfig, atomic_write_text, load_config  # noqa: E402
from tracking.io import FramePredictionsError, read_frame_predictions  # noqa: E402
from tracking.tracks import track_predictions  # noqa: E402

LAMS = [0.0, 0.5, 1.0]
KEYS = ["AP", "AP50", "HOTA", "DetA", "AssA"]


def option_sets(base: TrackConfig):
    """(label, motion, refind) for both options off (the original tracker), each alone, and both on; `on` for
    refind is the config's radius, or the tiny preset's 2.0 when the config has it off."""
    radius = base.refind if base.refind > 0 else 2.0
    return [("original (motion off, refind off)", False, 0.0), ("motion", True, 0.0),
            (f"refind {radius:g}", False, radius), (f"motion + refind {radius:g}", True, radius)]


def tracker_table(gt_path: str, pred_path: str, base: TrackConfig, progress=print) -> list:
    gt = load_gt(gt_path)
    pred = read_frame_predictions(pred_path)
    rows = []
    for label, motion, refind in option_sets(base):
        for lam in LAMS:
            t0 = time.time()
            cfg = dataclasses.replace(base, lam=lam, motion=motion, refind=refind)
            results = track_predictions(pred, cfg, source=pred_path, validate=False)
            metrics, E = evaluate_vis(gt, results)
            hota = evaluate_hota(E.gt, E.results)
            row = {"options": label, "lam": lam, "motion": motion, "refind": refind, "tracks": len(results),
                   **{k: metrics[k] for k in ("AP", "AP50")}, **{k: hota[k] for k in ("HOTA", "DetA", "AssA")}}
            rows.append(row)
            if progress:
                progress(f"  [{len(rows)}/{len(LAMS) * 4}] {label}, lam {lam:g}: AP {row['AP']:.3f}, HOTA "
                         f"{row['HOTA']:.3f}, AssA {row['AssA']:.3f} ({time.time() - t0:.1f} s)")
    return rows


def format_table(rows: list) -> str:
    """Markdown: one line per option set, AP / HOTA / DetA / AssA per lam."""
    head = "| tracker options | " + " | ".join(f"lam {lam:g}: AP / AP50 / HOTA / DetA / AssA" for lam in LAMS) + " |"
    lines = [head, "|---|" + "---|" * len(LAMS)]
    for label in dict.fromkeys(r["options"] for r in rows):
        cells = []
        for lam in LAMS:
            r = next(r for r in rows if r["options"] == label and r["lam"] == lam)
            cells.append(" / ".join(f"{r[k]:.3f}" for k in KEYS))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--gt", default="data/shapes/valid/instances.json", help="GT JSON of the split")
    ap.add_argument("--pred", default="runs/demo/valid_frames.json", help="frame predictions written by tracker.py")
    ap.add_argument("--config", default=None, help="a run's config.yaml: its `track` section is the base")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    try:
        base = load_config(args.config).track if args.config else TrackConfig()
        print(f"tracking {args.pred} with lam {', '.join(f'{lam:g}' for lam in LAMS)} x 4 option sets", flush=True)
        rows = tracker_table(args.gt, args.pred, base, progress=lambda s: print(s, flush=True))
    except (EvalInputError, ConfigError, FramePredictionsError, ValueError) as e:
        sys.exit(f"tracker_table: {e}")
    print()
    print(format_table(rows))
    if args.out:
        atomic_write_text(args.out, json.dumps(rows, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
