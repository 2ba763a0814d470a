"""Track bookkeeping of the YOLOV4+1Tr heuristic tracker: frame predictions in, official results list out.

Implements T3-T8 of info/DESIGN.md#tracker (fixing the original's bookkeeping): histories indexed by absolute
frame index, inclusive score floor, optional max_age and keep_doubtful, video-level mode category and mean score;
and two options that are not in the original: `motion` compares a track with its last mask moved at its velocity,
and `refind` gives a detection that matched no track to a nearby same-class track that lost its object.

    results = track_predictions(read_frame_predictions("valid_frames.json"), TrackConfig())
"""
from collections import Counter
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
from pycocotools import mask as mask_utils

from associations import associate, cost_matrix
from config import TrackConfig
from tracking.io import FramePredictionsError, validate_frame_predictions


@dataclass
class Detection:
    index: int              # position in the frame's `detections` list (file order, descending score)
    score: float
    category_id: int
    rle: dict               # compressed RLE, counts as str


@dataclass
class Track:
    track_id: int           # creation order within the video
    history: list           # [length] Detection or None, indexed by absolute frame index
    last_rle: dict          # the mask the next frame is compared against (info/DESIGN.md#t4-track-memory)
    last_category: int      # category of the last matched detection (info/DESIGN.md#t1-cost)
    last_hit: int           # frame index of the last detection
    hits: int = 0
    centre: Optional[np.ndarray] = None    # box centre (x, y) of the last detection (motion option)
    velocity: Optional[np.ndarray] = None  # px a frame, smoothed over hits; None until the second hit

    def add(self, t: int, det: Detection):
        x, y, w, h = mask_utils.toBbox(det.rle)
        centre = np.array([x + w / 2.0, y + h / 2.0], np.float64)
        if self.centre is not None and t > self.last_hit:
            step = (centre - self.centre) / (t - self.last_hit)
            self.velocity = step if self.velocity is None else MOTION_SMOOTHING * self.velocity + \
                (1.0 - MOTION_SMOOTHING) * step
        self.history[t] = det
        self.last_rle, self.last_category, self.last_hit, self.centre = det.rle, det.category_id, t, centre
        self.hits += 1

    def expected_rle(self, t: int) -> dict:
        """The last mask moved to where the track's velocity puts it at frame t (the `motion` option)."""
        if self.velocity is None:
            return self.last_rle
        dx, dy = np.rint(self.velocity * (t - self.last_hit)).astype(int)
        return shift_rle(self.last_rle, int(dx), int(dy))

    def expected_centre(self, t: int, motion: bool) -> np.ndarray:
        """The last box centre, moved at the track's velocity to frame t when `motion` is on."""
        if not motion or self.velocity is None:
            return self.centre
        return self.centre + self.velocity * (t - self.last_hit)

    def detections(self) -> List[Detection]:
        return [d for d in self.history if d is not None]


MOTION_SMOOTHING = 0.5      # velocity <- 0.5 * velocity + 0.5 * (displacement a frame since the last hit)


def shift_rle(rle: dict, dx: int, dy: int) -> dict:
    """The mask of `rle` moved by (dx, dy) whole pixels; what leaves the frame is lost. Compressed RLE, str counts."""
    if dx == 0 and dy == 0:
        return rle
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    src = mask_utils.decode({"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts})
    out = np.zeros((h, w), np.uint8, order="F")
    if abs(dx) < w and abs(dy) < h:
        out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            src[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    moved = mask_utils.encode(out)
    return {"size": [h, w], "counts": moved["counts"].decode("ascii")}


def compressed_rle(seg, height, width):
    """A copy of `seg` as compressed RLE with `counts` a str (the official results format)."""
    counts = seg["counts"]
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(height), int(width)], "counts": counts}


def refind(dets: List[Detection], candidates: List[int], tracks: List[Track], taken, t: int, radius: float,
           motion: bool):
    """Pairs (detection, track) for detections that matched no track by mask (`candidates`, the gate's new
    detections): each goes to a track not matched in frame t (`taken` holds the matched ones) of the same category
    whose expected centre (`Track.expected_centre`) is less than `radius` x the track's last object size (the
    square root of its last mask's area) from the detection's box centre; nearest pairs first, each detection and
    track at most once (ties: lower detection index, then lower track index). Not in the original tracker: there
    an object lost for a few frames that comes back where its last mask no longer overlaps starts a new track,
    which splits the object in the video AP (track.refind)."""
    pairs = []
    for i in candidates:
        x, y, w, h = mask_utils.toBbox(dets[i].rle)
        centre = np.array([x + w / 2.0, y + h / 2.0], np.float64)
        for j, tr in enumerate(tracks):
            if j in taken or tr.last_category != dets[i].category_id:
                continue
            size = max(float(np.sqrt(mask_utils.area(tr.last_rle))), 1.0)
            distance = float(np.linalg.norm(centre - tr.expected_centre(t, motion))) / size
            if distance < radius:
                pairs.append((distance, i, j))
    used_dets, used_tracks, found = set(), set(), []
    for _, i, j in sorted(pairs):
        if i not in used_dets and j not in used_tracks:
            used_dets.add(i), used_tracks.add(j), found.append((i, j))
    return found


def kept_detections(frame, height, width, score_floor, where="") -> List[Detection]:
    """Detections of one frame taking part in tracking: score >= floor (inclusive) and a non-empty mask
    (info/DESIGN.md#t5-score-floor). A mask of the wrong size is an error even below the floor."""
    kept = []
    for k, det in enumerate(frame["detections"]):
        seg = det.get("segmentation")
        if seg is None:
            continue
        if [int(s) for s in seg["size"]] != [height, width]:
            raise FramePredictionsError(f"{where} detection {k}: segmentation size {list(seg['size'])} is not "
                                        f"the video's [{height}, {width}]")
        if det["score"] < score_floor:
            continue
        rle = compressed_rle(seg, height, width)
        if int(mask_utils.area(rle)) == 0:
            continue
        kept.append(Detection(k, float(det["score"]), int(det["category_id"]), rle))
    return kept


def track_video(video, cfg: TrackConfig, source="<frame predictions>") -> List[Track]:
    """Run the heuristic tracker over one video of the frame-predictions format; tracks in creation order."""
    height, width, length = int(video["height"]), int(video["width"]), int(video["length"])
    where_video = f"{source}: video {video['id']}"
    if len(video["frames"]) != length:
        raise FramePredictionsError(f"{where_video}: 'frames' has {len(video['frames'])} entries but length "
                                    f"is {length}")
    tracks: List[Track] = []
    for t, frame in enumerate(video["frames"]):
        if frame.get("index") != t:
            raise FramePredictionsError(f"{where_video} frame {t}: 'index' is {frame.get('index')!r}, "
                                        f"expected its position {t}")
        dets = kept_detections(frame, height, width, cfg.score_floor, f"{where_video} frame {t}")
        if not dets:
            continue
        # Only tracks created before this frame take part (T3); with max_age, only those seen recently (T4).
        active = [tr for tr in tracks if cfg.max_age is None or t - tr.last_hit <= cfg.max_age]
        cost = cost_matrix([d.rle for d in dets], [d.category_id for d in dets],
                           [tr.expected_rle(t) if cfg.motion else tr.last_rle for tr in active],
                           [tr.last_category for tr in active], cfg.lam)
        matches, new_dets, doubtful = associate(cost, cfg.tau, cfg.gamma)
        for i, j in matches:
            active[j].add(t, dets[i])
        if cfg.refind > 0:
            found = refind(dets, new_dets, active, {j for _, j in matches}, t, cfg.refind, cfg.motion)
            for i, j in found:
                active[j].add(t, dets[i])
            refound = {i for i, _ in found}
            new_dets = [i for i in new_dets if i not in refound]
        starters = sorted(new_dets + doubtful) if cfg.keep_doubtful else new_dets
        for i in starters:
            track = Track(len(tracks), [None] * length, dets[i].rle, dets[i].category_id, t)
            track.add(t, dets[i])
            tracks.append(track)
    return tracks


def video_category(categories) -> int:
    """Most frequent category, ties to the smallest id: np.bincount(...).argmax() (info/DESIGN.md#t7-kept-tracks)."""
    counts = Counter(categories)
    top = max(counts.values())
    return min(c for c, n in counts.items() if n == top)


def summarize_track(track: Track, video_id, cfg: TrackConfig) -> Optional[dict]:
    """The results entry of a track, or None if it fails min_hits or min_score (info/DESIGN.md#t7-kept-tracks)."""
    dets = track.detections()
    if len(dets) < cfg.min_hits or not dets:
        return None
    score = float(np.mean(np.array([d.score for d in dets], np.float64)))
    if not score > cfg.min_score:
        return None
    return {"video_id": video_id,
            "category_id": video_category([d.category_id for d in dets]),
            "score": score,
            "segmentations": [None if d is None else dict(d.rle) for d in track.history]}


def track_predictions(data, cfg: Optional[TrackConfig] = None, source="<frame predictions>", progress=None,
                      validate=True) -> list:
    """Track every video of a frame-predictions object; returns the official results list (videos in input
    order, tracks in creation order). `progress(position, num_videos, video, tracks, kept)` is called per video."""
    cfg = cfg or TrackConfig()
    if cfg.max_age is not None and cfg.max_age < 0:
        raise ValueError(f"max_age must be >= 0 or None, got {cfg.max_age}")
    if cfg.refind < 0:
        raise ValueError(f"refind must be >= 0, got {cfg.refind}")
    if validate:
        validate_frame_predictions(data, source)
    results = []
    videos = data["videos"]
    for position, video in enumerate(videos):
        tracks = track_video(video, cfg, source)
        kept = [s for s in (summarize_track(tr, video["id"], cfg) for tr in tracks) if s is not None]
        results.extend(kept)
        if progress is not None:
            progress(position, len(videos), video, tracks, kept)
    return results
