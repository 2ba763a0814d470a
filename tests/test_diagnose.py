"""scripts/diagnose.py (run by the demo) on a hand-made video: two same-class GT tracks that cross, one of another
class: identity through the crossing, detections found, oracle association, track coverage."""
import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest

import diagnose  # noqa: E402

H, W, T = 20, 40, 6


def identity(gt_path, res_path):
    return diagnose.identity_report(json.load(open(gt_path)), json.load(open(res_path)))


def square(x, y, s=6):
    m = np.zeros((H, W), np.uint8)
    m[y:y + s, x:x + s] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}, [float(x), float(y), float(s), float(s)]


def write(tmp_path, tracks):
    """GT: track A moves right 0 -> 28, track B moves left 28 -> 0 (same class; their boxes overlap mid-video),
    track C of another class sits still. `tracks` are predicted tracks as lists of GT names (None: absent)."""
    xs = {"A": [0, 6, 12, 16, 22, 28], "B": [28, 22, 16, 12, 6, 0], "C": [0] * T}
    ys = {"A": 0, "B": 2, "C": 13}
    cat = {"A": 1, "B": 1, "C": 2}
    anns = []
    for k, name in enumerate("ABC"):
        segs = [square(x, ys[name]) for x in xs[name]]
        anns.append({"id": k + 1, "video_id": 1, "category_id": cat[name], "iscrowd": 0, "height": H, "width": W,
                     "segmentations": [s for s, _ in segs], "bboxes": [b for _, b in segs],
                     "areas": [36] * T})
    gt = {"videos": [{"id": 1, "height": H, "width": W, "length": T,
                      "file_names": [f"v/{t:05d}.jpg" for t in range(T)]}],
          "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    res = [{"video_id": 1, "category_id": 1, "score": 0.9,
            "segmentations": [None if n is None else square(xs[n][t], ys[n])[0] for t, n in enumerate(seq)]}
           for seq in tracks]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    return str(tmp_path / "gt.json"), str(tmp_path / "res.json")


def test_identity_report_perfect_tracks(tmp_path):
    r = identity(*write(tmp_path, [["A"] * T, ["B"] * T]))
    # A's and B's boxes overlap in frames 2 and 3: one crossing, two objects through it
    assert r == {"kept": 2, "total": 2, "switches": 0, "no_switch": 2, "covered": 1.0,
                 "encounters": 2, "through": 2, "changed": 0, "uncovered": 0}


def test_identity_report_swap_and_gap(tmp_path):
    # Track 1 follows A for 3 frames, misses one, then follows B (a switch for A and for B); track 2 the reverse,
    # except that B's frame 3 is missed by every track.
    tracks = [["A", "A", "A", None, "B", "B"], ["B", "B", "B", None, "A", "A"]]
    r = identity(*write(tmp_path, tracks))
    # C (other class, never overlapping A or B) is not a crossing track.
    assert r["total"] == 2 and r["kept"] == 0
    assert r["switches"] == 2 and r["no_switch"] == 0
    assert r["covered"] == 10 / 12
    assert (r["encounters"], r["through"], r["changed"], r["uncovered"]) == (2, 0, 2, 0)


def test_identity_through_a_crossing_survives_a_swap_while_the_boxes_overlap(tmp_path):
    # Track 1 takes B's mask in frame 3 (the boxes overlap in frames 2-3) and A's again after: two switches for A
    # and for B, but each leaves the crossing on the track it came in with. A track only after the crossing
    # (B's second) leaves B uncovered before it.
    r = identity(*write(tmp_path, [["A", "A", "A", "B", "A", "A"], ["B", "B", "B", None, "B", "B"]]))
    assert r["switches"] == 2 and (r["through"], r["changed"], r["uncovered"]) == (2, 0, 0)
    r = identity(*write(tmp_path, [["A"] * T, [None, None, None, None, "B", "B"]]))
    assert (r["encounters"], r["through"], r["changed"], r["uncovered"]) == (2, 1, 0, 1)


def test_identity_report_gap_is_not_a_switch(tmp_path):
    tracks = [["A", None, "A", "A", "A", "A"], ["B"] * T]
    r = identity(*write(tmp_path, tracks))
    assert r == {"kept": 1, "total": 2, "switches": 0, "no_switch": 2, "covered": 11 / 12,
                 "encounters": 2, "through": 2, "changed": 0, "uncovered": 0}


def frame_predictions(tmp_path, missing):
    """Frame predictions holding every GT mask of `write`'s video as a detection (score 0.9 - 0.1 * k for GT
    track k), except the (name, frame) pairs in `missing`."""
    gt = json.loads((tmp_path / "gt.json").read_text())
    frames = []
    for t in range(T):
        dets = []
        for k, a in enumerate(gt["annotations"]):
            if ("ABC"[k], t) in missing:
                continue
            dets.append({"score": 0.9 - 0.1 * k, "category_id": a["category_id"], "class_scores": [0.0, 0.0],
                         "bbox": a["bboxes"][t], "segmentation": a["segmentations"][t]})
        frames.append({"index": t, "detections": sorted(dets, key=lambda d: -d["score"])})
    pred = {"format": "ytvis-frame-predictions", "version": 1, "categories": gt["categories"],
            "videos": [{**gt["videos"][0], "frames": frames}]}
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    return str(tmp_path / "pred.json")


def test_diagnose_counts_and_oracle_association(tmp_path):
    gt_path, res_path = write(tmp_path, [["A"] * T, ["B"] * T])
    # Track C (class 2) has no detection in frames 0-2; A and B (class 1) are found everywhere.
    pred = frame_predictions(tmp_path, {("C", 0), ("C", 1), ("C", 2)})
    d = diagnose.main(["--gt", gt_path, "--pred", pred, "--results", res_path, "--score-floor", "0.5",
                       "--out", str(tmp_path / "d.json")])
    assert json.loads((tmp_path / "d.json").read_text()) == d
    # Frame mAP: class 1 AP 1; class 2 recall 1/2 at precision 1: 51 of the 101 COCO recall points.
    assert d["frame_mAP50"] == pytest.approx((1 + 51 / 101) / 2) and d["frame_mAP"] == pytest.approx((1 + 51 / 101) / 2)
    assert (d["found"], d["object_frames"], d["median_mask_iou_found"]) == (15, 18, 1.0)
    assert [b["objects"] for b in d["found_by_area"]] == [0, 0, 18, 0]           # 36 of 800 px: 4.5 % of the frame
    # Oracle tracks: A and B exact; C's video IoU is 3 x 36 / (6 x 36) = 0.5, a match at the 0.5 threshold only.
    for key in ("oracle_det_class", "oracle_gt_class"):
        assert d[key]["AP50"] == pytest.approx(1.0) and d[key]["AP75"] == pytest.approx(0.5)
        assert d[key]["AP"] == pytest.approx((1 + 0.1) / 2)
        # HOTA: class 1 perfect; C's oracle track matches 3 of its 6 frames: DetA 3/(3+3) = 1/2, AssA 3/(3+3) = 1/2
        assert (d[key]["DetA"], d[key]["AssA"]) == pytest.approx((0.75, 0.75), abs=1e-12)
    # The tracker's results: A and B exact, no track for C: class 2 DetA 0 and AssA 0
    assert (d["tracker"]["DetA"], d["tracker"]["AssA"]) == pytest.approx((0.5, 0.5), abs=1e-12)
    # The results hold A and B only: C's 3 found frames are covered by no track.
    t = d["tracks"]
    assert (t["covered"], t["object_frames"], t["objects_without_track"], t["objects_split"]) == (12, 18, 1, 0)
    assert t["crossings"] == {"kept": 2, "total": 2, "switches": 0, "no_switch": 2, "covered": 1.0,
                              "encounters": 2, "through": 2, "changed": 0, "uncovered": 0}


def test_diagnose_floor_and_bad_input(tmp_path):
    gt_path, _ = write(tmp_path, [["A"] * T])
    pred = frame_predictions(tmp_path, set())
    # Scores are 0.9 (A), 0.8 (B), 0.7 (C): at a 0.75 floor C is never found and has no oracle track.
    d = diagnose.main(["--gt", gt_path, "--pred", pred, "--score-floor", "0.75"])
    assert d["found"] == 12 and "tracks" not in d
    assert d["oracle_gt_class"]["AP"] == pytest.approx(0.5)                  # class 2 (C) has AP 0
    broken = json.loads(open(pred).read())
    broken["videos"][0]["frames"][2]["index"] = 5
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    with pytest.raises(SystemExit) as e:
        diagnose.main(["--gt", gt_path, "--pred", str(tmp_path / "bad.json")])
    assert "bad.json" in str(e.value) and "frame" in str(e.value)
