"""Tests of associations.py (info/DESIGN.md#t1-cost, T2) on hand-written cost matrices and hand-computed mask IoUs."""
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from associations import associate, best_friend, cost_matrix, gate, lonely_best_friend

INF = np.inf


def box_rle(y0, x0, y1, x1, h=24, w=32):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


# ---- T1: cost matrix ------------------------------------------------------------------------------------------

def test_cost_matrix_hand_computed():
    a = box_rle(0, 0, 8, 8)        # area 64
    b = box_rle(0, 4, 8, 12)       # area 64, overlaps a on 8x4 = 32 -> IoU 32/96 = 1/3
    c = box_rle(16, 20, 24, 32)    # disjoint from both
    cost = cost_matrix([a, b, c], [1, 1, 2], [a, b], [1, 2], lam=0.5)
    expected = np.array([[0.0, (1 - 1 / 3) + 0.5],
                         [1 - 1 / 3, 0.0 + 0.5],
                         [1.0 + 0.5, 1.0]])
    assert cost.dtype == np.float64 and cost.shape == (3, 2)
    np.testing.assert_allclose(cost, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 2.0])
def test_cost_matrix_class_term_is_lam_times_mismatch(lam):
    a, b = box_rle(2, 2, 10, 12), box_rle(4, 5, 14, 13)
    same = cost_matrix([a], [3], [b], [3], lam)
    other = cost_matrix([a], [3], [b], [4], lam)
    assert other[0, 0] - same[0, 0] == pytest.approx(lam, abs=1e-15)


def test_cost_matrix_empty_sides_and_uncompressed_input():
    a = box_rle(0, 0, 8, 8)
    assert cost_matrix([], [], [a], [1], 0.5).shape == (0, 1)
    assert cost_matrix([a], [1], [], [], 0.5).shape == (1, 0)
    with pytest.raises(ValueError, match="classes"):
        cost_matrix([a], [1, 2], [a], [1], 0.5)


# ---- T2: gating, Best Friend, Lonely Best Friend ------------------------------------------------------------

def test_gate_first_index_on_ties_and_strict_threshold():
    cost = np.array([[0.5, 0.5, 0.7],     # tie -> track 0
                     [0.99, 1.2, 1.0],    # best is exactly tau -> fails (cost < tau is required)
                     [0.98, 0.3, 0.3]])   # tie between tracks 1, 2 -> track 1
    best, passed = gate(cost, 0.99)
    assert best.tolist() == [0, 0, 1]
    assert passed.tolist() == [True, False, True]


def test_best_friend_column_argmin_over_all_detections():
    # Rows 0 and 1 both pick track 0; track 0's column minimum is row 1, so row 0 loses Best Friend.
    cost = np.array([[0.40, 0.80],
                     [0.30, 2.00],
                     [0.90, 0.20]])
    best, passed = gate(cost, 0.99)
    assert best.tolist() == [0, 0, 1] and passed.tolist() == [True, True, True]
    assert best_friend(cost, best, passed).tolist() == [False, True, True]
    # a row that fails the gate never survives, even as its column's minimum
    best, passed = gate(cost, 0.35)
    assert passed.tolist() == [False, True, True]
    assert best_friend(cost, best, passed).tolist() == [False, True, True]
    best, passed = gate(cost, 0.25)
    assert passed.tolist() == [False, False, True]
    assert best_friend(cost, best, passed).tolist() == [False, False, True]


def test_best_friend_tie_in_column_goes_to_first_detection():
    cost = np.array([[0.5, 0.9], [0.5, 0.95]])
    best, passed = gate(cost, 0.99)
    assert best_friend(cost, best, passed).tolist() == [True, False]


def test_lonely_best_friend_row_and_column_margins():
    cost = np.array([[0.200, 0.205, 0.900],    # row 0: second best in its row is 0.005 away -> pruned
                     [0.900, 0.900, 0.300],    # row 1 -> track 2, margins >= 0.6 -> kept
                     [0.950, 0.100, 0.950]])   # row 2 -> track 1, column 1 holds 0.205: margin 0.105 -> kept
    kept = lonely_best_friend(cost, [(0, 0), (1, 2), (2, 1)], gamma=0.01)
    assert kept.tolist() == [False, True, True]
    # column case: the second entry of the column is within gamma
    cost = np.array([[0.500], [0.505]])
    assert lonely_best_friend(cost, [(0, 0)], gamma=0.01).tolist() == [False]
    # margin exactly gamma is kept (prune iff margin < gamma); 0.25/0.5 are exact in binary
    cost = np.array([[0.25, 0.5]])
    assert lonely_best_friend(cost, [(0, 0)], gamma=0.25).tolist() == [True]
    assert lonely_best_friend(cost, [(0, 0)], gamma=0.2500001).tolist() == [False]
    # a lone pair (1x1) has +inf as second minimum and is kept
    assert lonely_best_friend(np.array([[0.98]]), [(0, 0)], gamma=0.01).tolist() == [True]


def test_lonely_best_friend_counts_failed_rows_and_entries_above_tau():
    # Row 1 fails the gate (its best, 1.2, is >= tau) but its entry 0.995 in column 0 (itself >= tau) still
    # counts as column 0's second minimum: 0.995 - 0.986 = 0.009 < gamma, so row 0 is pruned.
    cost = np.array([[0.986, 1.5],
                     [0.995, 1.2]])
    matches, new, doubtful = associate(cost, tau=0.99, gamma=0.01)
    assert (matches, new, doubtful) == ([], [1], [0])
    # the same without the failed row: kept
    matches, new, doubtful = associate(cost[:1], tau=0.99, gamma=0.01)
    assert (matches, new, doubtful) == ([(0, 0)], [], [])


def test_lonely_best_friend_only_surviving_pairs_become_inf():
    # Row 1 loses Best Friend on track 0 (row 0 is smaller). Its entry 0.305 is NOT set to +inf, so it stays
    # the second minimum of column 0 for row 0: margin 0.005 < gamma -> row 0 pruned too.
    cost = np.array([[0.300, 0.800],
                     [0.305, 0.900]])
    matches, new, doubtful = associate(cost, tau=0.99, gamma=0.01)
    assert (matches, new, doubtful) == ([], [], [0, 1])


def test_associate_hand_worked_frame():
    # 4 detections x 3 tracks, worked by hand:
    #   row argmin: d0->t0 (0.1), d1->t2 (0.205, fails BF: t2's column min is d2), d2->t2 (0.2),
    #   d3->t1 (0.995 >= tau: new track)
    #   LBF with (0,0) and (2,2) set to inf: row 0 others min 0.7 (margin 0.6), column 0 others min 0.4 (0.3): keep;
    #   row 2 others min 0.6, column 2 others min 0.205 (d1, not inf): 0.205 - 0.2 = 0.005 < 0.01: prune d2
    cost = np.array([[0.1, 0.7, 0.9],
                     [0.4, 0.8, 0.205],
                     [0.9, 0.6, 0.2],
                     [1.3, 0.995, 1.1]])
    matches, new, doubtful = associate(cost, tau=0.99, gamma=0.01)
    assert matches == [(0, 0)]
    assert new == [3]
    assert doubtful == [1, 2]
    assert cost[2, 2] == 0.2  # not modified in place


def test_associate_no_tracks_or_no_detections():
    assert associate(np.zeros((3, 0)), 0.99, 0.01) == ([], [0, 1, 2], [])
    assert associate(np.zeros((0, 4)), 0.99, 0.01) == ([], [], [])
    assert associate(np.zeros((0, 0)), 0.99, 0.01) == ([], [], [])


def test_associate_partitions_detections_on_random_matrices():
    rng = np.random.default_rng(0)
    for _ in range(200):
        d, t = rng.integers(0, 7, size=2)
        cost = np.round(rng.uniform(0, 1.6, size=(d, t)), 2)  # rounding makes ties common
        matches, new, doubtful = associate(cost, 0.99, 0.01)
        dets = [i for i, _ in matches] + new + doubtful
        assert sorted(dets) == list(range(d))
        assert len({j for _, j in matches}) == len(matches)  # a track takes at most one detection
        for i, j in matches:
            assert cost[i, j] < 0.99 and cost[i, j] == cost[i].min() and cost[i, j] == cost[:, j].min()
