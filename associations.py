"""Association heuristics of the YOLOV4+1Tr tracker: mask-IoU + class cost, Gating, Best Friend, Lonely Best Friend.

Implements info/DESIGN.md#t1-cost and T2 (the report's "class+mask IoU" cost; the original `associations.py`
is the lam=0 case, info/DESIGN.md#the-original-association). Pure numpy + pycocotools on RLE, no dense full-frame masks.

    cost = cost_matrix(det_rles, det_classes, track_rles, track_classes, lam=0.5)   # [D, T] float64
    matches, new_dets, doubtful = associate(cost, tau=0.99, gamma=0.01)
"""
import numpy as np
from pycocotools import mask as mask_utils


def cost_matrix(det_rles, det_classes, track_rles, track_classes, lam):
    """Cost [D, T] float64: (1 - maskIoU) + lam * [class_i != class_j] (info/DESIGN.md#t1-cost).

    det_rles / track_rles are COCO RLE dicts ({"size": [h, w], "counts": str or bytes}) of one frame size;
    maskIoU is pycocotools `mask.iou` with iscrowd=0, computed for all pairs in one call.
    """
    num_dets, num_tracks = len(det_rles), len(track_rles)
    if len(det_classes) != num_dets or len(track_classes) != num_tracks:
        raise ValueError(f"cost_matrix: {num_dets} detection masks but {len(det_classes)} classes, "
                         f"{num_tracks} track masks but {len(track_classes)} classes")
    if num_dets == 0 or num_tracks == 0:
        return np.zeros((num_dets, num_tracks), np.float64)
    iou = np.asarray(mask_utils.iou(list(det_rles), list(track_rles), [0] * num_tracks), np.float64)
    iou = iou.reshape(num_dets, num_tracks)
    mismatch = (np.asarray(det_classes)[:, None] != np.asarray(track_classes)[None, :]).astype(np.float64)
    return (1.0 - iou) + float(lam) * mismatch


def gate(cost, tau):
    """Gating: each detection's best track is its row argmin (first index on ties).

    Returns (best [D] int, passed [D] bool); passed iff cost[i, best[i]] < tau. With no tracks, best is -1 and
    nothing passes (every detection starts a track).
    """
    cost = np.asarray(cost, np.float64)
    num_dets, num_tracks = cost.shape
    if num_tracks == 0:
        return np.full(num_dets, -1, np.int64), np.zeros(num_dets, bool)
    best = np.argmin(cost, axis=1)  # numpy returns the first index of the minimum
    passed = cost[np.arange(num_dets), best] < tau
    return best.astype(np.int64), passed


def best_friend(cost, best, passed):
    """Best Friend: a passing pair (i, best[i]) survives iff i is also the argmin of column best[i] over ALL
    detections (first index on ties). Returns survived [D] bool (False for rows that did not pass the gate)."""
    cost = np.asarray(cost, np.float64)
    num_dets = cost.shape[0]
    survived = np.zeros(num_dets, bool)
    if num_dets == 0 or cost.shape[1] == 0:
        return survived
    column_best = np.argmin(cost, axis=0)  # [T]
    rows = np.nonzero(passed)[0]
    survived[rows] = column_best[best[rows]] == rows
    return survived


def lonely_best_friend(cost, pairs, gamma):
    """Lonely Best Friend: with every pair's own entry set to +inf, prune (i, j) iff
    min(row i) - cost[i, j] < gamma or min(column j) - cost[i, j] < gamma, minima over the whole matrix.

    `pairs` is a list of (det, track) that survived Best Friend. Returns kept [len(pairs)] bool. A row or column
    with no other entry has minimum +inf and never prunes. `cost` is not modified.
    """
    cost = np.asarray(cost, np.float64)
    if len(pairs) == 0:
        return np.zeros(0, bool)
    rows = np.array([p[0] for p in pairs], np.int64)
    cols = np.array([p[1] for p in pairs], np.int64)
    own = cost[rows, cols]
    masked = cost.copy()
    masked[rows, cols] = np.inf
    # inf - finite = inf, never < gamma, so a lonely pair is always kept.
    pruned = (masked.min(axis=1)[rows] - own < gamma) | (masked.min(axis=0)[cols] - own < gamma)
    return ~pruned


def associate(cost, tau, gamma):
    """Gating, Best Friend and Lonely Best Friend on one frame's costs (info/DESIGN.md#t2-gating-and-best-friends).

    Returns (matches, new_dets, doubtful): matches a list of (det, track) in ascending detection order;
    new_dets the detections whose best cost is >= tau (or all of them when there is no track); doubtful the
    detections that passed the gate but failed Best Friend or Lonely Best Friend. Each detection is in exactly
    one of the three lists; indices are plain ints.
    """
    cost = np.asarray(cost, np.float64)
    if cost.ndim != 2:
        raise ValueError(f"associate: cost must be [D, T], got shape {cost.shape}")
    best, passed = gate(cost, tau)
    survived = best_friend(cost, best, passed)
    pairs = [(int(i), int(best[i])) for i in np.nonzero(survived)[0]]
    kept = lonely_best_friend(cost, pairs, gamma)
    matches = [pair for pair, keep in zip(pairs, kept) if keep]
    new_dets = [int(i) for i in np.nonzero(~passed)[0]]
    matched = {i for i, _ in matches}
    doubtful = [int(i) for i in np.nonzero(passed)[0] if int(i) not in matched]
    return matches, new_dets, doubtful
