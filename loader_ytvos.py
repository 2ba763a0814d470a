"""YouTube-VIS 2019/2021 annotations and the tf.data training/validation pipeline (info/DESIGN.md#data-pipeline;
the original loader's bugs fixed here are rows of info/DIFFERENCES.md: video-level split, crop on all four
sides, a working brightness (HSV) jitter, frames without instances kept, every segmentation form decoded).

    ytvis = load_annotations("data/shapes/train/instances.json")
    train_ids, val_ids = split_videos(ytvis, 0.1, seed=0)
    ds = build_dataset(cfg, ann_path, "data/shapes/train/JPEGImages", video_ids=train_ids, training=True)

Per frame, Python only reads the annotations (masks go from run lengths straight to mask_res) and plans the
geometry; the image is decoded by TF ops and resized, jittered and pasted by cv2, outside the GIL on every core.
"""
from __future__ import annotations

import argparse
import io
import itertools
import numbers
import os
import sys
import threading
from typing import NamedTuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from fileio import InputError, check_writable_file, confined_path, read_bytes, read_json
from utils import Letterbox

GRAY = 128


class AnnotationError(InputError):
    """The annotation file is malformed; the message names the file and the video/annotation/frame/field."""


class FrameError(InputError):
    """A frame file is missing or cannot be decoded; the message names the file, the video and the frame."""


# ---- annotations -------------------------------------------------------------------------------------------

class YTVIS(dict):
    """The official JSON (a dict: `videos`, `annotations`, `categories`, ...) plus indexes built once.

    Attributes: `path`; `video_by_id` {id: video dict}; `labels` {category_id: 1..K (position in `categories` + 1)};
    `anns_by_video` {video_id: [annotation dict]}; `frame_index` {video_id: [[annotation position in
    anns_by_video[video_id]] per frame]} listing the instances with a non-null segmentation in each frame.
    """

    def frame_instances(self, video_id: int, frame: int) -> list:
        """Instances present in one frame: dicts with annotation_id, category_id, label, bbox, segmentation."""
        anns = self.anns_by_video[video_id]
        return [{"annotation_id": anns[k]["id"], "category_id": anns[k]["category_id"],
                 "label": self.labels[anns[k]["category_id"]],
                 "bbox": (anns[k].get("bboxes") or [None] * (frame + 1))[frame],
                 "segmentation": anns[k]["segmentations"][frame]}
                for k in self.frame_index[video_id][frame]]

    def samples(self, video_ids=None, frame_stride: int = 1) -> list:
        """(video_id, frame) pairs of every annotated frame of the videos (every `frame_stride`-th), in order."""
        ids = [v["id"] for v in self["videos"]] if video_ids is None else list(video_ids)
        out = []
        for vid in ids:
            if vid not in self.video_by_id:
                raise KeyError(f"{self.path}: video id {vid} is not in the annotation file")
            out.extend((vid, t) for t in range(0, int(self.video_by_id[vid]["length"]), max(1, int(frame_stride))))
        return out


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _need(obj, key, where, path):
    if not isinstance(obj, dict) or key not in obj:
        raise AnnotationError(f"{path}: {where}: missing key {key!r}")
    return obj[key]


def _seg_size(seg, where, path):
    if isinstance(seg, dict):
        size = _need(seg, "size", where, path)
        _need(seg, "counts", where, path)
        return list(size)
    if isinstance(seg, list):
        return None   # polygons carry no size
    raise AnnotationError(f"{path}: {where}: segmentation must be an RLE dict, a polygon list or null, "
                          f"got {type(seg).__name__}")


def load_annotations(path: str) -> YTVIS:
    """Read and validate an official YouTube-VIS (2019 or 2021) annotation JSON; one pass, O(size of the file)."""
    data = read_json(path, "annotation file", AnnotationError)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: the top level must be a JSON object")
    for key in ("videos", "annotations", "categories"):
        if not isinstance(_need(data, key, "top level", path), list):
            raise AnnotationError(f"{path}: top level: {key!r} must be a list")
    y = YTVIS(data)
    y.path = path
    y.labels = {}
    for i, c in enumerate(data["categories"]):
        y.labels[int(_need(c, "id", f"categories[{i}]", path))] = i + 1
        _need(c, "name", f"categories[{i}]", path)
    y.video_by_id = {}
    for i, v in enumerate(data["videos"]):
        where = f"videos[{i}]"
        for key in ("id", "width", "height", "length", "file_names"):
            _need(v, key, where, path)
        where = f"video {v['id']}"
        for key, low in (("width", 1), ("height", 1), ("length", 0)):
            if not _is_int(v[key]) or v[key] < low:
                raise AnnotationError(f"{path}: {where}: field {key!r} must be an integer >= {low}, got {v[key]!r}")
        if not isinstance(v["file_names"], list):
            raise AnnotationError(f"{path}: {where}: field 'file_names' must be a list")
        for t, name in enumerate(v["file_names"]):
            # frames are read from the split's JPEGImages folder and nowhere else
            confined_path("JPEGImages", name, f"{path}: {where}, file_names[{t}]", AnnotationError)
        if len(v["file_names"]) != v["length"]:
            raise AnnotationError(f"{path}: {where}: field 'file_names' has {len(v['file_names'])} entries but "
                                  f"'length' is {v['length']}")
        if v["id"] in y.video_by_id:
            raise AnnotationError(f"{path}: {where}: duplicate video id")
        y.video_by_id[v["id"]] = v
    y.anns_by_video = {vid: [] for vid in y.video_by_id}
    y.frame_index = {vid: [[] for _ in range(int(v["length"]))] for vid, v in y.video_by_id.items()}
    for i, a in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        for key in ("id", "video_id", "category_id", "segmentations"):
            _need(a, key, where, path)
        where = f"annotation {a['id']} (video {a['video_id']})"
        v = y.video_by_id.get(a["video_id"])
        if v is None:
            raise AnnotationError(f"{path}: {where}: field 'video_id' {a['video_id']} is not a video of the file")
        if a["category_id"] not in y.labels:
            raise AnnotationError(f"{path}: {where}: field 'category_id' {a['category_id']} is not in 'categories'")
        segs = a["segmentations"]
        if not isinstance(segs, list) or len(segs) != v["length"]:
            n = len(segs) if isinstance(segs, list) else type(segs).__name__
            raise AnnotationError(f"{path}: {where}: field 'segmentations' has {n} entries, the video's 'length' "
                                  f"is {v['length']}")
        for key in ("bboxes", "areas"):
            if key in a and (not isinstance(a[key], list) or len(a[key]) != v["length"]):
                raise AnnotationError(f"{path}: {where}: field {key!r} must list one entry per frame "
                                      f"({v['length']})")
        pos = len(y.anns_by_video[a["video_id"]])
        y.anns_by_video[a["video_id"]].append(a)
        frames = y.frame_index[a["video_id"]]
        hw = [v["height"], v["width"]]
        for t, seg in enumerate(segs):
            if seg is None:
                continue
            size = _seg_size(seg, f"{where}, frame {t}, field 'segmentations'", path)
            if size is not None and size != hw:
                raise AnnotationError(f"{path}: {where}, frame {t}: segmentation 'size' {size} differs from the "
                                      f"video's [height, width] {hw}")
            frames[t].append(pos)
    return y


# ---- segmentations as column runs ---------------------------------------------------------------------------

def decode_segmentation(seg, height: int, width: int) -> np.ndarray:
    """uint8 [height, width] mask from uncompressed RLE, compressed RLE (str or bytes counts), polygons or None."""
    if seg is None:
        return np.zeros((height, width), np.uint8)
    return mask_util.decode(_to_rle(seg, height, width))


def _to_rle(seg, height, width):
    """A compressed pycocotools RLE for any accepted segmentation form."""
    if isinstance(seg, list):   # polygons: a list of [x0, y0, x1, y1, ...]
        return mask_util.merge(mask_util.frPyObjects(seg, height, width))
    counts = seg["counts"]
    if isinstance(counts, list):
        return mask_util.frPyObjects({"counts": counts, "size": [height, width]}, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"counts": counts, "size": [height, width]}


def _string_counts(s) -> np.ndarray:
    """Run lengths from pycocotools' compressed counts string (vectorised rleFrString of maskApi.c): each number
    is 5-bit groups, low first, in chars offset by 48 (bit 0x20: more groups follow; bit 0x10 of the last group:
    negative); from the fourth number on, a number is the difference to the number two places earlier."""
    c = np.frombuffer(s.encode("ascii") if isinstance(s, str) else bytes(s), np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, np.int64)
    last = (c & 0x20) == 0                                   # the char closing a number
    num = np.concatenate([[0], np.cumsum(last[:-1])])        # number each char belongs to
    first = np.concatenate([[0], np.flatnonzero(last)[:-1] + 1])
    pos = np.arange(c.size) - first[num]                     # group position inside its number
    x = np.zeros(int(num[-1]) + 1, np.int64)
    np.add.at(x, num, (c & 0x1F) << (5 * pos))
    ends = np.flatnonzero(last)
    neg = (c[ends] & 0x10) != 0
    x[neg] |= -1 << (5 * (pos[ends][neg] + 1))
    out = x.copy()
    out[2::2] = np.cumsum(x[2::2])                           # counts[m] = x[m] + counts[m - 2] for m > 2
    out[3::2] = x[1] + np.cumsum(x[3::2])
    return out


def rle_counts(seg, height: int, width: int) -> np.ndarray:
    """Uncompressed column-major run lengths (background first) of any accepted segmentation form."""
    if seg is None:
        return np.array([height * width], np.int64)
    if isinstance(seg, dict) and isinstance(seg["counts"], list):
        return np.asarray(seg["counts"], np.int64)   # the official train.json form: no decoding at all
    return _string_counts(_to_rle(seg, height, width)["counts"])


def column_runs(counts: np.ndarray, height: int):
    """The foreground of column-major run lengths as vertical runs, one per (column, run): int64 arrays
    (x, y_start, y_end), y_end exclusive. O(number of runs + columns crossed), never O(frame)."""
    bounds = np.cumsum(counts)
    n_fg = len(counts) // 2
    starts, ends = bounds[0:2 * n_fg:2], bounds[1:2 * n_fg + 1:2]
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    c0, c1 = starts // height, (ends - 1) // height           # a run may continue into the next columns
    n = c1 - c0 + 1
    run = np.repeat(np.arange(len(starts)), n)
    x = c0[run] + np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    y0 = np.maximum(starts[run] - x * height, 0)
    y1 = np.minimum(ends[run] - x * height, height)
    return x, y0, y1


def split_videos(ytvis: YTVIS, val_fraction: float, seed: int = 0):
    """Seeded video-level split (info/DESIGN.md#validation-split): whole videos to one side; returns (train, val)."""
    ids = sorted(v["id"] for v in ytvis["videos"])
    n_val = int(round(len(ids) * float(val_fraction)))
    if val_fraction > 0 and len(ids) > 1:
        n_val = min(max(n_val, 1), len(ids) - 1)
    perm = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in perm[:n_val])
    val_set = set(val)
    return [i for i in ids if i not in val_set], val


# ---- one sample: the plan and the targets (numpy, annotation side) ------------------------------------------
#
# A sample is made in two halves. `prepare_sample` (Python) reads the frame file's bytes and header, decides the
# geometry from the annotations and the sample's random draws, and computes the targets (boxes, labels, masks at
# mask_res straight from the run lengths). `render_image` (TF ops and cv2, outside the GIL, parallel in tf.data)
# decodes the JPEG window at 1/1..1/8 scale; `finish_canvas` resizes, jitters HSV, pastes and flips, per the plan.

# Random draws of one sample, uniform in [0, 1): one slot per decision, so the geometry is a pure function of the
# sample's draws (build_dataset draws them with tf.random.stateless_uniform from (seed, epoch, sample)).
DRAWS = ("crop", "crop_left", "crop_top", "crop_right", "crop_bottom", "scale", "translate", "shift_x", "shift_y",
         "flip", "hsv", "hue", "saturation", "value")
_D = {name: i for i, name in enumerate(DRAWS)}

# What render_image needs, in one int32 vector: the decoder (0: decode_image, 1..4: JPEG at 1/1, 1/2, 1/4, 1/8),
# the window decoded (decoded pixels), the crop inside it, the resized size, the part of the picture on the canvas
# and where it goes, and the flip.
RECIPE = ("decoder", "win_y", "win_x", "win_h", "win_w", "crop_x", "crop_w", "nw", "nh",
          "pic_x1", "pic_y1", "pic_x2", "pic_y2", "canvas_x", "canvas_y", "flip")
JPEG_RATIOS = (1, 2, 4, 8)
JPEG_MARGIN = 2   # decoded columns kept beyond each side of a JPEG crop (libjpeg upsamples chroma at the window edge)
FORMATS = ("JPEG", "PNG", "GIF", "BMP")   # what tf.io.decode_image reads


class Plan(NamedTuple):
    """Geometry of one sample: the crop window (x1, y1, x2, y2) of the frame, the size (nw, nh) it is resized
    to, its top-left (ox, oy) on the size x size canvas, and whether the canvas is flipped."""
    window: tuple
    size: tuple
    offset: tuple
    flip: bool


def plan_geometry(h, w, union, size, cfg, draws=None) -> Plan:
    """The sample's geometry from the union (x1, y1, x2, y2) of its GT boxes (None without instances) and its
    draws (indexed by DRAWS). Without draws: plain letterbox (utils.Letterbox)."""
    if draws is None:
        lb = Letterbox(h, w, size)
        return Plan((0, 0, w, h), (lb.nw, lb.nh), (lb.dw, lb.dh), False)
    d = cfg.data
    u = {name: float(draws[i]) for name, i in _D.items()}
    x1, y1, x2, y2 = 0, 0, w, h
    if u["crop"] < d.crop_prob:
        # Crop inside the margins around the union of the GT boxes, on all four sides (the original could
        # never crop the right or bottom, info/DIFFERENCES.md#data-and-augmentation). No instances: up to 25 % a side.
        ux1, uy1, ux2, uy2 = union if union is not None else (0.25 * w, 0.25 * h, 0.75 * w, 0.75 * h)
        x1 = int(u["crop_left"] * max(ux1, 0))
        y1 = int(u["crop_top"] * max(uy1, 0))
        x2 = int(np.ceil(w - u["crop_right"] * max(w - ux2, 0)))
        y2 = int(np.ceil(h - u["crop_bottom"] * max(h - uy2, 0)))
        if w % 8 == 0 and h % 8 == 0:
            # Snap the window outwards to multiples of 8 so the JPEG can still be decoded at 1/2..1/8 scale;
            # the window still contains the union.
            x1, y1 = x1 // 8 * 8, y1 // 8 * 8
            x2, y2 = min(-(-x2 // 8) * 8, w), min(-(-y2 // 8) * 8, h)
        x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
    cw, ch = x2 - x1, y2 - y1
    lo, hi = d.scale_jitter
    scale = min(size / cw, size / ch) * (lo + (hi - lo) * u["scale"])
    nw, nh = max(1, int(scale * cw)), max(1, int(scale * ch))
    ox, oy = (size - nw) // 2, (size - nh) // 2
    if u["translate"] < d.translate_prob:
        # Shift the picture, keeping the GT union on the canvas when it fits (as the original's translate).
        if union is not None:
            sx, sy = nw / cw, nh / ch
            lo_x, hi_x = -(union[0] - x1) * sx, size - (union[2] - x1) * sx
            lo_y, hi_y = -(union[1] - y1) * sy, size - (union[3] - y1) * sy
        else:
            lo_x, hi_x, lo_y, hi_y = -0.25 * nw, size - 0.75 * nw, -0.25 * nh, size - 0.75 * nh
        if lo_x <= hi_x:
            ox = int(np.floor(lo_x + (hi_x - lo_x) * u["shift_x"]))
        if lo_y <= hi_y:
            oy = int(np.floor(lo_y + (hi_y - lo_y) * u["shift_y"]))
    return Plan((x1, y1, x2, y2), (nw, nh), (ox, oy), u["flip"] < d.flip_prob)


def image_recipe(plan: Plan, fmt: str, h: int, w: int, size: int) -> np.ndarray:
    """The int32 RECIPE vector carrying out `plan` on a frame of format `fmt` (a FORMATS name)."""
    (x1, y1, x2, y2), (nw, nh), (ox, oy), flip = plan
    cw, ch = x2 - x1, y2 - y1
    # A JPEG is decoded at the smallest scale 1/r still at or above the target size, when the window allows it
    # exactly (libjpeg scales by whole 8x8 blocks).
    r = 1
    if fmt == "JPEG":
        r = max(k for k in JPEG_RATIOS if k == 1 or (w % k == 0 and h % k == 0 and x1 % k == 0 and y1 % k == 0
                                                     and x2 % k == 0 and y2 % k == 0 and nw * k <= cw and nh * k <= ch))
        wx1, wx2 = max(x1 // r - JPEG_MARGIN, 0), min(x2 // r + JPEG_MARGIN, w // r)
        decoder, win = 1 + JPEG_RATIOS.index(r), (y1 // r, wx1, ch // r, wx2 - wx1)
    else:
        wx1 = x1
        decoder, win = 0, (y1, x1, ch, cw)
    # The part of the resized picture that lands on the canvas, and where.
    px1, py1 = max(-ox, 0), max(-oy, 0)
    px2, py2 = max(min(size - ox, nw), px1), max(min(size - oy, nh), py1)
    cx, cy = min(max(ox, 0), size), min(max(oy, 0), size)
    return np.array([decoder, *win, x1 // r - wx1, cw // r, nw, nh, px1, py1, px2, py2, cx, cy, int(flip)], np.int32)


def instance_target(runs, plan: Plan, size: int, mask_res: int):
    """Box (canvas pixels, float64 [4], before the flip) and mask (bool [R, R]) of one instance given as
    column_runs, or None when it does not land on the canvas or vanishes at mask_res.

    The box is the exact box of the instance's frame pixels that land on the canvas. The mask is the exact area
    coverage of each mask cell by those pixels, computed from the runs without a full-resolution mask (frame
    edge u goes to ((u - x1) * nw / cw + ox) * R / S), set where at least half covered."""
    xs, ys0, ys1 = runs
    (x1, y1, x2, y2), (nw, nh), (ox, oy), _ = plan
    S, R = size, mask_res
    cw, ch = x2 - x1, y2 - y1
    sx, sy = nw / cw, nh / ch
    # Frame pixels on the canvas: the window, less what the translation pushes off the canvas.
    vx1, vy1 = int(np.floor(max(x1, x1 - ox / sx))), int(np.floor(max(y1, y1 - oy / sy)))
    vx2, vy2 = int(np.ceil(min(x2, x1 + (S - ox) / sx))), int(np.ceil(min(y2, y1 + (S - oy) / sy)))
    on = (xs >= vx1) & (xs < vx2)
    a, b = np.maximum(ys0[on], vy1), np.minimum(ys1[on], vy2)
    seen = b > a
    if not seen.any():
        return None
    bx1, bx2 = xs[on][seen].min(), xs[on][seen].max() + 1
    by1, by2 = a[seen].min(), b[seen].max()
    box = np.clip([(bx1 - x1) * sx + ox, (by1 - y1) * sy + oy, (bx2 - x1) * sx + ox, (by2 - y1) * sy + oy], 0, S)
    if box[2] - box[0] < 1.0 or box[3] - box[1] < 1.0:
        return None

    # Exact area coverage of each mask cell, in cell units: frame column x spans mask columns
    # [X(x), X(x + 1)) with X(x) = ((x - x1) * sx + ox) * R / S, a run [a, b) spans rows [Y(a), Y(b)), and the
    # run adds (column overlap) x (row overlap) to every cell it meets. Only pixels of the window count.
    f = R / S
    inside = (xs >= x1) & (xs < x2)
    a, b = np.clip(ys0[inside], y1, y2), np.clip(ys1[inside], y1, y2)
    cx0, cx1 = ((xs[inside] - x1) * sx + ox) * f, ((xs[inside] + 1 - x1) * sx + ox) * f
    ry0 = np.clip(((a - y1) * sy + oy) * f, 0, R)
    ry1 = np.clip(((b - y1) * sy + oy) * f, 0, R)
    # One entry per (run, mask column it meets): a frame column meets ceil(sx * f) + 1 mask columns at most.
    first = np.floor(cx0).astype(np.int64)
    n = np.maximum(np.ceil(cx1).astype(np.int64) - first, 1)
    run = np.repeat(np.arange(len(first)), n)
    col = first[run] + np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    wx = np.minimum(cx1[run], col + 1) - np.maximum(cx0[run], col)
    keep = (col >= 0) & (col < R) & (wx > 0) & (ry1[run] > ry0[run])
    run, col, wx = run[keep], col[keep], wx[keep]
    top, bottom = ry0[run], ry1[run]
    r0, r1 = np.floor(top).astype(np.int64), np.ceil(bottom).astype(np.int64) - 1   # first and last row met
    base = col * (R + 1)                                                           # cover is [R columns, R + 1]
    cells = R * (R + 1)
    # The partial first and last rows directly; the whole rows between through a difference array.
    ends = (np.bincount(base + r0, wx * (np.minimum(bottom, r0 + 1) - top), cells)
            + np.bincount(base + r1, wx * np.where(r1 > r0, bottom - r1, 0.0), cells))
    whole = np.bincount(base + r0 + 1, wx, cells) - np.bincount(base + np.maximum(r1, r0 + 1), wx, cells)
    cover = ends.reshape(R, R + 1) + np.cumsum(whole.reshape(R, R + 1), axis=1)
    mask = cover[:, :R].T >= 0.5 - 1e-9      # a cell half covered is set (as cv2's rounding to 128 of 255 did)
    return (box, mask) if mask.any() else None


def read_frame_file(path: str, width: int, height: int):
    """The bytes of a frame file and its format (a FORMATS name), checked from the header without decoding:
    readable, a known image format, complete (JPEG end marker, PNG IEND chunk) and width x height."""
    data = read_bytes(path, FrameError)
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
    except (OSError, SyntaxError, ValueError):
        raise FrameError(f"{path}: not a decodable image") from None
    fmt = "JPEG" if fmt == "MPO" else fmt   # a camera's multi-picture JPEG: its first picture is a plain JPEG
    if fmt not in FORMATS:
        raise FrameError(f"{path}: image format {fmt} is not one of {', '.join(FORMATS)}")
    if (fmt == "JPEG" and data.rfind(b"\xff\xd9", max(0, len(data) - 4096)) < 0) or \
            (fmt == "PNG" and data.rfind(b"IEND", max(0, len(data) - 64)) < 0):
        raise FrameError(f"{path}: truncated {fmt} file")
    if (w, h) != (width, height):
        raise FrameError(f"{path}: image is {w}x{h}, the annotation says {width}x{height}")
    return data, fmt


def find_undecodable_frames(ytvis: YTVIS, image_root: str, video_ids=None, frame_stride: int = 1, log=None):
    """Frames whose header passes `read_frame_file` but whose body TensorFlow's decoder rejects (bit rot in the
    entropy-coded data): each frame decoded eagerly with the decoder the pipeline uses. Slow (a full decode a
    frame), so it runs only after the pipeline has failed, to name the file. Returns messages naming them. Frames
    the header checks refuse are left out: the pipeline names those itself, and data.skip_bad_frames skips them."""
    import tensorflow as tf
    bad = []
    samples = ytvis.samples(video_ids, frame_stride)
    for k, (vid, t) in enumerate(samples):
        v = ytvis.video_by_id[vid]
        path = os.path.join(image_root, v["file_names"][t])
        try:
            data, _ = read_frame_file(path, v["width"], v["height"])
            tf.io.decode_image(data, channels=3, expand_animations=False)
        except FrameError:
            continue
        except tf.errors.OpError as e:
            bad.append(f"{path}: TensorFlow cannot decode it ({e.message.splitlines()[0][:120]}) "
                       f"(video {vid}, frame {t})")
        if log and (k + 1) % 1000 == 0:
            log(f"  checked {k + 1}/{len(samples)} frames, {len(bad)} bad")
    return bad


def prepare_sample(cfg, ytvis: YTVIS, image_root: str, video_id: int, frame: int, draws=None):
    """The Python half of one sample: (frame bytes, RECIPE int32 [len(RECIPE)], boxes float32 [N, 4], labels
    int32 [N], masks uint8 [N, R, R], num_instances). Instances are the first N in file order (as the original);
    those that leave the canvas or vanish at mask_res are dropped. Raises FrameError naming the file, video and
    frame, and AnnotationError for run lengths that do not cover the frame (checked here, not when indexing)."""
    S, R, N = cfg.model.input_size, cfg.mask_res, cfg.data.max_instances
    v = ytvis.video_by_id[video_id]
    h, w = int(v["height"]), int(v["width"])
    insts = ytvis.frame_instances(video_id, frame)[:N]
    runs = []
    for inst in insts:
        counts = rle_counts(inst["segmentation"], h, w)
        if counts.sum() != h * w or (len(counts) and counts.min() < 0):
            raise AnnotationError(f"{ytvis.path}: annotation {inst['annotation_id']} (video {video_id}), frame "
                                  f"{frame}: run lengths sum to {counts.sum()}, not height x width = {h * w}")
        runs.append(column_runs(counts, h))
    # The boxes come from the masks themselves (exact; the JSON bbox is not needed).
    full = np.array([(x.min(), y0.min(), x.max() + 1, y1.max()) for x, y0, y1 in runs if len(x)], np.float64)
    union = (*full[:, :2].min(0), *full[:, 2:].max(0)) if len(full) else None
    plan = plan_geometry(h, w, union, S, cfg, draws)
    path = os.path.join(image_root, v["file_names"][frame])
    try:
        data, fmt = read_frame_file(path, w, h)
    except FrameError as e:
        raise FrameError(f"{e} (video {video_id}, frame {frame})") from None

    boxes, labels, masks = np.zeros((N, 4), np.float32), np.zeros((N,), np.int32), np.zeros((N, R, R), np.uint8)
    k = 0
    for inst, r in zip(insts, runs):
        target = instance_target(r, plan, S, R)
        if target is None:
            continue
        box, mask = target
        if plan.flip:
            box, mask = np.array([S - box[2], box[1], S - box[0], box[3]]), mask[:, ::-1]
        boxes[k], labels[k], masks[k] = box, inst["label"], mask
        k += 1
    return data, image_recipe(plan, fmt, h, w, S), boxes, labels, masks, np.int32(k)


# ---- one sample: the image (TF ops) -------------------------------------------------------------------------

def render_image(data, recipe, draws, cfg, augment: bool):
    """The image half of one sample: the uint8 [S, S, 3] canvas (image_to_float makes the model input of it)
    from the frame bytes (tf.string), the int32 RECIPE vector and the float64 draws. TF decodes only the crop
    window (a JPEG at 1/1..1/8 scale: libjpeg's DCT scaling is much cheaper than decoding in full and resizing);
    finish_canvas (cv2) does the rest. Neither holds the GIL while it works."""
    import tensorflow as tf
    S = cfg.model.input_size
    g = dict(zip(RECIPE, tf.unstack(recipe)))
    win = tf.stack([g["win_y"], g["win_x"], g["win_h"], g["win_w"]])

    def decode_other():
        img = tf.io.decode_image(data, channels=3, expand_animations=False)
        return img[g["win_y"]:g["win_y"] + g["win_h"], g["win_x"]:g["win_x"] + g["win_w"]]

    def decode_jpeg(ratio):   # libjpeg's accurate integer DCT, as cv2.imdecode: the same pixels
        return lambda: tf.io.decode_and_crop_jpeg(data, win, channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE")

    img = tf.switch_case(g["decoder"], [decode_other] + [decode_jpeg(r) for r in JPEG_RATIOS])
    crop = img[:, g["crop_x"]:g["crop_x"] + g["crop_w"]]
    canvas = tf.numpy_function(lambda c, r, d: finish_canvas(c, r, d, cfg, augment), [crop, recipe, draws],
                               tf.uint8, stateful=False)
    return tf.ensure_shape(canvas, [S, S, 3])


def finish_canvas(crop, recipe, draws, cfg, augment: bool):
    """The decoded crop (uint8 [h, w, 3]) resized with model.letterbox_image's rule (cv2 area when shrinking,
    bilinear otherwise: the same pixels as at inference), HSV-jittered when drawn, pasted on the gray canvas
    and flipped, as RECIPE says. cv2 does the pixel work without the GIL."""
    g = dict(zip(RECIPE, (int(v) for v in recipe)))
    S = cfg.model.input_size
    nw, nh = g["nw"], g["nh"]
    shrink = nw < crop.shape[1] or nh < crop.shape[0]
    pic = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if augment and draws[_D["hsv"]] < cfg.data.hsv_prob:
        pic = hsv_jitter(pic, draws, cfg.data.hsv_gains)
    canvas = np.full((S, S, 3), GRAY, np.uint8)
    cy, cx = g["canvas_y"], g["canvas_x"]
    shown = pic[g["pic_y1"]:g["pic_y2"], g["pic_x1"]:g["pic_x2"]]
    canvas[cy:cy + shown.shape[0], cx:cx + shown.shape[1]] = shown
    return np.ascontiguousarray(canvas[:, ::-1]) if g["flip"] else canvas


def hsv_jitter(pic, draws, gains):
    """YOLOv5-style HSV gain jitter of an RGB uint8 picture through lookup tables (the original's brightness step
    was a no-op): hue, saturation and value times 1 + gain * (2 * draw - 1). cv2 works without the GIL."""
    r = (2.0 * np.asarray(draws[_D["hue"]:_D["value"] + 1], np.float64) - 1.0) * np.asarray(gains, np.float64) + 1.0
    hue, sat, val = cv2.split(cv2.cvtColor(pic, cv2.COLOR_RGB2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def image_to_float(image):
    """uint8 canvas (or a batch of them) -> float32 in [0, 1], the model input."""
    import tensorflow as tf
    return tf.cast(image, tf.float32) * np.float32(1.0 / 255.0)


def make_sample(cfg, ytvis: YTVIS, image_root: str, video_id: int, frame: int, draws=None):
    """One letterboxed (and, with `draws` [len(DRAWS)] in [0, 1), augmented) frame as numpy arrays, both halves
    run eagerly: image float32 [S, S, 3], boxes float32 [N, 4], labels int32 [N], masks uint8 [N, R, R],
    num_instances."""
    import tensorflow as tf
    data, recipe, boxes, labels, masks, n = prepare_sample(cfg, ytvis, image_root, video_id, frame, draws)
    d = np.zeros(len(DRAWS)) if draws is None else np.asarray(draws, np.float64)
    image = render_image(tf.constant(data), tf.constant(recipe), tf.constant(d), cfg, draws is not None)
    return image_to_float(image).numpy(), boxes, labels, masks, n


class LoaderStats:
    """Counts filled by the pipeline: frames skipped because their file is missing or corrupt."""

    def __init__(self):
        self.bad_frames = []
        self._lock = threading.Lock()

    @property
    def skipped(self) -> int:
        return len(self.bad_frames)

    def add(self, msg):
        with self._lock:
            if msg not in self.bad_frames:
                self.bad_frames.append(msg)
                print(f"skipping bad frame: {msg}", file=sys.stderr)


# ---- two frames on one canvas (data.pack_prob) ---------------------------------------------------------------
# A wide frame letterboxed on the square canvas leaves bands of padding (320x180 at 192: 108 of 192 rows are
# picture). A packed canvas stacks a strip of one augmented frame over a strip of another, each strip taken
# inside its own picture's rows, so a training step sees up to twice the picture at the same cost.

def pack_split(size: int, mask_res: int) -> int:
    """Rows of the top strip of a packed canvas: half the canvas, a whole number of mask rows."""
    k = size // mask_res
    return size // 2 // k * k


def strip_start(recipe, size: int, rows: int, draw: float, mask_res: int) -> int:
    """First canvas row of a `rows`-row strip of a canvas planned by `recipe` (RECIPE): inside the picture's rows
    when the picture is at least that tall, else covering all of it; where, is `draw` in [0, 1). A multiple of
    size // mask_res, so the strip is a whole number of mask rows."""
    g = dict(zip(RECIPE, (int(v) for v in recipe)))
    c0 = g["canvas_y"]
    c1 = c0 + g["pic_y2"] - g["pic_y1"]
    if c1 - c0 >= rows:
        lo, hi = c0, c1 - rows
    else:
        lo, hi = max(0, c1 - rows), min(c0, size - rows)
    k = size // mask_res
    lo, hi = -(-lo // k) * k, max(hi // k * k, -(-lo // k) * k)
    hi = min(hi, (size - rows) // k * k)
    lo = min(lo, hi)
    steps = (hi - lo) // k + 1
    return lo + k * min(int(draw * steps), steps - 1)


def pack_targets(parts, size: int, mask_res: int, max_instances: int):
    """Targets of a packed canvas. `parts` holds, per strip, (boxes [N, 4], labels [N], masks [N, R, R], n, start,
    rows, dest): the instances of canvas rows [start, start + rows) moved to rows [dest, dest + rows). An
    instance inside the strip keeps its exact box; one the strip cuts gets the box of its mask cells left in the
    strip (within its box); one left with no cell, or under a pixel tall or wide, is dropped. At most
    max_instances are kept, the top strip's first. Returns boxes, labels, masks, n as prepare_sample."""
    S, R, N = size, mask_res, max_instances
    f = R / S
    boxes, labels, masks = np.zeros((N, 4), np.float32), np.zeros((N,), np.int32), np.zeros((N, R, R), np.uint8)
    k = 0
    for b, lab, m, n, start, rows, dest in parts:
        r0, nr, d0 = int(round(start * f)), int(round(rows * f)), int(round(dest * f))
        for q in range(int(n)):
            if k == N:
                break
            cut = m[q, r0:r0 + nr]
            if not cut.any():
                continue
            x1, y1, x2, y2 = (float(v) for v in b[q])
            if y1 < start or y2 > start + rows:        # cut by the strip: the box of what is left
                cols, rws = np.flatnonzero(cut.any(0)), np.flatnonzero(cut.any(1))
                x1, x2 = max(x1, cols[0] / f), min(x2, (cols[-1] + 1) / f)
                y1, y2 = max(y1, start, (r0 + rws[0]) / f), min(y2, start + rows, (r0 + rws[-1] + 1) / f)
                if x2 - x1 < 1.0 or y2 - y1 < 1.0:
                    continue
            boxes[k] = [x1, y1 - start + dest, x2, y2 - start + dest]
            labels[k] = lab[q]
            masks[k, d0:d0 + nr] = cut
            k += 1
    return boxes, labels, masks, np.int32(k)


# ---- tf.data pipeline ---------------------------------------------------------------------------------------

STREAM_SHUFFLE, STREAM_AUGMENT, STREAM_PACK = 0, 1, 2   # independent random streams under one seed

# One frame's sample as the Python half hands it to TensorFlow: (name, dtype, shape), where N is
# data.max_instances and R the mask resolution. The output types of the `tf.numpy_function`, the static shapes
# set on its outputs and the empty sample standing in for a skipped bad frame are all read from this table.
SAMPLE_FIELDS = (
    ("data", "string", ()),                  # the frame file's bytes, decoded by render_image
    ("recipe", "int32", (len(RECIPE),)),     # how render_image makes the canvas
    ("boxes", "float32", ("N", 4)),          # canvas pixels x1, y1, x2, y2
    ("labels", "int32", ("N",)),             # 1..K, 0 in unused slots
    ("masks", "uint8", ("N", "R", "R")),
    ("num_instances", "int32", ()),
    ("video_id", "int32", ()),
    ("frame_index", "int32", ()),
    ("image_hw", "int32", (2,)),             # the frame's height and width
    ("ok", "bool", ()),                      # False: a bad frame skipped (data.skip_bad_frames), filtered out
)
# A packed canvas (data.pack_prob): the fields above for frame i (its file, recipe and ids) and the canvas's
# targets, plus the file and recipe of frame j and the first canvas row of each frame's strip.
PACKED_FIELDS = SAMPLE_FIELDS + (("data_b", "string", ()), ("recipe_b", "int32", (len(RECIPE),)),
                                 ("starts", "int32", (2,)))
# The targets an element of the pipeline carries beside its image.
TARGET_KEYS = ("boxes", "labels", "masks", "num_instances", "video_id", "frame_index", "image_hw")


def _stream_key(seed, stream, *parts):
    """A stateless seed [2] for (seed, stream, parts...): nothing global (tf.random.set_seed, op-seed counters)
    enters it."""
    import tensorflow as tf
    key = tf.constant([seed, stream], tf.int64)
    for p in parts:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(p, tf.int64), alg="philox")
    return key


def field_shape(shape, max_instances: int, mask_res: int) -> tuple:
    """A SAMPLE_FIELDS shape with N and R filled in."""
    return tuple(max_instances if d == "N" else mask_res if d == "R" else d for d in shape)


def empty_sample(max_instances: int, mask_res: int, video_id: int, frame: int, image_hw) -> dict:
    """The sample standing in for a bad frame that is skipped: zeros (no bytes, no instances) with its ids."""
    out = {name: np.zeros(field_shape(shape, max_instances, mask_res), dtype)
           for name, dtype, shape in SAMPLE_FIELDS if dtype != "string"}
    out.update(data=b"", video_id=np.int32(video_id), frame_index=np.int32(frame), image_hw=image_hw)
    return out


def python_sample(fn, args, fields, max_instances: int, mask_res: int) -> dict:
    """Run `fn(*args)` (numpy in, a dict of `fields` out) as a tf.numpy_function: its outputs by name, with the
    table's dtypes and static shapes."""
    import tensorflow as tf

    def call(*a):
        sample = fn(*a)
        return tuple(np.array(sample[name], dtype=object) if dtype == "string" else np.asarray(sample[name], dtype)
                     for name, dtype, _ in fields)

    out = tf.numpy_function(call, args, [tf.as_dtype(dtype) for _, dtype, _ in fields], stateful=False)
    for tensor, (_, _, shape) in zip(out, fields):
        tensor.set_shape(field_shape(shape, max_instances, mask_res))
    return {name: tensor for tensor, (name, _, _) in zip(out, fields)}


class _FramePipeline:
    """The per-frame steps of `build_dataset` over its list of (video_id, frame) samples: the Python half
    (`load`, `load_pair`) and the TensorFlow element built from it (`element`, `packed_element`)."""

    def __init__(self, cfg, ytvis: YTVIS, image_root: str, samples, seed: int, augment: bool, stats,
                 min_good: int = 1):
        self.cfg, self.ytvis, self.image_root, self.seed, self.augment, self.stats = (
            cfg, ytvis, image_root, seed, augment, stats)
        self.min_good = min_good                                 # good frames a pass needs (one batch)
        self.index = np.array(samples, np.int64)                 # [F, 2] video_id, frame
        self.S, self.R, self.N = cfg.model.input_size, cfg.mask_res, cfg.data.max_instances
        self.top = pack_split(self.S, self.R)                    # rows of a packed canvas's top strip
        self.bad, self._lock = set(), threading.Lock()          # (video_id, frame) skipped as bad

    def load(self, i, draws) -> dict:
        """SAMPLE_FIELDS of sample i; with data.skip_bad_frames a bad frame gives `empty_sample` (reported)."""
        vid, t = int(self.index[i, 0]), int(self.index[i, 1])
        v = self.ytvis.video_by_id[vid]
        hw = np.array([v["height"], v["width"]], np.int32)
        try:
            data, recipe, boxes, labels, masks, n = prepare_sample(self.cfg, self.ytvis, self.image_root, vid, t,
                                                                   draws if self.augment else None)
        except FrameError as e:
            if not self.cfg.data.skip_bad_frames:
                raise
            with self._lock:
                self.bad.add((vid, t))
                n_bad = len(self.bad)
            if 2 * n_bad > len(self.index) or len(self.index) - n_bad < self.min_good:
                # skipping is for a few bad files; past half the frames the data itself is broken, and a pass
                # with less than a batch of good frames would end the stream
                raise FrameError(f"data.skip_bad_frames: {n_bad} of the {len(self.index)} frames are bad, more "
                                 f"than half or too many for a batch of {self.min_good}; fix the data (the latest: "
                                 f"{e})") from None
            if self.stats is not None:
                self.stats.add(str(e))
            else:
                print(f"skipping bad frame: {e}", file=sys.stderr)
            return empty_sample(self.N, self.R, vid, t, hw)
        return {"data": data, "recipe": recipe, "boxes": boxes, "labels": labels, "masks": masks,
                "num_instances": n, "video_id": np.int32(vid), "frame_index": np.int32(t), "image_hw": hw,
                "ok": True}

    def load_pair(self, i, j, draws_i, draws_j, u_top, u_bottom) -> dict:
        """PACKED_FIELDS: samples i and j as `load` makes them, then the targets of the packed canvas (the image
        strips are cut in `packed_element`)."""
        S, top = self.S, self.top
        a, b = self.load(i, draws_i), self.load(j, draws_j)
        start_a = strip_start(a["recipe"], S, top, u_top, self.R)
        start_b = strip_start(b["recipe"], S, S - top, u_bottom, self.R)
        strips = [(a["boxes"], a["labels"], a["masks"], a["num_instances"], start_a, top, 0),
                  (b["boxes"], b["labels"], b["masks"], b["num_instances"], start_b, S - top, top)]
        boxes, labels, masks, n = pack_targets(strips, S, self.R, self.N)
        return {**a, "boxes": boxes, "labels": labels, "masks": masks, "num_instances": n,
                "data_b": b["data"], "recipe_b": b["recipe"], "starts": np.array([start_a, start_b], np.int32),
                "ok": np.bool_(a["ok"] and b["ok"])}

    def draws(self, stream, epoch, i, *more):
        import tensorflow as tf
        return tf.random.stateless_uniform([len(DRAWS)], _stream_key(self.seed, stream, epoch, i, *more),
                                           dtype=tf.float64, alg="philox")

    def element(self, epoch, i) -> dict:
        """Sample i of pass `epoch`: the image (uint8 [S, S, 3], zeros for a skipped frame), TARGET_KEYS, ok."""
        import tensorflow as tf
        draws = self.draws(STREAM_AUGMENT, epoch, i)
        out = python_sample(self.load, [i, draws], SAMPLE_FIELDS, self.N, self.R)
        image = tf.cond(out["ok"], lambda: render_image(out["data"], out["recipe"], draws, self.cfg, self.augment),
                        lambda: tf.zeros([self.S, self.S, 3], tf.uint8))
        return {"image": image, **{k: out[k] for k in TARGET_KEYS}, "ok": out["ok"]}

    def packed_element(self, epoch, i) -> dict:
        """With probability data.pack_prob a packed canvas: frame i's strip over a strip of frame j, drawn
        uniformly over the frames; the draws of both come from (seed, epoch, i), so the stream stays a function
        of the seed. With data.skip_bad_frames a bad partner drops the packed canvas too (both are reported).
        Otherwise `element`."""
        import tensorflow as tf
        S, top, n = self.S, self.top, len(self.index)
        u = tf.random.stateless_uniform([4], _stream_key(self.seed, STREAM_PACK, epoch, i), dtype=tf.float64,
                                        alg="philox")

        def packed():
            j = tf.minimum(tf.cast(u[1] * n, tf.int64), n - 1)
            draws_i, draws_j = self.draws(STREAM_AUGMENT, epoch, i), self.draws(STREAM_PACK, epoch, i, 1)
            out = python_sample(self.load_pair, [i, j, draws_i, draws_j, u[2], u[3]], PACKED_FIELDS, self.N,
                                self.R)
            starts = out["starts"]

            def render():
                img_a = render_image(out["data"], out["recipe"], draws_i, self.cfg, self.augment)
                img_b = render_image(out["data_b"], out["recipe_b"], draws_j, self.cfg, self.augment)
                return tf.concat([img_a[starts[0]:starts[0] + top], img_b[starts[1]:starts[1] + S - top]], 0)

            image = tf.ensure_shape(tf.cond(out["ok"], render, lambda: tf.zeros([S, S, 3], tf.uint8)), [S, S, 3])
            return {"image": image, **{k: out[k] for k in TARGET_KEYS}, "ok": out["ok"]}

        return tf.cond(u[0] < self.cfg.data.pack_prob, packed, lambda: self.element(epoch, i))


def build_dataset(cfg, ann_path: str, image_root: str, video_ids=None, training: bool = True, batch_size=None,
                  seed=None, shuffle=None, ytvis: YTVIS = None, stats: LoaderStats = None, input_context=None,
                  first_epoch: int = 0, skip_frames: int = 0):
    """tf.data pipeline over every annotated frame (every `cfg.data.frame_stride`-th; frames without instances
    kept, info/DESIGN.md#m11-frames-without-instances). Elements are dicts:
    image [B,S,S,3] float32, boxes [B,N,4], labels [B,N], masks [B,N,R,R] uint8, num_instances [B], video_id [B],
    frame_index [B], image_hw [B,2]. Training batches drop the remainder; `batch_size=0` leaves it unbatched.

    Determinism: the stream is a function of `seed` alone. Iterating the dataset for the e-th time (e = 0, 1, ...;
    `ds.repeat()` iterates it again each epoch) visits the frames in the order stateless_shuffle(seed, e), and
    frame i draws its augmentation with stateless_uniform from (seed, e, i); no global or op-level TF seed is used.
    `first_epoch` k starts the count at k: the stream is then the one a fresh dataset gives from its k-th pass on
    (how `train.py --resume` continues where the data stopped), and `skip_frames` drops that many frames from the
    front of pass k's order before anything is loaded (a multiple of the batch size keeps the later batches the
    same as the uninterrupted stream's; with an `input_context`, counted in this pipeline's frames).
    Sharding: the source is an in-memory list of frames, not files, so FILE sharding cannot apply; with an
    `input_context` (strategy.distribute_datasets_from_function) each pipeline keeps every k-th frame before
    any decoding, otherwise the policy is DATA (each worker keeps its 1/k of the elements).
    """
    import tensorflow as tf

    ytvis = ytvis or load_annotations(ann_path)
    seed = cfg.train.seed if seed is None else int(seed)
    shuffle = training if shuffle is None else shuffle
    augment = training and cfg.data.augment
    if batch_size is None:
        batch_size = cfg.train.batch_size if training else cfg.infer.batch_size
    samples = ytvis.samples(video_ids, cfg.data.frame_stride)
    if not samples:
        raise AnnotationError(f"{ann_path}: no frames to load (video_ids={video_ids})")
    n_pipes, pipe_id = 1, 0
    if input_context is not None and input_context.num_input_pipelines > 1:
        n_pipes, pipe_id = input_context.num_input_pipelines, input_context.input_pipeline_id
        batch_size = input_context.get_per_replica_batch_size(batch_size) if batch_size else batch_size
    frames = _FramePipeline(cfg, ytvis, image_root, samples, seed, augment, stats,
                            min_good=batch_size * n_pipes if training and batch_size else 1)

    # The epoch number: how many times this dataset has been iterated before (a counter in Python, the only
    # state; every random choice is a stateless function of (seed, epoch, frame)).
    if first_epoch < 0 or skip_frames < 0:
        raise ValueError(f"build_dataset: first_epoch and skip_frames must be >= 0, got {first_epoch}, "
                         f"{skip_frames}")
    epochs = itertools.count(int(first_epoch))

    def epoch_order(epoch):
        ids = tf.range(pipe_id, len(samples), n_pipes, dtype=tf.int64)
        if shuffle:
            ids = tf.random.experimental.stateless_shuffle(ids, _stream_key(seed, STREAM_SHUFFLE, epoch),
                                                           alg="philox")
        if skip_frames:
            ids = ids[tf.where(epoch == first_epoch, np.int64(skip_frames), np.int64(0)):]
        return tf.data.Dataset.from_tensor_slices(ids).map(lambda i: (epoch, i))

    ds = tf.data.Dataset.range(1).map(
        lambda _: tf.ensure_shape(tf.numpy_function(lambda: np.int64(next(epochs)), [], tf.int64, stateful=True), []))
    ds = ds.flat_map(epoch_order)
    ds = ds.map(frames.packed_element if augment and cfg.data.pack_prob > 0 else frames.element,
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cfg.data.skip_bad_frames:
        ds = ds.filter(lambda e: e["ok"])
    if batch_size:
        ds = ds.batch(batch_size, drop_remainder=training)
    # Images travel as uint8 up to here: batching copies a quarter of the bytes.
    ds = ds.map(lambda e: {**{k: v for k, v in e.items() if k != "ok"}, "image": image_to_float(e["image"])})
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = (tf.data.experimental.AutoShardPolicy.OFF
                                                         if input_context is not None else
                                                         tf.data.experimental.AutoShardPolicy.DATA)
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


# ---- drawing ----------------------------------------------------------------------------------------------

def draw_batch(batch, path: str, class_names=None, show_labels: bool = True):
    """Draw every frame of a batch (masks tinted, boxes and labels) in one row to a PNG, written atomically."""
    images = np.asarray(batch["image"])
    tiles = []
    for b in range(images.shape[0]):
        img = (images[b] * 255).astype(np.uint8).copy()
        S = img.shape[0]
        for k in range(int(batch["num_instances"][b])):
            colour = np.array(cv2.cvtColor(np.uint8([[[(37 * k) % 180, 220, 255]]]), cv2.COLOR_HSV2RGB)[0, 0], float)
            m = cv2.resize(np.asarray(batch["masks"][b, k]), (S, S), interpolation=cv2.INTER_NEAREST).astype(bool)
            img[m] = (0.5 * img[m] + 0.5 * colour).astype(np.uint8)
            x1, y1, x2, y2 = [int(round(float(c))) for c in batch["boxes"][b, k]]
            cv2.rectangle(img, (x1, y1), (x2, y2), tuple(int(c) for c in colour), 1)
            if not show_labels:
                continue
            lab = int(batch["labels"][b, k])
            name = class_names[lab - 1] if class_names else str(lab)
            cv2.putText(img, name, (x1, max(y1 - 2, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, tuple(int(c) for c in colour))
        tiles.append(img)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.hstack(tiles), cv2.COLOR_RGB2BGR))
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp_{os.getpid()}_{os.path.basename(path)}")
    with open(tmp, "wb") as f:
        f.write(buf.tobytes())
    os.replace(tmp, path)


def main(argv=None):
    import config as config_lib
    ap = argparse.ArgumentParser(description="Load a YouTube-VIS split and draw one augmented batch to a PNG.")
    ap.add_argument("--data", default="data/shapes/train", help="split root holding JPEGImages/ and instances.json")
    ap.add_argument("--ann", default=None, help="annotation JSON (default DATA/instances.json)")
    ap.add_argument("--show", default="runs/loader_batch.png", help="PNG to write")
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    config_lib.add_config_args(ap, default_preset="tiny")
    args = ap.parse_args(argv)
    try:
        check_writable_file(args.show, "--show")
        cfg = config_lib.config_from_args(args)
        ann = args.ann or os.path.join(args.data, "instances.json")
        ytvis = load_annotations(ann)
        print(f"{ann}: {len(ytvis['videos'])} videos, {len(ytvis['annotations'])} instances, "
              f"{sum(int(v['length']) for v in ytvis['videos'])} frames")
        ds = build_dataset(cfg, ann, os.path.join(args.data, "JPEGImages"), training=not args.no_augment,
                           seed=args.seed, ytvis=ytvis)
        batch = {k: v.numpy() for k, v in next(iter(ds)).items()}
    except InputError as e:
        sys.exit(f"error: {e}")
    draw_batch(batch, args.show, [c["name"] for c in ytvis["categories"]])
    print(f"wrote {args.show}")


if __name__ == "__main__":
    main()
