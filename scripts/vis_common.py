"""Shared helpers of the inspection scripts: track colours, RLE decoding, JSON reading, video I/O and drawing.

Implements info/DESIGN.md#visualisation-scripts (both RLE kinds, colour fixed by a track id, boxes and
`#id class score` labels). Uses cv2, numpy and pycocotools only, never TensorFlow.
"""
from __future__ import annotations

import colorsys
import math
import numbers
import os
import re
import sys
import tempfile

import cv2
import numpy as np
from pycocotools import mask as mask_utils

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fileio  # noqa: E402

GOLDEN_ANGLE_DEG = 137.508  # successive ids land far apart on the hue circle
LETTERBOX_BG = (30, 30, 30)  # BGR background of letterboxed frames (as the original concat script)


class VisError(fileio.InputError):
    """Bad input to an inspection script; the message names the file and the video/frame/field."""


# ---- colours -----------------------------------------------------------------------------------------------

def track_colour(track_id: int) -> tuple:
    """BGR colour of a track: hue = id * golden angle, S 0.8, V 0.95, so neighbouring ids differ clearly."""
    hue = (int(track_id) * GOLDEN_ANGLE_DEG) % 360.0
    r, g, b = colorsys.hsv_to_rgb(hue / 360.0, 0.8, 0.95)
    return int(round(b * 255)), int(round(g * 255)), int(round(r * 255))


def blend(pixels: np.ndarray, colour, alpha: float) -> np.ndarray:
    """alpha * colour + (1 - alpha) * pixels, rounded half-to-even, as uint8 (the exact rule tests check)."""
    out = alpha * np.asarray(colour, np.float64) + (1.0 - alpha) * pixels.astype(np.float64)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ---- JSON and RLE ------------------------------------------------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def read_json(path: str, what: str = "JSON file"):
    return fileio.read_json(path, what, VisError)


def category_names(categories) -> dict:
    """{id: name} from a `categories` list; an absent or malformed list gives {} (labels fall back)."""
    names = {}
    for c in categories or []:
        if isinstance(c, dict) and _is_int(c.get("id")) and "name" in c:
            names[int(c["id"])] = str(c["name"])
    return names


def class_label(category_id, names: dict) -> str:
    return names.get(int(category_id), f"class {int(category_id)}")


def load_results(path: str) -> dict:
    """Read a results JSON (info/DESIGN.md#results-json) into {video_id: [track, ...]} in file order.

    Each track is {"track_id", "category_id", "score", "segmentations"}; the track id is the track's 1-based
    position among its video's tracks in the file, so it is stable for a given file.
    """
    data = read_json(path, "results file")
    if not isinstance(data, list):
        raise VisError(f"results file {path}: expected a list of tracks, got {type(data).__name__}")
    videos = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise VisError(f"results file {path}, entry {i}: expected an object, got {type(entry).__name__}")
        for key in ("video_id", "category_id", "score", "segmentations"):
            if key not in entry:
                raise VisError(f"results file {path}, entry {i}: missing field {key!r}")
        if not isinstance(entry["segmentations"], list):
            raise VisError(f"results file {path}, entry {i} (video {entry['video_id']}): 'segmentations' must "
                           f"be a list with one RLE or null per frame")
        for key in ("video_id", "category_id"):
            if not _is_int(entry[key]):
                raise VisError(f"results file {path}, entry {i}: {key!r} must be an integer, got {entry[key]!r}")
        vid = entry["video_id"]
        if not _is_number(entry["score"]):
            raise VisError(f"results file {path}, entry {i} (video {vid}): 'score' must be a finite number, got "
                           f"{entry['score']!r}")
        tracks = videos.setdefault(vid, [])
        tracks.append({"track_id": len(tracks) + 1, "category_id": entry["category_id"],
                       "score": float(entry["score"]), "segmentations": entry["segmentations"]})
    return videos


def decode_rle(seg, where: str) -> np.ndarray:
    """Decode a compressed (`counts` a string) or uncompressed (`counts` a list) RLE to an [H, W] uint8 mask."""
    if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
        raise VisError(f"{where}: segmentation must be an RLE object with 'size' and 'counts'")
    try:
        h, w = (int(v) for v in seg["size"])
        counts = seg["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        else:
            rle = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
        mask = mask_utils.decode(rle)
    except VisError:
        raise
    except Exception as e:  # pycocotools raises bare exceptions on malformed counts
        raise VisError(f"{where}: cannot decode the RLE ({e})") from None
    if mask.shape != (h, w):
        raise VisError(f"{where}: RLE decodes to {mask.shape}, its size field says {(h, w)}")
    return mask


def mask_box(mask: np.ndarray):
    """Tight (x1, y1, x2, y2) integer box of the mask's pixels (inclusive corners), or None if empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])


# ---- drawing -----------------------------------------------------------------------------------------------

LABEL_SCALE, HEADER_SCALE = 0.45, 0.5


def _text_rect(img, text, x, y, scale):
    """(x1, y1, x2, y2) of a label whose top-left corner is asked at (x, y), moved inside the image."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    w, h = tw + 2, th + base + 2
    x = int(min(max(x, 0), max(img.shape[1] - w, 0)))
    y = int(min(max(y, 0), max(img.shape[0] - h, 0)))
    return x, y, x + w, y + h


def _put_text(img, text, rect, scale):
    """White text on a filled black box (the original's label style)."""
    x1, y1, x2, y2 = rect
    (_, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(img, (x1, y1), (x2, y2), (0, 0, 0), thickness=-1)
    cv2.putText(img, text, (x1 + 1, y1 + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _overlaps(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _overlap_area(a, b):
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def draw_frame(frame_bgr, tracks_at_frame, class_names=None, alpha: float = 0.45, draw_boxes: bool = True,
               header: str = None) -> np.ndarray:
    """Draw the tracks present in one frame and return a new image (the input is not modified).

    tracks_at_frame: list of {"track_id", "category_id", "score", "mask": [H, W] (0/1)} in drawing order.
    Mask pixels become blend(frame, track_colour(track_id), alpha) (later tracks on top); then every mask's box
    in the track's colour (unless draw_boxes is False); then a label `#id class score` per track, just above its
    box where that is free (else inside the box's top, below it, or pushed below the label in the way; else
    the least covered of these); the header line at the top-left.
    """
    img = np.array(frame_bgr, dtype=np.uint8, copy=True)
    if img.ndim != 3 or img.shape[2] != 3:
        raise VisError(f"draw_frame expects an [H, W, 3] BGR image, got shape {img.shape}")
    names = class_names or {}
    boxes = []
    for t in tracks_at_frame:
        mask = np.asarray(t["mask"]).astype(bool)
        if mask.shape != img.shape[:2]:
            raise VisError(f"track #{t['track_id']}: mask size {mask.shape} differs from the frame's "
                           f"{img.shape[:2]}")
        colour = track_colour(t["track_id"])
        img[mask] = blend(img[mask], colour, alpha)
        box = mask_box(mask)
        if box is not None:
            boxes.append((t, colour, box))
    # All boxes before any text, so no box line crosses a label.
    if draw_boxes:
        for _, colour, (x1, y1, x2, y2) in boxes:
            cv2.rectangle(img, (x1, y1), (x2, y2), colour, thickness=2)
    taken = []  # rectangles already holding text: labels must not hide each other or the header
    if header:
        taken.append(_text_rect(img, header, 4, 4, HEADER_SCALE))
    for t, _, (x1, y1, _x2, y2) in boxes:
        label = f"#{t['track_id']} {class_label(t['category_id'], names)} {float(t['score']):.2f}"
        _, _, _, h = _text_rect(img, label, 0, 0, LABEL_SCALE)
        candidates = [_text_rect(img, label, x1, y, LABEL_SCALE) for y in (y1 - h - 2, y1 + 2, y2 + 3)]
        # then the "above" place pushed just below each label it would hide
        candidates += [_text_rect(img, label, x1, o[3] + 1, LABEL_SCALE) for o in taken
                       if _overlaps(candidates[0], o)]
        free = [r for r in candidates if not any(_overlaps(r, o) for o in taken)]
        rect = free[0] if free else min(candidates, key=lambda r: sum(_overlap_area(r, o) for o in taken))
        _put_text(img, label, rect, LABEL_SCALE)
        taken.append(rect)
    if header:
        _put_text(img, header, taken[0], HEADER_SCALE)
    return img


# ---- video I/O ---------------------------------------------------------------------------------------------

def natural_key(name: str):
    """Sort key that orders the numbers inside a name numerically: vis_v2 before vis_v10."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in re.split(r"(\d+)", name) if p]


def open_video(path: str):
    """cv2.VideoCapture of `path` with (capture, fps, frame count, width, height); an error names the file."""
    if not os.path.isfile(path):
        raise VisError(f"video {path}: no such file")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise VisError(f"video {path}: cannot be opened as a video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
    h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
    return cap, fps, n, w, h


def read_frames(path: str, limit: int = None):
    """Yield the BGR frames of a video file in order (at most `limit`)."""
    cap, *_ = open_video(path)
    try:
        k = 0
        while limit is None or k < limit:
            ok, frame = cap.read()
            if not ok:
                break
            k += 1
            yield frame
    finally:
        cap.release()


def count_frames(path: str) -> int:
    """Frames actually decodable (the container's count can be an estimate)."""
    return sum(1 for _ in read_frames(path))


def make_temp(folder: str, suffix: str) -> str:
    """An empty temporary file in `folder` (for a later os.replace), readable like a normal file: mkstemp's
    private 0600 mode would otherwise carry over to the output."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return tmp


class AtomicVideoWriter:
    """mp4v writer to a temporary file in the output's folder, renamed into place by `close()` after checking
    that the file opens and holds the frames written; `abort()` (or an exception inside `with`) removes it."""

    def __init__(self, path: str, fps: float, size_wh):
        self.path = path
        self.size_wh = (int(size_wh[0]), int(size_wh[1]))
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        self.tmp = make_temp(folder, os.path.splitext(path)[1] or ".mp4")
        self.writer = cv2.VideoWriter(self.tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), self.size_wh)
        if not self.writer.isOpened():
            self.abort()
            raise VisError(f"video {path}: cv2.VideoWriter (mp4v) cannot write this file")
        self.frames = 0

    def write(self, frame):
        if (frame.shape[1], frame.shape[0]) != self.size_wh:
            raise VisError(f"video {self.path}: frame {self.frames} is {frame.shape[1]}x{frame.shape[0]}, the "
                           f"video is {self.size_wh[0]}x{self.size_wh[1]}")
        self.writer.write(frame)
        self.frames += 1

    def close(self) -> int:
        self.writer.release()
        if self.frames == 0:
            self.abort()
            raise VisError(f"video {self.path}: no frames to write")
        got = count_frames(self.tmp)
        if got != self.frames:
            self.abort()
            raise VisError(f"video {self.path}: wrote {self.frames} frames but the file reads back {got}")
        os.replace(self.tmp, self.path)
        return got

    def abort(self):
        try:
            self.writer.release()
        except Exception:
            pass
        if os.path.exists(self.tmp):
            os.remove(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


def letterbox_into(frame, width: int, height: int, bg=LETTERBOX_BG):
    """Resize `frame` uniformly (INTER_AREA) to fit width x height and centre it on a `bg` canvas."""
    h, w = frame.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = bg
    x0, y0 = (width - nw) // 2, (height - nh) // 2
    canvas[y0:y0 + nh, x0:x0 + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA)
    return canvas
