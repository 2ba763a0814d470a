"""Reading, validating and writing the tracker's files: frame predictions (info/DESIGN.md#frame-predictions) and the
results list (info/DESIGN.md#results-json). Every error names the file and the video, frame, detection or field;
every write is atomic (temporary file in the same folder, then os.replace).
"""
import json
import math
import numbers
import os
import tempfile
import zipfile

from compute_ap import _compressed_totals
from fileio import InputError, atomic_write_text, read_json

FORMAT = "ytvis-frame-predictions"
VERSION = 1


class FramePredictionsError(InputError):
    """A frame-predictions file or object that does not follow info/DESIGN.md#frame-predictions."""


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def validate_segmentation(seg, height, width, where):
    """Check one detection mask: null, or an RLE dict of size [height, width] with `counts` a string (compressed)
    or a list of ints (uncompressed). `where` prefixes the error message. Returns compressed counts as bytes (their
    run lengths are checked by `check_compressed_totals`, many at once), else None."""
    if seg is None:
        return None
    if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
        raise FramePredictionsError(f"{where}: segmentation must be null or an RLE dict with 'size' and 'counts'")
    size = seg["size"]
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_is_int(s) for s in size):
        raise FramePredictionsError(f"{where}: segmentation size must be [height, width], got {size!r}")
    if [int(size[0]), int(size[1])] != [height, width]:
        raise FramePredictionsError(f"{where}: segmentation size {list(size)} is not the video's [height, width] "
                                    f"[{height}, {width}]")
    counts = seg["counts"]
    if isinstance(counts, str):
        try:
            return counts.encode("ascii")
        except UnicodeEncodeError:
            raise FramePredictionsError(f"{where}: compressed RLE counts hold non-ASCII characters") from None
    if isinstance(counts, bytes):
        return counts
    if isinstance(counts, list) and all(_is_int(c) and c >= 0 for c in counts):
        if sum(counts) != height * width:
            raise FramePredictionsError(f"{where}: uncompressed RLE counts sum to {sum(counts)}, "
                                        f"expected height*width = {height * width}")
        return None
    raise FramePredictionsError(f"{where}: segmentation counts must be a compressed RLE string or a list of "
                                f"non-negative ints")


def check_compressed_totals(compressed):
    """Raise for the first of `compressed` [(where, counts bytes, (height, width))] whose run lengths are not a
    valid compressed RLE covering the frame (pycocotools would decode garbage into a wrong or empty mask). One
    batched decoding for all of them: call it once a file."""
    if not compressed:
        return
    totals = _compressed_totals([c for _, c, _ in compressed])
    for (where, _, (height, width)), total in zip(compressed, totals):
        if total != height * width:
            raise FramePredictionsError(f"{where}: malformed compressed RLE: its runs do not cover the "
                                        f"{height}x{width} frame")


def validate_video(video, category_ids, source, position, compressed=None):
    """Check one entry of `videos`: id, width, height, length, `frames` with exactly `length` entries whose
    `index` equals their position, and well-formed detections (info/DESIGN.md#t5-score-floor,
    info/DESIGN.md#t6-histories). The run lengths of compressed
    masks are checked here, or, given a `compressed` list, appended to it for one `check_compressed_totals`."""
    if not isinstance(video, dict):
        raise FramePredictionsError(f"{source}: videos[{position}] must be an object")
    for key in ("id", "width", "height", "length"):
        if not _is_int(video.get(key)):
            raise FramePredictionsError(f"{source}: videos[{position}] (id {video.get('id')!r}): "
                                        f"'{key}' must be an int, got {video.get(key)!r}")
    vid, height, width, length = video["id"], video["height"], video["width"], video["length"]
    where_video = f"{source}: video {vid}"
    if height <= 0 or width <= 0 or length < 0:
        raise FramePredictionsError(f"{where_video}: height, width must be > 0 and length >= 0, "
                                    f"got {height}, {width}, {length}")
    names = video.get("file_names")
    if names is not None and (not isinstance(names, list) or len(names) != length):
        raise FramePredictionsError(f"{where_video}: 'file_names' must be a list of length {length}")
    frames = video.get("frames")
    if not isinstance(frames, list):
        raise FramePredictionsError(f"{where_video}: 'frames' must be a list")
    if len(frames) != length:
        raise FramePredictionsError(f"{where_video}: 'frames' has {len(frames)} entries but length is {length}")
    check_here = compressed is None
    compressed = [] if check_here else compressed
    for t, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise FramePredictionsError(f"{where_video} frame {t}: must be an object")
        if frame.get("index") != t or not _is_int(frame.get("index")):
            raise FramePredictionsError(f"{where_video} frame {t}: 'index' is {frame.get('index')!r}, "
                                        f"expected its position {t}")
        detections = frame.get("detections")
        if not isinstance(detections, list):
            raise FramePredictionsError(f"{where_video} frame {t}: 'detections' must be a list")
        for k, det in enumerate(detections):
            where = f"{where_video} frame {t} detection {k}"
            if not isinstance(det, dict):
                raise FramePredictionsError(f"{where}: must be an object")
            if not _is_number(det.get("score")) or not 0.0 <= det["score"] <= 1.0:
                raise FramePredictionsError(f"{where}: 'score' must be a number in [0, 1], got {det.get('score')!r}")
            if not _is_int(det.get("category_id")) or det["category_id"] not in category_ids:
                raise FramePredictionsError(f"{where}: 'category_id' {det.get('category_id')!r} is not one of "
                                            f"the file's categories")
            scores = det.get("class_scores")
            if scores is not None and (not isinstance(scores, list) or len(scores) != len(category_ids)):
                raise FramePredictionsError(f"{where}: 'class_scores' must have one value per category "
                                            f"({len(category_ids)})")
            box = det.get("bbox")
            if box is not None and (not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box)):
                raise FramePredictionsError(f"{where}: 'bbox' must be [x, y, w, h], got {box!r}")
            if "segmentation" not in det:
                raise FramePredictionsError(f"{where}: missing 'segmentation' (null is allowed)")
            counts = validate_segmentation(det["segmentation"], height, width, where)
            if counts is not None:
                compressed.append((where, counts, (height, width)))
    if check_here:
        check_compressed_totals(compressed)


def validate_frame_predictions(data, source="<frame predictions>"):
    """Check a frame-predictions object (info/DESIGN.md#frame-predictions); returns it. `source` names the file."""
    if not isinstance(data, dict):
        raise FramePredictionsError(f"{source}: expected a JSON object at the top level")
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise FramePredictionsError(f"{source}: not a frame-predictions file: format {data.get('format')!r} "
                                    f"version {data.get('version')!r}, expected {FORMAT!r} version {VERSION}")
    categories = data.get("categories")
    if not isinstance(categories, list) or not all(isinstance(c, dict) and _is_int(c.get("id")) for c in categories):
        raise FramePredictionsError(f"{source}: 'categories' must be a list of {{'id': int, 'name': str}}")
    category_ids = {c["id"] for c in categories}
    videos = data.get("videos")
    if not isinstance(videos, list):
        raise FramePredictionsError(f"{source}: 'videos' must be a list")
    seen, compressed = set(), []
    for position, video in enumerate(videos):
        validate_video(video, category_ids, source, position, compressed)
        if video["id"] in seen:
            raise FramePredictionsError(f"{source}: video {video['id']} appears twice")
        seen.add(video["id"])
    check_compressed_totals(compressed)
    return data


def read_frame_predictions(path):
    """Read and validate a frame-predictions JSON file (info/DESIGN.md#frame-predictions)."""
    data = read_json(path, "frame-predictions file", FramePredictionsError)
    return validate_frame_predictions(data, source=path)


def write_frame_predictions(path, data):
    """Validate and write frame predictions atomically. `format` and `version` are filled in when absent."""
    data = dict(data)
    data.setdefault("format", FORMAT)
    data.setdefault("version", VERSION)
    # Put the header first so `head -c 100` on the file says what it is.
    data = {"format": data.pop("format"), "version": data.pop("version"), **data}
    validate_frame_predictions(data, source=path)
    atomic_write_text(path, json.dumps(data, separators=(",", ":")))


def write_results(path, results):
    """Write the official results list (info/DESIGN.md#t8-results-output) atomically."""
    if not isinstance(results, list):
        raise ValueError(f"{path}: results must be a list of track dicts")
    atomic_write_text(path, json.dumps(results, separators=(",", ":")))


def write_submission_zip(path, results) -> int:
    """The YouTube-VIS challenge submission: a zip holding `results.json` (the official results list) at its root,
    written atomically (a temporary file in the same folder, then a rename) and read back before the rename:
    exactly one member, `results.json`, whose bytes are the JSON written and parse to as many tracks. Returns the
    zip's size in bytes."""
    if not isinstance(results, list):
        raise ValueError(f"{path}: results must be a list of track dicts")
    data = json.dumps(results, separators=(",", ":")).encode("utf-8")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=os.path.basename(path))
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("results.json", data)
        with zipfile.ZipFile(tmp) as z:
            names = z.namelist()
            back = z.read("results.json") if names == ["results.json"] else None
        if back != data or len(json.loads(back)) != len(results):
            raise OSError(f"{path}: the zip does not read back as written (members {names})")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return os.path.getsize(path)
