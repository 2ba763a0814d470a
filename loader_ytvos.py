"""YouTube-VIS 2019/2021 annotations and the tf.data training/validation pipeline (decisions.md §3, §6.1, M11;
the original loader and the bugs fixed here are in original-model.md §8: video-level split, crop on all four
sides, a working brightness (HSV) jitter, frames without instances kept, every segmentation form decoded).

    ytvis = load_annotations("data/shapes/train/instances.json")
    train_ids, val_ids = split_videos(ytvis, 0.1, seed=0)
    ds = build_dataset(cfg, ann_path, "data/shapes/train/JPEGImages", video_ids=train_ids, training=True)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading

import cv2
import numpy as np
import pycocotools.mask as mask_util

from utils import Letterbox

GRAY = 128


class AnnotationError(ValueError):
    """The annotation file is malformed; the message names the file and the video/annotation/frame/field."""


class FrameError(ValueError):
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
                 "label": self.labels[anns[k]["category_id"]], "bbox": (anns[k].get("bboxes") or [None] * (frame + 1))[frame],
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
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: malformed or truncated JSON ({e})") from None
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


def split_videos(ytvis: YTVIS, val_fraction: float, seed: int = 0):
    """Seeded video-level split (decisions §3): whole videos go to one side. Returns (train_ids, val_ids)."""
    ids = sorted(v["id"] for v in ytvis["videos"])
    n_val = int(round(len(ids) * float(val_fraction)))
    if val_fraction > 0 and len(ids) > 1:
        n_val = min(max(n_val, 1), len(ids) - 1)
    perm = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in perm[:n_val])
    val_set = set(val)
    return [i for i in ids if i not in val_set], val


# ---- per-frame decoding and augmentation --------------------------------------------------------------------

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


def read_frame(path: str, reduce: int = 1):
    """RGB uint8 frame; grayscale, CMYK and PNG frames come out as 3-channel RGB. `reduce` 2/4/8 decodes a JPEG
    at 1/reduce scale through libjpeg's DCT scaling (much faster than decoding in full and resizing)."""
    try:
        with open(path, "rb") as f:
            buf = np.frombuffer(f.read(), np.uint8)
    except OSError as e:
        raise FrameError(f"{path}: cannot read ({e.strerror})") from None
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[reduce]
    img = cv2.imdecode(buf, flag) if buf.size else None
    if img is None:
        raise FrameError(f"{path}: not a decodable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _hsv_jitter(img, gains, rng):
    """YOLOv5-style HSV gain jitter through lookup tables (the original's brightness step was a no-op)."""
    r = rng.uniform(-1, 1, 3) * np.asarray(gains, np.float64) + 1.0
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_RGB2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _plan(h, w, boxes, size, cfg, rng):
    """Geometry of one sample: the crop window (x1, y1, x2, y2) of the frame, the size (nw, nh) it is resized to,
    its top-left (ox, oy) on the size x size canvas, and whether the canvas is flipped. Without `rng`: plain
    letterbox (utils.Letterbox)."""
    if rng is None:
        lb = Letterbox(h, w, size)
        return (0, 0, w, h), (lb.nw, lb.nh), (lb.dw, lb.dh), False
    d = cfg.data
    x1, y1, x2, y2 = 0, 0, w, h
    union = (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()) if len(boxes) else None
    if rng.random() < d.crop_prob:
        # Crop inside the margins around the union of the GT boxes, on all four sides (the original could
        # never crop the right or bottom, original-model.md §10.1.4). Without instances: up to 25 % a side.
        ux1, uy1, ux2, uy2 = union if union is not None else (0.25 * w, 0.25 * h, 0.75 * w, 0.75 * h)
        x1 = int(rng.uniform(0, max(ux1, 0)))
        y1 = int(rng.uniform(0, max(uy1, 0)))
        x2 = int(np.ceil(w - rng.uniform(0, max(w - ux2, 0))))
        y2 = int(np.ceil(h - rng.uniform(0, max(h - uy2, 0))))
        if w % 8 == 0 and h % 8 == 0:
            # Snap the window outwards to multiples of 8 so the JPEG can still be decoded at 1/2..1/8 scale
            # (make_sample); the window still contains the union.
            x1, y1 = x1 // 8 * 8, y1 // 8 * 8
            x2, y2 = min(-(-x2 // 8) * 8, w), min(-(-y2 // 8) * 8, h)
        x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
    cw, ch = x2 - x1, y2 - y1
    scale = min(size / cw, size / ch) * rng.uniform(*d.scale_jitter)
    nw, nh = max(1, int(scale * cw)), max(1, int(scale * ch))
    ox, oy = (size - nw) // 2, (size - nh) // 2
    if rng.random() < d.translate_prob:
        # Shift the picture, keeping the GT union on the canvas when it fits (as the original's translate).
        if union is not None:
            sx, sy = nw / cw, nh / ch
            ux1, uy1 = (union[0] - x1) * sx, (union[1] - y1) * sy
            ux2, uy2 = (union[2] - x1) * sx, (union[3] - y1) * sy
            lo_x, hi_x = -ux1, size - ux2
            lo_y, hi_y = -uy1, size - uy2
        else:
            lo_x, hi_x, lo_y, hi_y = -0.25 * nw, size - 0.75 * nw, -0.25 * nh, size - 0.75 * nh
        if lo_x <= hi_x:
            ox = int(np.floor(rng.uniform(lo_x, hi_x)))
        if lo_y <= hi_y:
            oy = int(np.floor(rng.uniform(lo_y, hi_y)))
    flip = bool(rng.random() < d.flip_prob)
    return (x1, y1, x2, y2), (nw, nh), (ox, oy), flip


def _paste(canvas, img, ox, oy):
    """Paste `img` into `canvas` at (ox, oy), clipping whatever falls outside."""
    H, W = canvas.shape[:2]
    h, w = img.shape[:2]
    cx1, cy1, cx2, cy2 = max(ox, 0), max(oy, 0), min(ox + w, W), min(oy + h, H)
    if cx2 > cx1 and cy2 > cy1:
        canvas[cy1:cy2, cx1:cx2] = img[cy1 - oy:cy2 - oy, cx1 - ox:cx2 - ox]
    return canvas


def _resize(img, nw, nh):
    shrink = nw < img.shape[1] or nh < img.shape[0]
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def make_sample(cfg, ytvis: YTVIS, image_root: str, video_id: int, frame: int, rng=None):
    """One letterboxed (and, with a numpy Generator `rng`, augmented) frame as numpy arrays:
    image float32 [S, S, 3], boxes float32 [N, 4], labels int32 [N], masks uint8 [N, R, R], num_instances."""
    S, R, N = cfg.model.input_size, cfg.data.mask_res, cfg.data.max_instances
    v = ytvis.video_by_id[video_id]
    h, w = int(v["height"]), int(v["width"])
    insts = ytvis.frame_instances(video_id, frame)[:N]   # the first N in file order, as the original
    rles = [_to_rle(i["segmentation"], h, w) for i in insts]
    # Boxes come from the masks themselves (exact; the JSON bbox is not needed); toBbox works on the RLE.
    boxes = np.array([mask_util.toBbox(r) for r in rles], np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    (x1, y1, x2, y2), (nw, nh), (ox, oy), flip = _plan(h, w, boxes, S, cfg, rng)
    cw, ch = x2 - x1, y2 - y1
    # Decode the JPEG at a reduced scale when that stays at or above the target resolution and is exact.
    reduce = 1
    for r in (8, 4, 2):
        if w % r == 0 and h % r == 0 and x1 % r == 0 and y1 % r == 0 and x2 % r == 0 and y2 % r == 0 \
                and nw * r <= cw and nh * r <= ch:
            reduce = r
            break
    path = os.path.join(image_root, v["file_names"][frame])
    try:
        img = read_frame(path, reduce)
    except FrameError as e:
        raise FrameError(f"{e} (video {video_id}, frame {frame})") from None
    if img.shape[0] * reduce != h or img.shape[1] * reduce != w:
        raise FrameError(f"{path} (video {video_id}, frame {frame}): image is {img.shape[1] * reduce}x"
                         f"{img.shape[0] * reduce}, the annotation says {w}x{h}")
    crop = img[y1 // reduce:y2 // reduce, x1 // reduce:x2 // reduce]
    pic = _resize(crop, nw, nh)
    if rng is not None and rng.random() < cfg.data.hsv_prob:
        pic = _hsv_jitter(pic, cfg.data.hsv_gains, rng)
    canvas = _paste(np.full((S, S, 3), GRAY, np.uint8), pic, ox, oy)

    # Masks: edge coordinate u of the frame goes to (u - x1) * nw / cw + ox on the canvas, times R / S at mask
    # resolution. Area-resize the cropped mask close to that size, then one linear warp for the exact residual.
    out_boxes = np.zeros((N, 4), np.float32)
    out_labels = np.zeros((N,), np.int32)
    out_masks = np.zeros((N, R, R), np.uint8)
    k = 0
    sx, sy = nw / cw, nh / ch
    vis_x1, vis_y1 = max(x1, x1 + (0 - ox) / sx), max(y1, y1 + (0 - oy) / sy)    # frame region on the canvas
    vis_x2, vis_y2 = min(x2, x1 + (S - ox) / sx), min(y2, y1 + (S - oy) / sy)
    for inst, rle in zip(insts, rles):
        # pycocotools decodes column-major: `.T` is a C-contiguous [w, h] view, so the mask work below runs on
        # the transposed mask (x first) without copying the full-resolution array.
        full_t = mask_util.decode(rle).T
        # Pixels of the frame that land on the canvas; their box, mapped, is the instance's visible box.
        fx1, fy1 = int(np.floor(vis_x1)), int(np.floor(vis_y1))
        by, bx, bh, bw = cv2.boundingRect(full_t[fx1:int(np.ceil(vis_x2)), fy1:int(np.ceil(vis_y2))])
        if bw == 0 or bh == 0:
            continue
        bx += fx1
        by += fy1
        box = np.array([(bx - x1) * sx + ox, (by - y1) * sy + oy, (bx + bw - x1) * sx + ox,
                        (by + bh - y1) * sy + oy])
        box = np.clip(box, 0, S)
        if box[2] - box[0] < 1.0 or box[3] - box[1] < 1.0:
            continue
        full_t *= np.uint8(255)   # area resampling keeps partial coverage as 0..255
        m = full_t[x1:x2, y1:y2]
        f = R / S
        mw, mh = max(1, int(round(cw * sx * f))), max(1, int(round(ch * sy * f)))
        small = _resize(m, mh, mw)                            # transposed: [mw, mh]
        ax, ay = sx * f * cw / mw, sy * f * ch / mh           # residual scale (close to 1)
        bxo, byo = ox * f, oy * f
        # cv2 maps pixel centres: i' + 0.5 = a * (i + 0.5) + b; in the transposed frame x and y swap roles.
        M = np.array([[ay, 0, byo + 0.5 * ay - 0.5], [0, ax, bxo + 0.5 * ax - 0.5]], np.float64)
        mr = cv2.warpAffine(small, M, (R, R), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        mr = (mr.T >= 128).astype(np.uint8)
        if not mr.any():
            continue
        if flip:
            mr = mr[:, ::-1]
            box = np.array([S - box[2], box[1], S - box[0], box[3]])
        out_boxes[k] = box
        out_labels[k] = inst["label"]
        out_masks[k] = mr
        k += 1
    if flip:
        canvas = canvas[:, ::-1]
    image = canvas.astype(np.float32) * np.float32(1.0 / 255.0)
    return image, out_boxes, out_labels, out_masks, np.int32(k)


# ---- tf.data pipeline ---------------------------------------------------------------------------------------

def build_dataset(cfg, ann_path: str, image_root: str, video_ids=None, training: bool = True, batch_size=None,
                  seed=None, shuffle=None, ytvis: YTVIS = None, stats: LoaderStats = None, input_context=None):
    """tf.data pipeline over every annotated frame (every `cfg.data.frame_stride`-th; frames without instances
    kept, decisions M11). Elements are dicts (shapes in the module docs of the project README / decisions):
    image [B,S,S,3] float32, boxes [B,N,4], labels [B,N], masks [B,N,R,R] uint8, num_instances [B], video_id [B],
    frame_index [B], image_hw [B,2]. Training batches drop the remainder; `batch_size=0` leaves it unbatched.

    Augmentation (training and cfg.data.augment) draws from a numpy Generator seeded by (seed, position in the
    stream, sample), so the stream is deterministic under a seed although the map runs in parallel.
    Sharding: the source is an in-memory list of frames, not files, so FILE sharding cannot apply; with an
    `input_context` (strategy.distribute_datasets_from_function) each pipeline keeps every k-th frame before
    any decoding, otherwise the policy is DATA (each worker keeps its 1/k of the elements).
    """
    import tensorflow as tf

    ytvis = ytvis or load_annotations(ann_path)
    seed = cfg.train.seed if seed is None else int(seed)
    shuffle = training if shuffle is None else shuffle
    augment = training and cfg.data.augment
    skip_bad = cfg.data.skip_bad_frames
    if batch_size is None:
        batch_size = cfg.train.batch_size if training else cfg.infer.batch_size
    S, R, N = cfg.model.input_size, cfg.data.mask_res, cfg.data.max_instances
    samples = ytvis.samples(video_ids, cfg.data.frame_stride)
    if not samples:
        raise ValueError(f"{ann_path}: no frames to load (video_ids={video_ids})")
    index = np.array(samples, np.int64)                          # [F, 2] video_id, frame

    def load(pos, i):
        vid, t = int(index[i, 0]), int(index[i, 1])
        rng = np.random.default_rng([seed, int(pos), int(i)]) if augment else None
        v = ytvis.video_by_id[vid]
        hw = np.array([v["height"], v["width"]], np.int32)
        try:
            image, boxes, labels, masks, n = make_sample(cfg, ytvis, image_root, vid, t, rng)
            ok = True
        except FrameError as e:
            if not skip_bad:
                raise
            if stats is not None:
                stats.add(str(e))
            else:
                print(f"skipping bad frame: {e}", file=sys.stderr)
            image, boxes = np.zeros((S, S, 3), np.float32), np.zeros((N, 4), np.float32)
            labels, masks, n, ok = np.zeros((N,), np.int32), np.zeros((N, R, R), np.uint8), np.int32(0), False
        return image, boxes, labels, masks, n, np.int32(vid), np.int32(t), hw, ok

    def tf_load(pos, i):
        out = tf.numpy_function(load, [pos, i], [tf.float32, tf.float32, tf.int32, tf.uint8, tf.int32, tf.int32,
                                                 tf.int32, tf.int32, tf.bool], stateful=False)
        shapes = [[S, S, 3], [N, 4], [N], [N, R, R], [], [], [], [2], []]
        for o, s in zip(out, shapes):
            o.set_shape(s)
        keys = ["image", "boxes", "labels", "masks", "num_instances", "video_id", "frame_index", "image_hw", "ok"]
        return dict(zip(keys, out))

    ds = tf.data.Dataset.range(len(samples))
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        batch_size = input_context.get_per_replica_batch_size(batch_size) if batch_size else batch_size
    if shuffle:
        ds = ds.shuffle(len(samples), seed=seed, reshuffle_each_iteration=True)
    ds = ds.enumerate()
    ds = ds.map(tf_load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if skip_bad:
        ds = ds.filter(lambda e: e["ok"])
    ds = ds.map(lambda e: {k: v for k, v in e.items() if k != "ok"})
    if batch_size:
        ds = ds.batch(batch_size, drop_remainder=training)
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
    cfg = config_lib.config_from_args(args)
    ann = args.ann or os.path.join(args.data, "instances.json")
    ytvis = load_annotations(ann)
    print(f"{ann}: {len(ytvis['videos'])} videos, {len(ytvis['annotations'])} instances, "
          f"{sum(int(v['length']) for v in ytvis['videos'])} frames")
    ds = build_dataset(cfg, ann, os.path.join(args.data, "JPEGImages"), training=not args.no_augment,
                       seed=args.seed, ytvis=ytvis)
    batch = {k: v.numpy() for k, v in next(iter(ds)).items()}
    draw_batch(batch, args.show, [c["name"] for c in ytvis["categories"]])
    print(f"wrote {args.show}")


if __name__ == "__main__":
    main()
