"""Mask metrics: the YouTube-VIS video AP with the official youtubevos/cocoapi semantics, and frame-level mask mAP.

Video AP follows info/DESIGN.md#video-ap (each quirk of the official code) and info/DESIGN.md#evaluation-inputs; the
frame mAP used during training drives pycocotools' COCOeval on frame-level "images". numpy + pycocotools only.

    gt = load_gt("instances.json"); res = load_results("results.json", gt)
    E = YTVISEval(gt, res); E.evaluate(); E.accumulate(); stats = E.summarize()   # the official 12 stats
"""
from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import contextlib
import functools
import gc
import io
import math
import multiprocessing
import numbers
import os
import sys
from collections import defaultdict

import numpy as np
from pycocotools import mask as mask_utils

from fileio import InputError, read_json

# The official Params (ytvoseval.py). int(...) patches quirk 1 (a float `num` breaks modern NumPy); same values.
IOU_THRS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
REC_THRS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
MAX_DETS = [1, 10, 100]
AREA_RNG = [[0 ** 2, 1e5 ** 2], [0 ** 2, 128 ** 2], [128 ** 2, 256 ** 2], [256 ** 2, 1e5 ** 2]]
AREA_LBL = ["all", "small", "medium", "large"]
# (name in metrics.json, ap?, iouThr, area, maxDets): the order of the official `stats` array (info/DESIGN.md#video-ap).
STAT_SPECS = [("AP", 1, None, "all", 100), ("AP50", 1, .5, "all", 100), ("AP75", 1, .75, "all", 100),
              ("APs", 1, None, "small", 100), ("APm", 1, None, "medium", 100), ("APl", 1, None, "large", 100),
              ("AR1", 0, None, "all", 1), ("AR10", 0, None, "all", 10), ("AR100", 0, None, "all", 100),
              ("ARs", 0, None, "small", 100), ("ARm", 0, None, "medium", 100), ("ARl", 0, None, "large", 100)]
STAT_NAMES = [s[0] for s in STAT_SPECS]


class EvalInputError(InputError):
    """A GT or results file that cannot be evaluated; the message names the file and the entry."""


class EvalWorkerError(RuntimeError):
    """A forked evaluation process ended without its answer (killed, or out of memory)."""


def _without_gc(fn):
    """Runs `fn` with Python's cyclic garbage collector paused (restored after, also on an error). Loading
    builds some 10**5 dicts and lists that hold no cycles; each allocation burst made the collector walk the whole
    heap again, which cost more than the loading itself."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was_on = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_on:
                gc.enable()
    return wrapper


# ----------------------------------------------------------------------------------------------------------------
# Segmentation parsing and validation

def _is_int(x) -> bool:
    return type(x) is int or (isinstance(x, numbers.Integral) and not isinstance(x, bool))


def _plain_rle(seg):
    """The common case of to_rle without its general checks: a dict with a [h, w] list of ints and ASCII string
    counts -> compressed RLE dict with bytes counts. False when `seg` is anything else (to_rle then decides)."""
    if type(seg) is not dict:
        return False
    size, counts = seg.get("size"), seg.get("counts")
    if (type(counts) is not str or type(size) is not list or len(size) != 2 or type(size[0]) is not int
            or type(size[1]) is not int or size[0] < 0 or size[1] < 0 or not counts.isascii()):
        return False
    return {"size": [size[0], size[1]], "counts": counts.encode("ascii")}


def _compressed_totals(strings) -> np.ndarray:
    """Sum of the run lengths in each compressed RLE string (pycocotools rleFrString), -1 where malformed
    (a character outside the alphabet, a string stopping inside a value, a value of more than MAX_CHUNKS
    characters, a run length < 0 or >= 2**32)."""
    return _compressed_sums(strings)[0]


# Chunks of a compressed RLE value at most: 30 bits with the sign, any count of a frame under 2**29 pixels.
# pycocotools' decoder (rleFrString) shifts a C int by 30 and 35 for a 7th chunk and reads another number than
# the one written, so such a string is malformed here: the check and pycocotools then read every string alike.
MAX_CHUNKS = 6
RLE_BATCH = 512  # strings decoded together: ~200 kB of text, whose int64 passes stay within a core's L2 cache


def _compressed_sums(strings) -> tuple[np.ndarray, np.ndarray]:
    """(totals, areas): per compressed RLE string the sum of its run lengths as `_compressed_totals`, and the sum
    of its odd runs (the mask's pixel count, pycocotools `area`; meaningless where the total is -1)."""
    if len(strings) <= RLE_BATCH:
        return _compressed_sums_batch(strings)
    parts = [_compressed_sums_batch(strings[i:i + RLE_BATCH]) for i in range(0, len(strings), RLE_BATCH)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _compressed_sums_batch(strings) -> tuple[np.ndarray, np.ndarray]:
    """`_compressed_sums` in one set of numpy passes over all the strings.

    Answers as `_decode_compressed` does, with a third of its passes over the values: a count is a running sum of
    the deltas two places apart, so every count of a string is a difference of two entries of one cumulative sum
    over the values of one global parity (its base is fixed per string), and the checks and the total need only
    per-string minima, maxima and sums of those cumulative sums. Integer overflow of the sums wraps in int64 and
    cancels in the differences, which are small for a well-formed string."""
    n = len(strings)
    lens = np.array(list(map(len, strings)), dtype=np.int64)
    totals, areas = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    if lens.sum() == 0:
        return totals, areas
    bad = np.zeros(n, dtype=bool)
    v = np.frombuffer(b"".join(strings), dtype=np.uint8)
    bounds = np.cumsum(lens)
    starts = bounds - lens
    if v.min() < 48 or v.max() > 111:
        outside = np.flatnonzero((v < 48) | (v > 111))
        bad[np.searchsorted(bounds, outside, side="right")] = True
        v = np.clip(v, 48, 111)
    c = v - np.uint8(48)
    ends = c < 32
    nonempty = lens > 0
    last = bounds[nonempty] - 1
    bad[np.flatnonzero(nonempty)[~ends[last]]] = True  # a string that stops inside a value
    ends[last] = True  # keep values from running into the next string
    # a one-chunk value: 5 bits, two's complement (c < 32 here, but at the forced end of a string already bad)
    x = np.subtract(c[ends] ^ np.uint8(16), 16, dtype=np.int64)
    n_all = x.size
    after_cont = np.empty_like(ends)  # the character before is the middle of a value
    after_cont[0] = False
    np.logical_not(ends[:-1], out=after_cont[1:])
    long_vals = np.flatnonzero(after_cont[ends])  # the few values longer than one chunk
    if long_vals.size:
        end_char = np.flatnonzero(ends & after_cont)
        k = np.ones(long_vals.size, dtype=np.int64)  # chunks of each long value
        active = np.ones(long_vals.size, dtype=bool)
        for i in range(1, MAX_CHUNKS + 1):
            # the string's own last character is an end: a value never runs over into the previous string
            active &= (end_char - i >= 0) & ~ends[np.maximum(end_char - i, 0)]
            k += active
        bad[np.searchsorted(bounds, end_char[active], side="right")] = True  # longer than MAX_CHUNKS
        first_char = end_char - k + 1
        xl = (c[first_char] & 0x1f).astype(np.int64)
        for i in range(1, int(k.max())):
            sel = k > i
            xl[sel] |= (c[first_char[sel] + i] & 0x1f).astype(np.int64) << (5 * i)
        neg = (c[end_char] & 0x10) != 0
        xl[neg] -= np.int64(1) << (5 * k[neg])
        x[long_vals] = xl
    # values of string s: first[s] .. first[s] + n_vals[s] - 1 (global indices g)
    n_vals = np.zeros(n, dtype=np.int64)
    n_vals[nonempty] = np.add.reduceat(ends, starts[nonempty], dtype=np.int64)
    first = np.cumsum(n_vals) - n_vals
    cs = [np.cumsum(x[p::2]) for p in (0, 1)]
    totals = np.where(n_vals > 0, x[np.minimum(first, n_all - 1)], 0)  # count 0 is x_0 itself
    for p in (0, 1):
        m = cs[p].size
        lo = (first + 1 - p) // 2  # the string's first value of parity p in cs[p]
        hi = np.append(lo[1:], m)
        cnt = hi - lo
        # the chain in this parity: odd j if g of j = 0 has the other parity (base: the sum before it), even j >= 2
        # otherwise (base: the sum at j = 0, whose own count then reads 0 and adds nothing)
        odd_chain = (first % 2) != p
        base_idx = np.where(odd_chain, lo - 1, lo)
        base = np.where(base_idx >= 0, cs[p][np.clip(base_idx, 0, max(m - 1, 0))] if m else 0, 0)
        has = cnt > 0
        if has.any():
            idx = np.minimum(lo[has], m - 1)
            mn = np.minimum.reduceat(cs[p], idx)
            mx = np.maximum.reduceat(cs[p], idx)
            b = base[has]
            bad[np.flatnonzero(has)[(mn - b < 0) | (mx - b >= 2 ** 32)]] = True
            # the segments of the strings without a value here are empty: skipping them moves no boundary
            sums = np.add.reduceat(cs[p], idx) - cnt[has] * b
            totals[has] += sums
            areas[has] += np.where(odd_chain[has], sums, 0)  # the odd runs are the mask's
    x0 = x[np.minimum(first, n_all - 1)]
    bad[(n_vals > 0) & ((x0 < 0) | (x0 >= 2 ** 32))] = True
    totals[bad] = -1
    return totals, areas


def _check_rle_totals(items: list, pending: list, where) -> None:
    """Checks that the compressed run-length strings of items[k] for k in `pending` cover their frames (runs total
    height x width), in batches that stay in the CPU's caches, and sets each one's `mask_areas` (pixels a frame, 0
    where absent) from the same pass; raises for the first bad one, named by `where(k)` and its frame. Empties
    `pending`."""
    seqs = [items[k]["segmentations"] for k in pending]
    n_frames = np.fromiter((len(q) for q in seqs), dtype=np.int64, count=len(seqs))
    flat = [rle for q in seqs for rle in q]
    on = np.flatnonzero(np.fromiter((rle is not None for rle in flat), dtype=bool, count=len(flat)))
    present = [flat[i] for i in on.tolist()]
    want = np.fromiter((r["size"][0] * r["size"][1] for r in present), dtype=np.int64, count=len(present))
    areas = np.zeros(len(flat), dtype=np.int64)
    step = RLE_BATCH
    batches = [[r["counts"] for r in present[j:j + step]] for j in range(0, len(present), step)]
    for j, (totals, got) in zip(range(0, len(present), step), map(_compressed_sums_batch, batches)):
        areas[on[j:j + step]] = got
        bad = np.flatnonzero(totals != want[j:j + step])
        if bad.size:
            i = int(on[j + bad[0]])
            s = int(np.searchsorted(np.cumsum(n_frames), i, side="right"))
            t = i - int(n_frames[:s].sum())
            h, w = seqs[s][t]["size"]
            error = EvalInputError(f"{where(pending[s])} frame {t}: malformed compressed RLE (runs do not cover "
                                   f"{h}x{w} pixels)")
            error.item = pending[s]
            raise error
    bounds = np.cumsum(n_frames).tolist()
    areas = areas.tolist()
    for k, start, stop in zip(pending, [0, *bounds[:-1]], bounds):
        items[k]["mask_areas"] = areas[start:stop]
    pending.clear()


def compressed_counts(strings) -> list:
    """The run lengths of each well-formed compressed RLE string as a list of ints (the uncompressed RLE
    `counts`), None for a malformed one."""
    totals, cnts, first, n_vals = _decode_compressed(strings)
    return [None if tot < 0 else cnts[f:f + n].tolist() for tot, f, n in zip(totals, first, n_vals)]


def _decode_compressed(strings):
    """(totals, counts, first, n_vals): per string the sum of its run lengths (-1 where malformed), and all run
    lengths concatenated, string i's being counts[first[i]:first[i] + n_vals[i]].

    All strings are decoded together in numpy (no per-character Python), so checking the 36 frames of a result
    costs about as much as one frame. The format: each count is 5-bit chunks (+48, bit 0x20 = more follow,
    bit 0x10 of the last = negative), and counts from the 4th on are deltas to the count two places earlier."""
    n = len(strings)
    lens = np.array([len(c) for c in strings], dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    if lens.sum() == 0:
        zeros = np.zeros(n, dtype=np.int64)
        return zeros, zeros, zeros, zeros
    v = np.frombuffer(b"".join(strings), dtype=np.uint8)
    bounds = np.cumsum(lens)
    if v.min() < 48 or v.max() > 111:
        outside = np.flatnonzero((v < 48) | (v > 111))
        bad[np.searchsorted(bounds, outside, side="right")] = True
        v = np.clip(v, 48, 111)
    v = v - np.uint8(48)
    ends = v < 32
    last = bounds[lens > 0] - 1
    bad[np.flatnonzero(lens > 0)[~ends[last]]] = True  # a string that stops inside a value
    ends[last] = True  # keep values from running into the next string
    end_pos = np.flatnonzero(ends)
    start_pos = np.concatenate([[0], end_pos[:-1] + 1])
    chunks = end_pos - start_pos + 1
    nonempty = np.flatnonzero(lens > 0)
    n_vals = np.zeros(n, dtype=np.int64)
    n_vals[nonempty] = np.add.reduceat(ends, bounds[nonempty] - lens[nonempty], dtype=np.int64)
    val_sid = np.repeat(np.arange(n), n_vals)  # string of each value
    x = (v[start_pos] & 0x1f).astype(np.int64)
    long_vals = np.flatnonzero(chunks > 1)  # most counts fit one chunk; only the others need more passes
    if long_vals.size:
        bad[val_sid[long_vals[chunks[long_vals] > MAX_CHUNKS]]] = True
        for i in range(1, int(min(chunks.max(), 7))):
            sel = long_vals[chunks[long_vals] > i]
            x[sel] |= (v[start_pos[sel] + i] & 0x1f).astype(np.int64) << (5 * i)
    neg = (v[end_pos] & 0x10) != 0
    x[neg] -= np.int64(1) << (5 * np.minimum(chunks[neg], 7))
    # undo the deltas: per string, running sums over the odd positions and over the even ones from 2 on
    first = np.cumsum(n_vals) - n_vals  # index of each string's first value
    j = np.arange(x.size) - first[val_sid]
    odd, even = (j % 2) == 1, ((j % 2) == 0) & (j >= 2)
    cnts = x.copy()
    for sel in (odd, even):
        cs = np.cumsum(np.where(sel, x, 0))
        base = np.where(first > 0, cs[np.maximum(first - 1, 0)], 0)
        cnts[sel] = (cs - base[val_sid])[sel]
    bad[val_sid[(cnts < 0) | (cnts >= 2 ** 32)]] = True
    totals = np.zeros(n, dtype=np.int64)
    totals[nonempty] = np.add.reduceat(cnts, first[nonempty])  # a non-empty string holds at least one value
    totals[bad] = -1
    return totals, cnts, first, n_vals


def to_rle(seg, height, width, where: str, allow_polygon: bool = True, check: bool = True):
    """Any accepted segmentation -> compressed RLE dict (bytes counts), or None for an absent frame.

    Accepts uncompressed RLE (counts a list), compressed RLE (counts str/bytes) and, if `allow_polygon`,
    polygons (a list of flat [x0, y0, x1, y1, ...] lists, rasterised at `height` x `width`). A falsy value (null,
    [], {}) is an absent frame, as in the official `if seg:` tests. `where` names the entry in error messages.
    `check=False` leaves the run-length total of compressed strings to the caller's batched check."""
    if not seg:
        return None
    if isinstance(seg, list):
        if not allow_polygon:
            raise EvalInputError(f"{where}: polygons are not accepted here; use RLE")
        for p in seg:
            if (not isinstance(p, list) or len(p) < 4 or len(p) % 2
                    or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in p)):
                raise EvalInputError(f"{where}: malformed polygon (want lists of x,y pairs)")
        return mask_utils.merge(mask_utils.frPyObjects(seg, int(height), int(width)))
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise EvalInputError(f"{where}: malformed RLE (want a dict with 'size' and 'counts'), got {str(seg)[:80]}")
    size = seg["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) and v >= 0 for v in size)):
        raise EvalInputError(f"{where}: malformed RLE 'size' {size!r} (want [height, width])")
    h, w = int(size[0]), int(size[1])
    counts = seg["counts"]
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != h * w:
            raise EvalInputError(f"{where}: malformed uncompressed RLE (counts must be non-negative ints "
                                 f"summing to {h}*{w})")
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise EvalInputError(f"{where}: malformed compressed RLE (non-ASCII characters in 'counts')") from None
    if not isinstance(counts, bytes):
        raise EvalInputError(f"{where}: malformed RLE 'counts' of type {type(counts).__name__}")
    if check and _compressed_totals([counts])[0] != h * w:
        raise EvalInputError(f"{where}: malformed compressed RLE (runs do not cover {h}x{w} pixels)")
    return {"size": [h, w], "counts": counts}


def _avg_area(areas) -> float:
    """The official avg_area: mean of the truthy per-frame areas (null, 0 left out), or 0 (info/DESIGN.md#video-ap)."""
    kept = [a for a in areas if a]
    return np.array(kept).mean() if kept else 0


def _source_name(src, what: str) -> str:
    """How messages name a GT or results source: its path, or <what> for a parsed object."""
    return str(src) if isinstance(src, (str, os.PathLike)) else f"<{what}>"


def _read_json(src, what: str):
    if isinstance(src, (str, os.PathLike)):
        return read_json(os.fspath(src), what, EvalInputError), _source_name(src, what)
    return src, _source_name(src, what)


def _result_where(name: str, r: dict) -> str:
    return f"results {name}: entry {r['id'] - 1} (video_id {r['video_id']})"


# ----------------------------------------------------------------------------------------------------------------
# Loaders

@_without_gc
def load_gt(src) -> dict:
    """Read a YouTube-VIS GT JSON (path or dict) into the evaluation form.

    Returns {"videos": {id: video}, "categories": [sorted by id], "annotations": [...]} where each annotation
    keeps id, video_id, category_id, iscrowd, `segmentations` as compressed RLE or None per frame, `mask_areas`
    (pixels, 0 for absent frames) and `avg_area` from the file's `areas` field (official semantics). The input is
    not modified. A GT without `areas` falls back to mask pixel counts (the official code would crash)."""
    data, name = _read_json(src, "GT")
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list) \
            or not isinstance(data.get("categories"), list):
        raise EvalInputError(f"GT {name}: want an object with 'videos', 'annotations' and 'categories' lists")
    videos = {}
    for i, v in enumerate(data["videos"]):
        if not isinstance(v, dict) or not _is_int(v.get("id")):
            raise EvalInputError(f"GT {name}: videos[{i}] has no integer 'id'")
        for key, low in (("height", 1), ("width", 1), ("length", 0)):
            if key in v and not (_is_int(v[key]) and v[key] >= low):
                raise EvalInputError(f"GT {name}: video {v['id']}: '{key}' must be an integer >= {low}, "
                                     f"got {v[key]!r}")
        videos[v["id"]] = v
    cats = []
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            raise EvalInputError(f"GT {name}: categories[{i}] has no integer 'id'")
        cats.append({"id": c["id"], "name": str(c.get("name", c["id"]))})
    cats.sort(key=lambda c: c["id"])
    cat_ids = {c["id"] for c in cats}
    anns, pending = [], []  # pending: annotations whose run-length totals are not checked yet

    def check_pending():
        _check_rle_totals(anns, pending, lambda k: f"GT {name}: annotations[{k}] (video_id {anns[k]['video_id']})")

    try:
        for i, a in enumerate(data.get("annotations") or []):
            where = f"GT {name}: annotations[{i}]"
            if not isinstance(a, dict):
                raise EvalInputError(f"{where} is not an object")
            for key in ("id", "video_id", "category_id"):
                if not _is_int(a.get(key)):
                    raise EvalInputError(f"{where}: field '{key}' missing or not an integer")
            vid = a["video_id"]
            where += f" (video_id {vid})"
            if vid not in videos:
                raise EvalInputError(f"{where}: video_id not among the GT videos")
            if a["category_id"] not in cat_ids:
                raise EvalInputError(f"{where}: category_id {a['category_id']} is not among the GT categories "
                                     f"{sorted(cat_ids)[:10]}")
            segs = a.get("segmentations")
            if not isinstance(segs, list):
                raise EvalInputError(f"{where}: 'segmentations' must be a list (one entry per frame)")
            h, w = videos[vid].get("height"), videos[vid].get("width")
            rles = []
            for t, s in enumerate(segs):
                rle = _plain_rle(s) if s else None
                if rle is False:
                    if s and isinstance(s, list) and not (_is_int(h) and _is_int(w)):
                        raise EvalInputError(f"{where} frame {t}: polygon needs the video's height and width")
                    rle = to_rle(s, h, w, f"{where} frame {t}", check=False)
                rles.append(rle)
            anns.append({"id": a["id"], "video_id": vid, "category_id": a["category_id"],
                         "iscrowd": int(a.get("iscrowd") or 0), "segmentations": rles, "areas": a.get("areas")})
            pending.append(i)
            areas = a.get("areas")
            if areas is not None and (not isinstance(areas, list) or not all(
                    x is None or (isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
                                  and x >= 0) for x in areas)):
                check_pending()  # a malformed string of this or an earlier annotation is reported first
                raise EvalInputError(f"{where}: 'areas' must be a list of finite numbers >= 0 or nulls")
    except EvalInputError:
        check_pending()  # a malformed string in an earlier annotation is reported first, as one by one
        raise
    check_pending()
    if not anns:
        raise EvalInputError(f"GT {name}: no annotations, nothing to evaluate against (a split without ground "
                             f"truth, such as the challenge's valid or test split?)")
    for a in anns:
        areas = a.pop("areas")
        a["avg_area"] = _avg_area(a["mask_areas"] if areas is None else areas)
    return {"videos": videos, "categories": cats, "annotations": anns, "name": name}


@_without_gc
def load_results(src, gt: dict, check: bool = True) -> list:
    """Read a results list (path or list) into the evaluation form, checking every entry against `gt`.

    Each result keeps video_id, category_id, score (float), `segmentations` as compressed RLE or None per frame,
    `mask_areas`, `avg_area` (from RLE pixel counts) and `id` = 1-based position in the file, as the official
    `loadRes`. Compressed and uncompressed RLE are accepted (the official accepts compressed only).

    `check=False` leaves the run-length check of the compressed strings, and with it `mask_areas` and `avg_area`
    (None until then), to `YTVISEval.evaluate`, which does it video by video beside the IoUs, in parallel; the
    first malformed string is reported all the same. A malformed entry is reported here either way."""
    data, name = _read_json(src, "results")
    if not isinstance(data, list):
        raise EvalInputError(f"results {name}: want a list of results, got {type(data).__name__}")
    out, pending = [], []  # pending: entries whose run-length totals are not checked yet

    def check_pending():
        _check_rle_totals(out, pending, lambda k: _result_where(name, out[k]))

    try:
        _load_result_entries(data, gt, name, out, pending)
    except EvalInputError:
        check_pending()  # a malformed string in an earlier entry is reported first, as entry by entry
        raise
    if not check:
        for r in out:
            r["mask_areas"] = r["avg_area"] = None
        return out
    check_pending()
    _set_avg_areas(out)
    return out


def _set_avg_areas(results) -> None:
    for r in results:
        r["avg_area"] = _avg_area([a if s else None for a, s in zip(r["mask_areas"], r["segmentations"])])


def _load_result_entries(data, gt, name, out, pending):
    for i, r in enumerate(data):
        where = f"results {name}: entry {i}"
        if not isinstance(r, dict):
            raise EvalInputError(f"{where} is not an object")
        vid = r.get("video_id")
        if not _is_int(vid) or vid not in gt["videos"]:
            raise EvalInputError(f"{where}: video_id {vid!r} is not a GT video")
        where += f" (video_id {vid})"
        if not _is_int(r.get("category_id")):
            raise EvalInputError(f"{where}: 'category_id' missing or not an integer")
        score = r.get("score")
        if not isinstance(score, numbers.Real) or isinstance(score, bool) or not math.isfinite(score):
            raise EvalInputError(f"{where}: 'score' {score!r} is not a finite number")
        segs = r.get("segmentations")
        if not isinstance(segs, list):
            raise EvalInputError(f"{where}: 'segmentations' must be a list (one RLE or null per frame)")
        rles = [_plain_rle(s) if s else None for s in segs]
        if False in rles:  # another form: to_rle converts it or names what is wrong
            rles = [to_rle(s, None, None, f"{where} frame {t}", allow_polygon=False, check=False)
                    if rle is False else rle for t, (s, rle) in enumerate(zip(segs, rles))]
        pending.append(len(out))
        out.append({"id": i + 1, "video_id": vid, "category_id": r["category_id"], "score": float(score),
                    "segmentations": rles})


# ----------------------------------------------------------------------------------------------------------------
# Video IoU and matching

def video_iou(dt_seqs, gt_seqs, dt_areas=None, gt_areas=None, dt_groups=None, gt_groups=None) -> np.ndarray:
    """[D, G] video IoU = sum_t |D_t & G_t| / sum_t |D_t | G_t| over zip(dt, gt) frames (info/DESIGN.md#video-ap).

    Sequences are lists of compressed RLE or None. Frames beyond the shorter sequence of a pair are skipped; a
    frame present on one side only adds its area to the union; masks of different sizes add nothing; U == 0 gives
    0. Intersections come from pycocotools `iou` over every result and GT mask present in the same frame (many
    frames a call, `_stacked_frames_iou`; one call a frame when the masks differ in size) and are recovered as
    exact integers (I = iou*(A+B)/(1+iou), rounded: the float error is far below 0.5 pixel). With `dt_groups` /
    `gt_groups` (a label per sequence, e.g. the category), pairs of different labels are left at 0, and a
    sequence whose label the other side lacks is not decoded at all."""
    D, G = len(dt_seqs), len(gt_seqs)
    if D == 0 or G == 0:
        return np.zeros((D, G))
    if dt_groups is not None:  # a sequence without a partner of its label takes no part
        common = set(dt_groups) & set(gt_groups)
        di = [k for k, label in enumerate(dt_groups) if label in common]
        gi = [k for k, label in enumerate(gt_groups) if label in common]
        if len(di) < D or len(gi) < G:
            out = np.zeros((D, G))
            if di and gi:
                out[np.ix_(di, gi)] = video_iou(
                    [dt_seqs[k] for k in di], [gt_seqs[k] for k in gi],
                    None if dt_areas is None else [dt_areas[k] for k in di],
                    None if gt_areas is None else [gt_areas[k] for k in gi],
                    [dt_groups[k] for k in di], [gt_groups[k] for k in gi])
            return out
    if dt_areas is None:
        dt_areas = [[int(mask_utils.area(s)) if s else 0 for s in seq] for seq in dt_seqs]
    if gt_areas is None:
        gt_areas = [[int(mask_utils.area(s)) if s else 0 for s in seq] for seq in gt_seqs]
    d_len = np.array([len(s) for s in dt_seqs])
    g_len = np.array([len(s) for s in gt_seqs])
    T = int(min(d_len.max(), g_len.max()))
    d_a, g_a = np.zeros((D, T), dtype=np.int64), np.zeros((G, T), dtype=np.int64)
    for a, areas in ((d_a, dt_areas), (g_a, gt_areas)):
        for k, seq in enumerate(areas):
            n = min(len(seq), T)
            a[k, :n] = seq[:n]  # 0 for an absent frame
    # the pairs' common frames (zip): frame t counts for (d, g) iff t < both lengths
    both_len = np.minimum(d_len[:, None], g_len[None, :])  # [D, G]
    # every present frame adds its area to the union; pairs present on both sides are corrected below
    cd = np.concatenate([np.zeros((D, 1), np.int64), np.cumsum(d_a, axis=1)], axis=1)
    cg = np.concatenate([np.zeros((G, 1), np.int64), np.cumsum(g_a, axis=1)], axis=1)
    union = np.take_along_axis(cd, both_len, axis=1) + np.take_along_axis(cg, both_len.T, axis=1).T
    one_size = len({tuple(r["size"]) for seq in (*dt_seqs, *gt_seqs) for r in seq if r is not None}) <= 1
    if one_size:  # the common case: an empty mask adds nothing to I or U, so only non-empty ones are compared
        d_on, g_on = d_a > 0, g_a > 0
    else:  # an empty mask of another size than its partner still takes the partner's area out of the union
        d_on, g_on = np.zeros((D, T), bool), np.zeros((G, T), bool)
        for on, seqs in ((d_on, dt_seqs), (g_on, gt_seqs)):
            for k, seq in enumerate(seqs):
                on[k, :min(len(seq), T)] = [r is not None for r in seq[:T]]
    # every (frame, d, g) with both masks, in the order of the iou blocks below: frame, then d, then g
    t, r, c = np.nonzero(d_on.T[:, :, None] & g_on.T[:, None, :])
    if t.size:
        if one_size:
            iou = _stacked_frames_iou(dt_seqs, gt_seqs, d_on, g_on, t, r, c)
        else:
            ious = []
            for f in np.unique(t).tolist():
                d_rles = [dt_seqs[k][f] for k in np.flatnonzero(d_on[:, f]).tolist()]
                g_rles = [gt_seqs[k][f] for k in np.flatnonzero(g_on[:, f]).tolist()]
                ious.append(_frame_iou(d_rles, g_rles))
            iou = np.concatenate(ious)
        ab = d_a[r, t] + g_a[c, t]
        same = iou >= 0
        iou = np.maximum(iou, 0.0)
        i_exact = np.rint(iou * ab / (1.0 + iou)).astype(np.int64)
        # a pair of the same size: A + B - I instead of the A + B counted above; of different sizes: nothing
        # (A + B taken back)
        flat = r * G + c
        inter = np.bincount(flat, weights=i_exact, minlength=D * G).astype(np.int64).reshape(D, G)
        union -= np.bincount(flat, weights=np.where(same, i_exact, ab), minlength=D * G).astype(np.int64).reshape(D, G)
    else:
        inter = np.zeros((D, G), dtype=np.int64)
    # float sums of integers are exact, so this equals the official i / u
    out = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    if dt_groups is not None:
        out[np.asarray(dt_groups)[:, None] != np.asarray(gt_groups)[None, :]] = 0.0
    return out


STACK_PAIRS = 1 << 18  # (result, GT) mask pairs of one pycocotools call in _stacked_frames_iou: 2 MiB of IoUs


def _stacked_frames_iou(dt_seqs, gt_seqs, d_on, g_on, t, r, c) -> np.ndarray:
    """pycocotools' IoU of masks dt_seqs[r][t] and gt_seqs[c][t] for each triple, all masks of one size, from a few
    calls over many frames at once. Frame f's masks go in labelled width + f: pycocotools compares the sizes of a
    pair before merging its runs and gives -1 for different ones, so a pair of two frames costs only its bounding
    box test, while the bounding boxes and run lengths, which never read the width, are unchanged. One call a
    frame cost more in Python than pycocotools spent in C."""
    frames = np.unique(t)
    dm, gm = d_on[:, frames].T, g_on[:, frames].T  # [frames with a pair, D], [.., G]
    d_row = np.cumsum(dm.ravel()).reshape(dm.shape) - 1  # the place of (frame, d) in the frame-major stack
    g_col = np.cumsum(gm.ravel()).reshape(gm.shape) - 1
    at = np.searchsorted(frames, t)
    rows, cols = d_row[at, r], g_col[at, c]
    n_d, n_g = dm.sum(1), gm.sum(1)
    d_start, g_start = np.cumsum(n_d) - n_d, np.cumsum(n_g) - n_g  # a frame's first row and column
    h, w = next(x for seq in dt_seqs for x in seq if x is not None)["size"]
    out = np.empty(t.size)
    j0 = 0
    while j0 < frames.size:
        j1, nd, ng = j0 + 1, int(n_d[j0]), int(n_g[j0])
        while j1 < frames.size and (nd + n_d[j1]) * (ng + n_g[j1]) <= STACK_PAIRS:
            nd, ng, j1 = nd + int(n_d[j1]), ng + int(n_g[j1]), j1 + 1
        d_rles, g_rles = [], []
        for j in range(j0, j1):
            f = int(frames[j])
            d_rles += [{"size": [h, w + f], "counts": dt_seqs[k][f]["counts"]} for k in np.flatnonzero(dm[j]).tolist()]
            g_rles += [{"size": [h, w + f], "counts": gt_seqs[k][f]["counts"]} for k in np.flatnonzero(gm[j]).tolist()]
        block = np.asarray(mask_utils.iou(d_rles, g_rles, [0] * len(g_rles)), dtype=np.float64).reshape(nd, ng)
        sel = (at >= j0) & (at < j1)
        out[sel] = block[rows[sel] - d_start[j0], cols[sel] - g_start[j0]]
        j0 = j1
    return out


def _frame_iou(d_rles, g_rles) -> np.ndarray:
    """pycocotools' IoU of every d against every g of one frame, flattened d-major; -1 for a pair of different
    mask sizes."""
    d_sizes, g_sizes = [tuple(x["size"]) for x in d_rles], [tuple(x["size"]) for x in g_rles]
    iou = np.full((len(d_rles), len(g_rles)), -1.0)  # -1: sizes differ, the pair merges to an empty mask
    for size in set(d_sizes) & set(g_sizes):
        ri = [i for i, s in enumerate(d_sizes) if s == size]
        ci = [j for j, s in enumerate(g_sizes) if s == size]
        block = mask_utils.iou([d_rles[i] for i in ri], [g_rles[j] for j in ci], [0] * len(ci))
        iou[np.ix_(ri, ci)] = np.asarray(block).reshape(len(ri), len(ci))
    return iou.ravel()


def _greedy_match(ious, gt_ignore, gt_crowd, gt_ids, dt_ids):
    """The official per-threshold greedy matching (ytvoseval.evaluateVid), kept as plain loops because each
    match depends on the previous ones. Returns dtm [T, D] (matched gt id), gtm [T, G], dtIg [T, D]."""
    T, D, G = len(IOU_THRS), len(dt_ids), len(gt_ids)
    gtm = np.zeros((T, G))
    dtm = np.zeros((T, D))
    dt_ig = np.zeros((T, D))
    if D == 0 or G == 0:
        return dtm, gtm, dt_ig
    ious = ious.tolist()
    gt_ignore = [int(g) for g in gt_ignore]
    for tind, t in enumerate(IOU_THRS.tolist()):
        matched = [0] * G
        for dind in range(D):
            best, m = min([t, 1 - 1e-10]), -1
            row = ious[dind]
            for gind in range(G):
                if matched[gind] > 0 and not gt_crowd[gind]:  # crowd gts can be matched again
                    continue
                if m > -1 and gt_ignore[m] == 0 and gt_ignore[gind] == 1:  # ignored gts sort last
                    break
                if row[gind] < best:  # an equal IoU does not skip: the later gt wins the tie
                    continue
                best, m = row[gind], gind
            if m == -1:
                continue
            dt_ig[tind, dind] = gt_ignore[m]
            dtm[tind, dind] = gt_ids[m]
            gtm[tind, m] = dt_ids[dind]
            matched[m] = dt_ids[dind]
    return dtm, gtm, dt_ig


def _worker_count(workers, n_videos: int) -> int:
    if multiprocessing.current_process().daemon:  # a daemonic process (a multiprocessing.Pool's) may not fork
        return 1
    if workers is None:
        if n_videos < 16 or sys.platform != "linux":
            return 1
        workers = min(len(os.sched_getaffinity(0)), 8)
    return max(1, min(int(workers), n_videos))


_FORKED_EVAL = None    # in a forked worker only: the parent's YTVISEval, set by _init_forked
_FORKED_CLAIMS = None  # and the chunks' claim flags, shared with the parent


def _init_forked(E, claims) -> None:
    global _FORKED_EVAL, _FORKED_CLAIMS
    _FORKED_EVAL, _FORKED_CLAIMS = E, claims


def _claim(claims, index: int) -> bool:
    """Marks chunk `index` taken; False if a process had taken it already."""
    with claims.get_lock():
        if claims[index]:
            return False
        claims[index] = 1
        return True


def _forked_share(index, videos):
    """A forked worker's E._evaluate_share(videos), its IoU matrices packed into one array (a pickle of thousands
    of small arrays costs more than computing them); None when the parent had claimed the chunk."""
    if not _claim(_FORKED_CLAIMS, index):
        return None
    share = _FORKED_EVAL._evaluate_share(videos)
    checked = share.pop("checked")
    if checked and not share["bad"]:  # the pixel counts this process found, for the parent's results
        share["areas"] = ([r["id"] for r in checked], [len(r["mask_areas"]) for r in checked],
                          np.array([a for r in checked for a in r["mask_areas"]], dtype=np.int64))
    ious = share.pop("ious")
    flat = [m.ravel() for m in ious.values()]
    share["packed"] = list(ious), [m.shape for m in ious.values()], np.concatenate(flat) if flat else np.zeros(0)
    return share


def _unpack_share(share: dict) -> dict:
    keys, shapes, flat = share.pop("packed")
    share["ious"], at = {}, 0
    for key, (d, g) in zip(keys, shapes):
        share["ious"][key] = flat[at:at + d * g].reshape(d, g)
        at += d * g
    return share


def _map_videos(E, videos: list, workers: int):
    """Yields E._evaluate_share(chunk) for chunks of `videos`, in any order. With `workers` > 1, `workers` - 1
    forked processes take chunks from the front while this process takes them from the back, so that the caller's
    matching of a finished chunk overlaps the work still being done; the forked ones read E from the parent's
    memory and send back only the IoUs and pixel counts. Chunks are contiguous runs of videos of about equal work
    (results + GT tracks), 8 a worker, so that progress moves and the last chunk is short."""
    if workers <= 1:
        for i in range(0, len(videos), 8):
            yield E._evaluate_share(videos[i:i + 8])
        return
    cost = np.cumsum([sum(len(E._dts[vid, c]) + len(E._gts[vid, c]) for c in cats) + len(E._unchecked[vid]) + 1
                      for vid, cats in videos])
    cuts = np.searchsorted(cost, cost[-1] * np.arange(1, 8 * workers) / (8 * workers), side="right")
    bounds = [0, *sorted(set(cuts.tolist()) - {0, len(videos)}), len(videos)]
    chunks = [videos[i:j] for i, j in zip(bounds[:-1], bounds[1:])]
    # Each chunk goes to whichever process claims it first (a shared flag per chunk), not by cancelling the
    # futures: a cancel racing with a pool that breaks (a worker killed) can leave Python 3.11's executor with
    # futures it never finishes (info/DESIGN.md#video-ap).
    # E and the flags reach the forked processes as the initializer's arguments, which a fork passes in memory.
    ctx = multiprocessing.get_context("fork")
    claims = ctx.Array("b", len(chunks))
    with concurrent.futures.ProcessPoolExecutor(workers - 1, mp_context=ctx, initializer=_init_forked,
                                                initargs=(E, claims)) as pool:
        try:
            futures = [pool.submit(_forked_share, i, chunk) for i, chunk in enumerate(chunks)]
            for i in reversed(range(len(chunks))):
                if not _claim(claims, i):  # a forked process has it: the rest of the front is theirs too
                    break
                yield E._evaluate_share(chunks[i])
            for future in concurrent.futures.as_completed(futures):
                share = future.result()
                if share is not None:
                    yield _unpack_share(share)
        except concurrent.futures.process.BrokenProcessPool:
            raise EvalWorkerError("a forked evaluation process ended without its answer (killed, or out of "
                                  "memory?); nothing was written: evaluate again with fewer workers (evaluate.py "
                                  "--workers; 1 keeps it in one process)") from None
        finally:  # on an error (or a caller that stops early) the chunks not yet started are skipped
            with claims.get_lock():
                claims[:] = [1] * len(chunks)


class YTVISEval:
    """The official YTVOSeval (segm) on `load_gt` / `load_results` output: evaluate, accumulate, summarize.

    After `accumulate()`, `eval["precision"]` is [T, R, K, A, M] and `eval["recall"]` [T, K, A, M] with -1 where a
    (category, area) has no non-ignored GT; `summarize()` fills `stats` (12 values, official order) and
    `per_category` ({category id: AP@[.5:.95], area all, maxDets 100})."""

    def __init__(self, gt: dict, results: list, results_name: str = "<results>"):
        self.gt, self.results, self.results_name = gt, results, results_name
        self.vid_ids = sorted(gt["videos"])
        self.cat_ids = sorted(c["id"] for c in gt["categories"])
        cat_set = set(self.cat_ids)
        # results for a category the GT does not list are dropped, as getAnnIds(catIds=...) does (quirk 8)
        self.dropped = sum(1 for r in results if r["category_id"] not in cat_set)
        # results with fewer frames than their video: the official IoU leaves the frames past the shorter
        # sequence out of both the intersection and the union, so such a result can score higher (kept; warned)
        lengths = {vid: v.get("length") for vid, v in gt["videos"].items()}
        self.short = [r["id"] for r in results
                      if _is_int(lengths[r["video_id"]]) and len(r["segmentations"]) < lengths[r["video_id"]]]
        # the official evaluation only ranks scores; outside [0, 1] they are most likely a bug upstream
        self.odd_scores = [r["id"] for r in results if not 0.0 <= r["score"] <= 1.0]
        self._gts, self._dts = defaultdict(list), defaultdict(list)
        for g in gt["annotations"]:  # file order within a (video, category), as the official index
            if g["category_id"] in cat_set:
                self._gts[g["video_id"], g["category_id"]].append(g)
        for d in results:
            if d["category_id"] in cat_set:
                self._dts[d["video_id"], d["category_id"]].append(d)
        # results from load_results(check=False), by video in file order: evaluate() checks them
        self._unchecked = defaultdict(list)
        for r in results:
            if r["mask_areas"] is None:
                self._unchecked[r["video_id"]].append(r)
        self.ious, self.eval_vids, self.eval, self.stats, self.per_category = {}, {}, {}, [], {}

    def _top_dts(self, vid, cat):
        """The (video, category)'s results in the official order: by descending score (stable), at most 100."""
        dt = self._dts[vid, cat]
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")[:MAX_DETS[-1]]
        return [dt[i] for i in order]

    def compute_iou(self, vid, cat):
        gt, dt = self._gts[vid, cat], self._top_dts(vid, cat)
        return video_iou([d["segmentations"] for d in dt], [g["segmentations"] for g in gt],
                         [d["mask_areas"] for d in dt], [g["mask_areas"] for g in gt])

    def compute_video_ious(self, vid, cats):
        """compute_iou for every category of one video from one video_iou over all its results and GT, pairs of
        one category only (the frame loop and arithmetic once for the video); the same numbers."""
        dts = {cat: self._top_dts(vid, cat) for cat in cats}
        dt = [d for cat in cats for d in dts[cat]]
        gt = [g for cat in cats for g in self._gts[vid, cat]]
        ious = video_iou([d["segmentations"] for d in dt], [g["segmentations"] for g in gt],
                         [d["mask_areas"] for d in dt], [g["mask_areas"] for g in gt],
                         [d["category_id"] for d in dt], [g["category_id"] for g in gt])
        out, r, c = {}, 0, 0
        for cat in cats:
            nd, ng = len(dts[cat]), len(self._gts[vid, cat])
            out[cat] = ious[r:r + nd, c:c + ng] if ious.size else np.zeros((nd, ng))
            r, c = r + nd, c + ng
        return out

    def evaluate_vid(self, vid, cat, a_rng, max_det, _dt=None):
        gt, dt = self._gts[vid, cat], self._dts[vid, cat]
        if not gt and not dt:
            return None
        if _dt is None:
            _dt = self._sorted_dts(vid, cat, max_det)
        dt, scores, ids, areas = _dt
        out = ((areas < a_rng[0]) | (areas > a_rng[1]))[None, :]
        if not gt:  # what the general path gives without a gt: nothing matched, the out-of-range results ignored
            T = len(IOU_THRS)
            return {"dtScores": scores, "dtMatches": np.zeros((T, len(dt))), "gtMatches": np.zeros((T, 0)),
                    "gtIgnore": np.array([]), "dtIgnore": np.repeat(out, T, axis=0), "dtIds": ids, "gtIds": []}
        g_ignore = [1 if (g["iscrowd"] or g["avg_area"] < a_rng[0] or g["avg_area"] > a_rng[1]) else 0
                    for g in gt]
        gt_order = np.argsort(g_ignore, kind="mergesort")
        gt = [gt[i] for i in gt_order]
        g_ignore = np.array([g_ignore[i] for i in gt_order])
        ious = self.ious[vid, cat][:, gt_order]
        dtm, gtm, dt_ig = _greedy_match(ious, g_ignore, [g["iscrowd"] for g in gt], [g["id"] for g in gt], ids)
        # unmatched detections outside the area range are ignored (a gt id of 0 counts as unmatched, as official)
        dt_ig = np.logical_or(dt_ig, np.logical_and(dtm == 0, out))
        return {"dtScores": scores, "dtMatches": dtm, "gtMatches": gtm,
                "gtIgnore": g_ignore, "dtIgnore": dt_ig, "dtIds": ids, "gtIds": [g["id"] for g in gt]}

    def _sorted_dts(self, vid, cat, max_det):
        """The results of one (video, category) by descending score (stable), at most `max_det`, with their
        scores, ids and average areas: the same for the four area ranges."""
        dt = self._dts[vid, cat]
        dt_order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in dt_order[:max_det]]
        return (dt, [d["score"] for d in dt], [d["id"] for d in dt],
                np.array([d["avg_area"] for d in dt], dtype=np.float64))

    @_without_gc
    def evaluate(self, progress=None, workers=None):
        """IoUs for every (video, category) that has a gt or a result, then matching per area range.

        The run-length check that load_results(check=False) left is done here, video by video before the IoUs.
        `workers` > 1 shares both among this process and `workers` - 1 forked ones (Linux; the numbers and errors
        are the same); None takes the CPUs this process may use, at most 8, for 16 videos or more, and one process
        in a daemonic process (which may not fork)."""
        pairs = sorted(set(self._gts) | set(self._dts))
        by_video = defaultdict(list)
        for vid, cat in pairs:
            by_video[vid].append(cat)
        for vid in self._unchecked:  # a video whose results all name categories outside the GT: checked only
            by_video.setdefault(vid, [])
        self.ious, self.eval_vids = {}, {}
        by_id = {r["id"]: r for r in self.results} if self._unchecked else {}
        bad = []
        for share in _map_videos(self, list(by_video.items()), _worker_count(workers, len(by_video))):
            if share["bad"]:
                bad.append(share["bad"])
                continue
            if "areas" in share:  # checked in a forked process: the pixel counts it found
                ids, n_frames, areas = share["areas"]
                for i, n, start in zip(ids, n_frames, np.cumsum(n_frames) - n_frames):
                    by_id[i]["mask_areas"] = areas[start:start + n].tolist()
                _set_avg_areas([by_id[i] for i in ids])
            self.ious.update(share["ious"])
            for vid, cat in share["ious"]:
                dts = self._sorted_dts(vid, cat, MAX_DETS[-1])
                for a, rng in enumerate(AREA_RNG):
                    self.eval_vids[cat, a, vid] = self.evaluate_vid(vid, cat, rng, MAX_DETS[-1], dts)
            if progress:
                progress(len(self.ious), len(pairs))
        if bad:  # the first malformed string of the file, as load_results would have named it
            raise EvalInputError(min(bad)[1])
        self._unchecked.clear()

    def _evaluate_share(self, videos) -> dict:
        """The work of evaluate() on [(video id, [category ids])] that can run in a forked process: the run-length
        check of the videos' results that load_results(check=False) left, then the IoUs. Returns {"ious": {(vid,
        cat): IoU matrix}, "checked": the results checked, "bad": None or (result id, message) for the first
        malformed string, when no IoU is computed}."""
        todo = sorted((r for vid, _ in videos for r in self._unchecked.get(vid, ())), key=lambda r: r["id"])
        share = {"ious": {}, "checked": todo, "bad": None}
        if todo:
            try:
                _check_rle_totals(todo, list(range(len(todo))), lambda k: _result_where(self.results_name, todo[k]))
            except EvalInputError as e:
                share["bad"] = (todo[e.item]["id"], str(e))
                return share
            _set_avg_areas(todo)
        share["ious"] = {(vid, cat): iou for vid, cats in videos if cats
                         for cat, iou in self.compute_video_ious(vid, cats).items()}
        return share

    def accumulate(self):
        T, R, K, A, M = len(IOU_THRS), len(REC_THRS), len(self.cat_ids), len(AREA_RNG), len(MAX_DETS)
        precision = -np.ones((T, R, K, A, M))
        recall = -np.ones((T, K, A, M))
        scores = -np.ones((T, R, K, A, M))
        by_cat_area = defaultdict(list)
        for (cat, a, vid), e in self.eval_vids.items():
            if e is not None:
                by_cat_area[cat, a].append((vid, e))
        for k, cat in enumerate(self.cat_ids):
            for a in range(A):
                E = [e for _, e in sorted(by_cat_area.get((cat, a), ()), key=lambda item: item[0])]  # by video id
                if not E:
                    continue
                gt_ig = np.concatenate([e["gtIgnore"] for e in E])
                npig = np.count_nonzero(gt_ig == 0)
                if npig == 0:
                    continue
                # every video's results joined once; "the first max_det of each video" is then a rank mask
                n_dt = np.array([len(e["dtScores"]) for e in E])
                rank = np.arange(n_dt.sum()) - np.repeat(np.cumsum(n_dt) - n_dt, n_dt)
                all_scores = np.concatenate([np.asarray(e["dtScores"], dtype=np.float64) for e in E])
                all_dtm = np.concatenate([e["dtMatches"] for e in E], axis=1)
                all_dt_ig = np.concatenate([e["dtIgnore"] for e in E], axis=1)
                for m, max_det in enumerate(MAX_DETS):
                    keep = rank < max_det
                    dt_scores = all_scores[keep]
                    inds = np.argsort(-dt_scores, kind="mergesort")
                    scores_sorted = dt_scores[inds]
                    dtm = all_dtm[:, keep][:, inds]
                    dt_ig = all_dt_ig[:, keep][:, inds]
                    tps = np.logical_and(dtm, np.logical_not(dt_ig))
                    fps = np.logical_and(np.logical_not(dtm), np.logical_not(dt_ig))
                    tp_sum = np.cumsum(tps, axis=1).astype(float)
                    fp_sum = np.cumsum(fps, axis=1).astype(float)
                    nd = tp_sum.shape[1]
                    # the official per-threshold arithmetic, all thresholds at once (the same float operations)
                    rc = tp_sum / npig
                    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
                    recall[:, k, a, m] = rc[:, -1] if nd else 0
                    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # monotone from the right
                    idx = np.stack([np.searchsorted(rc[t], REC_THRS, side="left") for t in range(T)])
                    ok = idx < nd  # recall levels never reached keep precision 0
                    at = np.minimum(idx, max(nd - 1, 0))
                    if nd:
                        precision[:, :, k, a, m] = np.where(ok, np.take_along_axis(pr, at, axis=1), 0.0)
                        scores[:, :, k, a, m] = np.where(ok, scores_sorted[at], 0.0)
                    else:
                        precision[:, :, k, a, m] = 0.0
                        scores[:, :, k, a, m] = 0.0
        self.eval = {"counts": [T, R, K, A, M], "precision": precision, "recall": recall, "scores": scores}

    def _summarize(self, ap=1, iou_thr=None, area="all", max_dets=100):
        aind = [i for i, lbl in enumerate(AREA_LBL) if lbl == area]
        mind = [i for i, md in enumerate(MAX_DETS) if md == max_dets]
        s = self.eval["precision"] if ap == 1 else self.eval["recall"]
        if iou_thr is not None:
            s = s[np.where(iou_thr == IOU_THRS)[0]]
        s = s[:, :, :, aind, mind] if ap == 1 else s[:, :, aind, mind]
        return -1 if len(s[s > -1]) == 0 else np.mean(s[s > -1])

    def summarize(self, verbose: bool = False) -> np.ndarray:
        """The 12 official stats as float64; with `verbose` prints the official table."""
        if not self.eval:
            raise RuntimeError("run accumulate() first")
        self.stats = np.zeros((12,))
        for i, (_, ap, thr, area, md) in enumerate(STAT_SPECS):
            self.stats[i] = self._summarize(ap, thr, area, md)
        prec = self.eval["precision"]
        for k, cat in enumerate(self.cat_ids):
            s = prec[:, :, k, 0, -1]
            self.per_category[cat] = -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))
        if verbose:
            print(format_stats(self.stats))
        return self.stats


def format_stats(stats) -> str:
    """The 12 stats as the official summarize() prints them."""
    lines = []
    for (_, ap, thr, area, md), v in zip(STAT_SPECS, stats):
        title, kind = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
        iou = f"{IOU_THRS[0]:0.2f}:{IOU_THRS[-1]:0.2f}" if thr is None else f"{thr:0.2f}"
        lines.append(f" {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6s} | maxDets={md:>3d} ] = {v:0.3f}")
    return "\n".join(lines)


@_without_gc
def evaluate_vis(gt, results, verbose: bool = False, progress=None, workers=None):
    """Load (paths or parsed JSON), evaluate, accumulate and summarize. Returns (metrics dict, YTVISEval).
    `workers`: processes for the video IoUs, as YTVISEval.evaluate.

    `metrics` is the info/DESIGN.md#metrics-json dict: the 12 stats by name plus per_category {name: {id, AP}}. An empty
    results list gives AP 0 for categories with GT and -1 elsewhere (info/DESIGN.md#evaluation-inputs)."""
    if not (isinstance(gt, dict) and isinstance(gt.get("videos"), dict)):  # not yet through load_gt
        gt = load_gt(gt)
    res = load_results(results, gt, check=False)  # the strings are checked by E.evaluate, beside the IoUs
    E = YTVISEval(gt, res, _source_name(results, "results"))
    E.evaluate(progress=progress, workers=workers)
    E.accumulate()
    stats = E.summarize(verbose=verbose)
    metrics = {name: float(v) for name, v in zip(STAT_NAMES, stats)}
    names = {c["id"]: c["name"] for c in gt["categories"]}
    metrics["per_category"] = {names[c]: {"id": c, "AP": E.per_category[c]} for c in E.cat_ids}
    return metrics, E


# ----------------------------------------------------------------------------------------------------------------
# Frame-level mask mAP (training-time metric)

def frame_map(gt_frames, dt_frames, categories) -> dict:
    """COCO mask mAP over frames, via pycocotools COCOeval(iouType='segm') on frame-level "images".

    gt_frames: [{"id": int image id, "height": int, "width": int,
                 "instances": [{"category_id": int, "segmentation": RLE | polygon, "iscrowd": 0/1 (optional)}]}]
    dt_frames: [{"id": int image id (one of gt_frames), "instances": [{"category_id": int, "score": float,
                 "segmentation": RLE}]}]  (frames without detections may be left out)
    categories: [{"id": int, "name": str}] or a list of ids.
    RLE may be compressed (str/bytes counts) or uncompressed (list counts).
    Returns {"mAP": AP@[.5:.95], "mAP50": AP@.5, "per_category": {name: {"id", "AP"}}} with COCO semantics
    (maxDets 100 a frame, area "all"; -1 for a category without GT, excluded from the means)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cats = [c if isinstance(c, dict) else {"id": int(c), "name": str(c)} for c in categories]
    images, anns = [], []
    sizes = {}
    for f in gt_frames:
        images.append({"id": f["id"], "height": f["height"], "width": f["width"]})
        sizes[f["id"]] = (f["height"], f["width"])
        for inst in f.get("instances", []):
            rle = to_rle(inst["segmentation"], f["height"], f["width"], f"gt frame {f['id']}")
            if rle is None:
                continue
            anns.append({"id": len(anns) + 1, "image_id": f["id"], "category_id": inst["category_id"],
                         "segmentation": rle, "area": float(mask_utils.area(rle)),
                         "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": int(inst.get("iscrowd", 0))})
    dets = []
    for f in dt_frames:
        if f["id"] not in sizes:
            raise EvalInputError(f"detections for frame {f['id']}, which is not a GT frame")
        for inst in f.get("instances", []):
            rle = to_rle(inst["segmentation"], *sizes[f["id"]], f"detection on frame {f['id']}",
                         allow_polygon=False)
            if rle is None:
                continue
            dets.append({"image_id": f["id"], "category_id": inst["category_id"], "score": float(inst["score"]),
                         "segmentation": rle})
    cat_ids = sorted(c["id"] for c in cats)
    names = {c["id"]: c.get("name", str(c["id"])) for c in cats}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress we do not want in training logs
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": anns, "categories": cats}
        coco_gt.createIndex()
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:  # loadRes cannot take an empty list; an empty result set is still a valid (all-miss) answer
            coco_dt = COCO()
            coco_dt.dataset = {"images": images, "annotations": [], "categories": cats}
            coco_dt.createIndex()
        E = COCOeval(coco_gt, coco_dt, iouType="segm")
        E.params.catIds = cat_ids
        E.evaluate()
        E.accumulate()
        E.summarize()
    prec = E.eval["precision"]  # [T, R, K, A, M]
    per_cat = {}
    for k, cid in enumerate(cat_ids):
        s = prec[:, :, k, 0, -1]
        per_cat[names[cid]] = {"id": cid, "AP": -1.0 if not (s > -1).any() else float(np.mean(s[s > -1]))}
    return {"mAP": float(E.stats[0]), "mAP50": float(E.stats[1]), "per_category": per_cat}
