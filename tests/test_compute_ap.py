"""compute_ap: the official YouTube-VIS video AP semantics (info/DESIGN.md#video-ap), each quirk on a
hand-computed case with 20x30 masks, and the frame-level mask mAP."""
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import compute_ap as C

H, W = 20, 30


def box(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def first_n(m, n):
    """The first n foreground pixels of `m` in row-major order: a sub-mask of area n (IoU n/|m| with m)."""
    flat = m.ravel().copy()
    on = np.flatnonzero(flat)
    flat[on[n:]] = 0
    return flat.reshape(m.shape)


def enc(m):
    """Compressed RLE as it appears in a JSON file (str counts)."""
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def seq(*masks):
    return [None if m is None else enc(m) for m in masks]


def gt_json(videos, anns, cats=(1,)):
    """videos: {id: n_frames}; anns: (video, category, masks, areas or None, iscrowd)."""
    out = {"videos": [{"id": v, "height": H, "width": W, "length": n} for v, n in videos.items()],
           "categories": [{"id": c, "name": f"cat{c}"} for c in cats], "annotations": []}
    for i, (v, c, masks, areas, crowd) in enumerate(anns):
        segs = seq(*masks)
        if areas is None:
            areas = [int(m.sum()) if m is not None else None for m in masks]
        out["annotations"].append({"id": i + 1, "video_id": v, "category_id": c, "segmentations": segs,
                                   "areas": areas, "iscrowd": crowd})
    return out


def res(v, c, score, *masks):
    return {"video_id": v, "category_id": c, "score": score, "segmentations": seq(*masks)}


def approx(v):
    return pytest.approx(v, abs=1e-12)


def stats(m, names):
    return [m[k] for k in (names.split() if isinstance(names, str) else names)]


def run(gt, results):
    metrics, E = C.evaluate_vis(gt, results)
    return metrics, E


A = box(0, 10, 0, 10)      # 100 px
B = box(10, 20, 15, 25)    # 100 px, disjoint from A
G200 = box(0, 20, 0, 10)   # 200 px


# ---------------------------------------------------------------------------------------------- video IoU

def test_video_iou_zip_truncation():
    g = seq(A, A, A, A)
    # only the 2 frames the result has are compared: IoU 1.0; padded with two nulls the union doubles: 0.5
    assert C.video_iou([seq(A, A)], [g])[0, 0] == 1.0
    assert C.video_iou([seq(A, A, None, None)], [g])[0, 0] == 0.5
    # extra trailing result frames beyond the GT are ignored
    assert C.video_iou([seq(A, A, A, A, B, B)], [g])[0, 0] == 1.0


def test_video_iou_hand_computed_frames():
    d = seq(A, None, box(0, 4, 20, 30), None)         # frame 2: only dt (40 px)
    g = seq(box(0, 10, 5, 15), A, None, None)         # frame 1: only gt (100 px); frame 3: neither
    # frame 0: I = 10*5 = 50, U = 150; frame 1: U += 100; frame 2: U += 40 -> 50 / 290
    assert C.video_iou([d], [g])[0, 0] == pytest.approx(50 / 290, abs=0)


def test_video_iou_masks_of_different_size_add_nothing():
    small = enc(box(0, 10, 0, 10, h=H + 1))           # a 21x30 mask against 20x30 GT
    assert C.video_iou([[enc(A), small]], [seq(A, A)])[0, 0] == 1.0   # frame 1 adds 0 to I and U
    assert C.video_iou([[small]], [seq(A)])[0, 0] == 0.0               # U == 0 -> 0


def test_video_iou_exact_against_rle_merge():
    """The iou-algebra intersections equal pycocotools merge areas exactly, on random masks."""
    rng = np.random.default_rng(0)
    dts = [[enc(rng.random((H, W)) < p) if rng.random() < .8 else None for _ in range(3)] for p in (.3, .5, .7)]
    gts = [[enc(rng.random((H, W)) < p) if rng.random() < .8 else None for _ in range(3)] for p in (.4, .6)]
    want = np.zeros((3, 2))
    for i, d_seq in enumerate(dts):
        for j, g_seq in enumerate(gts):
            inter = union = 0
            for d, g in zip(d_seq, g_seq):
                if d and g:
                    inter += int(mask_utils.area(mask_utils.merge([d, g], True)))
                    union += int(mask_utils.area(mask_utils.merge([d, g], False)))
                elif d or g:
                    union += int(mask_utils.area(d or g))
            want[i, j] = inter / union if union else 0.0
    np.testing.assert_array_equal(C.video_iou(dts, gts), want)


# --------------------------------------------------------------------------------------- areas and ranges

def test_areas_come_from_the_gt_field_not_the_masks():
    # a 100 px mask whose GT `areas` say 20000 (medium): only the medium range sees it
    gt = gt_json({1: 2}, [(1, 1, [A, A], [20000, 20000], 0)])
    m, _ = run(gt, [res(1, 1, 0.9, A, A)])
    assert stats(m, "AP APs APm APl") == approx([1, -1, 1, -1])
    assert (m["ARs"], m["ARm"], m["ARl"]) == (-1, 1.0, -1)


def test_area_exactly_128_squared_is_small_and_medium_and_zero_frames_do_not_count():
    # null and 0 are not averaged: avg_area = 16384 exactly, inside both inclusive ranges
    gt = gt_json({1: 3}, [(1, 1, [A, None, A], [128 ** 2, None, 0], 0)])
    assert C.load_gt(gt)["annotations"][0]["avg_area"] == 16384
    m, _ = run(gt, [res(1, 1, 0.9, A, None, A)])
    assert stats(m, "APs APm APl") == approx([1, 1, -1])


# ------------------------------------------------------------------------------------ sorting and maxDets

def test_score_ties_keep_file_order():
    gt = gt_json({1: 1}, [(1, 1, [A], None, 0)])
    # equal scores: the wrong result first in the file is ranked first -> FP then TP:
    # rc = [0, 1], pr = [0, .5] -> monotone [.5, .5] -> 0.5 at every recall threshold
    m, _ = run(gt, [res(1, 1, 0.5, B), res(1, 1, 0.5, A)])
    assert m["AP"] == pytest.approx(0.5, abs=1e-12)
    m, _ = run(gt, [res(1, 1, 0.5, A), res(1, 1, 0.5, B)])
    assert m["AP"] == pytest.approx(1.0, abs=1e-12)


def test_score_ties_across_videos_follow_sorted_video_ids():
    # 20 videos, one result each at score .6 (ids divisible by 3: 102, 105, ..., 120, seven of them) or .5; only
    # the GT of video 101 is found. Ties ranked in video-id order (a stable sort; numpy's quicksort reorders this
    # case), the TP is 8th: the 7 at .6, then video 101 first of the .5 -> precision 1/8 at recall 1
    vids = {v: 1 for v in range(101, 121)}
    gt = gt_json(vids, [(101, 1, [A], None, 0)])
    results = [res(v, 1, 0.6 if v % 3 == 0 else 0.5, A if v == 101 else B) for v in sorted(vids, reverse=True)]
    m, _ = run(gt, results)
    assert m["AP"] == pytest.approx(1 / 8, abs=1e-12)


def test_more_than_100_results_in_one_video_category():
    gt = gt_json({1: 1}, [(1, 1, [A], None, 0)])
    wrong = [res(1, 1, 0.9, B) for _ in range(100)]
    # the right answer is the 101st by score: cut before IoU, as the official maxDets[-1] truncation
    m, _ = run(gt, wrong + [res(1, 1, 0.1, A)])
    assert (m["AP"], m["AR100"]) == (0.0, 0.0)
    # as the 100th it counts: recall 1 reached at precision 1/100, flat to the left -> AP 0.01
    m, _ = run(gt, wrong[:99] + [res(1, 1, 0.1, A)])
    assert m["AP"] == pytest.approx(0.01, abs=1e-12)
    assert (m["AR1"], m["AR10"], m["AR100"]) == (0.0, 0.0, 1.0)


def test_max_dets_is_per_video_and_category():
    # two objects of different categories in one video: AR1 is 1.0 because maxDets counts per category
    gt = gt_json({1: 1}, [(1, 1, [A], None, 0), (1, 2, [B], None, 0)], cats=(1, 2))
    m, _ = run(gt, [res(1, 1, 0.9, A), res(1, 2, 0.8, B)])
    assert m["AR1"] == 1.0


# ------------------------------------------------------------------------------------------ matching

def test_equal_iou_goes_to_the_later_gt():
    dtm, gtm, _ = C._greedy_match(np.array([[0.7, 0.7]]), np.array([0, 0]), [0, 0], [11, 12], [1])
    assert list(dtm[:, 0]) == [12] * 5 + [0] * 5     # thresholds .5 .. .7 match gt 12; .75 .. .95 nothing
    assert list(gtm[0]) == [0, 1]


def test_iou_exactly_half_matches_at_half():
    gt = gt_json({1: 1}, [(1, 1, [G200], None, 0)])
    m, _ = run(gt, [res(1, 1, 0.9, first_n(G200, 100))])   # IoU 100/200
    assert stats(m, "AP50 AP75 AP") == approx([1, 0, 0.1])


def test_match_to_a_regular_gt_stops_before_ignored_gts():
    # the result has IoU .62 with the regular g1 and .95 with the crowd g2 (sorted last): once matched to g1 the
    # scan stops, so it is a TP for t <= .6; above, only the crowd g2 is reachable and the result is ignored
    crowd = first_n(G200, 130)
    gt = gt_json({1: 1}, [(1, 1, [crowd], None, 1), (1, 1, [G200], None, 0)])
    m, _ = run(gt, [res(1, 1, 0.9, first_n(G200, 124))])
    assert stats(m, "AP50 AP75 AP AR100") == approx([1, 0, 0.3, 0.3])


def test_crowd_gt_is_ignored_and_can_be_matched_again():
    gt = gt_json({1: 1}, [(1, 1, [A], None, 0), (1, 1, [B], None, 1)])
    results = [res(1, 1, 0.95, B), res(1, 1, 0.9, B), res(1, 1, 0.8, A)]
    m, E = run(gt, results)
    # both results on the crowd B are ignored (matched to an ignored gt, the second one again): only A counts
    assert stats(m, "AP AR100") == approx([1, 1])
    assert list(E.eval_vids[(1, 0, 1)]["dtIgnore"][0]) == [True, True, False]
    # the same with B a regular gt: TP(B), FP, TP(A); npig 2 -> rc [.5 .5 1], pr [1 .5 2/3] -> [1 2/3 2/3]:
    # recall .00-.50 -> 1 (51 thresholds), .51-1.00 -> 2/3 (50) -> AP = (51 + 50*2/3) / 101
    gt["annotations"][1]["iscrowd"] = 0
    m, _ = run(gt, results)
    assert m["AP"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)


def test_two_video_partial_matches_hand_computed():
    """Category 1; video 1: g1 (200 px); video 2: g2, g3 (100 px each). Results by score:
    a (v1, .9, IoU .62 with g1), b (v2, .8, IoU 1 with g2), c (v2, .7, IoU 0), d (v1, .6, IoU .82 with g1). npig 3.
    t in .50 .55 .60: TP TP FP FP (d loses g1 to a) -> rc [1/3 2/3 2/3 2/3], pr [1 1 2/3 1/2] -> monotone
        [1 1 2/3 1/2]; recall thresholds .00-.66 (67 of 101) find precision 1, .67-1.00 are beyond reach: 0.
        AP_t = 67/101.
    t in .65 .70 .75 .80: FP TP FP TP -> rc [0 1/3 1/3 2/3], pr [0 1/2 1/3 1/2] -> monotone [1/2 1/2 1/2 1/2];
        67 thresholds at 1/2 -> AP_t = 33.5/101.
    t in .85 .90 .95: FP TP FP FP -> rc [0 1/3 1/3 1/3], pr [0 1/2 1/3 1/4] -> monotone [1/2 1/2 1/3 1/4];
        recall .00-.33 (34 thresholds) at 1/2 -> AP_t = 17/101.
    AP = (3*67 + 4*33.5 + 3*17) / 1010 = 386/1010. AR100 = mean recall = (7*2/3 + 3*1/3)/10 = 17/30.
    AR1 (top result of each video: a, b): 2/3 for t <= .6, 1/3 above -> (3*2/3 + 7*1/3)/10 = 13/30."""
    g2, g3 = box(0, 10, 20, 30), box(12, 20, 0, 12)
    g3 = first_n(g3, 100)
    gt = gt_json({1: 1, 2: 2}, [(1, 1, [G200], None, 0), (2, 1, [g2, g2], None, 0), (2, 1, [g3, g3], None, 0)])
    results = [res(1, 1, 0.6, first_n(G200, 164)), res(2, 1, 0.8, g2, g2),
               res(1, 1, 0.9, first_n(G200, 124)), res(2, 1, 0.7, B, B)]
    m, _ = run(gt, results)
    assert m["AP"] == pytest.approx(386 / 1010, abs=1e-12)
    assert m["AP50"] == pytest.approx(67 / 101, abs=1e-12)
    assert m["AP75"] == pytest.approx(33.5 / 101, abs=1e-12)
    assert m["APs"] == m["AP"] and (m["APm"], m["APl"]) == (-1, -1)
    assert m["AR100"] == pytest.approx(17 / 30, abs=1e-12)
    assert m["AR10"] == m["AR100"]
    assert m["AR1"] == pytest.approx(13 / 30, abs=1e-12)


# ---------------------------------------------------------------------------------- whole-file behaviour

def test_perfect_results_score_one_wherever_there_is_gt():
    # one small, one medium and one large object (areas from the field), two of them in one video
    gt = gt_json({1: 2, 2: 1}, [(1, 1, [A, A], None, 0), (1, 2, [B, None], [30000, None], 0),
                                (2, 1, [G200], [70000], 0)], cats=(1, 2))
    results = [res(1, 1, 0.9, A, A), res(1, 2, 0.8, B, None), res(2, 1, 0.7, G200)]
    m, _ = run(gt, results)
    # precision is tp / (tp + fp + eps), so a perfect AP is 1 - 2e-16 in the official code too
    assert stats(m, C.STAT_NAMES) == approx([1] * 12)


def test_category_without_gt_is_minus_one_and_unknown_categories_are_dropped():
    gt = gt_json({1: 1}, [(1, 1, [A], None, 0)], cats=(1, 2))
    m, E = run(gt, [res(1, 1, 0.9, A), res(1, 2, 0.8, B), res(1, 7, 0.99, B)])
    assert m["per_category"]["cat1"]["AP"] == approx(1)
    assert m["per_category"]["cat2"] == {"id": 2, "AP": -1.0}
    assert m["AP"] == approx(1) and E.dropped == 1      # category 7 is not in the GT: ignored


def test_no_results_gives_zero_where_there_is_gt():
    gt = gt_json({1: 1}, [(1, 1, [A], None, 0)], cats=(1, 2))
    m, _ = run(gt, [])
    assert [m[k] for k in C.STAT_NAMES] == [0, 0, 0, 0, -1, -1, 0, 0, 0, 0, -1, -1]
    assert m["per_category"]["cat2"]["AP"] == -1


def test_gt_id_zero_counts_as_unmatched_like_the_official_code():
    # the official code stores the matched gt id and tests it for truth: a gt with id 0 never yields a TP
    gt = gt_json({1: 1}, [(1, 1, [A], None, 0)])
    gt["annotations"][0]["id"] = 0
    m, _ = run(gt, [res(1, 1, 0.9, A)])
    assert m["AP"] == 0.0


# ------------------------------------------------------------------------------------------------- loaders

def test_gt_formats_give_the_same_masks():
    poly = [[0, 0, 10, 0, 10, 10, 0, 10]]
    raw = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, H, W))).ravel(order="F")
    changes = np.flatnonzero(np.diff(raw)) + 1
    counts = np.diff(np.concatenate([[0], changes, [raw.size]])).tolist()
    uncompressed = {"size": [H, W], "counts": ([0] + counts) if raw[0] else counts}
    compressed = C.to_rle(uncompressed, H, W, "test")
    for seg in (poly, uncompressed, {"size": [H, W], "counts": compressed["counts"].decode()}):
        r = C.to_rle(seg, H, W, "test")
        assert r["counts"] == compressed["counts"] and int(mask_utils.area(r)) == int(raw.sum())


def test_malformed_rle_is_rejected_with_the_entry_named():
    gt = C.load_gt(gt_json({3: 1}, [(3, 1, [A], None, 0)]))
    good = enc(A)
    for bad in ({"size": [H, W], "counts": good["counts"][:-2]}, {"size": [H, W], "counts": "!!"},
                {"size": [H], "counts": good["counts"]}, {"counts": good["counts"]},
                {"size": [H, W], "counts": [1, 2, 3]}, {"size": [H, W], "counts": 5}):
        with pytest.raises(C.EvalInputError, match=r"entry 1 \(video_id 3\) frame 0"):
            C.load_results([res(3, 1, 0.5, A), {"video_id": 3, "category_id": 1, "score": .5,
                                                "segmentations": [bad]}], gt)


def test_compressed_rle_totals_batched():
    """The batched numpy decoder sums the runs of each string exactly as pycocotools encodes them; a damaged
    string is flagged without disturbing its neighbours."""
    rng = np.random.default_rng(1)
    masks = [rng.random((h, w)) < p for h, w, p in ((20, 30, .5), (7, 3, .9), (64, 48, .02), (1, 1, 1.0))]
    masks.append(np.zeros((300, 500), bool))           # one run of 150000: a multi-chunk value
    masks.append(box(3, 17, 2, 28))
    strings = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"] for m in masks]
    want = [m.size for m in masks]
    np.testing.assert_array_equal(C._compressed_totals(strings), want)
    damaged = list(strings)
    damaged[1] = damaged[1][:-1] + b"\x7f"            # a character outside the RLE alphabet
    damaged[2] = damaged[2] + b"1"                     # one more run: covers more than h*w
    got = C._compressed_totals(damaged)
    assert got[1] == -1 and got[2] != want[2]
    np.testing.assert_array_equal(got[[0, 3, 4, 5]], np.array(want)[[0, 3, 4, 5]])
    assert list(C._compressed_totals([b"", strings[0]])) == [0, 600]


def test_a_value_pycocotools_would_misread_is_malformed():
    """A run length written in 7 chunks (a valid but non-minimal encoding) is read by pycocotools' C decoder with
    an int shifted by 35 bits, so as another number; the check rejects it rather than let its pixel count (or an
    IoU loop over runs that do not cover the frame) differ. Written in 6 chunks, the same counts agree."""
    def encode(counts, widths):
        out, prev = [], []
        for i, (n, k) in enumerate(zip(counts, widths)):
            x = n - prev[i - 2] if i > 2 else n
            for j in range(k):
                c = (x >> (5 * j)) & 0x1F
                out.append(chr(48 + (c | (0x20 if j < k - 1 else 0))))
            prev.append(n)
        return "".join(out).encode()
    counts = [100, 10000, 100, 6380, 23420]  # 40000 pixels: a 200x200 frame, 16380 of them on
    six, seven = encode(counts, [2, 3, 2, 6, 4]), encode(counts, [2, 3, 2, 7, 4])
    assert C._compressed_sums([six])[0][0] == 40000 and C._compressed_sums([six])[1][0] == 16380
    assert mask_utils.area({"size": [200, 200], "counts": six}) == 16380
    assert mask_utils.area({"size": [200, 200], "counts": seven}) != 16380  # pycocotools misreads it
    assert C._compressed_totals([seven])[0] == -1 and C._decode_compressed([seven])[0][0] == -1
    gt = C.load_gt({"videos": [{"id": 1, "height": 200, "width": 200}], "categories": [{"id": 1}],
                    "annotations": [{"id": 1, "video_id": 1, "category_id": 1,
                                     "segmentations": [{"size": [200, 200], "counts": six.decode()}]}]})
    with pytest.raises(C.EvalInputError, match=r"entry 0 \(video_id 1\) frame 0: malformed compressed RLE"):
        C.load_results([{"video_id": 1, "category_id": 1, "score": .5,
                         "segmentations": [{"size": [200, 200], "counts": seven.decode()}]}], gt)


def test_compressed_totals_agree_with_the_plain_decoder_on_damaged_strings():
    """The per-parity-sum totals against the decoder that writes out every run length (compressed_counts' one):
    the same total, or -1, for strings damaged at random (changed, dropped and inserted characters)."""
    rng = np.random.default_rng(2)
    masks = [rng.random((30, 40)) < p for p in (.02, .3, .7)] + [np.zeros((300, 500), bool), box(3, 17, 2, 28)]
    strings = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"] for m in masks]
    for _ in range(300):
        batch = []
        for k in rng.integers(0, len(strings), 6):
            q = bytearray(strings[k])
            for _ in range(int(rng.integers(0, 3))):
                op, pos = int(rng.integers(0, 3)), int(rng.integers(0, len(q)))
                if op == 0:
                    q[pos] = int(rng.integers(40, 120))
                elif op == 1 and len(q) > 1:
                    del q[pos]
                else:
                    q.insert(pos, int(rng.integers(48, 112)))
            batch.append(bytes(q))
        batch += [b"", b"0", b"P", b"PPPPPPPPP0", b"ooooooo1"]  # empty, one run, 9-chunk and 7-chunk values
        batch = [batch[i] for i in rng.permutation(len(batch))]
        np.testing.assert_array_equal(C._compressed_totals(batch), C._decode_compressed(batch)[0])


def test_mask_areas_from_the_run_length_check_equal_pycocotools_area():
    """load_results takes each frame's pixel count from the same numpy pass that checks the run lengths: equal
    to pycocotools' own area on random, empty and full masks, over more than two batches of RLE_BATCH strings."""
    rng = np.random.default_rng(3)
    masks = [rng.random((H, W)) < p for p in rng.random(2 * C.RLE_BATCH + 7)]
    masks[5] = np.zeros((H, W), bool)
    masks[6] = np.ones((H, W), bool)
    gt = C.load_gt(gt_json({1: 1}, [(1, 1, [A], None, 0)]))
    results = [res(1, 1, 0.5, *masks[i:i + 3], None) for i in range(0, len(masks), 3)]
    loaded = C.load_results(results, gt)
    got = [a for r in loaded for a in r["mask_areas"]]
    want = [int(mask_utils.area(s)) if s else 0 for r in results for s in
            [None if x is None else {"size": x["size"], "counts": x["counts"].encode()} for x in r["segmentations"]]]
    assert got == want and want.count(0) > len(results) and want.count(H * W) >= 1


def test_the_first_malformed_string_in_file_order_is_reported_across_batches():
    """The run-length check runs in parallel batches of RLE_BATCH strings; the error still names the earliest
    bad entry and frame in the file, not the first batch to finish."""
    gt = C.load_gt(gt_json({1: 2}, [(1, 1, [A, A], None, 0)]))
    results = [res(1, 1, 0.5, A, B) for _ in range(3 * C.RLE_BATCH // 2)]
    cut = {"size": [H, W], "counts": enc(A)["counts"][:-2]}
    for k, t in ((2 * C.RLE_BATCH // 2 + 3, 0), (C.RLE_BATCH // 2 + 1, 1)):  # batch 3 (entry 515) and 2 (257)
        results[k] = dict(results[k], segmentations=[enc(A), enc(B)])
        results[k]["segmentations"][t] = cut
    with pytest.raises(C.EvalInputError, match=rf"entry {C.RLE_BATCH // 2 + 1} \(video_id 1\) frame 1: malformed"):
        C.load_results(results, gt)


def test_evaluate_vis_checks_the_strings_beside_the_ious_with_the_same_errors_and_areas():
    """evaluate_vis leaves the run-length check to YTVISEval.evaluate, video by video in the IoU workers: the
    first malformed string of the file is named as load_results names it (whichever worker meets it first, also
    in a result of a category outside the GT), and the pixel counts are load_results' own."""
    from bench_eval import make_data
    gt, results = make_data(videos=24, frames=3, h=240, w=320, per_video=4, n_cats=3, seed=2)
    g = C.load_gt(gt)
    want = C.load_results(results, g)
    for workers in (1, 2):
        _, E = C.evaluate_vis(gt, results, workers=workers)
        assert [(r["mask_areas"], r["avg_area"]) for r in E.results] == [(r["mask_areas"], r["avg_area"])
                                                                          for r in want]
    cut = lambda seg: {"size": seg["size"], "counts": seg["counts"][:-3]}  # noqa: E731
    broken = [dict(r, segmentations=list(r["segmentations"])) for r in results]
    broken[70]["segmentations"][1] = cut(broken[70]["segmentations"][1])  # video 18
    broken[41]["segmentations"][2] = cut(broken[41]["segmentations"][2])  # video 11, the first in the file
    broken[41]["category_id"] = 99  # a category the GT does not list: dropped from the AP, checked all the same
    with pytest.raises(C.EvalInputError) as first:
        C.load_results(broken, g)
    assert "entry 41 (video_id 11) frame 2: malformed compressed RLE" in str(first.value)
    for workers in (1, 2):
        with pytest.raises(C.EvalInputError) as got:
            C.evaluate_vis(gt, broken, workers=workers)
        assert str(got.value) == str(first.value)


def _ap_in_a_pool_worker(data):
    return C.evaluate_vis(*data)[0]["AP"]


def test_evaluate_vis_in_a_daemonic_pool_worker_keeps_to_one_process():
    """A multiprocessing.Pool worker may not start processes: there the default (16 videos or more: fork) falls
    back to one process instead of failing."""
    import multiprocessing

    from bench_eval import make_data
    data = make_data(videos=17, frames=2, h=240, w=320, per_video=3, n_cats=3, seed=0)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.map(_ap_in_a_pool_worker, [data])[0]
    assert got == C.evaluate_vis(*data, workers=1)[0]["AP"] > 0


def test_loading_pauses_the_garbage_collector_and_restores_it():
    import gc
    gt = gt_json({1: 1}, [(1, 1, [A], None, 0)])
    seen = []
    real = C._check_rle_totals

    def spy(*a):
        seen.append(gc.isenabled())
        return real(*a)
    C._check_rle_totals = spy
    try:
        assert gc.isenabled()
        C.evaluate_vis(gt, [res(1, 1, 0.5, A)])
        assert gc.isenabled() and seen == [False, False]
        with pytest.raises(C.EvalInputError):
            C.load_results([{"video_id": 9}], C.load_gt(gt))
        assert gc.isenabled()
        gc.disable()
        C.evaluate_vis(gt, [res(1, 1, 0.5, A)])
        assert not gc.isenabled()  # a caller's choice is left as it was
    finally:
        gc.enable()
        C._check_rle_totals = real


def test_forked_workers_give_the_one_process_evaluation_exactly():
    """evaluate(workers=2) computes the video IoUs in forked processes: the same IoUs, matches, precision and
    stats as one process, on 40 synthetic videos (results on 3 categories, some mislabelled, some clutter)."""
    from bench_eval import make_data
    gt, results = make_data(videos=40, frames=3, h=240, w=320, per_video=6, n_cats=3, seed=1)
    g = C.load_gt(gt)
    r = C.load_results(results, g)
    one, two = C.YTVISEval(g, r), C.YTVISEval(g, r)
    one.evaluate(workers=1)
    two.evaluate(workers=2)
    assert C._worker_count(None, 15) == 1 and one.ious.keys() == two.ious.keys() and len(one.ious) > 40
    for key in one.ious:
        np.testing.assert_array_equal(one.ious[key], two.ious[key])
    assert one.eval_vids.keys() == two.eval_vids.keys()
    for key, e in one.eval_vids.items():
        for field, v in e.items():
            np.testing.assert_array_equal(v, two.eval_vids[key][field])
    for E in (one, two):
        E.accumulate()
        E.summarize()
    np.testing.assert_array_equal(one.eval["precision"], two.eval["precision"])
    np.testing.assert_array_equal(one.stats, two.stats)
    assert 0 < one.stats[0] < 1


def _exit_at_once(index, videos):
    os._exit(9)  # a forked evaluation process killed as it starts its first chunk


def test_a_forked_worker_killed_mid_evaluation_is_named(monkeypatch):
    """A forked process that ends without its answer raises EvalWorkerError (not the executor's BrokenProcessPool,
    and no hang: the chunks are claimed through shared flags, never by cancelling futures); the same evaluation
    then runs in one process."""
    from bench_eval import make_data
    gt, results = make_data(videos=40, frames=3, h=240, w=320, per_video=6, n_cats=3, seed=1)
    g = C.load_gt(gt)
    r = C.load_results(results, g)
    real = C._forked_share
    monkeypatch.setattr(C, "_forked_share", _exit_at_once)
    with pytest.raises(C.EvalWorkerError, match=r"forked evaluation process ended without its answer .*--workers"):
        C.YTVISEval(g, r).evaluate(workers=2)
    monkeypatch.setattr(C, "_forked_share", real)
    E = C.YTVISEval(g, r)
    E.evaluate(workers=2)
    assert len(E.ious) > 40


# ----------------------------------------------------------------------------------------------- frame mAP

def test_frame_map_hand_computed():
    """Frame 1: gt A, detection A (.9). Frame 2: gt G200, detection with IoU .62 (.8).
    t <= .60: two TPs -> AP 1. t >= .65: TP then FP, npig 2 -> rc [.5 .5], pr [1 .5] -> monotone [1 .5]:
    recall .00-.50 (51 thresholds) at 1, above unreachable -> 51/101. mAP = (3 + 7*51/101)/10 = 660/1010."""
    gt = [{"id": 1, "height": H, "width": W, "instances": [{"category_id": 1, "segmentation": enc(A)}]},
          {"id": 2, "height": H, "width": W, "instances": [{"category_id": 1, "segmentation": enc(G200)}]}]
    dt = [{"id": 1, "instances": [{"category_id": 1, "score": .9, "segmentation": enc(A)}]},
          {"id": 2, "instances": [{"category_id": 1, "score": .8, "segmentation": enc(first_n(G200, 124))}]}]
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    out = C.frame_map(gt, dt, cats)
    assert out["mAP"] == pytest.approx(660 / 1010, abs=1e-12)
    assert out["mAP50"] == pytest.approx(1.0, abs=1e-12)
    assert out["per_category"]["b"] == {"id": 2, "AP": -1.0}
    assert C.frame_map(gt, [], cats)["mAP"] == 0.0
