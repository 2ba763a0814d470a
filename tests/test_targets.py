"""Anchor assignment, centroid points, delta round trip, mask targets (utils.py; info/DESIGN.md#targets-and-losses)."""
import numpy as np
import tensorflow as tf

import utils

STRIDE = 8      # a 4x4 level of a 32 px canvas: one grid unit = 8 px


def _targets(boxes_px, labels, anchors_px, tol=1.0, fg=0.4, bg=0.3, idt=0.4, grid=4):
    grid_anchors = utils.anchor_grid(grid, anchors_px, STRIDE)
    t = utils.level_targets(tf.constant([boxes_px], tf.float32), tf.constant([labels], tf.int32), grid_anchors,
                            STRIDE, tol, fg, bg, idt)
    return t.numpy()[0], grid_anchors


def test_single_box_positive_ignored_negative_and_centroid():
    # GT (12, 4, 28, 20) px = (1.5, 0.5, 3.5, 2.5) grid units, centre (2.5, 1.5): exactly anchor 0 (2x2 units) at
    # cell (y=1, x=2). Hand IoUs, anchor 0: that cell 1; its 4 side neighbours overlap 2 of 6 -> 1/3 (between
    # bg 0.3 and fg 0.4: ignored); diagonal 1/7 and beyond 0 -> negative. Anchor 1 (4x2 units) at (1, x) for
    # x = 1, 2, 3 overlaps 4 of 8 -> 0.5 (positive); every other anchor-1 cell 0.2 or less -> negative.
    # The padded second row (label 0) must change nothing.
    t, grid = _targets([[12, 4, 28, 20], [0, 0, 0, 0]], [3, 0], [[16, 16], [32, 16]])
    conf = t[..., 4]
    expected = np.zeros((2, 4, 4))
    expected[0, 1, 2] = 1
    for y, x in [(0, 2), (2, 2), (1, 1), (1, 3)]:
        expected[0, y, x] = -1
    expected[1, 1, 1:4] = 1
    np.testing.assert_array_equal(conf, expected)
    np.testing.assert_allclose(t[0, 1, 1, 6], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(t[0, 0, 1, 6], 1 / 7, rtol=1e-6)   # diagonal (y=0, x=1)
    # Class label (index 2 for class 3) only at the centroid: the GT's global best IoU is anchor 0 at (1, 2).
    tid = t[..., 5]
    assert np.argwhere(tid >= 0).tolist() == [[0, 1, 2]]
    assert tid[0, 1, 2] == 2
    # Deltas: the matching anchor has zero deltas; anchor 1 at x = 1, 2, 3: dx = (2.5 - cx) / 4, dw = ln(2 / 4).
    np.testing.assert_allclose(t[0, 1, 2, :4], [0, 0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(t[1, 1, 1, :4], [0.25, 0, np.log(0.5), 0], atol=1e-6)
    np.testing.assert_allclose(t[1, 1, 3, :4], [-0.25, 0, np.log(0.5), 0], atol=1e-6)
    assert np.all(t[..., :4][conf != 1] == 0)
    # Decoding the encoded deltas at every positive returns the GT box (grid units, cxcywh) exactly.
    pos = conf == 1
    decoded = utils.decode_deltas(tf.constant(t[..., :4][pos]), tf.constant(grid[pos])).numpy()
    np.testing.assert_allclose(decoded, np.tile([[2.5, 1.5, 2.0, 2.0]], (pos.sum(), 1)), atol=1e-6)


def test_centroid_is_floor_of_mean_of_tied_positions():
    # A 1x1-unit anchor fits inside GT (0, 0, 3, 2) units at 6 cells (y in 0..1, x in 0..2), all with IoU 1/6:
    # the mean (row, col) is (0.5, 1.0), floored to (0, 1). Thresholds tol=1, fg 0.15, id 0.1: all 6 positive.
    t, _ = _targets([[0, 0, 24, 16]], [1], [[8, 8]], fg=0.15, bg=0.1, idt=0.1)
    assert (t[0, ..., 4] == 1).sum() == 6
    np.testing.assert_allclose(t[0, 0, 0, 6], 1 / 6, rtol=1e-6)
    assert np.argwhere(t[..., 5] >= 0).tolist() == [[0, 0, 1]]


def test_tolerance_scales_thresholds_and_no_gt_means_all_negative():
    # Same box as the first test with tol 0.5: fg > 0.2, bg < 0.15 -> anchor 0's 1/3 neighbours become positive
    # and its 1/7 diagonals negative; anchor 1's cell (1, 0) at IoU 0.2 is ignored (neither > 0.2 nor < 0.15).
    t, _ = _targets([[12, 4, 28, 20]], [1], [[16, 16], [32, 16]], tol=0.5)
    assert (t[0, ..., 4] == 1).sum() == 5 and (t[0, ..., 4] == -1).sum() == 0
    np.testing.assert_allclose(t[1, 1, 0, 6], 0.2, rtol=1e-6)
    assert t[1, 1, 0, 4] == -1 and np.all(t[1, 1, 1:4, 4] == 1)
    empty, _ = _targets([[0, 0, 0, 0]], [0], [[16, 16], [32, 16]])
    assert np.all(empty[..., 4] == 0) and np.all(empty[..., 5] == -1) and np.all(empty[..., :4] == 0)


def test_two_gts_positives_go_to_argmax_gt():
    # Two 2x2-unit GTs centred on cells (1, 1) and (1, 2): each cell is positive for the GT it matches exactly.
    t, grid = _targets([[4, 4, 20, 20], [12, 4, 28, 20]], [1, 2], [[16, 16]])
    assert t[0, 1, 1, 4] == 1 and t[0, 1, 2, 4] == 1
    assert t[0, 1, 1, 5] == 0 and t[0, 1, 2, 5] == 1       # class index of each GT at its own centroid
    np.testing.assert_allclose(t[0, 1, 1, :4], 0, atol=1e-7)


def test_build_targets_shapes_for_the_tiny_preset(tiny_cfg):
    cfg = tiny_cfg(input_size=96)
    ts = utils.build_targets(cfg, tf.constant([[[10, 20, 50, 60]]], tf.float32), tf.constant([[1]]))
    assert [t.shape for t in ts] == [(1, 6, s, s, 7) for s in (24, 12, 6, 3)]


def test_mask_targets_crop_positive_and_ignore_invalid_slots():
    # One 8x8 canvas mask at R=8 whose left half (x < 4) is foreground; GT box = the whole canvas (64 px canvas).
    masks = np.zeros((1, 1, 8, 8), np.uint8)
    masks[..., :4] = 1
    boxes = tf.constant([[[0, 0, 64, 64]]], tf.float32)
    labels = tf.constant([[1]])
    props = tf.constant([[[0, 0, 1, 1, .9, 1], [0, 0, 0.5, 0.5, .8, 1], [0, 0, 1, 1, .7, 1]]], tf.float32)
    tgt, pos = utils.mask_targets(props, tf.constant([2]), boxes, labels, tf.constant(masks), 64, 0.5, 4)
    tgt, pos = tgt.numpy()[0], pos.numpy()[0]
    # slot 0: IoU 1 -> positive, crop of the whole canvas: left half 1; slot 1: IoU 0.25 -> negative;
    # slot 2: IoU 1 but beyond num_valid -> negative.
    assert pos.tolist() == [1, 0, 0]
    np.testing.assert_array_equal(tgt[0], np.array([[1, 1, 0, 0]] * 4))
    assert tgt[1:].sum() == 0
    # Proposal (0, 0, 0.5, 1): its left half is x in [0, 0.25] -> columns 0, 1 of 4 are foreground... it covers
    # mask pixels 0..3, all foreground: the whole crop is 1. IoU with the GT is 0.5 -> positive (>=).
    tgt2, pos2 = utils.mask_targets(tf.constant([[[0, 0, 0.5, 1, .9, 1]]]), tf.constant([1]), boxes, labels,
                                    tf.constant(masks), 64, 0.5, 4)
    assert pos2.numpy().tolist() == [[1]]
    np.testing.assert_array_equal(tgt2.numpy()[0, 0], np.ones((4, 4)))


def test_mask_targets_over_the_scaled_box():
    # A 32 px square object in the middle of a 64 px canvas (mask pixels 2..5 of R = 8) and a proposal on its box.
    masks = np.zeros((1, 1, 8, 8), np.uint8)
    masks[0, 0, 2:6, 2:6] = 1
    boxes, labels = tf.constant([[[16, 16, 48, 48]]], tf.float32), tf.constant([[1]])
    props = tf.constant([[[0.25, 0.25, 0.75, 0.75, .9, 1]]], tf.float32)
    tgt, pos = utils.mask_targets(props, tf.constant([1]), boxes, labels, tf.constant(masks), 64, 0.5, 4)
    np.testing.assert_array_equal(tgt.numpy()[0, 0], np.ones((4, 4)))
    # scaled by 2 about its centre, the ROI is the whole canvas: the object fills the middle 2 x 2 cells; the
    # positive test still uses the proposal box itself (IoU 1, not 0.25)
    tgt, pos = utils.mask_targets(props, tf.constant([1]), boxes, labels, tf.constant(masks), 64, 0.5, 4, 2.0)
    assert pos.numpy().tolist() == [[1]]
    expect = np.zeros((4, 4))
    expect[1:3, 1:3] = 1
    np.testing.assert_array_equal(tgt.numpy()[0, 0], expect)


def test_scale_boxes_numpy_and_tf():
    b = np.array([[10.0, 20.0, 30.0, 60.0]], np.float32)
    np.testing.assert_allclose(utils.scale_boxes(b, 1.5), [[5, 10, 35, 70]])
    np.testing.assert_allclose(utils.scale_boxes(tf.constant(b), 1.5).numpy(), [[5, 10, 35, 70]])
    assert utils.scale_boxes(b, 1.0) is b


def test_aligned_crop_samples_pixel_centres():
    # A ramp image (value = column index) sampled over the whole canvas at the source resolution returns it as is.
    img = tf.constant(np.tile(np.arange(8, dtype=np.float32), (8, 1))[None, :, :, None])
    box = utils.aligned_crop_boxes(tf.constant([[0.0, 0.0, 1.0, 1.0]]), 8, 8)
    out = tf.image.crop_and_resize(img, box, [0], [8, 8]).numpy()[0, 0, :, 0]
    np.testing.assert_allclose(out, np.arange(8), atol=1e-5)
    # Half the canvas at 4 samples: cells centred at 0.5, 1.5, 2.5, 3.5 px -> pixel indices 0, 1, 2, 3.
    box = utils.aligned_crop_boxes(tf.constant([[0.0, 0.0, 1.0, 0.5]]), 8, 4)
    out = tf.image.crop_and_resize(img, box, [0], [4, 4]).numpy()[0, 0, :, 0]
    np.testing.assert_allclose(out, [0, 1, 2, 3], atol=1e-5)


def test_class_targets_fg_labels_every_foreground_anchor():
    # The first test's box with class_targets="fg" (tiny-preset option): the label sits at all 4 positives
    # (anchor 0 at (1, 2); anchor 1 at (1, 1..3)), not only at the centroid; nothing else changes.
    grid = utils.anchor_grid(4, [[16, 16], [32, 16]], STRIDE)
    args = (tf.constant([[[12, 4, 28, 20]]], tf.float32), tf.constant([[3]], tf.int32), grid, STRIDE, 1.0, 0.4,
            0.3, 0.4)
    fg = utils.level_targets(*args, class_targets="fg").numpy()[0]
    centroid = utils.level_targets(*args).numpy()[0]
    assert np.argwhere(fg[..., 5] >= 0).tolist() == [[0, 1, 2], [1, 1, 1], [1, 1, 2], [1, 1, 3]]
    assert np.all(fg[..., 5][fg[..., 5] >= 0] == 2)
    np.testing.assert_array_equal(np.delete(fg, 5, axis=-1), np.delete(centroid, 5, axis=-1))
