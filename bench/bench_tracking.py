"""Benchmark of the tracking stage (info/DESIGN.md#t1-cost): association on RLE
with pycocotools against the original's dense full-frame masks (decode to HxW, flatten, matrix product), at
1280x720, per frame with 10 and 50 detections, and frames/s of a 300-frame video from frame predictions to results.

    python bench/bench_tracking.py [--reps 5] [--frames 300] [--dense-frames 30]
"""
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

import tracking.tracks as tracks_module  # noqa: E402
from associations import associate, cost_matrix  # noqa: E402
from config import TrackConfig  # noqa: E402
from tracking.io import read_frame_predictions, write_frame_predictions, write_results  # noqa: E402

H, W = 720, 1280


def ellipse_rle(cy, cx, ry, rx):
    """Compressed RLE (counts str) of a 32-gon ellipse, rasterised by pycocotools from the polygon."""
    a = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    poly = np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], 1).clip(0, [W - 1, H - 1]).ravel().tolist()
    rle = mask_utils.merge(mask_utils.frPyObjects([poly], H, W))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def random_objects(rng, n):
    """n objects: centre, radii (40..200 px) and a velocity of a few px per frame."""
    centre = rng.uniform([100, 100], [H - 100, W - 100], size=(n, 2))
    radii = rng.uniform(40, 200, size=(n, 2))
    velocity = rng.uniform(-6, 6, size=(n, 2))
    return centre, radii, velocity


def frame_masks(objects, t):
    centre, radii, velocity = objects
    # bounce between 50 px from each border: a triangular wave of period 2 * span
    span = np.array([H - 100, W - 100], np.float64)
    pos = (centre + velocity * t - 50) % (2 * span)
    pos = np.where(pos > span, 2 * span - pos, pos) + 50
    return [ellipse_rle(p[0], p[1], r[0], r[1]) for p, r in zip(pos, radii)]


def dense_cost_matrix(det_rles, det_classes, track_rles, track_classes, lam):
    """The original's approach (info/DESIGN.md#the-original-association): decode every mask to dense HxW (here with
    pycocotools' C decoder, much faster than the original's pure-Python one), flatten, IoU by a float32 matrix
    product; the same class term as cost_matrix so decisions can be compared."""
    if len(det_rles) == 0 or len(track_rles) == 0:
        return np.zeros((len(det_rles), len(track_rles)), np.float64)
    m1 = mask_utils.decode(list(det_rles)).reshape(-1, len(det_rles)).astype(np.float32)
    m2 = mask_utils.decode(list(track_rles)).reshape(-1, len(track_rles)).astype(np.float32)
    inter = m1.T @ m2
    union = m1.sum(0)[:, None] + m2.sum(0)[None, :] - inter
    iou = (inter / union).astype(np.float64)
    mismatch = (np.asarray(det_classes)[:, None] != np.asarray(track_classes)[None, :]).astype(np.float64)
    return (1.0 - iou) + lam * mismatch


def timed(fn, reps):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, times


def fmt(times, unit=1e3):
    return (f"{statistics.median(times) * unit:9.2f} {min(times) * unit:9.2f} {max(times) * unit:9.2f}")


def bench_association(rng, n, reps, dense_reps):
    """One frame: n detections (objects at t=1) against n tracks (the same objects at t=0)."""
    objects = random_objects(rng, n)
    tracks, dets = frame_masks(objects, 0), frame_masks(objects, 1)
    classes = list(rng.integers(1, 41, size=n))
    cfg = TrackConfig()

    def run(cost_fn):
        cost = cost_fn(dets, classes, tracks, classes, cfg.lam)
        return associate(cost, cfg.tau, cfg.gamma)

    rle_out, rle_times = timed(lambda: run(cost_matrix), reps)
    dense_out, dense_times = timed(lambda: run(dense_cost_matrix), dense_reps)
    return rle_times, dense_times, rle_out == dense_out, len(rle_out[0])


def synthetic_predictions(rng, frames, n):
    """Frame predictions (info/DESIGN.md#frame-predictions) of one video: n moving objects, each missed ~10 %."""
    objects = random_objects(rng, n)
    classes = rng.integers(1, 41, size=n)
    video = {"id": 1, "width": W, "height": H, "length": frames,
             "file_names": [f"bench/{t:05d}.jpg" for t in range(frames)], "frames": []}
    for t in range(frames):
        masks = frame_masks(objects, t)
        scores = rng.uniform(0.3, 1.0, size=n)
        dets = [{"score": round(float(scores[k]), 3), "category_id": int(classes[k]), "bbox": [0, 0, 1, 1],
                 "segmentation": masks[k]} for k in np.argsort(-scores) if rng.random() > 0.1]
        video["frames"].append({"index": t, "detections": dets})
    return {"categories": [{"id": i, "name": f"class_{i}"} for i in range(1, 41)], "videos": [video]}


def end_to_end(path, out):
    """Frame-predictions file to results file: read + validate, track, write."""
    data = read_frame_predictions(path)
    results = tracks_module.track_predictions(data, TrackConfig(), source=path, validate=False)
    write_results(out, results)
    return results


def track_prefix(data, frames, cost_fn):
    """Tracking only (no file I/O) of the first `frames` frames, with the given cost function patched in."""
    v = data["videos"][0]
    data = dict(data, videos=[dict(v, length=frames, frames=v["frames"][:frames], file_names=v["file_names"][:frames])])
    saved = tracks_module.cost_matrix
    tracks_module.cost_matrix = cost_fn
    try:
        return tracks_module.track_predictions(data, TrackConfig(), validate=False)
    finally:
        tracks_module.cost_matrix = saved


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each timing (median, min, max shown)")
    ap.add_argument("--dense-reps", type=int, default=3, help="repetitions of the (slow, memory-hungry) dense path")
    ap.add_argument("--frames", type=int, default=300, help="frames of the end-to-end video")
    ap.add_argument("--objects", type=int, default=10, help="objects in the end-to-end video")
    ap.add_argument("--dense-frames", type=int, default=30,
                    help="frames of that video run with dense masks (the dense path is too slow for all of them)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    print(f"association of one {W}x{H} frame (cost matrix + gating/BF/LBF), ms: median min max")
    print(f"{'detections x tracks':<20} {'path':<22} {'median':>9} {'min':>9} {'max':>9}   speed-up  same decisions")
    speedups = []
    for n in (10, 50):
        rle_t, dense_t, same, matched = bench_association(rng, n, args.reps, args.dense_reps)
        speedup = statistics.median(dense_t) / statistics.median(rle_t)
        speedups.append(speedup)
        print(f"{f'{n} x {n}':<20} {'RLE (pycocotools iou)':<22} {fmt(rle_t)}")
        print(f"{f'{n} x {n}':<20} {'dense HxW matmul':<22} {fmt(dense_t)}   {speedup:7.1f}x  {same} "
              f"({matched} matches)", flush=True)
    print(f"target (issue 9): RLE association at least 20x faster than dense masks at {W}x{H}: "
          f"{'met' if min(speedups) >= 20 else 'NOT met'} (smallest speed-up {min(speedups):.0f}x)")

    with tempfile.TemporaryDirectory() as tmp:
        pred_path, out_path = os.path.join(tmp, "frames.json"), os.path.join(tmp, "results.json")
        start = time.perf_counter()
        write_frame_predictions(pred_path, synthetic_predictions(rng, args.frames, args.objects))
        print(f"\nbuilt a {args.frames}-frame {W}x{H} video with {args.objects} objects "
              f"({os.path.getsize(pred_path) / 2**20:.1f} MiB of frame predictions, "
              f"{time.perf_counter() - start:.1f} s)", flush=True)
        results, times = timed(lambda: end_to_end(pred_path, out_path), args.reps)
        print("end to end (read + validate + track + write results), frames/s: median min max")
        print(f"{f'RLE, {args.frames} frames':<32} {fmt([args.frames / t for t in times], 1)}   "
              f"({len(results)} tracks kept, {statistics.median(times):.2f} s a run)", flush=True)
        data = read_frame_predictions(pred_path)
    prefix = min(args.dense_frames, args.frames)
    rle_prefix, rle_times = timed(lambda: track_prefix(data, prefix, cost_matrix), args.reps)
    dense_prefix, dense_times = timed(lambda: track_prefix(data, prefix, dense_cost_matrix), args.dense_reps)
    speedup = statistics.median(dense_times) / statistics.median(rle_times)
    print(f"tracking only (no file I/O), first {prefix} frames, frames/s: median min max")
    print(f"{'RLE':<32} {fmt([prefix / t for t in rle_times], 1)}")
    print(f"{'dense HxW matmul':<32} {fmt([prefix / t for t in dense_times], 1)}   {speedup:.1f}x, "
          f"same results: {json.dumps(rle_prefix) == json.dumps(dense_prefix)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
