"""YouTube-VIS video AP of a results JSON against a GT JSON: the official 12-stat table, per-category AP, metrics JSON.

Semantics of the official youtubevos/cocoapi evaluation (info/DESIGN.md#video-ap); metrics file as
info/DESIGN.md#metrics-json, plus HOTA, DetA, AssA, LocA and their parts computed by TrackEval (compute_hota.py).
numpy + pycocotools + trackeval only (no TensorFlow).

    python scripts/evaluate.py --gt data/shapes/valid/instances.json --results runs/demo/results.json \
        --out runs/demo/metrics.json [--plot runs/demo/plots]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from compute_ap import IOU_THRS, REC_THRS, EvalInputError, EvalWorkerError, evaluate_vis, format_stats  # noqa: E402
from compute_hota import evaluate_hota, format_hota  # noqa: E402
from fileio import InputError, atomic_write_text, check_writable_dir, check_writable_file  # noqa: E402
from progress import Progress  # noqa: E402


def format_per_category(metrics: dict) -> str:
    keys = [k for k in ("AP", "HOTA", "DetA", "AssA") if k in next(iter(metrics["per_category"].values()), {})]
    rows = [f" {'category':<24} {'id':>4}" + "".join(f"  {k:>6}" for k in keys)]
    for name, v in metrics["per_category"].items():
        # -1: no GT of this category (AP), neither GT nor result (HOTA)
        rows.append(f" {name[:24]:<24} {v['id']:>4}" + "".join("     n/a" if v[k] < 0 else f"  {v[k]:6.3f}"
                                                               for k in keys))
    return "\n".join(rows)


def add_hota(metrics: dict, hota: dict) -> dict:
    """The metrics dict with the HOTA fields after the 12 stats and HOTA, DetA, AssA in each category."""
    out = {k: v for k, v in metrics.items() if k != "per_category"}
    out.update({k: v for k, v in hota.items() if k not in ("det_averaged", "per_category")})
    out["hota_det_averaged"] = hota["det_averaged"]
    out["per_category"] = {name: {**v, **hota["per_category"][name]} for name, v in metrics["per_category"].items()}
    return out


def _savefig(fig, path: str):
    """Atomic PNG write: render to a temp file in the same folder, then rename."""
    tmp = os.path.join(os.path.dirname(path), f".tmp_{os.getpid()}_{os.path.basename(path)}")
    fig.savefig(tmp, dpi=100, format="png")
    os.replace(tmp, path)


def save_plots(metrics: dict, evaluator, out_dir: str) -> list:
    """Per-category AP bar chart and per-category precision-recall curves (area all, maxDets 100)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    names = list(metrics["per_category"])
    aps = [max(metrics["per_category"][n]["AP"], 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(names) + 2), 4))
    ax.bar(range(len(names)), aps, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("AP@[.5:.95]")
    ax.set_title(f"per-category video AP (mean {metrics['AP']:.3f}; categories without GT shown as 0)")
    fig.tight_layout()
    bar_path = os.path.join(out_dir, "per_category_ap.png")
    _savefig(fig, bar_path)
    plt.close(fig)

    prec = evaluator.eval["precision"]  # [T, R, K, A, M]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, (t, label) in zip(axes, [(0, "IoU 0.50"), (5, "IoU 0.75")]):
        for k, name in enumerate(names):
            p = prec[t, :, k, 0, -1]
            if (p > -1).any():
                ax.plot(REC_THRS, p, label=name, lw=1.2)
        ax.set_title(f"precision-recall, {label} (area all, maxDets 100)")
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("precision")
    if len(names) <= 20:
        axes[1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    pr_path = os.path.join(out_dir, "pr_curves.png")
    _savefig(fig, pr_path)
    plt.close(fig)
    return [bar_path, pr_path]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gt", default="data/shapes/valid/instances.json",
                    help="GT JSON (YouTube-VIS schema; RLE, compressed RLE or polygons)")
    ap.add_argument("--results", default="runs/demo/results.json",
                    help="results JSON: list of {video_id, category_id, score, segmentations}")
    ap.add_argument("--out", default=None, help="metrics JSON to write (info/DESIGN.md#metrics-json)")
    ap.add_argument("--plot", default=None, metavar="DIR", help="also save an AP bar chart and PR curves here")
    ap.add_argument("--no-hota", action="store_true", help="the AP only: skip TrackEval's HOTA")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    ap.add_argument("--workers", type=int, default=None, metavar="N",
                    help="processes for the results' mask checks and video IoUs (default: the CPUs this process may "
                         "use, at most 8; 1: none forked). The numbers do not depend on it")
    args = ap.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        ap.error(f"--workers must be at least 1, got {args.workers}")

    t0 = time.time()

    bar = None

    def progress(n, total):
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = Progress(total, "evaluation: video IoUs", unit="pair")
        bar.update(n - bar.n)

    try:
        if args.out:
            check_writable_file(args.out, "--out")
        if args.plot:
            check_writable_dir(args.plot, "--plot")
        metrics, E = evaluate_vis(args.gt, args.results, progress=progress, workers=args.workers)
    except (InputError, EvalWorkerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    t_ap = time.time() - t0
    if not args.no_hota:
        if not args.quiet:
            print("  HOTA (TrackEval) ...", file=sys.stderr, flush=True)
        try:
            metrics = add_hota(metrics, evaluate_hota(E.gt, E.results))
        except EvalInputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if E.dropped:
        print(f"warning: {E.dropped} result(s) name a category that is not in the GT; ignored, as the official "
              f"evaluation does", file=sys.stderr)
    if E.short:
        print(f"warning: {len(E.short)} result(s) list fewer segmentations than their video has frames (entries "
              f"{E.short[:5]}, 1-based); the video IoU leaves those frames out, as the official evaluation does",
              file=sys.stderr)
    if E.odd_scores:
        print(f"warning: {len(E.odd_scores)} result(s) have a score outside [0, 1] (entries {E.odd_scores[:5]}, "
              f"1-based); only their order matters to the official evaluation", file=sys.stderr)
    print(format_stats(E.stats))
    if not args.no_hota:
        print()
        print(format_hota({**metrics, "det_averaged": metrics["hota_det_averaged"]}))
    print()
    print(format_per_category(metrics))
    hota_time = "" if args.no_hota else f", HOTA in {time.time() - t0 - t_ap:.1f} s"
    print(f"({len(E.vid_ids)} videos, {len(E.cat_ids)} categories, IoU thresholds {IOU_THRS[0]:.2f}:"
          f"{IOU_THRS[-1]:.2f}; AP evaluated in {t_ap:.1f} s{hota_time})")
    if args.out:
        atomic_write_text(args.out, json.dumps(metrics, indent=2) + "\n")
        print(f"metrics written to {args.out}")
    if args.plot:
        for path in save_plots(metrics, E, args.plot):
            print(f"plot written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
