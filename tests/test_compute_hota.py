"""HOTA by TrackEval on hand-made YouTube-VIS data whose answers follow from the definitions (Luiten et al. 2021):
DetA = TP / (TP + FN + FP), AssA = mean over TP of TPA / (TPA + FNA + FPA), HOTA = sqrt(DetA * AssA)."""
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from compute_ap import load_gt, load_results
from compute_hota import evaluate_hota

pytest.importorskip("trackeval")

H, W, T = 20, 30, 4


def enc(y0, y1, x0, x1):
    m = np.zeros((H, W), np.uint8, order="F")
    m[y0:y1, x0:x1] = 1
    r = mask_utils.encode(m)
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


A, B = enc(0, 10, 0, 10), enc(10, 20, 15, 25)  # two disjoint 10x10 objects of one category


def gt_two_objects():
    return load_gt({"videos": [{"id": 1, "height": H, "width": W, "length": T}],
                    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
                    "annotations": [
                        {"id": 1, "video_id": 1, "category_id": 1, "segmentations": [A] * T, "iscrowd": 0},
                        {"id": 2, "video_id": 1, "category_id": 1, "segmentations": [B] * T, "iscrowd": 0}]})


def hota_of(tracks):
    gt = gt_two_objects()
    res = load_results([{"video_id": 1, "category_id": 1, "score": 0.9 - 0.1 * i, "segmentations": segs}
                        for i, segs in enumerate(tracks)], gt)
    return evaluate_hota(gt, res)


def test_perfect_tracks_score_one():
    h = hota_of([[A] * T, [B] * T])
    for k in ("HOTA", "DetA", "AssA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr", "IDF1"):
        assert h[k] == pytest.approx(1.0, abs=1e-12), k
    assert h["per_category"]["cat"] == pytest.approx({"HOTA": 1.0, "DetA": 1.0, "AssA": 1.0}, abs=1e-12)
    assert h["per_category"]["dog"] == {"HOTA": -1.0, "DetA": -1.0, "AssA": -1.0}  # no GT, no result


def test_swapped_identities_lower_assa_not_deta():
    """Each track follows object A for two frames, then object B (and the other the reverse): every frame is
    detected perfectly (DetA = 1), but each matched pair shares 2 of its 4 frames: TPA 2, FNA 2, FPA 2, so
    AssA = 2/6 = 1/3 at every alpha, HOTA = sqrt(1/3), IDF1 = 2*4 / (2*8 + 0) ... = 0.5 (each ID matched half)."""
    h = hota_of([[A, A, B, B], [B, B, A, A]])
    assert h["DetA"] == pytest.approx(1.0, abs=1e-12)
    assert h["LocA"] == pytest.approx(1.0, abs=1e-12)
    assert h["AssA"] == pytest.approx(1 / 3, abs=1e-12)
    assert h["HOTA"] == pytest.approx(math.sqrt(1 / 3), abs=1e-12)
    assert h["IDF1"] == pytest.approx(0.5, abs=1e-12)


def test_missed_frames_lower_deta_not_assa():
    """Object B found in frames 0-1 only: 6 of 8 GT detections matched, no FP: DetA = 6/8; the matched pairs
    never switch (AssA: A's pair 4/4, B's pair TPA 2, FNA 2 -> 1/2, weighted by TP: (4*1 + 2*0.5)/6 = 5/6)."""
    h = hota_of([[A] * T, [B, B, None, None]])
    assert h["DetA"] == pytest.approx(6 / 8, abs=1e-12)
    assert h["AssA"] == pytest.approx(5 / 6, abs=1e-12)
    assert h["HOTA"] == pytest.approx(math.sqrt(6 / 8 * 5 / 6), abs=1e-12)


def test_result_of_a_category_without_gt_is_dropped_like_the_ap():
    gt = gt_two_objects()
    res = load_results([{"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [A] * T},
                        {"video_id": 1, "category_id": 1, "score": 0.8, "segmentations": [B] * T},
                        {"video_id": 1, "category_id": 7, "score": 0.7, "segmentations": [A] * T}], gt)
    assert evaluate_hota(gt, res)["HOTA"] == pytest.approx(1.0, abs=1e-12)
