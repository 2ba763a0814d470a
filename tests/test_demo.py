"""The demo's identity-through-crossings report on a hand-made video: two same-class GT tracks that cross."""
import json
import os
import sys

import numpy as np
import pycocotools.mask as mask_utils

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import demo  # noqa: E402

H, W, T = 20, 40, 6


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
    r = demo.identity_report(*write(tmp_path, [["A"] * T, ["B"] * T]))
    assert r == {"kept": 2, "total": 2, "switches": 0, "no_switch": 2, "covered": 1.0}


def test_identity_report_swap_and_gap(tmp_path):
    # Track 1 follows A for 3 frames, misses one, then follows B (a switch for A and for B); track 2 the reverse,
    # except that B's frame 3 is missed by every track.
    tracks = [["A", "A", "A", None, "B", "B"], ["B", "B", "B", None, "A", "A"]]
    r = demo.identity_report(*write(tmp_path, tracks))
    # C (other class, never overlapping A or B) is not a crossing track.
    assert r["total"] == 2 and r["kept"] == 0
    assert r["switches"] == 2 and r["no_switch"] == 0
    assert r["covered"] == 10 / 12


def test_identity_report_gap_is_not_a_switch(tmp_path):
    tracks = [["A", None, "A", "A", "A", "A"], ["B"] * T]
    r = demo.identity_report(*write(tmp_path, tracks))
    assert r == {"kept": 1, "total": 2, "switches": 0, "no_switch": 2, "covered": 11 / 12}
