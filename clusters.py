"""Anchor k-means with the 1 - IoU distance (info/DESIGN.md#anchor-k-means).

Every non-null box is letterboxed into the input size with its VIDEO's width and height, clustered on
corner-aligned (w, h) with seeded k-means++, sorted by area and split evenly over the levels in true pixels.

    python clusters.py --ann data/shapes/train/instances.json --levels 4 --per-level 6 --size 416 \
        --out info/anchors_shapes.txt
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from config import write_anchor_file
from fileio import InputError, check_writable_file, read_json


class ClusterError(InputError):
    """Bad annotation input; the message names the file, annotation and frame."""


# ---- boxes -------------------------------------------------------------------------------------------------

def letterbox_factors(height, width, size):
    """(sx, sy) of utils.Letterbox without TensorFlow: scale = min(size/w, size/h), nw = int(scale*w), sx = nw/w."""
    h = np.asarray(height, np.float64)
    w = np.asarray(width, np.float64)
    scale = np.minimum(size / w, size / h)
    nw = np.maximum(1, np.floor(scale * w))
    nh = np.maximum(1, np.floor(scale * h))
    return nw / w, nh / h


def load_box_sizes(ann_path: str, size: int) -> np.ndarray:
    """[N, 2] float64 (w, h) of every non-null annotation box, in pixels of the size x size letterboxed input."""
    data = read_json(ann_path, "annotation file", ClusterError)
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list) \
            or not isinstance(data.get("annotations"), list):
        raise ClusterError(f"annotation file {ann_path}: expected 'videos' and 'annotations' lists")
    dims = {}
    for i, v in enumerate(data["videos"]):
        try:
            dims[int(v["id"])] = (float(v["height"]), float(v["width"]))
        except (KeyError, TypeError, ValueError):
            raise ClusterError(f"annotation file {ann_path}: videos[{i}] needs numeric 'id', 'width', 'height'") \
                from None
        if min(dims[int(v["id"])]) <= 0:
            raise ClusterError(f"annotation file {ann_path}: video {v['id']} has a non-positive width or height")
    wh, hw = [], []
    for i, a in enumerate(data["annotations"]):
        where = f"annotation file {ann_path}, annotation {i} (id {a.get('id', '?') if isinstance(a, dict) else '?'})"
        if not isinstance(a, dict) or not isinstance(a.get("bboxes"), list):
            raise ClusterError(f"{where}: needs a 'bboxes' list (one [x, y, w, h] or null per frame)")
        vid = a.get("video_id")
        if vid is None or int(vid) not in dims:
            raise ClusterError(f"{where}: video_id {vid!r} is not in 'videos'")
        for f, b in enumerate(a["bboxes"]):
            if b is None:
                continue
            if not isinstance(b, (list, tuple)) or len(b) != 4 or \
                    not all(isinstance(x, (int, float)) and np.isfinite(x) for x in b):
                raise ClusterError(f"{where}, frame {f}: bbox must be 4 finite numbers [x, y, w, h], got {b!r}")
            if b[2] < 0 or b[3] < 0:
                raise ClusterError(f"{where}, frame {f}: bbox has a negative width or height: {b!r}")
            wh.append((b[2], b[3]))
            hw.append(dims[int(vid)])
    if not wh:
        raise ClusterError(f"annotation file {ann_path}: no non-null boxes")
    wh = np.asarray(wh, np.float64)
    hw = np.asarray(hw, np.float64)
    sx, sy = letterbox_factors(hw[:, 0], hw[:, 1], size)
    return np.stack([wh[:, 0] * sx, wh[:, 1] * sy], axis=1)


# ---- k-means -----------------------------------------------------------------------------------------------

def iou_wh(boxes, centroids) -> np.ndarray:
    """IoU of corner-aligned boxes: boxes [N, 2] x centroids [K, 2] (w, h) -> [N, K]."""
    b = np.asarray(boxes, np.float64)[:, None, :]
    c = np.asarray(centroids, np.float64)[None, :, :]
    inter = np.minimum(b[..., 0], c[..., 0]) * np.minimum(b[..., 1], c[..., 1])
    union = b[..., 0] * b[..., 1] + c[..., 0] * c[..., 1] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def mean_best_iou(boxes, anchors) -> float:
    """Mean over boxes of the IoU with their best anchor (the original's line-3 statistic)."""
    return float(iou_wh(boxes, anchors).max(axis=1).mean())


def kmeans_pp_init(boxes, k, rng) -> np.ndarray:
    """k-means++ seeding under d = 1 - IoU: each next centre drawn with probability proportional to d^2."""
    centres = [boxes[rng.integers(len(boxes))]]
    d = 1.0 - iou_wh(boxes, centres)[:, 0]
    for _ in range(1, k):
        p = d ** 2
        total = p.sum()
        # All points already coincide with a centre: any point will do (the empty-cluster step sorts it out).
        i = rng.choice(len(boxes), p=p / total) if total > 0 else rng.integers(len(boxes))
        centres.append(boxes[i])
        d = np.minimum(d, 1.0 - iou_wh(boxes, boxes[i:i + 1])[:, 0])
    return np.asarray(centres, np.float64)


def kmeans_anchors(boxes, k, seed=0, max_iter=300, init=None, progress=None):
    """Cluster (w, h) boxes [N, 2] into k anchors with the 1 - IoU distance.

    Returns (anchors [k, 2] sorted by area, info) with info = {"iterations", "converged", "reseeded",
    "mean_iou"}. A cluster left empty is re-seeded with the box farthest (1 - IoU) from its own centroid.
    `init` gives the starting centroids instead of k-means++ (used by tests); `progress(iteration, changed)`
    is called after every assignment step.
    """
    boxes = np.asarray(boxes, np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 2:
        raise ValueError(f"boxes must be [N, 2] (w, h), got shape {boxes.shape}")
    boxes = boxes[(boxes[:, 0] > 0) & (boxes[:, 1] > 0)]  # a zero-area box has IoU 0 with everything
    if len(np.unique(boxes, axis=0)) < k:
        raise ValueError(f"k-means needs at least {k} distinct non-empty boxes, got {len(np.unique(boxes, axis=0))}")
    rng = np.random.default_rng(seed)
    centroids = kmeans_pp_init(boxes, k, rng) if init is None else np.array(init, np.float64)
    if centroids.shape != (k, 2):
        raise ValueError(f"init must be [{k}, 2], got {centroids.shape}")
    assign = None
    reseeded = 0
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        iou = iou_wh(boxes, centroids)
        new = iou.argmax(axis=1)                      # nearest = largest IoU; first index on ties
        counts = np.bincount(new, minlength=k)
        # Empty clusters take the box farthest from every centroid so far (each re-seeded box counts as one),
        # so two empty clusters do not land in the same far-away group.
        far = 1.0 - iou[np.arange(len(boxes)), new]
        for j in np.flatnonzero(counts == 0):
            i = int(far.argmax())
            counts[new[i]] -= 1
            new[i] = j
            counts[j] = 1
            reseeded += 1
            far = np.minimum(far, 1.0 - iou_wh(boxes, boxes[i:i + 1])[:, 0])
            far[i] = -1.0  # never the seed of two clusters, even when every distance is 0
        if progress is not None:
            progress(it, len(boxes) if assign is None else int((new != assign).sum()))
        if assign is not None and np.array_equal(new, assign):
            converged = True
            break
        assign = new
        n = np.bincount(assign, minlength=k)   # >= 1 everywhere after the re-seeding above
        centroids = np.stack([np.bincount(assign, boxes[:, 0], k) / n, np.bincount(assign, boxes[:, 1], k) / n], 1)
    order = np.argsort(centroids[:, 0] * centroids[:, 1], kind="stable")
    anchors = centroids[order]
    info = {"iterations": it, "converged": converged, "reseeded": reseeded,
            "mean_iou": mean_best_iou(boxes, anchors)}
    return anchors, info


def split_levels(anchors, levels, per_level) -> np.ndarray:
    """Area-sorted anchors [levels * per_level, 2] -> [levels, per_level, 2], smallest level first."""
    anchors = np.asarray(anchors, np.float64)
    if len(anchors) != levels * per_level:
        raise ValueError(f"{len(anchors)} anchors do not split into {levels} levels of {per_level}")
    return anchors.reshape(levels, per_level, 2)


# ---- command line ------------------------------------------------------------------------------------------

def plot_anchors(boxes, anchors, path, size):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rng = np.random.default_rng(0)
    shown = boxes if len(boxes) <= 20000 else boxes[rng.choice(len(boxes), 20000, replace=False)]
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(shown[:, 0], shown[:, 1], s=2, alpha=0.3, label=f"boxes ({len(shown)} of {len(boxes)})")
    ax.scatter(anchors[:, 0], anchors[:, 1], s=60, c="red", marker="x", label=f"anchors ({len(anchors)})")
    ax.set_xlabel(f"width (px at {size})")
    ax.set_ylabel(f"height (px at {size})")
    ax.set_xlim(0, size)
    ax.set_ylim(0, size)
    ax.legend(loc="upper left")
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, ".tmp_" + os.path.basename(path))
    fig.savefig(tmp, dpi=100, format=os.path.splitext(path)[1][1:] or "png")
    plt.close(fig)
    os.replace(tmp, path)


def _report(it, changed):
    if it == 1 or it % 10 == 0:
        print(f"  iteration {it}: {changed} boxes changed cluster", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description="k-means (1 - IoU) anchors from a YouTube-VIS annotation JSON.")
    ap.add_argument("--ann", default="data/shapes/train/instances.json", help="annotation JSON (official schema)")
    ap.add_argument("--levels", type=int, default=4, help="pyramid levels")
    ap.add_argument("--per-level", type=int, default=6, help="anchors per level")
    ap.add_argument("--size", type=int, default=416, help="square input size the boxes are letterboxed into")
    ap.add_argument("--out", default="info/anchors_shapes.txt", help="anchor file to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-iter", type=int, default=300)
    ap.add_argument("--plot", default=None, help="save a scatter of boxes and anchors here (png)")
    args = ap.parse_args(argv)
    if args.levels < 1 or args.per_level < 1 or args.size < 1 or args.max_iter < 1:
        raise SystemExit("error: --levels, --per-level, --size and --max-iter must be positive")
    k = args.levels * args.per_level
    check_writable_file(args.out, "--out")
    if args.plot:
        check_writable_file(args.plot, "--plot")
    boxes = load_box_sizes(args.ann, args.size)
    empty = int(((boxes[:, 0] <= 0) | (boxes[:, 1] <= 0)).sum())
    print(f"{len(boxes)} boxes from {args.ann}" + (f" ({empty} of zero width or height left out)" if empty else "")
          + f"; k-means with k={k} ...", flush=True)
    try:
        anchors, info = kmeans_anchors(boxes, k, seed=args.seed, max_iter=args.max_iter, progress=_report)
    except ValueError as e:
        raise SystemExit(f"error: {args.ann}: {e}") from None
    state = "converged" if info["converged"] else "stopped at the cap"
    print(f"{state} after {info['iterations']} iterations ({info['reseeded']} empty clusters re-seeded)")
    comment = (f"k-means anchors (1 - IoU) from {args.ann}: {len(boxes)} boxes, k={k}, seed {args.seed}, "
               f"mean IoU {info['mean_iou']:.4f}\nw,h pixels at the input size, sorted by area, one line per level")
    write_anchor_file(args.out, split_levels(anchors, args.levels, args.per_level), args.size, comment)
    print(f"mean IoU of the boxes with their best anchor: {info['mean_iou']:.4f}")
    print(f"wrote {args.out}")
    if args.plot:
        plot_anchors(boxes, anchors, args.plot, args.size)
        print(f"wrote {args.plot}")
    return anchors, info


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        sys.exit(f"error: {e}")
