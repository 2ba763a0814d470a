"""Benchmark of the YouTube-VIS video AP (compute_ap.py): 300 videos x 36 frames at 1280x720, 10 results a video.

GT and results are synthetic (random ellipses and rectangles, written as compressed RLE JSON in a temp folder, as
a real results file is); the figure is the wall time of `evaluate_vis` from the two files to the 12 stats, and of
`scripts/evaluate.py --no-hota` as a process. With `--official DIR` (a folder holding the official
youtubevos/cocoapi `ytvos.py` and `ytvoseval.py`, e.g. PythonAPI/pycocotools of a checkout; nothing is downloaded)
the official evaluation runs beside ours in each repeat, right after ours in the same mode, in-process and as a
process; its 12 stats (and in-process its precision and recall arrays) must equal ours to the last digit, and
the ratio of each pair's wall times is printed (a shared machine's speed drifts within minutes: the pairs, seconds
apart, drift less). Ours checks the RLE strings and computes the video IoUs in this process and one forked
process per further CPU (at most 8 in all); the row "workers=1" is ours in this process alone, against the
official code's one process. CPU seconds (forked processes' included) are printed beside wall seconds.

    python bench/bench_eval.py [--official /tmp/cocoapi/PythonAPI/pycocotools] [--data /tmp/bench_eval_data]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types

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


def import_official(folder: str):
    """The official ytvos / ytvoseval modules from `folder`, as package `ytvis_official` whose `mask` is the
    installed pycocotools.mask (the one they were written against; `from . import mask` in both files)."""
    for name in ("ytvos.py", "ytvoseval.py"):
        if not os.path.isfile(os.path.join(folder, name)):
            sys.exit(f"bench_eval: --official {folder}: no {name} there (want youtubevos/cocoapi's "
                     f"PythonAPI/pycocotools folder)")
    pkg = types.ModuleType("ytvis_official")
    pkg.__path__ = [os.path.abspath(folder)]
    sys.modules["ytvis_official"] = pkg
    sys.modules["ytvis_official.mask"] = mask_utils
    return importlib.import_module("ytvis_official.ytvos"), importlib.import_module("ytvis_official.ytvoseval")


@contextlib.contextmanager
def modern_numpy_shims():
    """The two calls of the official code that NumPy 2 rejects, accepted for its run only: np.linspace with a
    float `num` (Params) and the removed alias np.float (accumulate). Neither changes a value."""
    linspace = np.linspace
    np.linspace = lambda start, stop, num=50, **kw: linspace(start, stop, int(num), **kw)
    np.float = float
    try:
        yield
    finally:
        np.linspace = linspace
        del np.float


def run_official(folder: str, gt_path: str, res_path: str, arrays: bool = False):
    """The official evaluation from the two files to the 12 stats (its progress prints swallowed); with `arrays`,
    (stats, precision, recall)."""
    ytvos, ytvoseval = import_official(folder)
    with modern_numpy_shims(), contextlib.redirect_stdout(io.StringIO()):
        gt = ytvos.YTVOS(gt_path)
        dt = gt.loadRes(res_path)
        E = ytvoseval.YTVOSeval(gt, dt, "segm")
        E.evaluate()
        E.accumulate()
        E.summarize()
    if arrays:
        return np.asarray(E.stats), np.asarray(E.eval["precision"]), np.asarray(E.eval["recall"])
    return np.asarray(E.stats)


def timed(fn):
    """(result, wall s, CPU s) of fn() in this process, the CPU time of the processes it forked included."""
    def cpu():
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + kids.ru_utime + kids.ru_stime
    t, c = time.perf_counter(), cpu()
    out = fn()
    return out, time.perf_counter() - t, cpu() - c


def timed_process(cmd):
    """(stdout, wall s, CPU s) of a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sys.exit(f"bench_eval: {' '.join(cmd[:3])} ... failed:\n{r.stderr[-2000:]}")
    return r.stdout, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=300)
    ap.add_argument("--frames", type=int, default=36)
    ap.add_argument("--size", default="1280x720", help="WxH of every frame")
    ap.add_argument("--per-video", type=int, default=10, help="results a video")
    ap.add_argument("--categories", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--official", default=None, metavar="DIR",
                    help="folder with the official youtubevos/cocoapi ytvos.py and ytvoseval.py: timed beside ours")
    ap.add_argument("--data", default=None, metavar="DIR",
                    help="keep the generated gt.json / results.json here and reuse them when present")
    ap.add_argument("--official-once", nargs=3, metavar=("DIR", "GT", "RESULTS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.official_once:  # the child process of the official 'as a process' timing: prints its 12 stats
        print(json.dumps(run_official(*args.official_once).tolist()))
        return
    w, h = (int(x) for x in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data or tmp
        gt_path, res_path = os.path.join(folder, "gt.json"), os.path.join(folder, "results.json")
        if not (args.data and os.path.isfile(gt_path) and os.path.isfile(res_path)):
            t0 = time.time()
            os.makedirs(folder, exist_ok=True)
            gt, results = make_data(args.videos, args.frames, h, w, args.per_video, args.categories)
            for path, obj in ((gt_path, gt), (res_path, results)):
                with open(path + ".tmp", "w") as f:
                    json.dump(obj, f)
                os.replace(path + ".tmp", path)
            print(f"data made in {time.time() - t0:.1f} s", flush=True)
        with open(gt_path) as f:
            g = json.load(f)
        print(f"data ({folder}): {len(g['videos'])} videos, {len(g['annotations'])} GT tracks, "
              f"{os.path.getsize(res_path) / 2**20:.1f} MiB results JSON", flush=True)
        del g
        rows = {}
        evaluate_py = [sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), "--gt", gt_path,
                       "--results", res_path, "--no-hota", "--quiet"]
        for r in range(args.repeats):  # each of ours right before the official's same kind of run
            (metrics, E), wall, cpu = timed(lambda: evaluate_vis(gt_path, res_path))
            ours, ours_arrays = E.stats.copy(), (E.eval["precision"].copy(), E.eval["recall"].copy())
            del E  # nothing of ours stays alive to slow the next runs' garbage collections
            rows.setdefault("ours: evaluate_vis, files to 12 stats (in-process)", []).append((wall, cpu))
            line = f"  run {r + 1}/{args.repeats}: ours {wall:.2f} s wall / {cpu:.2f} s CPU (AP {metrics['AP']:.3f})"
            if args.official:
                (stats, *arrays), wall, cpu = timed(lambda: run_official(args.official, gt_path, res_path, True))
                rows.setdefault("official: YTVOS, loadRes, evaluate/accumulate/summarize (in-process)",
                                []).append((wall, cpu))
                same = np.array_equal(stats, ours) and all(map(np.array_equal, arrays, ours_arrays))
                line += (f"; official {wall:.2f} s wall / {cpu:.2f} s CPU, 12 stats and the precision and recall "
                         f"arrays identical: {same}")
                if not same:
                    sys.exit(f"bench_eval: the stats differ:\n ours     {ours.tolist()}\n official "
                             f"{stats.tolist()}")
            _, wall, cpu = timed_process(evaluate_py)
            rows.setdefault("ours: scripts/evaluate.py --no-hota (process)", []).append((wall, cpu))
            if args.official:
                out, wall, cpu = timed_process([sys.executable, os.path.abspath(__file__), "--official-once",
                                                args.official, gt_path, res_path])
                rows.setdefault("official: the same as a process", []).append((wall, cpu))
                if json.loads(out.strip().splitlines()[-1]) != ours.tolist():
                    sys.exit("bench_eval: the official process's stats differ from ours")
            (m1, _), wall, cpu = timed(lambda: evaluate_vis(gt_path, res_path, workers=1))
            rows.setdefault("ours: evaluate_vis(..., workers=1), no process forked", []).append((wall, cpu))
            if m1 != metrics:
                sys.exit("bench_eval: one process and several give different metrics")
            del m1, _
            (_, wall, cpu) = timed(lambda: (load_results(res_path, load_gt(gt_path)), None)[1])
            rows.setdefault("ours: load + validate GT and results", []).append((wall, cpu))
            print(line, flush=True)
    print()
    print(f"load average {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} CPUs")
    print("| stage | median wall s | min wall s | median CPU s | min CPU s |")
    print("|---|---|---|---|---|")
    for name, xs in rows.items():
        walls, cpus = [x[0] for x in xs], [x[1] for x in xs]
        print(f"| {name} | {statistics.median(walls):.2f} | {min(walls):.2f} | {statistics.median(cpus):.2f} | "
              f"{min(cpus):.2f} |")
    if args.official:  # each repeat's pair ran seconds apart: their ratio follows the machine's drift less
        print()
        for mode, ours_row, official_row in (
                ("in-process", "ours: evaluate_vis, files to 12 stats (in-process)",
                 "official: YTVOS, loadRes, evaluate/accumulate/summarize (in-process)"),
                ("as a process", "ours: scripts/evaluate.py --no-hota (process)", "official: the same as a process")):
            ratios = [o[0] / u[0] for u, o in zip(rows[ours_row], rows[official_row])]
            print(f"official / ours wall time {mode}, each repeat: {' '.join(f'{x:.2f}' for x in ratios)} "
                  f"(median {statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()
