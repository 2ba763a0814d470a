"""Tests of the tracking package (info/DESIGN.md#tracker, T3-T8): hand-worked scenarios on 24x32 masks,
invariants on seeded random videos, a dense-mask transcription of the original prune_heuristics
(info/DESIGN.md#the-original-association) as the lam=0 reference, file validation errors and the command line.

Scenario expectations are written as one list per track (creation order) of the detection index taken in
each frame (`None` where absent); detection indices are positions in the frame's `detections` list.
"""
import dataclasses
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from config import TrackConfig
from tracking import track as track_cli
from tracking.io import FramePredictionsError, read_frame_predictions, write_frame_predictions, write_results
from tracking.tracks import track_predictions, track_video, video_category

H, W = 24, 32
N = None
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "fox"}]


# ---- builders -------------------------------------------------------------------------------------------------

def dense(y0, x0, y1, x1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def rle_of(m):
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def det(box, score=0.9, cat=1):
    """A detection on the box (y0, x0, y1, x1); box None gives a null segmentation, () an empty mask."""
    if box is None:
        seg = None
    elif box == ():
        seg = rle_of(np.zeros((H, W), np.uint8))
    else:
        seg = rle_of(dense(*box))
    class_scores = [0.0] * len(CATEGORIES)
    class_scores[cat - 1] = score
    return {"score": score, "category_id": cat, "class_scores": class_scores, "bbox": [0, 0, 1, 1],
            "segmentation": seg}


def video(frames, vid=1):
    return {"id": vid, "width": W, "height": H, "length": len(frames),
            "file_names": [f"v{vid}/{t:05d}.jpg" for t in range(len(frames))],
            "frames": [{"index": t, "detections": dets} for t, dets in enumerate(frames)]}


def preds(*videos):
    return {"format": "ytvis-frame-predictions", "version": 1, "categories": CATEGORIES, "videos": list(videos)}


def layout(frames, **cfg):
    """Run the tracker on one video; one list per track of the detection index used in each frame."""
    tracks = track_video(video(frames), TrackConfig(**cfg))
    return [[None if d is None else d.index for d in tr.history] for tr in tracks]


# ---- hand-worked scenarios ------------------------------------------------------------------------------------

def test_two_same_class_objects_crossing():
    # A (rows 2-12) moves right 3 px a frame, B (rows 10-20) moves left; both 10x8. Own-track IoU 50/110 (cost
    # 0.545), cross IoU at most 16/144 (cost 0.889). B overtakes A in score from frame 4, so detection order flips.
    frames = []
    for t in range(8):
        a = det((2, 2 + 3 * t, 12, 10 + 3 * t), score=0.9 if t < 4 else 0.7)
        b = det((10, 22 - 3 * t, 20, 30 - 3 * t), score=0.8 if t < 4 else 0.95)
        frames.append([a, b] if t < 4 else [b, a])
    assert layout(frames) == [[0, 0, 0, 0, 1, 1, 1, 1],
                              [1, 1, 1, 1, 0, 0, 0, 0]]


def crossing_frames():
    # Rows 8-16, width 8; A (class 1) from x=4 moving right 4 px, B (class 2) from x=20 moving left: in frame 2
    # both masks are [12, 20) exactly. Own-track IoU 32/96 = 1/3 every frame.
    return [[det((8, 4 + 4 * t, 16, 12 + 4 * t), 0.9, cat=1), det((8, 20 - 4 * t, 16, 28 - 4 * t), 0.8, cat=2)]
            for t in range(5)]


def test_two_different_class_objects_crossing_keep_identity_with_class_term():
    # lam=0.5, frame 2: A costs 0.667 to its own track and 0.667+0.5 to B's; margins 0.5 -> both match.
    assert layout(crossing_frames(), lam=0.5) == [[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_two_different_class_objects_crossing_swap_without_class_term():
    # lam=0 (the original code), frame 2: both detections cost 2/3 to both tracks: A wins track 0 on the
    # first-index ties, B fails Best Friend, and A fails Lonely Best Friend (row margin 0): nothing matches.
    # Frame 3: A [16,24) equals track 1's last mask (B at frame 1), B [8,16) equals track 0's: identities swap.
    assert layout(crossing_frames(), lam=0.0) == [[0, 0, N, 1, 1], [1, 1, N, 0, 0]]


def hidden_frames():
    # A visible in frames 0-2 and 6-8 (one px to the right when it comes back), B visible throughout.
    frames = []
    for t in range(9):
        dets = [det((2, 2, 10, 10) if t < 3 else (2, 3, 10, 11), 0.9)] if t < 3 or t >= 6 else []
        frames.append(dets + [det((14, 20, 22, 30), 0.8)])
    return frames


def test_hidden_object_is_reidentified():
    assert layout(hidden_frames()) == [[0, 0, 0, N, N, N, 0, 0, 0],
                                       [1, 1, 1, 0, 0, 0, 1, 1, 1]]


def gap_crossing_frames():
    # Same class, 8 rows x 6 columns: A (rows 2-10) from x=2 moving right 3 px a frame, B (rows 4-12) from x=24
    # moving left; both hidden in frames 3-5 while they pass. In frame 6, A ([20, 26)) lies exactly where B's
    # last mask was (frame 2, [18, 24) -> overlap 24 px, IoU 1/3) and B ([6, 12)) where A's was ([8, 14)).
    frames = []
    for t in range(9):
        a, b = det((2, 2 + 3 * t, 10, 8 + 3 * t), 0.9), det((4, 24 - 3 * t, 12, 30 - 3 * t), 0.8)
        frames.append([] if 3 <= t <= 5 else [a, b])
    return frames


def test_crossing_behind_a_gap_swaps_without_motion():
    # The original tracker (T4): last masks stay where they were, so the identities swap after the gap.
    assert layout(gap_crossing_frames()) == [[0, 0, 0, N, N, N, 1, 1, 1], [1, 1, 1, N, N, N, 0, 0, 0]]


def test_crossing_behind_a_gap_keeps_identity_with_motion():
    # motion: A's box centre moved +3 px a frame (5, 8, 11), so in frame 6 its last mask is compared 4 x 3 = 12 px
    # further right, [20, 26): exactly A's detection (IoU 1); B's likewise 12 px left. Identities hold.
    assert layout(gap_crossing_frames(), motion=True) == [[0, 0, 0, N, N, N, 0, 0, 0], [1, 1, 1, N, N, N, 1, 1, 1]]


def comeback_frames(cat_back=1):
    # A (6x6, category 1) moves right 2 px a frame in frames 0-2 (box centre x 5, 7, 9), is missed in frames 3-4
    # and comes back in frame 5 at x 20-26 (centre 23): its mask moved at its velocity (3 frames x 2 px: x 12-18)
    # does not touch it. B (category 2) sits still on the right throughout.
    frames = []
    for t in range(8):
        a = det((2, 2 + 2 * t, 8, 8 + 2 * t), 0.9) if t < 3 else det((2, 20 + t - 5, 8, 26 + t - 5), 0.9, cat_back)
        frames.append(([a] if t < 3 or t >= 5 else []) + [det((14, 26, 20, 32), 0.8, cat=2)])
    return frames


def test_refind_gives_a_lost_object_back_its_track():
    # Without refind A's return starts track 2. With refind 2: A's expected centre in frame 5 is x 9 + 3 x 2 = 15,
    # 8 px from the detection's 23, 1.33 object sizes (sqrt(36) = 6 px): track 0 takes it; B's track (category 2,
    # and matched by mask) is never a candidate.
    b = [1, 1, 1, 0, 0, 1, 1, 1]                       # B is detection 0 where A is missed
    assert layout(comeback_frames(), motion=True) == [[0, 0, 0, N, N, N, N, N], b, [N] * 5 + [0, 0, 0]]
    assert layout(comeback_frames(), motion=True, refind=2.0) == [[0, 0, 0, N, N, 0, 0, 0], b]
    # 1.33 sizes is beyond a radius of 1.25; without motion the last centre (9) is 14 px = 2.33 sizes away
    assert layout(comeback_frames(), motion=True, refind=1.25)[2] == [N] * 5 + [0, 0, 0]
    assert layout(comeback_frames(), refind=2.0)[2] == [N] * 5 + [0, 0, 0]
    assert layout(comeback_frames(), refind=2.5) == [[0, 0, 0, N, N, 0, 0, 0], b]
    # a detection of another category is never given to the track
    assert layout(comeback_frames(cat_back=3), motion=True, refind=2.0)[2] == [N] * 5 + [0, 0, 0]


def test_shift_rle_moves_the_mask_and_crops_at_the_frame_edge():
    from tracking.tracks import shift_rle
    m = dense(2, 3, 10, 9)
    moved = mask_utils.decode({"size": [H, W], "counts": shift_rle(rle_of(m), 5, -4)["counts"].encode()})
    assert np.array_equal(moved, dense(0, 8, 6, 14))                   # rows 2-10 up 4: rows 0-6 remain
    off = shift_rle(rle_of(m), W, 0)
    assert int(mask_utils.area({"size": [H, W], "counts": off["counts"].encode()})) == 0
    assert shift_rle(rle_of(m), 0, 0) == rle_of(m)


@pytest.mark.parametrize("max_age, reidentified", [(4, True), (3, False), (2, False)])
def test_max_age(max_age, reidentified):
    # A was last hit in frame 2 and comes back in frame 6: it takes part iff 6 - 2 <= max_age.
    got = layout(hidden_frames(), max_age=max_age)
    if reidentified:
        assert got == [[0, 0, 0, N, N, N, 0, 0, 0], [1, 1, 1, 0, 0, 0, 1, 1, 1]]
    else:  # the expired track stays in the output; A starts a third track
        assert got == [[0, 0, 0, N, N, N, N, N, N], [1, 1, 1, 0, 0, 0, 1, 1, 1], [N] * 6 + [0, 0, 0]]


@pytest.mark.parametrize("lam, expected", [
    (0.0, [[0, 0, 0, 0]]),
    (0.5, [[0, 0, 0, 0]]),                     # flicker costs 0 + 0.5 < tau: still linked
    (1.0, [[0, 0, N, 0], [N, N, 0, N]]),       # flicker costs 1.0 >= tau: new track; frame 3 returns to track 0
])
def test_class_flicker(lam, expected):
    frames = [[det((4, 4, 16, 20), 0.9, cat=c)] for c in (1, 1, 2, 1)]
    assert layout(frames, lam=lam) == expected


def test_track_class_is_the_class_of_its_last_match():
    # Static 10x10 object whose class changes from 1 to 2 in frame 2 (cost 0.5: linked). In frame 4 two
    # detections compete: det 0 (class 1, 1 px off: 1 - 90/110 = 0.182) and det 1 (class 2, 2 px off:
    # 1 - 80/120 = 0.333). The track's class is now 2, so det 0 costs 0.682 and det 1 wins Best Friend.
    frames = [[det((4, 4, 14, 14), 0.9, cat=c)] for c in (1, 1, 2, 2)]
    frames.append([det((4, 5, 14, 15), 0.9, cat=1), det((4, 6, 14, 16), 0.8, cat=2)])
    assert layout(frames, lam=0.5) == [[0, 0, 0, 0, 1]]
    assert layout(frames, lam=0.0) == [[0, 0, 0, 0, 0]]


def test_class_flicker_video_category_is_the_mode():
    frames = [[det((4, 4, 16, 20), 0.9, cat=c)] for c in (1, 1, 2, 1)]
    results = track_predictions(preds(video(frames)), TrackConfig(lam=0.5))
    assert [r["category_id"] for r in results] == [1]


def test_duplicate_detection_best_friend():
    # Frame 1: det 0 has IoU 80/120 with A (cost 0.333), det 1 IoU 90/110 (cost 0.182): both pick track 0, whose
    # column minimum is det 1, so det 0 fails Best Friend and is dropped (or starts a track with keep_doubtful).
    # Det 2 is far from everything and starts a track; with keep_doubtful, new tracks are created in ascending
    # detection order, so det 0 (doubtful) comes before det 2 (new).
    frames = [[det((4, 4, 14, 14))],
              [det((4, 6, 14, 16), 0.9), det((4, 5, 14, 15), 0.85), det((16, 20, 22, 30), 0.8)]]
    assert layout(frames) == [[0, 1], [N, 2]]
    assert layout(frames, keep_doubtful=True) == [[0, 1], [N, 0], [N, 2]]


def test_near_tie_between_two_tracks_lonely_best_friend():
    # Frame 1: C has cost 1 - 64/320 = 0.8 to A and 1 - 64/330 = 0.80606 to B: margin 0.006 < gamma -> doubtful.
    frames = [[det((0, 0, 16, 10), 0.9), det((0, 16, 17, 26), 0.8)], [det((0, 6, 16, 20), 0.9)]]
    assert layout(frames) == [[0, N], [1, N]]
    assert layout(frames, keep_doubtful=True) == [[0, N], [1, N], [N, 0]]
    assert layout(frames, gamma=0.005) == [[0, 0], [1, N]]


def test_born_late_and_leaving_early():
    frames = [[det((0, 0, 8, 8))] + ([det((12, 12, 20, 24), 0.8)] if t in (2, 3) else []) for t in range(6)]
    assert layout(frames) == [[0] * 6, [N, N, 1, 1, N, N]]
    results = track_predictions(preds(video(frames)), TrackConfig(min_hits=2))
    late = results[1]["segmentations"]
    assert late[:2] == [None, None] and late[4:] == [None, None]
    assert late[2] == frames[2][1]["segmentation"] and late[3] == frames[3][1]["segmentation"]


def test_empty_frames_at_start_middle_and_end():
    frames = [[] if t in (0, 3, 6) else [det((4, 4, 12, 12))] for t in range(7)]
    assert layout(frames) == [[N, 0, 0, N, 0, 0, N]]
    (result,) = track_predictions(preds(video(frames)), TrackConfig())
    assert [s is not None for s in result["segmentations"]] == [False, True, True, False, True, True, False]


def test_empty_and_null_masks_are_dropped():
    frames = [[det(())],                                                # only an empty mask: like an empty frame
              [det((), 0.95), det(None, 0.9), det((4, 4, 12, 12), 0.8)],
              [det((4, 4, 12, 12), 0.8)]]
    assert layout(frames) == [[N, 2, 0]]


def test_score_floor_is_inclusive():
    frames = [[det((4, 4, 12, 12), 0.6)], [det((4, 4, 12, 12), 0.5999)], [det((4, 4, 12, 12), 0.6)]]
    assert layout(frames) == [[0, N, 0]]
    assert layout(frames, score_floor=0.5) == [[0, 0, 0]]
    assert layout(frames, score_floor=0.61) == []


def test_one_frame_video():
    frames = [[det((0, 0, 8, 8), 0.9, cat=2), det((10, 10, 20, 20), 0.7, cat=3)]]
    assert layout(frames) == [[0], [1]]
    assert track_predictions(preds(video(frames)), TrackConfig()) == []  # min_hits 4
    results = track_predictions(preds(video(frames, vid=42)), TrackConfig(min_hits=1))
    assert results == [{"video_id": 42, "category_id": 2, "score": 0.9,
                        "segmentations": [frames[0][0]["segmentation"]]},
                       {"video_id": 42, "category_id": 3, "score": 0.7,
                        "segmentations": [frames[0][1]["segmentation"]]}]


def test_first_frame_overlapping_detections_all_start_tracks():
    frames = [[det((4, 4, 12, 12), 0.9), det((4, 4, 12, 12), 0.8)], [det((4, 4, 12, 12), 0.9)]]
    # Frame 1: cost 0 to both tracks: track 0 on the tie, then LBF prunes it (row margin 0).
    assert layout(frames) == [[0, N], [1, N]]


def test_tracks_created_in_a_frame_do_not_take_part_in_it():
    # Frame 1: det 0 far from track 0 starts track 1; det 1 overlaps det 0 but is compared with track 0 only
    # (cost 1 -> also new), not with the just-created track 1.
    frames = [[det((0, 0, 4, 4))], [det((10, 10, 20, 20), 0.9), det((10, 11, 20, 21), 0.8)]]
    assert layout(frames) == [[0, N], [N, 0], [N, 1]]


def test_video_level_category_score_and_filters():
    assert video_category([2, 2, 1, 1, 3]) == 1                      # tie between 1 and 2: smallest id
    assert video_category([3, 3, 1]) == 3
    box = (4, 4, 12, 12)
    scores = [0.9, 0.8, 0.7, 0.65]
    frames = [[det(box, s, cat=c)] for s, c in zip(scores, (3, 3, 2, 2))]
    (r,) = track_predictions(preds(video(frames)), TrackConfig())
    assert r["category_id"] == 2 and r["score"] == float(np.mean(scores)) and r["score"] == 0.7625000000000001
    assert track_predictions(preds(video(frames)), TrackConfig(min_hits=5)) == []
    # score > min_score is strict: four detections at exactly 0.6 average to exactly 0.6 and are dropped
    frames = [[det(box, 0.6)] for _ in range(4)]
    assert track_predictions(preds(video(frames)), TrackConfig()) == []
    assert len(track_predictions(preds(video(frames)), TrackConfig(min_score=0.59))) == 1


def test_results_order_videos_in_input_order_tracks_in_creation_order():
    v1 = video([[det((0, 0, 8, 8), 0.9)], [det((0, 0, 8, 8), 0.9), det((12, 12, 20, 20), 0.8)],
                [det((0, 0, 8, 8), 0.9), det((12, 12, 20, 20), 0.8)]], vid=9)
    v2 = video([[det((2, 2, 8, 8), 0.7, cat=3)]], vid=4)
    results = track_predictions(preds(v1, v2), TrackConfig(min_hits=1))
    assert ([(r["video_id"], r["category_id"], len(r["segmentations"])) for r in results]
            == [(9, 1, 3), (9, 1, 3), (4, 3, 1)])
    assert results[1]["segmentations"][0] is None


# ---- the original code as the lam=0 reference -------------------------------------------------------------------

def original_prune_heuristics(A, tau=0.99, gamma=0.01):
    """Dense transcription of the original prune_heuristics (info/DESIGN.md#the-original-association): gating, Best
    Friend and Lonely Best Friend on a float32 cost matrix, mutated in place. Returns (pairs, new, doubtful)."""
    rows = np.arange(A.shape[0])
    cols = np.argmin(A, axis=1)
    best = A[rows, cols]
    new = rows[best >= tau]
    ok = best < tau
    m, n, a = rows[ok], cols[ok], best[ok]
    friend = np.argmin(A, axis=0)[n] == m
    doubtful = list(m[~friend])
    m, n, a = m[friend], n[friend], a[friend]
    if len(m):
        A[m, n] = np.inf
        lonely = ~((A.min(axis=1)[m] - a < gamma) | (A.min(axis=0)[n] - a < gamma))
        doubtful += list(m[~lonely])
        m, n = m[lonely], n[lonely]
    return list(zip(m.tolist(), n.tolist())), new.tolist(), sorted(int(i) for i in doubtful)


def original_track(frames):
    """The original per-frame loop on dense masks (no class term): returns one {det: track} dict per frame.
    Valid on videos whose every frame has detections (the original's alignment bugs then do not matter)."""
    last = []  # last dense mask of each track, creation order
    per_frame = []
    for dets in frames:
        masks = [mask_utils.decode(d["segmentation"]) for d in dets]
        assigned = {}
        if not last:
            new = list(range(len(masks)))
        else:
            m1 = np.stack(masks, -1).reshape(-1, len(masks)).astype(np.float32)
            m2 = np.stack(last, -1).reshape(-1, len(last)).astype(np.float32)
            inter = m1.T @ m2
            union = m1.sum(0)[:, None] + m2.sum(0)[None, :] - inter
            A = 1 - inter / union
            pairs, new, _ = original_prune_heuristics(A)
            for i, j in pairs:
                assigned[i] = j
                last[j] = masks[i]
        for i in new:
            assigned[i] = len(last)
            last.append(masks[i])
        per_frame.append(assigned)
    return per_frame


def reference_scenario(seed):
    """Five 7x7..9x9 objects on random walks (2 px steps), the fifth born in frame 6, each dropped at random in
    some frames, detection order shuffled each frame, plus a near-duplicate of one object now and then."""
    rng = np.random.default_rng(seed)
    pos = rng.integers([0, 0], [H - 9, W - 9], size=(5, 2))
    sizes = rng.integers(7, 10, size=(5, 2))
    frames = []
    for t in range(14):
        pos = np.clip(pos + rng.integers(-2, 3, size=(5, 2)), 0, [H - 9, W - 9])
        objs = [k for k in range(5) if (k < 4 or t >= 6) and not (t > 0 and rng.random() < 0.15)] or [0]
        boxes = [(pos[k, 0], pos[k, 1], pos[k, 0] + sizes[k, 0], pos[k, 1] + sizes[k, 1]) for k in objs]
        if rng.random() < 0.3:
            y0, x0, y1, x1 = boxes[0]
            boxes.append((y0, x0 + 1, y1, x1 + 1))
        order = rng.permutation(len(boxes))
        frames.append([det(tuple(int(v) for v in boxes[i]), 0.9 - 0.01 * r) for r, i in enumerate(order)])
    return frames


@pytest.mark.parametrize("seed", [1, 2, 5, 6])
def test_lam0_reproduces_original_association_decisions(seed):
    frames = reference_scenario(seed)
    expected = original_track(frames)
    tracks = track_video(video(frames), TrackConfig(lam=0.0))
    got = [{d.index: tr.track_id for tr in tracks if (d := tr.history[t]) is not None} for t in range(len(frames))]
    assert got == expected
    # the scenario exercises all three outcomes: matches, later new tracks and dropped (doubtful) detections
    used = sum(len(f) for f in expected)
    assert used < sum(len(f) for f in frames) and len(tracks) > len(frames[0])


# ---- invariants on random inputs ------------------------------------------------------------------------------

def random_video(rng, vid, length):
    frames = []
    for _ in range(length):
        dets = []
        for _ in range(rng.integers(0, 6)):
            y0, x0 = rng.integers(0, H - 2), rng.integers(0, W - 2)
            box = (int(y0), int(x0), int(y0 + rng.integers(1, 10)), int(x0 + rng.integers(1, 12)))
            kind = rng.random()
            dets.append(det(() if kind < 0.1 else None if kind < 0.15 else box,
                            float(np.round(rng.uniform(0.3, 1.0), 3)), int(rng.integers(1, 4))))
        dets.sort(key=lambda d: -d["score"])
        frames.append(dets)
    return video(frames, vid)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("cfg", [TrackConfig(), TrackConfig(lam=0.0, keep_doubtful=True, max_age=2, min_hits=1),
                                 TrackConfig(motion=True)])
def test_invariants_on_random_videos(seed, cfg):
    rng = np.random.default_rng(seed)
    data = preds(*[random_video(rng, vid, int(rng.integers(1, 16))) for vid in (3, 1, 2)])
    for v in data["videos"]:
        tracks = track_video(v, cfg)
        for tr in tracks:
            assert len(tr.history) == v["length"]
            present = [t for t, d in enumerate(tr.history) if d is not None]
            assert present and tr.hits == len(present) and tr.last_hit == present[-1]
            assert tr.last_rle == tr.history[present[-1]].rle
        for t, frame in enumerate(v["frames"]):
            used = [tr.history[t].index for tr in tracks if tr.history[t] is not None]
            assert len(used) == len(set(used))  # no detection used twice in a frame
            for k in used:
                d = frame["detections"][k]
                assert d["score"] >= cfg.score_floor and mask_utils.area(d["segmentation"]) > 0
    results = track_predictions(data, cfg)
    for r in results:
        v = next(v for v in data["videos"] if v["id"] == r["video_id"])
        assert len(r["segmentations"]) == v["length"]
        for t, seg in enumerate(r["segmentations"]):
            if seg is not None:
                assert isinstance(seg["counts"], str)
                assert mask_utils.decode(seg).shape == (H, W)
                assert any(d["segmentation"] == seg for d in v["frames"][t]["detections"])
    assert [r["video_id"] for r in results] == sorted((r["video_id"] for r in results), key=[3, 1, 2].index)
    assert json.dumps(track_predictions(data, cfg)) == json.dumps(results)  # deterministic


# ---- files and errors -----------------------------------------------------------------------------------------

def test_frame_predictions_round_trip_and_atomic_writes(tmp_path):
    data = preds(video(crossing_frames()))
    path = tmp_path / "frames.json"
    write_frame_predictions(str(path), data)
    assert read_frame_predictions(str(path)) == data
    out = tmp_path / "results.json"
    results = track_predictions(data, TrackConfig(min_hits=1))
    write_results(str(out), results)
    assert json.loads(out.read_text()) == results
    assert sorted(os.listdir(tmp_path)) == ["frames.json", "results.json"]  # no temporary files left


def test_uncompressed_input_rle_gives_compressed_output():
    # Rows 4-11, columns 4-11 of 24x32, column-major runs: 4 empty columns + 4 rows = 100 zeros, then 8 ones and
    # 16 zeros per column (7 times), the last 8 ones, then 12 + 20*24 = 492 zeros.
    counts = [100] + [8, 16] * 7 + [8, 492]
    assert sum(counts) == H * W
    frames = [[det((4, 4, 12, 12))] for _ in range(4)]
    for dets in frames:
        dets[0]["segmentation"] = {"size": [H, W], "counts": list(counts)}
    (r,) = track_predictions(preds(video(frames)), TrackConfig())
    assert r["segmentations"][0] == rle_of(dense(4, 4, 12, 12))


def bad(mutate):
    data = preds(video([[det((4, 4, 12, 12))], [det((4, 4, 12, 12))]], vid=5))
    mutate(data)
    return data


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format="coco"), r"frames\.json: not a frame-predictions file"),
    (lambda d: d.update(version=2), r"frames\.json: not a frame-predictions file.*version 2"),
    (lambda d: d["videos"][0]["frames"].pop(), r"video 5: 'frames' has 1 entries but length is 2"),
    (lambda d: d["videos"][0]["frames"][1].update(index=0), r"video 5 frame 1: 'index' is 0"),
    (lambda d: d["videos"][0]["frames"][1]["detections"][0]["segmentation"].update(size=[W, H]),
     r"video 5 frame 1 detection 0: segmentation size \[32, 24\]"),
    (lambda d: d["videos"][0]["frames"][0]["detections"][0].update(category_id=7),
     r"video 5 frame 0 detection 0: 'category_id' 7"),
    (lambda d: d["videos"][0]["frames"][0]["detections"][0].update(score=None),
     r"video 5 frame 0 detection 0: 'score'"),
    (lambda d: d["videos"][0].pop("height"), r"'height' must be an int"),
    (lambda d: d["videos"][0]["frames"][0]["detections"][0].update(score=1e308),
     r"video 5 frame 0 detection 0: 'score' must be a number in \[0, 1\], got 1e\+308"),
    (lambda d: d["videos"][0]["frames"][1]["detections"][0].update(score=-5),
     r"video 5 frame 1 detection 0: 'score' must be a number in \[0, 1\], got -5"),
    # pycocotools reads any string as run lengths; these cover 1 + 31 + ... pixels, not the 24x32 frame
    (lambda d: d["videos"][0]["frames"][1]["detections"][0]["segmentation"].update(counts="garbage!!"),
     r"video 5 frame 1 detection 0: malformed compressed RLE: its runs do not cover the 24x32 frame"),
    (lambda d: d["videos"][0]["frames"][0]["detections"][0]["segmentation"].update(counts="0é"),
     r"video 5 frame 0 detection 0: compressed RLE counts hold non-ASCII characters"),
])
def test_bad_input_errors_name_file_video_frame(tmp_path, mutate, message):
    path = tmp_path / "frames.json"
    path.write_text(json.dumps(bad(mutate)))
    with pytest.raises(FramePredictionsError, match=message) as err:
        read_frame_predictions(str(path))
    assert str(path) in str(err.value)


def test_tracker_itself_rejects_wrong_mask_size_and_index():
    data = bad(lambda d: d["videos"][0]["frames"][1]["detections"][0]["segmentation"].update(size=[W, H]))
    with pytest.raises(FramePredictionsError, match=r"video 5 frame 1 detection 0: segmentation size"):
        track_predictions(data, TrackConfig(), validate=False)
    data = bad(lambda d: d["videos"][0]["frames"][1].update(index=3))
    with pytest.raises(FramePredictionsError, match=r"video 5 frame 1: 'index' is 3"):
        track_predictions(data, TrackConfig(), validate=False)


def test_unreadable_files(tmp_path):
    with pytest.raises(FramePredictionsError, match="missing.json: cannot read"):
        read_frame_predictions(str(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(FramePredictionsError, match="broken.json: not valid JSON"):
        read_frame_predictions(str(tmp_path / "broken.json"))
    with pytest.raises(FramePredictionsError, match="out.json: not a frame-predictions"):
        write_frame_predictions(str(tmp_path / "out.json"), dict(preds(), version=3))
    assert not (tmp_path / "out.json").exists()


# ---- command line ---------------------------------------------------------------------------------------------

def test_cli_does_not_import_tensorflow(tmp_path):
    frames_path, out_path = tmp_path / "frames.json", tmp_path / "results.json"
    write_frame_predictions(str(frames_path), preds(video(hidden_frames(), vid=11)))
    code = ("import runpy, sys\n"
            "for argv in (['--help'], ['--pred', sys.argv[1], '--out', sys.argv[2]]):\n"
            "    sys.argv = ['track'] + argv\n"
            "    try:\n        runpy.run_module('tracking.track', run_name='__main__')\n"
            "    except SystemExit as e:\n        assert not e.code, e.code\n"
            "print('TF_LOADED', 'tensorflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code, str(frames_path), str(out_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--pred" in out.stdout and "--keep-doubtful" in out.stdout
    assert f"wrote 2 tracks to {out_path}" in out.stdout
    assert "TF_LOADED False" in out.stdout


def test_cli_end_to_end(tmp_path):
    frames_path, out_path = tmp_path / "frames.json", tmp_path / "sub" / "results.json"
    write_frame_predictions(str(frames_path), preds(video(hidden_frames(), vid=11)))
    buf = io.StringIO()
    with redirect_stdout(buf):
        track_cli.main(["--pred", str(frames_path), "--out", str(out_path), "--max-age", "2", "--min-hits", "3"])
    assert str(out_path) in buf.getvalue() and "[1/1] video 11" in buf.getvalue()
    results = json.loads(out_path.read_text())
    # max_age 2 splits A in two tracks of 3 hits each; B has 9
    assert [sum(s is not None for s in r["segmentations"]) for r in results] == [3, 9, 3]
    assert results == track_predictions(read_frame_predictions(str(frames_path)),
                                        dataclasses.replace(TrackConfig(), max_age=2, min_hits=3))


def test_cli_zip_is_the_submission_and_reads_back(tmp_path):
    """--zip: a zip whose only member is results.json at the root, holding exactly the results JSON; no temporary
    file left behind."""
    import zipfile
    frames_path, out_path = tmp_path / "frames.json", tmp_path / "sub" / "results.json"
    write_frame_predictions(str(frames_path), preds(video(hidden_frames(), vid=11)))
    buf = io.StringIO()
    with redirect_stdout(buf):
        track_cli.main(["--pred", str(frames_path), "--out", str(out_path), "--min-hits", "3", "--zip"])
    zip_path = tmp_path / "sub" / "results.zip"
    assert f"wrote the submission {zip_path}" in buf.getvalue()
    with zipfile.ZipFile(zip_path) as z:
        assert z.namelist() == ["results.json"]
        assert json.loads(z.read("results.json")) == json.loads(out_path.read_text())
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["results.json", "results.zip"]
    with redirect_stdout(io.StringIO()):  # an explicit path
        track_cli.main(["--pred", str(frames_path), "--out", str(out_path), "--zip", str(tmp_path / "x.zip")])
    assert zipfile.ZipFile(tmp_path / "x.zip").namelist() == ["results.json"]


def test_cli_bad_input_exits_with_the_message(tmp_path):
    path = tmp_path / "frames.json"
    path.write_text(json.dumps(bad(lambda d: d["videos"][0]["frames"][1].update(index=0))))
    with pytest.raises(SystemExit) as err:
        track_cli.main(["--pred", str(path), "--out", str(tmp_path / "results.json")])
    assert f"{path}: video 5 frame 1: 'index' is 0" in str(err.value.code)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("flags, message", [
    (["--tau", "nan"], "--tau must be a finite number, got nan"),
    (["--lam", "nan"], "--lam must be a finite number, got nan"),
    (["--lam", "-1"], "--lam, --gamma and --refind must be >= 0, got -1.0"),
    (["--score-floor", "1.5"], "--score-floor is a score, in [0, 1]; got 1.5"),
    (["--min-hits", "0"], "--min-hits must be at least 1, got 0"),
    (["--out", "/proc/results.json"], "--out /proc/results.json: cannot write in /proc"),
])
def test_cli_bad_flags_and_unwritable_out_exit_before_reading(tmp_path, flags, message):
    pred = tmp_path / "missing.json"          # never read: the flags and --out are checked first
    args = ["--pred", str(pred), "--out", str(tmp_path / "results.json")] + flags
    with pytest.raises(SystemExit) as err:
        track_cli.main(args)
    assert str(err.value.code).startswith(f"tracking.track: {message}"), err.value.code


def test_cli_flags_override_config_file(tmp_path):
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text("preset: tiny\ntrack:\n  lam: 1.0\n  min_hits: 2\n")
    args = track_cli.build_parser().parse_args(
        ["--pred", "p", "--out", "o", "--config", str(cfg_path), "--lam", "0.25"])
    cfg = track_cli.resolve_config(args)
    assert (cfg.lam, cfg.min_hits, cfg.tau, cfg.keep_doubtful) == (0.25, 2, 0.99, False)
    args = track_cli.build_parser().parse_args(["--pred", "p", "--out", "o"])
    assert track_cli.resolve_config(args) == TrackConfig()


def test_tracker_video_tracks_and_draws_in_process_with_the_runs_class_names(tmp_path, monkeypatch):
    """tracker.py --video tracks and draws in its own process (tracker.track_and_draw) with the run's `track`
    section: results.json is byte for byte what `python -m tracking.track --config <run config>` writes from the
    same frame predictions, and the overlay labels tracks with the run's class names ("disc"), not "class 1"."""
    import cv2

    import tracker
    from config import get_preset, save_config
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import overlay_vis_on_video as ov
    from vis_common import class_label

    # A 6-frame clip (a frame folder) of a 10x10 square moving 3 px a frame, detected in every frame.
    cfg = get_preset("tiny")                           # its track section: floor 0.3, motion, refind
    folder = tmp_path / "clip"
    folder.mkdir()
    h, w, n = 40, 56, 6
    frames = []
    for t in range(n):
        m = np.zeros((h, w), np.uint8)
        m[10:20, 5 + 3 * t:15 + 3 * t] = 1
        cv2.imwrite(str(folder / f"{t:05d}.png"), np.dstack([m * 200] * 3).astype(np.uint8))
        rle = mask_utils.encode(np.asfortranarray(m))
        frames.append({"index": t, "detections": [{
            "score": 0.5 + 0.05 * t, "category_id": 1, "class_scores": [0.5 + 0.05 * t],
            "bbox": [5 + 3 * t, 10, 10, 10],
            "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")}}]})
    videos = tracker.folder_source(str(folder))
    doc = {"format": "ytvis-frame-predictions", "version": 1, "categories": [{"id": 1, "name": "disc"}],
           "videos": [{**videos[0][0], "frames": frames}]}
    drawn = []

    def spy(frame, present, names, **kw):
        drawn.append([class_label(t["category_id"], names) for t in present])
        return draw_frame(frame, present, names, **kw)
    draw_frame = ov.draw_frame
    monkeypatch.setattr(ov, "draw_frame", spy)
    out = tmp_path / "out"
    written = tracker.track_and_draw(doc, videos, cfg.track, str(out), log=lambda *a, **k: None)
    assert written == [str(out / "results.json"), str(out / "overlay" / "vis_v1.mp4")]
    assert drawn == [["disc"]] * n                     # one track, kept (6 hits, mean score 0.625 > 0.3)

    # the tracking stage's own command line on the same frame predictions and the same run config
    write_frame_predictions(str(tmp_path / "frames.json"), doc)
    save_config(cfg, str(tmp_path / "config.yaml"))
    with redirect_stdout(io.StringIO()):
        track_cli.main(["--pred", str(tmp_path / "frames.json"), "--out", str(tmp_path / "cli.json"),
                        "--config", str(tmp_path / "config.yaml")])
    assert (out / "results.json").read_bytes() == (tmp_path / "cli.json").read_bytes()
    cap = cv2.VideoCapture(str(out / "overlay" / "vis_v1.mp4"))
    count = 0
    while cap.read()[0]:
        count += 1
    assert count == n
