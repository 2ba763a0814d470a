"""Benchmark of the YouTube-VIS video AP (compute_ap.py): 300 videos x 36 frames at 1280x720, 10 results a video.

GT and results are synthetic (random ellipses and rectangles, written as compressed RLE JSON in a temp folder, as
a real results file is); the figure is the wall time of `evaluate_vis` from the two files to the 12 stats.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from pycocotools import mask as mask_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from compute_ap import evaluate_vis, load_gt, load_results  # noqa: E402


def shape_polygon(rng, h, w, cx, cy, rx, ry, ellipse: bool):
    if ellipse:
        a = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        xs, ys = cx + rx * np.cos(a), cy + ry * np.sin(a)
    else:
        xs, ys = np.array([cx - rx, cx + rx, cx + rx, cx - rx]), np.array([cy - ry, cy - ry, cy + ry, cy + ry])
    return np.stack([np.clip(xs, 0, w), np.clip(ys, 0, h)], 1).ravel().tolist()


def track_rles(rng, h, w, frames, cx, cy, rx, ry, ellipse, v=(0.0, 0.0), jitter=0.0, visible=1.0):
    """One object over `frames` frames, drifting by `v` px a frame; each frame a compressed RLE (str counts)
    or None."""
    vx, vy = v
    polys, present = [], []
    for t in range(frames):
        j = rng.normal(0, jitter, 4) if jitter else np.zeros(4)
        polys.append(shape_polygon(rng, h, w, cx + vx * t + j[0], cy + vy * t + j[1],
                                   max(rx + j[2], 4), max(ry + j[3], 4), ellipse))
        present.append(rng.random() < visible)
    rles = mask_utils.frPyObjects(polys, h, w)  # one C call for the whole track
    return [{"size": r["size"], "counts": r["counts"].decode("ascii")} if p else None
            for r, p in zip(rles, present)]


def make_data(videos, frames, h, w, per_video, n_cats, seed=0):
    rng = np.random.default_rng(seed)
    gt = {"videos": [], "categories": [{"id": c, "name": f"class{c}"} for c in range(1, n_cats + 1)],
          "annotations": []}
    results = []
    for v in range(1, videos + 1):
        gt["videos"].append({"id": v, "height": h, "width": w, "length": frames,
                             "file_names": [f"v{v}/{t:05d}.jpg" for t in range(frames)]})
        objects = []
        for _ in range(int(rng.integers(1, 4))):
            o = dict(cx=rng.uniform(100, w - 100), cy=rng.uniform(100, h - 100), rx=rng.uniform(15, 250),
                     ry=rng.uniform(15, 200), ellipse=bool(rng.random() < .5), cat=int(rng.integers(1, n_cats + 1)),
                     v=tuple(rng.normal(0, 4, 2)))
            segs = track_rles(rng, h, w, frames, o["cx"], o["cy"], o["rx"], o["ry"], o["ellipse"], o["v"], visible=.95)
            objects.append(o)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "video_id": v, "category_id": o["cat"],
                                      "segmentations": segs, "iscrowd": 0,
                                      "areas": [int(mask_utils.area(s)) if s else None for s in segs]})
        for k in range(per_video):
            if k < 2 * len(objects):  # two noisy copies of each object, the rest clutter
                o = objects[k % len(objects)]
                cat = o["cat"] if rng.random() < .8 else int(rng.integers(1, n_cats + 1))
                segs = track_rles(rng, h, w, frames, o["cx"], o["cy"], o["rx"], o["ry"], o["ellipse"], o["v"],
                                  jitter=3.0 * (1 + k))
            else:
                cat = int(rng.integers(1, n_cats + 1))
                segs = track_rles(rng, h, w, frames, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, 150),
                                  rng.uniform(10, 150), bool(rng.random() < .5), tuple(rng.normal(0, 4, 2)),
                                  jitter=3.0, visible=.9)
            results.append({"video_id": v, "category_id": cat, "score": float(rng.random()), "segmentations": segs})
    return gt, results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=300)
    ap.add_argument("--frames", type=int, default=36)
    ap.add_argument("--size", default="1280x720", help="WxH of every frame")
    ap.add_argument("--per-video", type=int, default=10, help="results a video")
    ap.add_argument("--categories", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    w, h = (int(x) for x in args.size.lower().split("x"))

    t0 = time.time()
    gt, results = make_data(args.videos, args.frames, h, w, args.per_video, args.categories)
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, res_path = os.path.join(tmp, "gt.json"), os.path.join(tmp, "results.json")
        with open(gt_path, "w") as f:
            json.dump(gt, f)
        with open(res_path, "w") as f:
            json.dump(results, f)
        print(f"data: {args.videos} videos x {args.frames} frames at {w}x{h}, {len(gt['annotations'])} GT tracks, "
              f"{len(results)} results ({os.path.getsize(res_path) / 2**20:.1f} MiB results JSON; "
              f"made in {time.time() - t0:.1f} s)", flush=True)
        total, load = [], []
        for r in range(args.repeats):
            t = time.perf_counter()
            g = load_gt(gt_path)
            load_results(res_path, g)
            load.append(time.perf_counter() - t)
            t = time.perf_counter()
            metrics, _ = evaluate_vis(gt_path, res_path)
            total.append(time.perf_counter() - t)
            print(f"  run {r + 1}/{args.repeats}: {total[-1]:.2f} s (AP {metrics['AP']:.3f}, AP50 "
                  f"{metrics['AP50']:.3f})", flush=True)
    print()
    print("| stage | median s | min s | max s |")
    print("|---|---|---|---|")
    for name, xs in (("load + validate GT and results", load), ("evaluate_vis, files to 12 stats", total)):
        print(f"| {name} | {statistics.median(xs):.2f} | {min(xs):.2f} | {max(xs):.2f} |")


if __name__ == "__main__":
    main()
