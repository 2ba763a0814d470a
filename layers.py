"""Neck, heads, decoding, proposals and mask head of YOLOV4+1 (info/DESIGN.md#architecture).

Blocks are plain functions over tensors (`apply_neck`, `apply_heads`, `apply_mask_head`); everything that calls
`tf.*` is a Keras layer with a round-tripping `get_config`: `LevelPrediction`, `DecodeLevel`, `ProposalLayer`,
`PyramidROIAlign`, `PixelROIAlign`, `UnflattenROIs`, `DetectionOutputs`.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import utils
from backbone import batch_norm, bn_conv_initializer, conv_bn_act, scaled

NUM_BOX = 4          # dx, dy, dw, dh
NUM_OBJ = 2          # objectness logits [background, foreground]
LEVELS = (2, 3, 4, 5)


# ---- neck: the extended YOLOv4 PAN (info/DESIGN.md#neck) ---------------------------------------------------

def neck_conv(x, filters, kernel, name, cfg, downsample=False):
    """Conv (no bias) + BN + leaky 0.1, named neck_conv_/neck_bn_/neck_leaky_<name>."""
    return conv_bn_act(x, filters, kernel, "neck", name, cfg, "leaky", downsample)


def five_convs(x, filters, name, cfg):
    """The YOLOv4 1x1 f, 3x3 2f, 1x1 f, 3x3 2f, 1x1 f stack."""
    for j, (mult, k) in enumerate(((1, 1), (2, 3), (1, 1), (2, 3), (1, 1))):
        x = neck_conv(x, filters * mult, k, f"{name}_{j}", cfg)
    return x


def apply_neck(b, cfg):
    """[b2, b3, b4, b5] -> [n2, n3, n4, n5] (64/128/256/512 channels at width 1.0).

    Top-down: concat [lateral 1x1 of b_k, bilinear x2 of a 1x1 of p_{k+1}], five convs. Bottom-up: concat
    [3x3 stride-2 of n_{k-1}, p_k], five convs.
    """
    w = cfg.model.width
    b2, b3, b4, b5 = b
    p = {5: b5}
    for lvl, bk, f in ((4, b4, 256), (3, b3, 128), (2, b2, 64)):
        f = scaled(f, w)
        up = neck_conv(p[lvl + 1], f, 1, f"p{lvl}_up", cfg)
        up = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"neck_upsample_p{lvl}")(up)
        lat = neck_conv(bk, f, 1, f"p{lvl}_lat", cfg)
        x = keras.layers.Concatenate(name=f"neck_cat_p{lvl}")([lat, up])
        p[lvl] = five_convs(x, f, f"p{lvl}", cfg)                     # [B, S_k, S_k, f]
    n = {2: p[2]}
    for lvl, f in ((3, 128), (4, 256), (5, 512)):
        f = scaled(f, w)
        down = neck_conv(n[lvl - 1], f, 3, f"n{lvl}_down", cfg, downsample=True)
        x = keras.layers.Concatenate(name=f"neck_cat_n{lvl}")([down, p[lvl]])
        n[lvl] = five_convs(x, f, f"n{lvl}", cfg)                     # [B, S_k, S_k, f]
    return [n[k] for k in LEVELS]


# ---- heads (info/DESIGN.md#heads) --------------------------------------------------------------------------

class LevelPrediction(keras.layers.Layer):
    """Assembles one level's prediction from the detection and class heads (info/DESIGN.md#heads).

    The detection output [B, S, S, nA*6] (channel = anchor*6 + j) becomes [B, nA, S, S, 6]; the per-cell class
    logits [B, S, S, K] are tiled over the nA anchors (info/DESIGN.md#m6-class-head), appended: [B, nA, S, S, 6+K] with
    channels 0..3 deltas, 4..5 objectness logits [bg, fg], 6.. class logits; spatial axes [row=y, col=x].

    Args:
        num_anchors: anchors per cell (nA).

    Example:
        pred = LevelPrediction(6)([det_raw, cls_logits])    # [B, 6, S, S, 6 + K]
    """

    def __init__(self, num_anchors, **kwargs):
        kwargs.setdefault("dtype", "float32")   # float32 math and outputs under mixed precision (M13)
        super().__init__(**kwargs)
        self.num_anchors = int(num_anchors)

    def call(self, inputs):
        det, cls = inputs
        s1, s2 = tf.shape(det)[1], tf.shape(det)[2]
        det = tf.reshape(det, [-1, s1, s2, self.num_anchors, NUM_BOX + NUM_OBJ])
        det = tf.transpose(det, [0, 3, 1, 2, 4])                       # [B, nA, S, S, 6]
        cls = tf.tile(cls[:, None], [1, self.num_anchors, 1, 1, 1])     # [B, nA, S, S, K]
        return tf.concat([det, cls], axis=-1)

    def compute_output_shape(self, input_shapes):
        det, cls = input_shapes
        return (det[0], self.num_anchors, det[1], det[2], NUM_BOX + NUM_OBJ + cls[-1])

    def get_config(self):
        return {**super().get_config(), "num_anchors": self.num_anchors}


def det_bias_initializer(num_anchors: int, obj_prior: float):
    """Bias of the detection output conv: zeros (original), or with 0 < obj_prior < 1 the foreground logit of
    every anchor (channel a*6 + 5) at log(prior / (1 - prior)), so the objectness softmax starts at `obj_prior`
    (RetinaNet's prior initialisation; without it a focal loss starts ~100x its settled value)."""
    if not obj_prior:
        return "zeros"
    bias = np.zeros((num_anchors, NUM_BOX + NUM_OBJ), np.float32)
    bias[:, NUM_BOX + 1] = np.log(obj_prior / (1.0 - obj_prior))
    return keras.initializers.Constant(bias.reshape(-1))


def apply_heads(n, cfg):
    """Per-level heads on [n2..n5]: returns (level predictions [B, nA, S, S, 6+K] x4, embeddings [B, S, S, E] x4).

    Detection: 3x3 conv+BN+leaky (C_k filters), 1x1 conv to nA*6 with bias. Class: Dense(K) on the channel axis
    (a 1x1 conv); with `model.class_conv` N > 0, on a 3x3 conv+BN+leaky of max(N, C_k) filters. Embedding: 3x3
    linear conv with bias to emb_dim, used only by the mask head.
    """
    m = cfg.model
    preds, embs = [], []
    for lvl, x in zip(LEVELS, n):
        c = int(x.shape[-1])
        d = keras.layers.Conv2D(c, 3, padding="same", use_bias=False,
                                kernel_initializer=bn_conv_initializer(cfg), name=f"head_det_conv_{lvl}")(x)
        d = batch_norm(cfg, f"head_det_bn_{lvl}")(d)
        d = keras.layers.LeakyReLU(negative_slope=0.1, name=f"head_det_leaky_{lvl}")(d)
        d = keras.layers.Conv2D(m.anchors_per_level * (NUM_BOX + NUM_OBJ), 1,
                                kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                                bias_initializer=det_bias_initializer(m.anchors_per_level, m.obj_prior),
                                name=f"head_det_out_{lvl}")(d)                   # [B, S, S, nA*6]
        c_in = x
        if m.class_conv:                                   # tiny-preset departure: a non-linear class branch
            c_in = keras.layers.Conv2D(max(m.class_conv, c), 3, padding="same", use_bias=False,
                                       kernel_initializer=bn_conv_initializer(cfg), name=f"head_cls_conv_{lvl}")(x)
            c_in = batch_norm(cfg, f"head_cls_bn_{lvl}")(c_in)
            c_in = keras.layers.LeakyReLU(negative_slope=0.1, name=f"head_cls_leaky_{lvl}")(c_in)
        cls = keras.layers.Dense(m.num_classes, name=f"head_cls_{lvl}")(c_in)     # [B, S, S, K]
        preds.append(LevelPrediction(m.anchors_per_level, name=f"head_pred_{lvl}")([d, cls]))
        # Linear like head_det_out, and initialised like it: N(0, 0.01) kernel, zero bias (the original's convs)
        embs.append(keras.layers.Conv2D(m.emb_dim, 3, padding="same",
                                        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                                        bias_initializer="zeros", name=f"head_emb_{lvl}")(x))  # [B, S, S, E]
    return preds, embs


# ---- decoding and proposals (info/DESIGN.md#proposals) ----------------------------------------

class DecodeLevel(keras.layers.Layer):
    """Decodes one level's prediction into candidates [B, nA*S*S, 5+K] = x1, y1, x2, y2 (normalised to [0, 1] of
    the canvas, clipped), foreground probability, K class probabilities; order anchor, row, column.

    Anchors and deltas go through `utils.anchor_grid` / `utils.decode_deltas`, the pair the target encoder
    uses, so anchors sit at cell centres (+0.5, info/DESIGN.md#m4-anchor-grid).

    Args:
        anchors: [[w, h], ...] anchor sizes of this level in pixels at the input size.
        stride: the level's stride in pixels.
        input_size: side of the square input canvas in pixels.

    Example:
        cand = DecodeLevel([[56, 48], [72, 63]], 16, 416)(pred)   # [B, 2*26*26, 5 + K]
    """

    def __init__(self, anchors, stride, input_size, **kwargs):
        kwargs.setdefault("dtype", "float32")   # float32 math and outputs under mixed precision (M13)
        super().__init__(**kwargs)
        self.anchors = [[float(a) for a in wh] for wh in np.asarray(anchors).tolist()]
        self.stride = int(stride)
        self.input_size = int(input_size)
        self.grid = self.input_size // self.stride
        self._anchor_grid = utils.anchor_grid(self.grid, self.anchors, self.stride)   # [nA, S, S, 4] grid units

    def call(self, pred):
        boxes = utils.decode_deltas(pred[..., :NUM_BOX], self._anchor_grid)           # cxcywh grid units
        boxes = tf.clip_by_value(utils.cxcywh_to_xyxy(boxes) * (self.stride / self.input_size), 0.0, 1.0)
        obj = tf.nn.softmax(pred[..., NUM_BOX:NUM_BOX + NUM_OBJ], axis=-1)[..., 1:]
        cls = tf.nn.softmax(pred[..., NUM_BOX + NUM_OBJ:], axis=-1)
        out = tf.concat([boxes, obj, cls], axis=-1)                                     # [B, nA, S, S, 5+K]
        return tf.reshape(out, [-1, len(self.anchors) * self.grid * self.grid, out.shape[-1]])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self.anchors) * self.grid * self.grid, input_shape[-1] - 1)

    def get_config(self):
        return {**super().get_config(), "anchors": self.anchors, "stride": self.stride,
                "input_size": self.input_size}


def _nms_padded(boxes, scores, limit, iou_thresh):
    """Greedy NMS per image: boxes [B, N, 4] xyxy, scores [B, N] (<= 0 means 'not a candidate').

    Returns (indices [B, limit] int32, valid [B, limit] bool, num_valid [B] int32). Padded slots hold index 0 and
    valid False; the caller zeroes them, so nothing downstream depends on what TF pads with.
    """
    def one(args):
        b, s = args
        idx = tf.image.non_max_suppression(tf.gather(b, [1, 0, 3, 2], axis=-1), s, limit,
                                           iou_threshold=iou_thresh, score_threshold=0.0)  # keeps score > 0
        n = tf.shape(idx)[0]
        return tf.pad(idx, [[0, limit - n]]), n

    idx, num = tf.map_fn(one, (boxes, scores), fn_output_signature=(tf.TensorSpec([limit], tf.int32),
                                                                     tf.TensorSpec([], tf.int32)))
    valid = tf.range(limit)[None, :] < num[:, None]
    return idx, valid, num


class ProposalLayer(keras.layers.Layer):
    """Proposals from the decoded candidates of all levels (info/DESIGN.md#m5-nms-valid-counts).

    Score = objectness x max class probability, class = argmax + 1. Degenerate boxes (side <= min_box_dim or
    aspect <= min_box_ratio, normalised units) and candidates whose score underflows to 0 are dropped. Per
    level NMS keeps up to `pre_nms_limit`, a global NMS over the survivors keeps up to `max_prop`, sorted by
    descending score. Slots past `num_valid` are explicit padding: zero box, score 0, class 0, zero class probs.

    Args:
        pre_nms_limit: proposals kept per level.
        max_prop: proposals kept after the global NMS (P, static).
        nms_thresh: IoU threshold of both NMS stages.
        min_box_dim: minimum normalised width and height.
        min_box_ratio: minimum w/h and h/w.

    Returns:
        proposals [B, P, 6] = x1, y1, x2, y2, score, class (float), num_valid [B] int32, class_probs [B, P, K].

    Example:
        proposals, num_valid, class_probs = ProposalLayer(200, 50, 0.3, 5e-4, 1e-3)([c2, c3, c4, c5])
    """

    def __init__(self, pre_nms_limit, max_prop, nms_thresh, min_box_dim, min_box_ratio, **kwargs):
        kwargs.setdefault("dtype", "float32")   # float32 math and outputs under mixed precision (M13)
        super().__init__(**kwargs)
        self.pre_nms_limit = int(pre_nms_limit)
        self.max_prop = int(max_prop)
        self.nms_thresh = float(nms_thresh)
        self.min_box_dim = float(min_box_dim)
        self.min_box_ratio = float(min_box_ratio)

    def _scores(self, cand):
        boxes, obj, cls = cand[..., :4], cand[..., 4], cand[..., 5:]
        w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        ok = (w > self.min_box_dim) & (h > self.min_box_dim)
        ok &= (tf.math.divide_no_nan(w, h) > self.min_box_ratio) & (tf.math.divide_no_nan(h, w) > self.min_box_ratio)
        return tf.where(ok, obj * tf.reduce_max(cls, axis=-1), 0.0)

    def call(self, candidates):
        kept, kept_scores = [], []
        # a diverged network must not hand NaN boxes to crop_and_resize (which rejects them): a candidate with a
        # non-finite value becomes an all-zero (degenerate) row
        candidates = [tf.where(tf.reduce_all(tf.math.is_finite(c), axis=-1, keepdims=True), c, 0.0)
                      for c in candidates]
        for cand in candidates:                                          # [B, N_k, 5+K]
            cand = tf.stop_gradient(cand)
            scores = self._scores(cand)
            limit = min(self.pre_nms_limit, int(cand.shape[1]) if cand.shape[1] is not None else self.pre_nms_limit)
            idx, valid, _ = _nms_padded(cand[..., :4], scores, limit, self.nms_thresh)
            kept.append(tf.gather(cand, idx, batch_dims=1))
            kept_scores.append(tf.where(valid, tf.gather(scores, idx, batch_dims=1), 0.0))   # padding: score 0
        cand = tf.concat(kept, axis=1)                                   # [B, <=4*pre, 5+K]
        scores = tf.concat(kept_scores, axis=1)
        idx, valid, num_valid = _nms_padded(cand[..., :4], scores, self.max_prop, self.nms_thresh)
        cand = tf.gather(cand, idx, batch_dims=1)                        # [B, P, 5+K]
        validf = tf.cast(valid, cand.dtype)[..., None]
        cls = cand[..., 5:] * validf
        score = tf.gather(scores, idx, batch_dims=1)[..., None] * validf
        label = tf.cast(tf.argmax(cls, axis=-1) + 1, cand.dtype)[..., None] * validf
        proposals = tf.concat([cand[..., :4] * validf, score, label], axis=-1)
        return proposals, num_valid, cls

    def compute_output_shape(self, input_shapes):
        b, k = input_shapes[0][0], input_shapes[0][-1] - 5
        return (b, self.max_prop, 6), (b,), (b, self.max_prop, k)

    def compute_output_spec(self, candidates):
        b, k = candidates[0].shape[0], candidates[0].shape[-1] - 5
        return (keras.KerasTensor((b, self.max_prop, 6), "float32"), keras.KerasTensor((b,), "int32"),
                keras.KerasTensor((b, self.max_prop, k), "float32"))

    def get_config(self):
        return {**super().get_config(), "pre_nms_limit": self.pre_nms_limit, "max_prop": self.max_prop,
                "nms_thresh": self.nms_thresh, "min_box_dim": self.min_box_dim, "min_box_ratio": self.min_box_ratio}


# ---- mask head (info/DESIGN.md#mask-head) ------------------------------------------------------------------

def crop_and_resize(maps, boxes, box_idx, size: int):
    """`tf.image.crop_and_resize(maps, boxes, box_idx, (size, size), "bilinear")`, differentiable in `maps` only
    (the boxes are constants), with a gradient that loses nothing.

    TensorFlow's CPU kernel for the gradient to the maps adds the crops' contributions from several threads without
    atomics (tensorflow/tensorflow#42033), so where ROIs share pixels some are lost: measured, up to 60 % of the
    gradient on a 2x2 map and 6 % on 16x16 (info/RESULTS.md#2026-12-04-roi-align-gradient). Here each sample's
    four bilinear taps are summed into the maps with `unsorted_segment_sum`, one tap at a time: the kernel's
    sampling (a sample at y1 (H-1) + i (y2-y1) (H-1) / (size-1), none outside the map), without the race.
    """
    boxes = tf.stop_gradient(tf.cast(boxes, tf.float32))

    @tf.custom_gradient
    def crop(x):
        def grad(dy):
            return _crop_and_resize_grad(dy, boxes, box_idx, tf.shape(x), size)
        return tf.image.crop_and_resize(x, boxes, box_idx, (size, size), method="bilinear"), grad

    return crop(maps)


def _crop_and_resize_grad(dy, boxes, box_idx, shape, size: int):
    """d(crop)/d(maps) contracted with dy [N, size, size, C] -> [B, H, W, C], as TF's kernel computes it."""
    b, h, w = shape[0], shape[1], shape[2]
    hf, wf = tf.cast(h - 1, tf.float32), tf.cast(w - 1, tf.float32)

    def samples(lo, hi, extent):                          # [N, size]: the kernel's float32 order of operations
        if size == 1:
            return 0.5 * (lo + hi) * extent
        i = tf.cast(tf.range(size), tf.float32)[None, :]
        return lo * extent + i * ((hi - lo) * extent / float(size - 1))
    ys = samples(boxes[:, 0:1], boxes[:, 2:3], hf)
    xs = samples(boxes[:, 1:2], boxes[:, 3:4], wf)
    y_in, x_in = (ys >= 0.0) & (ys <= hf), (xs >= 0.0) & (xs <= wf)
    ys, xs = tf.where(y_in, ys, 0.0), tf.where(x_in, xs, 0.0)
    y0, x0 = tf.floor(ys), tf.floor(xs)
    yl, xl = ys - y0, xs - x0
    y_taps = ((tf.cast(y0, tf.int32), 1.0 - yl), (tf.cast(tf.math.ceil(ys), tf.int32), yl))
    x_taps = ((tf.cast(x0, tf.int32), 1.0 - xl), (tf.cast(tf.math.ceil(xs), tf.int32), xl))
    keep = tf.cast(y_in, tf.float32)[:, :, None] * tf.cast(x_in, tf.float32)[:, None, :]     # [N, size, size]
    base = tf.cast(box_idx, tf.int32)[:, None, None] * (h * w)
    dy = tf.cast(dy, tf.float32)
    total = tf.zeros([b * h * w, tf.shape(dy)[-1]], tf.float32)
    for yi, yw in y_taps:
        for xi, xw in x_taps:
            index = base + yi[:, :, None] * w + xi[:, None, :]                                # [N, size, size]
            weight = yw[:, :, None] * xw[:, None, :] * keep
            total += tf.math.unsorted_segment_sum(tf.reshape(dy * weight[..., None], [-1, tf.shape(dy)[-1]]),
                                                  tf.reshape(index, [-1]), b * h * w)
    return tf.reshape(total, shape)


class PyramidROIAlign(keras.layers.Layer):
    """Adaptive feature pooling input: every proposal from every embedding map (info/DESIGN.md#m10-feature-pooling).

    `tf.image.crop_and_resize` (TF's normalised convention: 0..1 maps to pixel centres 0..S-1, one bilinear sample
    per bin) on each of e2..e5, gradients stopped at the boxes. ROIs are flattened to B*P so the mask subnet runs
    as plain convs.

    Args:
        pool_size: side of the pooled crops.
        box_scale: each proposal box is scaled by this about its centre first (the mask ROI,
            model.mask_box_scale; 1.0 original); zero outside the maps.

    Returns:
        A list of 4 tensors [B*P, pool_size, pool_size, E], one per level.

    Example:
        rois = PyramidROIAlign(14)([proposals, e2, e3, e4, e5])
    """

    def __init__(self, pool_size, box_scale=1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")   # float32 math and outputs under mixed precision (M13)
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)
        self.box_scale = float(box_scale)

    def call(self, inputs):
        proposals, maps = inputs[0], inputs[1:]
        boxes = utils.scale_boxes(tf.stop_gradient(proposals[..., :4]), self.box_scale)
        num = tf.shape(boxes)[1]
        boxes = tf.reshape(tf.gather(boxes, [1, 0, 3, 2], axis=-1), [-1, 4])      # [B*P, 4] y1, x1, y2, x2
        box_idx = tf.repeat(tf.range(tf.shape(proposals)[0]), num)
        return [crop_and_resize(m, boxes, box_idx, self.pool_size) for m in maps]

    def compute_output_shape(self, input_shapes):
        p = input_shapes[0]
        b = None if p[0] is None or p[1] is None else p[0] * p[1]
        return [(b, self.pool_size, self.pool_size, s[-1]) for s in input_shapes[1:]]

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "box_scale": self.box_scale}


class PixelROIAlign(keras.layers.Layer):
    """The mask ROI of every proposal cropped from the input canvas itself, one bilinear sample at the centre of
    each of the crop x crop cells of the mask grid (`utils.aligned_crop_boxes`, the mask targets' sampling): the
    pixel branch's input (model.mask_pixels; not in the original).

    Args:
        crop: side of the crops (model.mask_size).
        box_scale: model.mask_box_scale, as in `PyramidROIAlign`.

    Returns:
        [B*P, crop, crop, C] pixels, zero outside the canvas.

    Example:
        pixels = PixelROIAlign(28, 1.2)([proposals, image])
    """

    def __init__(self, crop, box_scale=1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.crop = int(crop)
        self.box_scale = float(box_scale)

    def call(self, inputs):
        proposals, image = inputs
        boxes = utils.scale_boxes(tf.stop_gradient(tf.cast(proposals[..., :4], tf.float32)), self.box_scale)
        num = tf.shape(boxes)[1]
        boxes = utils.aligned_crop_boxes(tf.gather(boxes, [1, 0, 3, 2], axis=-1), image.shape[1], self.crop)
        box_idx = tf.repeat(tf.range(tf.shape(proposals)[0]), num)
        return tf.image.crop_and_resize(tf.cast(image, tf.float32), tf.reshape(boxes, [-1, 4]), box_idx,
                                        (self.crop, self.crop), method="bilinear")

    def compute_output_shape(self, input_shapes):
        p, im = input_shapes
        b = None if p[0] is None or p[1] is None else p[0] * p[1]
        return (b, self.crop, self.crop, im[-1])

    def get_config(self):
        return {**super().get_config(), "crop": self.crop, "box_scale": self.box_scale}


class UnflattenROIs(keras.layers.Layer):
    """[B*P, ...] -> [B, P, ...] after the per-ROI mask subnet.

    Args:
        num_rois: P, the static number of proposals per image; None: the input is [x, proposals] and the ROIs per
            image are however many `proposals` [B, n, ...] has (a `MaskPositiveGate`d head).

    Example:
        mask_logits = UnflattenROIs(50)(x)    # [B*50, 28, 28, 2] -> [B, 50, 28, 28, 2]
    """

    def __init__(self, num_rois, **kwargs):
        kwargs.setdefault("dtype", "float32")   # float32 math and outputs under mixed precision (M13)
        super().__init__(**kwargs)
        self.num_rois = None if num_rois is None else int(num_rois)

    def call(self, x):
        if self.num_rois is None:
            x, proposals = x
            return tf.reshape(x, tf.concat([[tf.shape(proposals)[0], -1], tf.shape(x)[1:]], axis=0))
        return tf.reshape(x, tf.concat([[-1, self.num_rois], tf.shape(x)[1:]], axis=0))

    def compute_output_shape(self, input_shape):
        if self.num_rois is None:
            return (input_shape[1][0], None) + tuple(input_shape[0][1:])
        return (None, self.num_rois) + tuple(input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "num_rois": self.num_rois}


class MaskROIGate(keras.layers.Layer):
    """Inference only: the leading proposals whose masks are wanted, so the mask head runs on fewer ROIs.

    At max_prop = 50 ROIs the mask head costs more than the whole detector (~97 of ~168 GFLOPs a frame at 416,
    bench/BENCHMARKS.md). A caller that discards detections below a score floor (tracker.py, postprocess) or
    needs at most k masks asks only for those. The proposals are sorted by descending score with padding last, so
    the wanted ones are a prefix of each image's slots: n = min(max_rois, the largest per-image count of valid
    slots with score >= score_floor), at least 1. Returns proposals[:, :n] (n is dynamic, 1 <= n <= P); `PadMaskLogits`
    puts the mask logits back at P slots. Every mask computed is the same as without the gate.

    Args:
        max_rois: most ROIs per image sent to the mask head (k).
        score_floor: lowest proposal score that gets a mask, or None for every valid proposal.

    Example:
        gated = MaskROIGate(10, 0.05)([proposals, num_valid])    # [B, n, 6], n <= 10
    """

    def __init__(self, max_rois, score_floor=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.max_rois = int(max_rois)
        self.score_floor = None if score_floor is None else float(score_floor)

    def call(self, inputs):
        proposals, num_valid = inputs
        wanted = tf.range(tf.shape(proposals)[1])[None, :] < num_valid[:, None]           # [B, P]
        if self.score_floor is not None:
            wanted &= proposals[..., 4] >= self.score_floor
        n = tf.minimum(tf.reduce_max(tf.reduce_sum(tf.cast(wanted, tf.int32), axis=1)), self.max_rois)
        return proposals[:, :tf.maximum(n, 1)]      # one ROI at least: TF's convs reject an empty batch here

    def compute_output_shape(self, input_shapes):
        return (input_shapes[0][0], None, input_shapes[0][2])

    def get_config(self):
        return {**super().get_config(), "max_rois": self.max_rois, "score_floor": self.score_floor}


class MaskPositiveGate(keras.layers.Layer):
    """Training only: the proposals that get a mask target (`utils.positive_proposals`), moved to the front of each
    image's slots in their order: n = the largest per-image count (at least 1) slots an image instead of P, and
    `GatherPositiveROIs` sends only the positive slots among those through the mask subnet. Only positives enter
    the mask loss, and the mask head treats every ROI on its own (convs,
    GroupNorm, Dense per ROI), so the loss and its gradients are those of the full head; the demo's runs have ~5
    positives of 16 slots an image late in training and fewer early.

    Args:
        input_size: canvas side in pixels (GT boxes are in canvas pixels).
        iou_thresh: model.mask_iou_thresh.

    Returns:
        (proposals [B, n, 6], num [B] int32: positives of each image, the slots < num)

    Example:
        mask_props, mask_num = MaskPositiveGate(416, 0.5)([proposals, num_valid, gt_boxes, gt_labels])
    """

    def __init__(self, input_size, iou_thresh, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.input_size = int(input_size)
        self.iou_thresh = float(iou_thresh)

    def call(self, inputs):
        proposals, num_valid, boxes, labels = inputs
        positive, _ = utils.positive_proposals(proposals, num_valid, boxes, labels, self.input_size, self.iou_thresh)
        p = tf.shape(proposals)[1]
        slots = tf.range(p)[None, :]
        order = tf.argsort(tf.where(positive, slots, slots + p), axis=1, stable=True)   # positives first, in order
        num = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)
        n = tf.maximum(tf.reduce_max(num), 1)     # one ROI at least: TF's convs reject an empty batch here
        return tf.gather(proposals, order[:, :n], batch_dims=1), num

    def compute_output_shape(self, input_shapes):
        return [(input_shapes[0][0], None, input_shapes[0][2]), (input_shapes[0][0],)]

    def get_config(self):
        return {**super().get_config(), "input_size": self.input_size, "iou_thresh": self.iou_thresh}


def _positive_rows(mask_props, mask_num):
    """Row indices (int32) of the positive slots of a `MaskPositiveGate`d [B, n] in the flat [B*n] order (slot j <
    mask_num[b] of image b is row b*n + j), padded by repeating the first row to B * ceil(N / B) rows, at least B:
    the subnet's batch then takes the sizes the gate's B*n takes (at most P a run) instead of any of ~100, as oneDNN
    builds its primitives for each new batch size. The copies cost ~2 % of a demo step. Returns (rows [M], N)."""
    b, n = tf.shape(mask_props)[0], tf.shape(mask_props)[1]
    rows = tf.cast(tf.where(tf.reshape(tf.range(n)[None, :] < mask_num[:, None], [-1]))[:, 0], tf.int32)
    count = tf.size(rows)
    padded = tf.maximum(-(-count // b), 1) * b
    first = tf.cond(count > 0, lambda: rows[:1], lambda: tf.zeros([1], tf.int32))
    return tf.concat([rows, tf.repeat(first, padded - count)], axis=0), count


class GatherPositiveROIs(keras.layers.Layer):
    """Training only: the rows of a `MaskPositiveGate`d head's flat ROIs [B*n, ...] that are positives, [M, ...]
    (the N positives, then copies of the first to a multiple of B; `_positive_rows`).

    The gate pads every image to n = the batch's largest count of positives; gathering the positives sends about
    their total through the mask subnet instead of B*n: ~5 of the ~9 ROIs an image late in the demo's training.
    `ScatterPositiveROIs` puts the N positives' outputs back at [B*n, ...] (zeros elsewhere).

    Example:
        rois = GatherPositiveROIs()([roi, mask_props, mask_num])     # [B*n, 14, 14, E] -> [M, 14, 14, E]
    """

    def call(self, inputs):
        x, mask_props, mask_num = inputs
        return tf.gather(x, _positive_rows(mask_props, mask_num)[0])

    def compute_output_shape(self, input_shapes):
        return (None,) + tuple(input_shapes[0][1:])


class ScatterPositiveROIs(keras.layers.Layer):
    """The inverse of `GatherPositiveROIs`: [M, ...] -> [B*n, ...], the N positives' rows in their slots, zeros in
    the others (the padding copies are dropped).

    Example:
        mask_flat = ScatterPositiveROIs()([x, mask_props, mask_num])   # [M, 28, 28, 2] -> [B*n, 28, 28, 2]
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        x, mask_props, mask_num = inputs
        rows, count = _positive_rows(mask_props, mask_num)
        total = tf.shape(mask_props)[0] * tf.shape(mask_props)[1]
        return tf.scatter_nd(rows[:count, None], tf.cast(x[:count], self.compute_dtype),
                             tf.concat([[total], tf.shape(x)[1:]], axis=0))

    def compute_output_shape(self, input_shapes):
        return (None,) + tuple(input_shapes[0][1:])


class PadMaskLogits(keras.layers.Layer):
    """Inference only: mask logits of the n gated ROIs [B*n, M, M, 2] -> [B, P, M, M, 2] (the `UnflattenROIs`
    of a `MaskROIGate`d head). Slots without a mask get logits (0, -1e4): foreground probability exactly 0 after
    the softmax, as padded slots have.

    Args:
        num_rois: P, the static number of proposal slots per image.

    Example:
        mask_logits = PadMaskLogits(50)([x, proposals])    # [B*n, 28, 28, 2] -> [B, 50, 28, 28, 2]
    """

    def __init__(self, num_rois, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_rois = int(num_rois)

    def call(self, inputs):
        x, proposals = inputs
        b = tf.shape(proposals)[0]
        n = tf.shape(x)[0] // b
        x = tf.reshape(x, tf.concat([[b, n], tf.shape(x)[1:]], axis=0))                   # [B, n, M, M, 2]
        empty = tf.constant([0.0, -1e4], x.dtype)                                          # softmax -> (1, 0)
        pad = tf.broadcast_to(empty, tf.concat([[b, self.num_rois - n], tf.shape(x)[2:]], axis=0))
        return tf.concat([x, pad], axis=1)

    def compute_output_shape(self, input_shapes):
        return (input_shapes[1][0], self.num_rois) + tuple(input_shapes[0][1:])

    def get_config(self):
        return {**super().get_config(), "num_rois": self.num_rois}


def _mask_conv(x, filters, kernel, name, cfg, epsilon=1e-5):
    """Conv + real GroupNorm (info/DESIGN.md#m3-group-normalisation) + ReLU, named mask_<name> / mask_gn_<name>."""
    x = keras.layers.Conv2D(filters, kernel, padding="same", name=f"mask_{name}")(x)
    x = keras.layers.GroupNormalization(groups=cfg.model.gn_groups, epsilon=epsilon, name=f"mask_gn_{name}")(x)
    return keras.layers.ReLU(name=f"mask_relu_{name}")(x)


def apply_mask_head(rois, cfg, pixels=None):
    """Mask subnet on the pooled ROIs (4 x [B*P, 14, 14, E]) -> [B*P, 28, 28, 2] bg/fg logits.

    AFP: per-level 3x3 conv + GN + ReLU, element-wise max. Shared conv1, conv2. FCN branch: conv3, 2x2 deconv
    stride 2 + ReLU, 1x1 to 2. FC branch: conv4, conv5 (half width), flatten, Dense mask_size^2 + ReLU, reshape,
    tiled to 2 channels. Fusion: concat and a learned 1x1 conv to 2 (faithful, info/DESIGN.md#mask-head).

    With `pixels` ([B*P, 28, 28, 3], `PixelROIAlign`; model.mask_pixels = N > 0, not in the original): two 3x3
    conv + GN + ReLU of N filters on the pixels, concatenated with the deconvolution's output, and a third before
    the FCN branch's 1x1: the mask's edges can follow the picture's at the mask's resolution, where e2 has
    a quarter of it (the demo's smallest objects, 14 px on the 192 canvas, span under 4 cells of e2).
    """
    m = cfg.model
    f, ms = m.mask_layers, m.mask_size
    x = keras.layers.Maximum(name="mask_afp_max")(
        [_mask_conv(r, f, 3, f"afp_conv_{lvl}", cfg) for lvl, r in zip(LEVELS, rois)])   # [B*P, 14, 14, f]
    x = _mask_conv(x, f, 3, "conv1", cfg)
    x = _mask_conv(x, f, 3, "conv2", cfg)
    fcn = _mask_conv(x, f, 3, "conv3", cfg)
    fcn = keras.layers.Conv2DTranspose(f, 2, strides=2, activation="relu", name="mask_deconv")(fcn)  # [.., 28, 28, f]
    if pixels is not None:
        n = m.mask_pixels
        # GroupNorm's epsilon is 1e-3 here, not 1e-5: over a near-uniform crop (a flat wall, the letterbox's gray)
        # the variance is ~0, and 1e-5 would turn a grey level of noise into a different mask
        px = _mask_conv(pixels, n, 3, "pix_conv1", cfg, epsilon=1e-3)
        px = _mask_conv(px, n, 3, "pix_conv2", cfg, epsilon=1e-3)
        fcn = keras.layers.Concatenate(name="mask_pix_cat")([fcn, px])
        fcn = _mask_conv(fcn, n, 3, "pix_fuse", cfg, epsilon=1e-3)                            # [.., 28, 28, n]
    fcn = keras.layers.Conv2D(2, 1, name="mask_fcn_out")(fcn)                                     # [.., 28, 28, 2]
    fc = _mask_conv(x, f, 3, "conv4", cfg)
    fc = _mask_conv(fc, f // 2, 3, "conv5", cfg)
    fc = keras.layers.Flatten(name="mask_flatten")(fc)
    fc = keras.layers.Dense(ms * ms, activation="relu", name="mask_fc")(fc)
    fc = keras.layers.Reshape((ms, ms, 1), name="mask_fc_reshape")(fc)
    fc = keras.layers.Concatenate(name="mask_fc_tile")([fc, fc])                                  # [.., 28, 28, 2]
    x = keras.layers.Concatenate(name="mask_fuse_cat")([fcn, fc])
    return keras.layers.Conv2D(2, 1, name="mask_out")(x)                                          # [B*P, 28, 28, 2]


# ---- inference outputs (info/DESIGN.md#m12-outputs) ----------------------------------------------

class DetectionOutputs(keras.layers.Layer):
    """Turns proposals and mask logits into the inference outputs, in original-frame pixels.

    Boxes are un-letterboxed with `utils.Letterbox`'s math (scale = min(S/w, S/h), nw = int(scale*w),
    dw = (S - nw) // 2, x = (x_canvas - dw) * w / nw), computed in float64 so the integer sizes match the numpy
    letterbox exactly, then clipped to the frame. Padded slots (index >= num_valid) are all zero.

    Args:
        input_size: side of the square canvas in pixels.
        mask_box_scale: model.mask_box_scale (the mask ROI is the box scaled by it about its centre).

    Returns:
        dict boxes [B, P, 4] float32 px, scores [B, P], classes int32 [B, P], masks [B, P, M, M] fg probability,
        mask_boxes [B, P, 4] float32 px (the box each mask covers: the mask ROI, not clipped, so a mask is pasted
        without being squeezed where its box leaves the frame), image_hw [B, 2] (passed through so
        post-processing knows each frame's size).

    Example:
        out = DetectionOutputs(416)([proposals, num_valid, mask_logits, image_hw])
    """

    def __init__(self, input_size, mask_box_scale=1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")   # float32 math and outputs under mixed precision (M13)
        super().__init__(**kwargs)
        self.input_size = int(input_size)
        self.mask_box_scale = float(mask_box_scale)

    def call(self, inputs):
        proposals, num_valid, mask_logits, image_hw = inputs
        size = tf.constant(self.input_size, tf.float64)
        hw = tf.cast(image_hw, tf.float64)
        h, w = hw[:, 0], hw[:, 1]
        scale = tf.minimum(size / w, size / h)
        one, two = tf.constant(1.0, tf.float64), tf.constant(2.0, tf.float64)
        nw, nh = tf.maximum(one, tf.floor(scale * w)), tf.maximum(one, tf.floor(scale * h))
        dw, dh = tf.floor((size - nw) / two), tf.floor((size - nh) / two)
        b = tf.cast(proposals[..., :4], tf.float64) * size                          # canvas px
        x = (b[..., 0::2] - dw[:, None, None]) * (w / nw)[:, None, None]
        y = (b[..., 1::2] - dh[:, None, None]) * (h / nh)[:, None, None]
        mask_boxes = utils.scale_boxes(tf.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1),
                                       self.mask_box_scale)
        x = tf.clip_by_value(x, tf.zeros_like(x), w[:, None, None] + tf.zeros_like(x))
        y = tf.clip_by_value(y, tf.zeros_like(y), h[:, None, None] + tf.zeros_like(y))
        boxes = tf.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)
        valid = tf.range(tf.shape(proposals)[1])[None, :] < num_valid[:, None]     # [B, P]
        validf = tf.cast(valid, tf.float32)
        return {"boxes": tf.cast(boxes, tf.float32) * validf[..., None],
                "scores": proposals[..., 4] * validf,
                "classes": tf.cast(tf.round(proposals[..., 5]), tf.int32) * tf.cast(valid, tf.int32),
                "masks": tf.nn.softmax(mask_logits, axis=-1)[..., 1] * validf[..., None, None],
                "mask_boxes": tf.cast(mask_boxes, tf.float32) * validf[..., None],
                "image_hw": tf.identity(image_hw)}

    def compute_output_spec(self, inputs):
        proposals, _, mask_logits, _ = inputs
        b, p = proposals.shape[0], proposals.shape[1]
        return {"boxes": keras.KerasTensor((b, p, 4), "float32"), "scores": keras.KerasTensor((b, p), "float32"),
                "classes": keras.KerasTensor((b, p), "int32"),
                "masks": keras.KerasTensor((b, p) + tuple(mask_logits.shape[2:4]), "float32"),
                "mask_boxes": keras.KerasTensor((b, p, 4), "float32"),
                "image_hw": keras.KerasTensor((b, 2), "int32")}

    def get_config(self):
        return {**super().get_config(), "input_size": self.input_size, "mask_box_scale": self.mask_box_scale}
