"""Neck, heads, decoding, proposals, ROI align, mask head and output layers against hand-computed numbers
(info/DESIGN.md#architecture)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import config
import layers
import utils


def _cfg(preset="yolov4p1", **model):
    cfg = config.get_preset(preset)
    cfg.model.sync_bn = False
    for k, v in model.items():
        setattr(cfg.model, k, v)
    return cfg


def _count(layer_list):
    return sum(int(np.prod(w.shape)) for l in layer_list for w in l.weights)


@pytest.fixture(scope="module")
def neck_heads_416():
    """Neck + heads at full width on symbolic b2..b5 of the 416 sizes (no backbone needed)."""
    cfg = _cfg()
    b = [keras.Input((s, s, c), name=f"b{i}") for i, (s, c) in
         zip((2, 3, 4, 5), ((104, 128), (52, 256), (26, 512), (13, 512)))]
    n = layers.apply_neck(b, cfg)
    preds, embs = layers.apply_heads(n, cfg)
    return keras.Model(b, {"n": n, "preds": preds, "embs": embs})


@pytest.mark.slow
def test_neck_count_and_shapes(neck_heads_416):
    m = neck_heads_416
    neck = [l for l in m.layers if l.name.startswith("neck_")]
    assert _count(neck) == 20_000_512                                       # info/DESIGN.md#parameter-counts
    assert sum(isinstance(l, keras.layers.Conv2D) for l in neck) == 39     # 3 x 7 top-down + 3 x 6 bottom-up
    p_shapes = [tuple(m.get_layer(f"neck_leaky_p{k}_4").output.shape) for k in (2, 3, 4)]
    assert p_shapes == [(None, 104, 104, 64), (None, 52, 52, 128), (None, 26, 26, 256)]
    assert [tuple(t.shape) for t in m.output["n"]] == [(None, 104, 104, 64), (None, 52, 52, 128),
                                                       (None, 26, 26, 256), (None, 13, 13, 512)]
    # concatenation orders (info/DESIGN.md#neck): [lateral, upsampled] and [downsampled, p]
    cat = m.get_layer("neck_cat_p4")
    assert [t._keras_history.operation.name for t in cat._inbound_nodes[0].input_tensors] == \
        ["neck_leaky_p4_lat", "neck_upsample_p4"]
    cat = m.get_layer("neck_cat_n5")
    assert [t._keras_history.operation.name for t in cat._inbound_nodes[0].input_tensors] == \
        ["neck_leaky_n5_down", "b5"]
    assert m.get_layer("neck_upsample_p2").interpolation == "bilinear"


@pytest.mark.slow
def test_heads_count_and_shapes(neck_heads_416):
    m = neck_heads_416
    emb = [l for l in m.layers if l.name.startswith("head_emb_")]
    det = [l for l in m.layers if l.name.startswith("head_det_")]
    cls = [l for l in m.layers if l.name.startswith("head_cls_")]
    assert (_count(emb), _count(det), _count(cls)) == (1_797_952, 3_171_984, 38_560)      # parameter-counts
    assert [tuple(t.shape) for t in m.output["preds"]] == [(None, 6, s, s, 46) for s in (104, 52, 26, 13)]
    assert [tuple(t.shape) for t in m.output["embs"]] == [(None, s, s, 208) for s in (104, 52, 26, 13)]


@pytest.mark.parametrize("preset", ["yolov4p1", "tiny"])
def test_embedding_convs_start_from_n_0_001_with_zero_bias(neck_heads_416, preset):
    """e2..e5 are drawn like the original's convs, N(0, 0.01) with a zero bias, in every preset (the tiny preset's
    He initialiser is for convs followed by BN). Keras's default (Glorot uniform) would give a std of
    sqrt(2 / (9 * (C_k + E))): 0.029 for n2 of the 416 model, 0.048 for tiny's n2 (C_k 16, E 32)."""
    if preset == "yolov4p1":
        m = neck_heads_416
    else:
        cfg = _cfg("tiny", num_classes=3)
        b = [keras.Input((s, s, c)) for s, c in zip((40, 20, 10, 5), (32, 64, 128, 128))]
        m = keras.Model(b, layers.apply_heads(layers.apply_neck(b, cfg), cfg)[1])
    emb = [m.get_layer(f"head_emb_{k}") for k in (2, 3, 4, 5)]
    kernels = np.concatenate([l.kernel.numpy().ravel() for l in emb])
    assert kernels.std() == pytest.approx(0.01, rel=0.03) and abs(kernels.mean()) < 1e-3
    assert all(not l.bias.numpy().any() for l in emb)


def test_class_conv_branch_count():
    # model.class_conv = 64 at width 0.25 (n2..n5 have 16/32/64/128 channels): per level a 3x3 conv of
    # max(64, C_k) filters without bias, its BN (4 x filters) and the Dense(K) on it; K = 6.
    cfg = _cfg("tiny", class_conv=64, num_classes=6)
    chans = (16, 32, 64, 128)
    b = [keras.Input((s, s, c)) for s, c in zip((40, 20, 10, 5), (32, 64, 128, 128))]
    m = keras.Model(b, layers.apply_heads(layers.apply_neck(b, cfg), cfg)[0])
    expected = 0
    for c in chans:
        f = max(64, c)
        expected += 9 * c * f + 4 * f + (f * 6 + 6)
    cls = [l for l in m.layers if l.name.startswith("head_cls_")]
    assert len(cls) == 16 and _count(cls) == expected          # conv, BN, leaky, Dense per level
    assert [tuple(t.shape) for t in m.output] == [(None, 6, s, s, 12) for s in (40, 20, 10, 5)]


def test_level_prediction_layout():
    na, s, k = 3, 2, 4
    det = np.arange(2 * s * s * na * 6, dtype=np.float32).reshape(2, s, s, na * 6)
    cls = -np.arange(2 * s * s * k, dtype=np.float32).reshape(2, s, s, k)
    out = np.asarray(layers.LevelPrediction(na)([det, cls]))
    assert out.shape == (2, na, s, s, 6 + k)
    # anchor a, channel j of cell (row y, col x) is raw channel a*6 + j; class logits equal for every anchor
    for a in range(na):
        np.testing.assert_array_equal(out[:, a, :, :, :6], det[..., a * 6:(a + 1) * 6])
        np.testing.assert_array_equal(out[:, a, :, :, 6:], cls)


def test_decode_level_hand_computed():
    # one 16x16 px anchor, stride 16, input 32: S = 2; cell (row 1, col 0) has its centre at (8, 24) px
    pred = np.zeros((1, 1, 2, 2, 6 + 3), np.float32)
    pred[0, 0, 1, 0, 5] = np.log(3.0)            # objectness logits [0, ln 3]: fg = 3 / 4
    pred[0, 0, 1, 0, 6:] = [0, np.log(2.0), np.log(5.0)]  # class probs 1/8, 2/8, 5/8
    pred[0, 0, 0, 1, :4] = [0.5, -0.25, np.log(2.0), 0.0]  # cell (0, 1): centre (24 + 8, 8 - 4), size 32 x 16
    out = np.asarray(layers.DecodeLevel([[16, 16]], 16, 32)(pred))
    assert out.shape == (1, 4, 8)                    # candidates in order anchor, row, column
    np.testing.assert_allclose(out[0, 2], [0, 0.5, 0.5, 1.0, 0.75, 1 / 8, 2 / 8, 5 / 8], atol=1e-6)
    # (32 - 16, 4 - 8, 32 + 16, 4 + 8) / 32, clipped to [0, 1]
    np.testing.assert_allclose(out[0, 1, :4], [0.5, 0.0, 1.0, 0.375], atol=1e-6)


def test_decode_inverts_the_target_encoder():
    anchors, stride, size = [[20.0, 30.0], [50.0, 40.0]], 8, 64
    grid = utils.anchor_grid(size // stride, anchors, stride)                    # [2, 8, 8, 4] grid units
    rng = np.random.default_rng(0)
    gt = np.concatenate([rng.uniform(1, 7, (2, 8, 8, 2)), rng.uniform(0.5, 3, (2, 8, 8, 2))], -1).astype(np.float32)
    deltas = np.asarray(utils.encode_deltas(gt, grid))
    pred = np.concatenate([deltas, np.zeros((2, 8, 8, 2 + 1), np.float32)], -1)[None]
    out = np.asarray(layers.DecodeLevel(anchors, stride, size)(pred))
    expect = np.asarray(utils.cxcywh_to_xyxy(gt)).reshape(-1, 4) * stride / size
    np.testing.assert_allclose(out[0, :, :4], np.clip(expect, 0, 1), atol=1e-5)


def _cands(rows, k=2):
    """Candidates [1, N, 5+K] from rows (x1, y1, x2, y2, obj, class probs...)."""
    return np.asarray(rows, np.float32).reshape(1, -1, 5 + k)


def test_proposals_nms_scores_padding():
    layer = layers.ProposalLayer(pre_nms_limit=3, max_prop=6, nms_thresh=0.5, min_box_dim=0.01, min_box_ratio=0.1)
    l2 = _cands([[0.1, 0.1, 0.3, 0.3, 0.9, 0.2, 0.8],       # score 0.72, class 2
                 [0.1, 0.1, 0.3, 0.32, 0.8, 0.5, 0.5],      # IoU 0.91 with the first: suppressed
                 [0.5, 0.5, 0.505, 0.7, 0.99, 1.0, 0.0],    # width 0.005 <= min_box_dim: dropped
                 [0.6, 0.6, 0.9, 0.9, 0.0, 1.0, 0.0]])      # objectness 0: score 0, not a proposal
    l3 = _cands([[0.0, 0.0, 1.0, 0.05, 0.5, 0.6, 0.4],      # h/w = 0.05 <= min_box_ratio: dropped
                 [0.4, 0.0, 0.6, 0.2, 0.5, 0.6, 0.4]])      # score 0.3, class 1
    l4 = _cands([[0.12, 0.1, 0.3, 0.3, 0.95, 0.9, 0.1]])    # score 0.855, overlaps l2's first (IoU 0.9): wins
    l5 = _cands([[0.7, 0.1, 0.9, 0.3, 0.4, 0.25, 0.75]])    # score 0.3, class 2
    proposals, num_valid, probs = (np.asarray(t) for t in layer([l2, l3, l4, l5]))
    assert proposals.shape == (1, 6, 6) and probs.shape == (1, 6, 2)
    assert num_valid.tolist() == [3]
    np.testing.assert_allclose(proposals[0, 0], [0.12, 0.1, 0.3, 0.3, 0.855, 1], atol=1e-6)
    # ties (0.3) keep input order: l3 before l5
    np.testing.assert_allclose(proposals[0, 1], [0.4, 0.0, 0.6, 0.2, 0.3, 1], atol=1e-6)
    np.testing.assert_allclose(proposals[0, 2], [0.7, 0.1, 0.9, 0.3, 0.3, 2], atol=1e-6)
    np.testing.assert_allclose(probs[0, :3], [[0.9, 0.1], [0.6, 0.4], [0.25, 0.75]], atol=1e-6)
    assert not proposals[0, 3:].any() and not probs[0, 3:].any()   # explicit padding: zero box, score, class


def test_proposals_all_background_and_batch():
    layer = layers.ProposalLayer(4, 5, 0.3, 5e-4, 1e-3)
    box = [0.1, 0.1, 0.4, 0.4]
    bg = [_cands([box + [0.0, 0.5, 0.5]] * 3) for _ in range(4)]
    proposals, num_valid, probs = (np.asarray(t) for t in layer(bg))
    assert num_valid.tolist() == [0] and not proposals.any() and not probs.any()
    # batch of 2 where only the second image has a candidate
    two = [np.concatenate([c, _cands([box + [0.5 if lvl == 3 else 0.0, 0.5, 0.5]] * 3)], 0)
           for lvl, c in enumerate(bg)]
    proposals, num_valid, _ = (np.asarray(t) for t in layer(two))
    assert num_valid.tolist() == [0, 1]
    np.testing.assert_allclose(proposals[1, 0], box + [0.25, 1], atol=1e-6)
    assert not proposals[0].any() and not proposals[1, 1:].any()


def test_proposals_ignore_non_finite_candidates():
    layer = layers.ProposalLayer(4, 5, 0.3, 5e-4, 1e-3)
    good = [0.1, 0.1, 0.4, 0.4, 0.5, 0.5, 0.5]
    cands = [_cands([[np.nan, 0.1, 0.4, 0.4, 0.9, 0.5, 0.5], good]), _cands([[0.5, 0.5, 0.9, 0.9, np.nan, 1, 0]]),
             _cands([good]), _cands([good])]
    proposals, num_valid, _ = (np.asarray(t) for t in layer(cands))
    assert num_valid.tolist() == [1] and np.isfinite(proposals).all()
    np.testing.assert_allclose(proposals[0, 0], [0.1, 0.1, 0.4, 0.4, 0.25, 1], atol=1e-6)


def test_pyramid_roi_align_hand_computed():
    s = 5
    ramp = np.arange(s, dtype=np.float32)
    fmap = np.stack([np.broadcast_to(ramp[None, :], (s, s)), np.broadcast_to(ramp[:, None], (s, s))], -1)
    maps = [np.stack([fmap, fmap + 10])] * 4                                  # [2, 5, 5, 2]: x ramp, y ramp
    proposals = np.zeros((2, 3, 6), np.float32)
    proposals[:, 0, :4] = [0, 0, 1, 1]               # whole map: 0..1 maps to pixel centres 0..4
    proposals[1, 1, :4] = [0.25, 0.5, 0.75, 1.0]     # x 1..3, y 2..4
    out = layers.PyramidROIAlign(5)([proposals] + maps)
    assert len(out) == 4 and out[0].shape == (6, 5, 5, 2)                    # [B*P, pool, pool, C]
    out = np.asarray(out[3])
    np.testing.assert_allclose(out[0], fmap, atol=1e-6)
    np.testing.assert_allclose(out[3], fmap + 10, atol=1e-6)                 # ROI 0 of image 1
    np.testing.assert_allclose(out[4, 0, :, 0], [11, 11.5, 12, 12.5, 13], atol=1e-6)
    np.testing.assert_allclose(out[4, :, 0, 1], [12, 12.5, 13, 13.5, 14], atol=1e-6)


def _crop_and_resize_grad_reference(shape, boxes, box_idx, size, dy):
    """TF's CropAndResizeGradImage, one sample at a time in float64: four bilinear taps a sample, none outside."""
    _, h, w, _ = shape
    out = np.zeros(shape)
    for n, (y1, x1, y2, x2) in enumerate(boxes.astype(np.float64)):
        for i in range(size):
            y = y1 * (h - 1) + i * (y2 - y1) * (h - 1) / (size - 1)
            for j in range(size):
                x = x1 * (w - 1) + j * (x2 - x1) * (w - 1) / (size - 1)
                if not (0 <= y <= h - 1 and 0 <= x <= w - 1):
                    continue
                t, lft, yl, xl = int(np.floor(y)), int(np.floor(x)), y - np.floor(y), x - np.floor(x)
                b, r = int(np.ceil(y)), int(np.ceil(x))
                g = dy[n, i, j].astype(np.float64)
                out[box_idx[n], t, lft] += (1 - yl) * (1 - xl) * g
                out[box_idx[n], t, r] += (1 - yl) * xl * g
                out[box_idx[n], b, lft] += yl * (1 - xl) * g
                out[box_idx[n], b, r] += yl * xl * g
    return out


@pytest.mark.parametrize("side", [2, 3, 9])
def test_crop_and_resize_gradient_loses_nothing(side):
    # 192 overlapping 14x14 ROIs on one small map, some reaching outside it: where TF's own CPU gradient adds from
    # several threads at once and drops contributions (60 % of it measured on 2x2 maps, info/RESULTS.md)
    rng = np.random.default_rng(side)
    n = 192
    maps = tf.constant(rng.normal(size=(2, side, side, 32)).astype(np.float32))
    lo = rng.uniform(-0.2, 0.6, (n, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.2, 0.6, (n, 2))], 1).astype(np.float32)
    box_idx = np.sort(rng.integers(0, 2, n)).astype(np.int32)
    dy = rng.normal(size=(n, 14, 14, 32)).astype(np.float32)

    @tf.function
    def both():
        with tf.GradientTape() as tape:
            tape.watch(maps)
            y = layers.crop_and_resize(maps, boxes, box_idx, 14)
        return y, tape.gradient(y, maps, output_gradients=tf.constant(dy))
    y, grad = both()
    np.testing.assert_array_equal(y, tf.image.crop_and_resize(maps, boxes, box_idx, (14, 14)))
    ref = _crop_and_resize_grad_reference(maps.shape, boxes, box_idx, 14, dy)
    np.testing.assert_allclose(grad, ref, rtol=1e-5, atol=1e-3)   # float32 sums of up to ~20,000 terms of size ~1


def test_roi_aligns_scale_the_box_about_its_centre():
    # PyramidROIAlign with box_scale 2 on the box (0.25, 0.25, 0.75, 0.75) pools the whole map (0..1), and
    # PixelROIAlign samples the centres of the mask grid's cells over the scaled box.
    s = 5
    ramp = np.arange(s, dtype=np.float32)
    fmap = np.stack([np.broadcast_to(ramp[None, :], (s, s)), np.broadcast_to(ramp[:, None], (s, s))], -1)[None]
    proposals = np.zeros((1, 2, 6), np.float32)
    proposals[0, 0, :4] = [0.25, 0.25, 0.75, 0.75]
    proposals[0, 1, :4] = [0.25, 0.0, 0.75, 0.5]      # scaled: x 0..1, y -0.25..0.75 (a quarter outside)
    out = np.asarray(layers.PyramidROIAlign(5, box_scale=2.0)([proposals] + [fmap] * 4)[0])
    np.testing.assert_allclose(out[0], fmap[0], atol=1e-6)
    # 8 x 8 canvas, value = column + 10 * row (pixel i's centre at i + 0.5). Proposal 0 scaled by 2 spans 0..8 px:
    # its 4 cells are centred at 1, 3, 5, 7 px, pixel indices 0.5, 2.5, 4.5, 6.5. Proposal 1 spans x 0..8, y -2..6:
    # cells at y indices -1.5 (off the canvas: 0), 0.5, 2.5, 4.5.
    cols, rows = np.meshgrid(np.arange(8, dtype=np.float32), np.arange(8, dtype=np.float32))
    image = (cols + 10 * rows)[None, :, :, None]
    px = np.asarray(layers.PixelROIAlign(4, box_scale=2.0)([proposals, image]))
    assert px.shape == (2, 4, 4, 1)
    np.testing.assert_allclose(px[0, 0, :, 0], [5.5, 7.5, 9.5, 11.5], atol=1e-5)
    np.testing.assert_allclose(px[0, :, 1, 0], [7.5, 27.5, 47.5, 67.5], atol=1e-5)
    np.testing.assert_allclose(px[1, :, 1, 0], [0, 7.5, 27.5, 47.5], atol=1e-5)
    assert layers.PixelROIAlign(4).compute_output_shape(((1, 2, 6), (1, 8, 8, 3))) == (2, 4, 4, 3)


def test_unflatten_rois():
    x = np.arange(6 * 2, dtype=np.float32).reshape(6, 2)
    out = np.asarray(layers.UnflattenROIs(3)(x))
    np.testing.assert_array_equal(out, x.reshape(2, 3, 2))


def test_mask_roi_gate_keeps_the_wanted_prefix():
    # two images, P = 5, sorted scores; image 0 has 4 valid slots, image 1 has 2
    proposals = np.zeros((2, 5, 6), np.float32)
    proposals[..., :4] = np.arange(2 * 5 * 4, dtype=np.float32).reshape(2, 5, 4) / 40
    proposals[0, :4, 4] = [0.9, 0.6, 0.3, 0.1]
    proposals[1, :2, 4] = [0.8, 0.7]
    num_valid = np.array([4, 2], np.int32)
    n_rois = lambda k, floor: int(layers.MaskROIGate(k, floor)([proposals, num_valid]).shape[1])
    assert n_rois(5, None) == 4                     # the valid slots of the fullest image
    assert n_rois(5, 0.5) == 2                      # image 0: 0.9, 0.6; image 1: 0.8, 0.7
    assert n_rois(5, 0.65) == 2 and n_rois(5, 0.75) == 1
    assert n_rois(3, None) == 3 and n_rois(1, 0.0) == 1
    assert n_rois(5, 0.95) == 1                     # nothing wanted: one ROI all the same (no empty conv batch)
    np.testing.assert_array_equal(np.asarray(layers.MaskROIGate(5, 0.5)([proposals, num_valid])),
                                  proposals[:, :2])


def test_pad_mask_logits_zero_foreground():
    x = np.random.default_rng(0).normal(0, 1, (2 * 3, 4, 4, 2)).astype(np.float32)   # B = 2, n = 3
    out = np.asarray(layers.PadMaskLogits(5)([x, np.zeros((2, 5, 6), np.float32)]))
    assert out.shape == (2, 5, 4, 4, 2)
    np.testing.assert_array_equal(out[:, :3], x.reshape(2, 3, 4, 4, 2))
    fg = np.asarray(tf.nn.softmax(out, axis=-1))[..., 1]
    assert not fg[:, 3:].any()                      # exactly 0, as DetectionOutputs gives padded slots


def test_positive_rois_gather_and_scatter_back():
    """GatherPositiveROIs keeps the rows b*n + j, j < mask_num[b], of a gated [B*n, ...], then copies of the first to
    a multiple of B (at least B rows, also with no positive at all); ScatterPositiveROIs puts the positives' rows
    back and zeros elsewhere, dropping the copies."""
    props = tf.zeros([3, 2, 6])
    x = tf.reshape(tf.range(6 * 4, dtype=tf.float32), [6, 2, 2])
    num = tf.constant([0, 2, 2])
    rows = layers.GatherPositiveROIs()([x, props, num])
    np.testing.assert_array_equal(rows.numpy(), x.numpy()[[2, 3, 4, 5, 2, 2]])     # 4 positives -> 6 rows
    back = layers.ScatterPositiveROIs()([rows * 2, props, num]).numpy()
    np.testing.assert_array_equal(back[2:], x.numpy()[2:] * 2)
    np.testing.assert_array_equal(back[:2], 0.0)
    num = tf.constant([0, 1, 2])
    np.testing.assert_array_equal(layers.GatherPositiveROIs()([x, props, num]).numpy(), x.numpy()[[2, 4, 5]])
    none = tf.zeros([3], tf.int32)
    np.testing.assert_array_equal(layers.GatherPositiveROIs()([x, props, none]).numpy(), x.numpy()[[0, 0, 0]])
    np.testing.assert_array_equal(layers.ScatterPositiveROIs()([x[:3], props, none]).numpy(), 0.0)


def test_mask_head_count_shapes_and_group_norm():
    cfg = _cfg()
    rois = [keras.Input((14, 14, 208)) for _ in range(4)]
    out = layers.apply_mask_head(rois, cfg)
    m = keras.Model(rois, out)
    assert tuple(out.shape) == (None, 28, 28, 2)
    assert m.count_params() == 24_510_364                                    # real GN has the same count
    assert m.get_layer("mask_fc").count_params() == 19_669_776
    gns = [l for l in m.layers if isinstance(l, keras.layers.GroupNormalization)]
    # 4 AFP + conv1..conv5 = 9 (the original's 24,510,364 is the count of 9)
    assert len(gns) == 9 and all(l.groups == 32 and l.epsilon == 1e-5 for l in gns)
    assert m.get_layer("mask_gn_conv5").output.shape[-1] == 128


def test_group_norm_normalises_channel_groups():
    # info/DESIGN.md#m3-group-normalisation: each group of C/G channels is normalised over (H, W, channels of the group)
    gn = keras.layers.GroupNormalization(groups=2, epsilon=1e-5)
    x = np.random.default_rng(0).normal(3, 2, (1, 4, 4, 4)).astype(np.float32)
    y = np.asarray(gn(x))
    for g in range(2):
        part = x[..., 2 * g:2 * g + 2]
        np.testing.assert_allclose(y[..., 2 * g:2 * g + 2], (part - part.mean()) / np.sqrt(part.var() + 1e-5),
                                   atol=1e-4)


def test_detection_outputs_unletterbox():
    size, (h, w) = 416, (720, 1280)
    lb = utils.Letterbox(h, w, size)                                  # scale 0.325, nw 416, nh 234, dh 91
    assert (lb.nw, lb.nh, lb.dw, lb.dh) == (416, 234, 0, 91)
    rng = np.random.default_rng(0)
    canvas = np.sort(rng.uniform(0, size, (1, 4, 2, 2)), axis=2).transpose(0, 1, 3, 2).reshape(1, 4, 4)
    proposals = np.zeros((1, 5, 6), np.float32)
    proposals[0, :4, :4] = canvas / size
    proposals[0, :4, 4] = [0.9, 0.8, 0.7, 0.6]
    proposals[0, :4, 5] = [3, 1, 2, 40]
    logits = np.zeros((1, 5, 28, 28, 2), np.float32)
    logits[..., 1] = np.log(3.0)                                      # fg probability 0.75
    out = layers.DetectionOutputs(size)([proposals, np.array([4], np.int32), logits, np.array([[h, w]], np.int32)])
    expect = lb.boxes_to_frame(proposals[0, :4, :4].astype(np.float64) * size)
    np.testing.assert_allclose(np.asarray(out["boxes"])[0, :4], expect, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(out["boxes"])[0, 4], 0)
    assert np.asarray(out["classes"]).tolist() == [[3, 1, 2, 40, 0]] and out["classes"].dtype == "int32"
    np.testing.assert_allclose(np.asarray(out["masks"])[0, :4], 0.75, atol=1e-6)
    assert not np.asarray(out["masks"])[0, 4].any()
    # a box in the letterbox padding maps to a zero-height box on the frame's edge
    proposals[0, 0, :4] = [0.1, 0.0, 0.2, 90 / size]
    out = layers.DetectionOutputs(size)([proposals, np.array([4], np.int32), logits, np.array([[h, w]], np.int32)])
    np.testing.assert_allclose(np.asarray(out["boxes"])[0, 0], [41.6 / 0.325, 0, 83.2 / 0.325, 0], atol=1e-3)
    # the mask box is not clipped, and is scaled about the box's centre: y -1 / 0.325 px .. 0 -> 2x as tall
    out = layers.DetectionOutputs(size, 2.0)([proposals, np.array([4], np.int32), logits,
                                              np.array([[h, w]], np.int32)])
    y1, y2 = (0 - 91) / 0.325, (90 - 91) / 0.325
    np.testing.assert_allclose(np.asarray(out["mask_boxes"])[0, 0],
                               [20.8 / 0.325, 1.5 * y1 - 0.5 * y2, 104 / 0.325, 1.5 * y2 - 0.5 * y1], atol=1e-3)
    np.testing.assert_array_equal(np.asarray(out["mask_boxes"])[0, 4], 0)


@pytest.mark.parametrize("layer", [
    layers.LevelPrediction(6, name="p"),
    layers.DecodeLevel([[2.0, 2.0], [4.0, 5.0]], 4, 64, name="d"),
    layers.ProposalLayer(200, 50, 0.3, 5e-4, 1e-3, name="prop"),
    layers.PyramidROIAlign(14, name="roi"),
    layers.PyramidROIAlign(14, 1.25, name="roi_scaled"),
    layers.PixelROIAlign(28, 1.25, name="pix"),
    layers.UnflattenROIs(50, name="u"),
    layers.MaskROIGate(10, 0.05, name="gate"),
    layers.MaskROIGate(50, None, name="gate_all"),
    layers.PadMaskLogits(50, name="pad"),
    layers.DetectionOutputs(416, name="o"),
    layers.DetectionOutputs(416, 1.25, name="o_scaled"),
    utils.AutoLossBalance(13, name="alb"),
])
def test_get_config_round_trip(layer):
    config_ = layer.get_config()
    clone = type(layer).from_config(config_)
    assert clone.get_config() == config_


def test_obj_prior_sets_the_starting_objectness():
    # On an all-zero neck output the detection branch reduces to its output bias: with obj_prior 0.01 every
    # anchor's foreground probability is exactly 0.01 and the box deltas are 0; with 0 (original) it is 1/2.
    for prior, expected in ((0.01, 0.01), (0.0, 0.5)):
        cfg = _cfg("tiny", obj_prior=prior, num_classes=3)
        n = [keras.Input((s, s, c)) for s, c in zip((8, 4, 2, 1), (16, 32, 64, 128))]
        m = keras.Model(n, layers.apply_heads(n, cfg)[0])
        preds = m([np.zeros((1, s, s, c), np.float32) for s, c in zip((8, 4, 2, 1), (16, 32, 64, 128))])
        for p in preds:
            fg = tf.nn.softmax(p[..., 4:6])[..., 1].numpy()
            np.testing.assert_allclose(fg, expected, rtol=1e-5)
            np.testing.assert_array_equal(p[..., :4].numpy(), 0.0)
