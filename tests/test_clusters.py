"""clusters.py: 1 - IoU k-means anchors, letterboxed box sizes and the anchor file round trip."""
import json
import os

import numpy as np
import pytest

import clusters
from config import apply_overrides, get_preset, read_anchor_file


def test_iou_wh_by_hand():
    boxes = [[10, 10], [20, 20], [10, 40]]
    anchors = [[10, 10], [20, 20]]
    # (10,40) vs (10,10): 100 / 400; vs (20,20): min 10*20 = 200 / (400 + 400 - 200) = 1/3
    expect = [[1, 0.25], [0.25, 1], [0.25, 1 / 3]]
    assert np.allclose(clusters.iou_wh(boxes, anchors), expect)
    # mean of the best IoUs: (1 + 1 + 1/3) / 3 = 7/9
    assert clusters.mean_best_iou(boxes, anchors) == pytest.approx(7 / 9)


PLANTED = np.array([[8, 10], [30, 20], [20, 45], [60, 80], [150, 100], [300, 250]], np.float64)


def blobs(centres, n=150, sigma=0.02, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([c * np.exp(rng.normal(0, sigma, (n, 2))) for c in centres])


def test_recovers_planted_clusters_sorted_by_area():
    anchors, info = clusters.kmeans_anchors(blobs(PLANTED), 6, seed=0)
    assert info["converged"]
    expect = PLANTED[np.argsort(PLANTED.prod(axis=1))]
    assert np.allclose(anchors, expect, rtol=0.02)
    assert np.all(np.diff(anchors.prod(axis=1)) > 0)
    assert info["mean_iou"] > 0.95


def test_same_seed_same_anchors():
    boxes = np.random.default_rng(3).uniform(2, 300, (500, 2))
    a1, _ = clusters.kmeans_anchors(boxes, 8, seed=5)
    a2, _ = clusters.kmeans_anchors(boxes, 8, seed=5)
    assert np.array_equal(a1, a2)


def test_empty_cluster_is_reseeded():
    boxes = blobs(PLANTED[:3], n=50)
    # two identical starting centroids: the second never wins a box (ties go to the first index), and a third
    # far larger than any box also starts empty
    init = [[8, 10], [8, 10], [2000, 2000]]
    anchors, info = clusters.kmeans_anchors(boxes, 3, init=init)
    assert info["reseeded"] >= 2
    assert np.allclose(anchors, PLANTED[:3][np.argsort(PLANTED[:3].prod(axis=1))], rtol=0.03)
    assert np.all(np.bincount(clusters.iou_wh(boxes, anchors).argmax(axis=1), minlength=3) == 50)


def test_iteration_cap_and_too_few_boxes():
    boxes = np.random.default_rng(0).uniform(2, 300, (300, 2))
    _, info = clusters.kmeans_anchors(boxes, 10, seed=0, max_iter=1)
    assert info["iterations"] == 1 and not info["converged"]
    with pytest.raises(ValueError, match="at least 4 distinct"):
        clusters.kmeans_anchors([[1, 1], [1, 1], [2, 2], [3, 3]], 4)


def test_letterbox_factors_match_utils_letterbox():
    utils = pytest.importorskip("utils")  # imports TensorFlow
    for h, w in [(720, 1280), (1080, 1920), (480, 640), (333, 500), (1280, 720), (17, 1000)]:
        for size in (256, 416):
            lb = utils.Letterbox(h, w, size)
            sx, sy = clusters.letterbox_factors(h, w, size)
            assert (sx, sy) == (lb.sx, lb.sy)


def write_ann(path, videos, annotations):
    with open(path, "w") as f:
        json.dump({"videos": videos, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}, f)


def test_load_box_sizes_uses_video_dims(tmp_path):
    videos = [{"id": 1, "width": 1280, "height": 720}, {"id": 2, "width": 500, "height": 333}]
    anns = [{"id": 1, "video_id": 1, "height": 999, "bboxes": [[0, 0, 100, 200], None]},
            {"id": 2, "video_id": 2, "bboxes": [None, [5, 5, 50, 100]]}]
    write_ann(tmp_path / "a.json", videos, anns)
    wh = clusters.load_box_sizes(str(tmp_path / "a.json"), 416)
    # 1280x720 -> 416x234: both factors 0.325. 500x333 -> 416 x int(333 * 0.832) = 277: sx 0.832, sy 277/333
    assert np.allclose(wh, [[32.5, 65.0], [41.6, 100 * 277 / 333]])


def test_load_box_sizes_errors_name_the_place(tmp_path):
    videos = [{"id": 1, "width": 64, "height": 48}]
    write_ann(tmp_path / "a.json", videos, [{"id": 7, "video_id": 1, "bboxes": [None, [1, 2, 3]]}])
    with pytest.raises(clusters.ClusterError, match=r"a.json, annotation 0 \(id 7\), frame 1"):
        clusters.load_box_sizes(str(tmp_path / "a.json"), 416)
    write_ann(tmp_path / "b.json", videos, [{"id": 8, "video_id": 3, "bboxes": [[1, 2, 3, 4]]}])
    with pytest.raises(clusters.ClusterError, match=r"video_id 3 is not in 'videos'"):
        clusters.load_box_sizes(str(tmp_path / "b.json"), 416)


def test_cli_writes_file_that_round_trips(tmp_path, capsys):
    rng = np.random.default_rng(1)
    videos = [{"id": 1, "width": 416, "height": 416}]  # no letterbox scaling: boxes are the planted sizes
    planted = np.array([[6, 6], [12, 9], [20, 30], [40, 35], [70, 90], [120, 100], [200, 150], [300, 260]], float)
    boxes = blobs(planted, n=40, sigma=0.01, seed=2)
    anns = [{"id": i, "video_id": 1, "bboxes": [[float(rng.uniform(0, 5)), 0.0, float(w), float(h)]]}
            for i, (w, h) in enumerate(boxes)]
    write_ann(tmp_path / "ann.json", videos, anns)
    out = tmp_path / "anchors.txt"
    plot = tmp_path / "anchors.png"
    anchors, info = clusters.main(["--ann", str(tmp_path / "ann.json"), "--levels", "4", "--per-level", "2",
                                   "--size", "416", "--out", str(out), "--plot", str(plot)])
    printed = capsys.readouterr().out
    assert f"mean IoU of the boxes with their best anchor: {info['mean_iou']:.4f}" in printed
    assert str(out) in printed and os.path.getsize(plot) > 1000
    read, per_level, n_levels = read_anchor_file(str(out), 416)
    assert (per_level, n_levels) == (2, 4)
    assert np.allclose(read, anchors, atol=0.005)  # written with 2 decimals
    assert np.allclose(read, planted, rtol=0.02)
    cfg = apply_overrides(get_preset("yolov4p1"), [f"model.anchors_file={out}", "model.input_size=832"])
    assert cfg.model.anchors_per_level == 2
    assert np.allclose(cfg.level_anchors(), np.reshape(read, (4, 2, 2)) * 2, atol=1e-3)


def test_head_anchor_file_is_the_original_head_list():
    from config import HEAD_ANCHORS_416
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "info",
                        "anchors_ytvis21_head.txt")
    anchors, per_level, n_levels = read_anchor_file(path, 416)
    assert (per_level, n_levels) == (6, 4) and anchors == [[float(w), float(h)] for w, h in HEAD_ANCHORS_416]
