"""Write the built-in synthetic video-instance-segmentation dataset ("shapes") in the exact YouTube-VIS 2021
layout and schema (info/DESIGN.md#dataset-layout): `OUT/{train,valid}/JPEGImages/<video>/<frame>.jpg`, `instances.json`.

Classes differ by shape and by the hue of their texture (each class owns a 30-degree hue band; the texture's
pattern, saturation and brightness are drawn independently of the class); backgrounds are muted gradients with
stripes and noise, cluttered with distractor blobs and lines of every hue and saturation; instances move, scale,
enter, leave and occlude each other in a depth order, and
some videos script two same-class instances crossing paths. Same seed, same bytes.

The hue cue and the 24 px smallest extent make the classes learnable by the `tiny` preset from scratch within the
demo's CPU budget (info/RESULTS.md); the muted backdrop keeps a frame-wide gradient in a class's hue from being read as
that class (measured before it: one magenta `valid` video drew 303 of the 439 false detections scoring 0.3 or
more). `--shape-only --min-size 12` writes the harder variant of earlier versions: colour says nothing about the
class, backdrops keep their full colour, and the smallest shapes are 7 px at the tiny preset's 192 px input
(textures are a little more saturated than before: 110..255 instead of 80..255).

    python scripts/make_synthetic_ytvis.py --out data/shapes --seed 0
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import cv2
import numpy as np
import pycocotools.mask as mask_util

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fileio import InputError, atomic_write_bytes, check_writable_dir  # noqa: E402
from progress import Progress  # noqa: E402

CLASSES = ["disc", "square", "triangle", "star", "ring", "cross"]
POLYGON_CLASSES = {"square", "triangle", "star", "cross"}   # outlines that are exact polygons
JPEG_QUALITY = 92
FRAME_STEP = 5            # official YouTube-VIS file names advance by 5 (every 5th frame is annotated)
MIN_SIZE, MAX_SIZE = 24.0, 120.0   # default object extent range in px at 320x180; scaled with the frame size
HUE_BAND = 30             # OpenCV hue runs 0..179: class k's textures take hues 30k+15 +- HUE_JITTER
HUE_JITTER = 8
BACKDROP_CHROMA = 0.25    # with class hues, backdrop gradients keep 25 % of their colour (distractors keep all)
SPLIT_CODES = {"train": 1, "valid": 2}   # part of each video's RNG seed so the splits differ


# ---- low-level helpers -------------------------------------------------------------------------------------

def uncompressed_rle(mask: np.ndarray) -> dict:
    """Official uncompressed RLE: run lengths of the column-major flattened mask, starting with a run of 0s."""
    flat = np.asarray(mask, np.uint8).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"counts": [int(r) for r in runs], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def shape_outline(cls: str, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    """Vertices [V, 2] (x, y) of a polygon class whose extent is about `size` px, rotated by `angle` rad."""
    r = size / 2.0
    if cls == "square":
        t = np.array([0.25, 0.75, 1.25, 1.75]) * np.pi
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r * 0.95
    elif cls == "triangle":
        t = np.array([-0.5, 1 / 6, 5 / 6]) * np.pi
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif cls == "star":
        t = -0.5 * np.pi + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.42)
        pts = np.stack([np.cos(t) * rad, np.sin(t) * rad], 1)
    elif cls == "cross":
        a, b = r, r * 0.34
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b],
                        [-a, -b], [-b, -b]], np.float64)
    else:
        raise ValueError(f"{cls} is not a polygon class")
    c, s = np.cos(angle), np.sin(angle)
    rot = pts @ np.array([[c, s], [-s, c]])
    return rot + np.array([cx, cy])


def render_mask(cls: str, cx: float, cy: float, size: float, angle: float, h: int, w: int) -> np.ndarray:
    """Binary uint8 [h, w] mask of one shape (sub-pixel accurate through cv2's fixed-point `shift`)."""
    m = np.zeros((h, w), np.uint8)
    shift = 4
    f = float(1 << shift)
    if cls in ("disc", "ring"):
        centre = (int(round(cx * f)), int(round(cy * f)))
        cv2.circle(m, centre, int(round(size / 2.0 * f)), 1, -1, cv2.LINE_8, shift)
        if cls == "ring":
            cv2.circle(m, centre, int(round(size / 2.0 * 0.55 * f)), 0, -1, cv2.LINE_8, shift)
    else:
        pts = np.round(shape_outline(cls, cx, cy, size, angle) * f).astype(np.int32)
        cv2.fillPoly(m, [pts], 1, cv2.LINE_8, shift)
    return m


def polygon_mask(poly: list, h: int, w: int) -> np.ndarray:
    """The mask pycocotools rasterises for a COCO polygon; used so a polygon annotation and its pixels agree."""
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects([poly], h, w)))


def texture(rng: np.random.Generator, h: int, w: int, class_index=None) -> np.ndarray:
    """A frame-sized RGB texture: solid, stripes, checker or noise. Its hue lies in the band of class
    `class_index`, or anywhere when None; pattern, saturation and brightness never depend on the class."""
    hue = rng.integers(0, 180) if class_index is None else \
        class_index * HUE_BAND + HUE_BAND // 2 + rng.integers(-HUE_JITTER, HUE_JITTER + 1)
    hsv = np.array([[[hue, rng.integers(110, 256), rng.integers(90, 256)]]], np.uint8)
    c1 = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
    c2 = np.clip(c1 * rng.uniform(0.3, 0.8) + rng.uniform(-40, 40, 3), 0, 255).astype(np.float32)
    kind = rng.integers(0, 4)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:
        sel = np.zeros((h, w), np.float32)
    elif kind == 1:
        a = rng.uniform(0, np.pi)
        period = rng.uniform(4, 12)
        sel = ((np.cos(a) * xx + np.sin(a) * yy) // (period / 2) % 2).astype(np.float32)
    elif kind == 2:
        cell = rng.integers(3, 9)
        sel = ((xx // cell + yy // cell) % 2).astype(np.float32)
    else:
        sel = (rng.random((h, w)) < 0.35).astype(np.float32)
    img = c1[None, None] * (1 - sel[..., None]) + c2[None, None] * sel[..., None]
    return np.clip(img + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def background(rng: np.random.Generator, h: int, w: int, scale: float, chroma: float = 1.0) -> np.ndarray:
    """Gradient + stripes + noise, cluttered with distractors (irregular blobs and line segments of any colour,
    never a class). `chroma` scales the gradient colours' distance from grey: below 1 the backdrop is muted, so
    that a frame-wide backdrop in a class's hue band does not read as one huge instance of it."""
    c0 = rng.uniform(30, 220, 3)
    c1 = rng.uniform(30, 220, 3)
    c0 = c0.mean() + (c0 - c0.mean()) * chroma
    c1 = c1.mean() + (c1 - c1.mean()) * chroma
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    g = (np.cos(a) * xx / w + np.sin(a) * yy / h + 1.0) / 2.0
    img = c0 * (1 - g[..., None]) + c1 * g[..., None]
    sa = rng.uniform(0, np.pi)
    period = rng.uniform(6, 30) * scale
    img += rng.uniform(8, 30) * np.sin(2 * np.pi * (np.cos(sa) * xx + np.sin(sa) * yy) / period)[..., None]
    img += rng.normal(0, rng.uniform(4, 14), (h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 9))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.6:
            # Irregular blob: a many-vertex polygon with a strongly perturbed radius (no straight sides, no circle).
            n = int(rng.integers(9, 16))
            t = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = rng.uniform(4, 28) * scale * rng.uniform(0.35, 1.0, n)
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            pts = np.stack([cx + np.cos(t) * rad, cy + np.sin(t) * rad], 1).astype(np.int32)
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
        else:
            p1 = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            p2 = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            cv2.line(img, p1, p2, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    return img


# ---- one video ---------------------------------------------------------------------------------------------

def plan_instances(rng: np.random.Generator, n_frames: int, h: int, w: int, scale: float, index: int,
                   sizes=(MIN_SIZE, MAX_SIZE)):
    """Scripts of the instances of one video, in depth order (first = bottom). Start and end extents are drawn
    log-uniformly from `sizes` (px at 320x180)."""
    n = int(rng.integers(1, 7))
    insts = []
    for _ in range(n):
        s0, s1 = np.exp(rng.uniform(np.log(sizes[0]), np.log(sizes[1]), 2)) * scale
        p0 = np.array([rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h])
        v = rng.normal(0, 3.0, 2) * scale
        t_in = int(rng.integers(0, n_frames // 2)) if rng.random() < 0.3 else 0
        t_out = int(rng.integers(n_frames // 2, n_frames)) if rng.random() < 0.3 else n_frames - 1
        insts.append(dict(cls=CLASSES[int(rng.integers(len(CLASSES)))], p0=p0, v=v, s0=s0, s1=s1,
                          a0=rng.uniform(0, 2 * np.pi), omega=rng.normal(0, 0.08), t_in=t_in, t_out=t_out,
                          fmt="rle"))
    # Two instances of the same class crossing paths (every third video): they start on opposite sides at the
    # same height and meet in the middle of the video, one passing in front of the other.
    if index % 3 == 2 or rng.random() < 0.15:
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        size = rng.uniform(28, 48) * scale
        y = rng.uniform(0.35, 0.65) * h
        speed = (0.8 * w) / max(n_frames - 1, 1)
        for sign in (1.0, -1.0):
            x0 = w / 2 - sign * 0.4 * w
            insts.append(dict(cls=cls, p0=np.array([x0, y + sign * 0.08 * size]), v=np.array([sign * speed, 0.0]),
                              s0=size, s1=size * rng.uniform(0.9, 1.1), a0=rng.uniform(0, 2 * np.pi),
                              omega=0.0, t_in=0, t_out=n_frames - 1, fmt="rle", crossing=True))
    # Exercise every accepted segmentation form: the top-most instance of some videos is written as polygons
    # (when it is a polygon class, in frames where its outline lies inside the frame), another as compressed RLE.
    top = insts[-1]
    if index % 4 == 0 or rng.random() < 0.2:
        if top["cls"] not in POLYGON_CLASSES:
            top["cls"] = ["square", "triangle", "star", "cross"][int(rng.integers(4))]
            if top.get("crossing"):   # keep the crossing pair the same class
                insts[-2]["cls"] = top["cls"]
        top["fmt"] = "polygon"
    if index % 4 == 1 or rng.random() < 0.2:
        plain = [inst for inst in insts if inst["fmt"] == "rle"]
        if plain:
            plain[int(rng.integers(len(plain)))]["fmt"] = "compressed"
    return insts


def make_video(rng: np.random.Generator, n_frames: int, h: int, w: int, index: int, sizes=(MIN_SIZE, MAX_SIZE),
               class_hues: bool = True):
    """Render one video. Returns (frames [T] of RGB uint8, instances with per-frame segmentations). With
    `class_hues`, each instance's texture hue lies in its class's band (module docstring)."""
    scale = min(w / 320.0, h / 180.0)
    bg = background(rng, h, w, scale, BACKDROP_CHROMA if class_hues else 1.0)
    insts = plan_instances(rng, n_frames, h, w, scale, index, sizes)
    textures = [texture(rng, h, w, CLASSES.index(inst["cls"]) if class_hues else None) for inst in insts]
    frames = []
    for inst in insts:
        inst["segs"] = [None] * n_frames
    for t in range(n_frames):
        img = bg.copy()
        full = []
        polys = []
        for inst, tex in zip(insts, textures):
            if not inst["t_in"] <= t <= inst["t_out"]:
                full.append(None)
                polys.append(None)
                continue
            frac = t / max(n_frames - 1, 1)
            cx, cy = inst["p0"] + inst["v"] * t
            size = inst["s0"] + (inst["s1"] - inst["s0"]) * frac
            angle = inst["a0"] + inst["omega"] * t
            poly = None
            if inst["fmt"] == "polygon":
                pts = shape_outline(inst["cls"], cx, cy, size, angle)
                if pts[:, 0].min() >= 0 and pts[:, 1].min() >= 0 and pts[:, 0].max() < w and pts[:, 1].max() < h:
                    poly = [round(float(v), 2) for v in pts.ravel()]
            m = polygon_mask(poly, h, w) if poly is not None else render_mask(inst["cls"], cx, cy, size, angle, h, w)
            img[m > 0] = tex[m > 0]
            full.append(m)
            polys.append(poly)
        # Depth order: an instance's visible mask excludes every pixel of the instances drawn after it.
        covered = np.zeros((h, w), bool)
        for k in range(len(insts) - 1, -1, -1):
            if full[k] is None:
                continue
            vis = (full[k] > 0) & ~covered
            covered |= full[k] > 0
            if vis.any():
                vis = vis.astype(np.uint8)
                fmt = insts[k]["fmt"]
                if fmt == "polygon" and polys[k] is not None and vis.sum() == full[k].sum():
                    seg = [polys[k]]
                elif fmt == "compressed":
                    rle = mask_util.encode(np.asfortranarray(vis))
                    seg = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
                else:
                    seg = uncompressed_rle(vis)
                rle = mask_util.encode(np.asfortranarray(vis))
                insts[k]["segs"][t] = (seg, [float(v) for v in mask_util.toBbox(rle)], int(vis.sum()))
        img = np.clip(img.astype(np.int16) + rng.normal(0, 3, img.shape).astype(np.int16), 0, 255).astype(np.uint8)
        frames.append(img)
    return frames, insts


# ---- whole split -------------------------------------------------------------------------------------------

def make_split(out: str, split: str, n_videos: int, seed: int, min_frames: int, max_frames: int, h: int, w: int,
               first_video_id: int = 1, progress: bool = True, sizes=(MIN_SIZE, MAX_SIZE),
               class_hues: bool = True) -> dict:
    """Write one split and return its annotation dict (also written to OUT/split/instances.json)."""
    root = os.path.join(out, split)
    videos, annotations = [], []
    ann_id = 1
    bar = Progress(n_videos, f"dataset {split}", unit="video") if progress else None
    for i in range(n_videos):
        rng = np.random.default_rng([seed, SPLIT_CODES[split], i])
        n_frames = int(rng.integers(min_frames, max_frames + 1))
        frames, insts = make_video(rng, n_frames, h, w, i, sizes, class_hues)
        name = f"{split}_{i:04d}"
        file_names = [f"{name}/{t * FRAME_STEP:05d}.jpg" for t in range(n_frames)]
        for fname, img in zip(file_names, frames):
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for {fname}")
            atomic_write_bytes(os.path.join(root, "JPEGImages", fname), buf.tobytes())
        vid = first_video_id + i
        videos.append({"license": 1, "coco_url": "", "height": h, "width": w, "length": n_frames,
                       "date_captured": "2021-01-01 00:00:00", "file_names": file_names, "flickr_url": "",
                       "id": vid})
        for inst in insts:
            if all(s is None for s in inst["segs"]):
                continue   # never visible: not an instance of this video
            annotations.append({
                "video_id": vid, "iscrowd": 0, "height": h, "width": w, "length": 1,   # 1, as in the official files
                "segmentations": [s[0] if s else None for s in inst["segs"]],
                "bboxes": [s[1] if s else None for s in inst["segs"]],
                "category_id": CLASSES.index(inst["cls"]) + 1, "id": ann_id,
                "areas": [s[2] if s else None for s in inst["segs"]]})
            ann_id += 1
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    data = {"info": {"description": "YOLOV4+1Tr synthetic shapes (YouTube-VIS 2021 layout)", "url": "",
                     "version": "1.0", "year": 2021, "contributor": "scripts/make_synthetic_ytvis.py",
                     "date_created": "2021-01-01 00:00:00"},
            "licenses": [{"url": "", "id": 1, "name": "synthetic, no restrictions"}],
            "videos": videos, "annotations": annotations,
            "categories": [{"supercategory": "shape", "id": k + 1, "name": c} for k, c in enumerate(CLASSES)]}
    path = os.path.join(root, "instances.json")
    atomic_write_bytes(path, json.dumps(data, separators=(",", ":")).encode("utf-8"))
    return data


def summarize(split: str, data: dict, path: str):
    n_frames = sum(v["length"] for v in data["videos"])
    per_class = {c["name"]: 0 for c in data["categories"]}
    names = {c["id"]: c["name"] for c in data["categories"]}
    for a in data["annotations"]:
        per_class[names[a["category_id"]]] += 1
    counts = ", ".join(f"{k} {v}" for k, v in per_class.items())
    print(f"{split}: {len(data['videos'])} videos, {n_frames} frames, {len(data['annotations'])} instances "
          f"({counts}) -> {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/shapes", help="output root; writes OUT/train and OUT/valid")
    ap.add_argument("--seed", type=int, default=0, help="same seed, byte-identical output")
    ap.add_argument("--train-videos", type=int, default=48)
    ap.add_argument("--valid-videos", type=int, default=12)
    ap.add_argument("--min-frames", type=int, default=10)
    ap.add_argument("--max-frames", type=int, default=30)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=180)
    ap.add_argument("--min-size", type=float, default=MIN_SIZE,
                    help="smallest object extent in px at 320x180 (scaled with the frame)")
    ap.add_argument("--max-size", type=float, default=MAX_SIZE, help="largest object extent in px at 320x180")
    ap.add_argument("--shape-only", action="store_true",
                    help="draw texture hues independently of the class (shape is the only class cue)")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    args = ap.parse_args(argv)
    if not 1 <= args.min_frames <= args.max_frames:
        ap.error("need 1 <= --min-frames <= --max-frames")
    if args.width < 32 or args.height < 32:
        ap.error("--width and --height must be at least 32")
    if not 2.0 <= args.min_size <= args.max_size:
        ap.error("need 2 <= --min-size <= --max-size")
    if args.train_videos < 1 or args.valid_videos < 0:
        ap.error(f"need --train-videos >= 1 and --valid-videos >= 0 (0: no valid split), got {args.train_videos} "
                 f"and {args.valid_videos}")
    try:
        check_writable_dir(args.out, "--out")
    except InputError as e:
        ap.exit(2, f"error: {e}\n")
    for split, n, first in (("train", args.train_videos, 1), ("valid", args.valid_videos, 100001)):
        if n == 0:
            print(f"{split}: --{split}-videos 0, not written")
            continue
        data = make_split(args.out, split, n, args.seed, args.min_frames, args.max_frames, args.height, args.width,
                          first_video_id=first, progress=not args.quiet, sizes=(args.min_size, args.max_size),
                          class_hues=not args.shape_only)
        summarize(split, data, os.path.join(args.out, split, "instances.json"))


if __name__ == "__main__":
    main()
