"""Boxes, letterboxing, anchor grids and the one delta encode/decode pair shared by the decoder and the targets.

Conventions (info/DESIGN.md#m4-anchor-grid): boxes are (x1, y1, x2, y2) unless a name says cxcywh; grid tensors are
[anchor, row = y, column = x]; an anchor's centre is its cell centre (i + 0.5, j + 0.5) in grid units.
Deltas are Faster R-CNN style without variances: dx = (gx - ax) / aw, dw = ln(gw / aw) (info/DESIGN.md#box-deltas).
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

# ---- letterboxing ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Letterbox:
    """How a (height, width) frame maps into a size x size canvas (info/DESIGN.md#letterbox).

    The frame is resized to (nh, nw) = int(scale * h), int(scale * w) with scale = min(size / w, size / h) and
    pasted at (dh, dw) = ((size - nh) // 2, (size - nw) // 2). Coordinates use the exact resize factors nw / w and
    nh / h so boxes, masks and pixels stay aligned.
    """
    height: int
    width: int
    size: int

    @property
    def scale(self) -> float:
        return min(self.size / self.width, self.size / self.height)

    @property
    def nw(self) -> int:
        return max(1, int(self.scale * self.width))

    @property
    def nh(self) -> int:
        return max(1, int(self.scale * self.height))

    @property
    def dw(self) -> int:
        return (self.size - self.nw) // 2

    @property
    def dh(self) -> int:
        return (self.size - self.nh) // 2

    @property
    def sx(self) -> float:
        return self.nw / self.width

    @property
    def sy(self) -> float:
        return self.nh / self.height

    def boxes_to_canvas(self, boxes_xyxy):
        """Original-frame pixel boxes [..., 4] to canvas pixels (numpy)."""
        b = np.asarray(boxes_xyxy, np.float64).copy()
        b[..., 0::2] = b[..., 0::2] * self.sx + self.dw
        b[..., 1::2] = b[..., 1::2] * self.sy + self.dh
        return b

    def boxes_to_frame(self, boxes_xyxy):
        """Canvas pixel boxes [..., 4] back to original-frame pixels, clipped to the frame (numpy)."""
        b = np.asarray(boxes_xyxy, np.float64).copy()
        b[..., 0::2] = np.clip((b[..., 0::2] - self.dw) / self.sx, 0, self.width)
        b[..., 1::2] = np.clip((b[..., 1::2] - self.dh) / self.sy, 0, self.height)
        return b


# ---- box conversions (tf, any leading shape) ---------------------------------------------------------------

def xyxy_to_cxcywh(b):
    x1, y1, x2, y2 = tf.unstack(b, 4, axis=-1)
    return tf.stack([(x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1], axis=-1)


def cxcywh_to_xyxy(b):
    cx, cy, w, h = tf.unstack(b, 4, axis=-1)
    return tf.stack([cx - w * 0.5, cy - h * 0.5, cx + w * 0.5, cy + h * 0.5], axis=-1)


def box_iou(a, b):
    """Pairwise IoU of xyxy boxes: a [..., N, 4], b [..., M, 4] -> [..., N, M]. Empty boxes give 0."""
    a = a[..., :, None, :]
    b = b[..., None, :, :]
    iw = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
    ih = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = iw * ih
    area_a = tf.maximum(a[..., 2] - a[..., 0], 0.0) * tf.maximum(a[..., 3] - a[..., 1], 0.0)
    area_b = tf.maximum(b[..., 2] - b[..., 0], 0.0) * tf.maximum(b[..., 3] - b[..., 1], 0.0)
    return tf.math.divide_no_nan(inter, area_a + area_b - inter)


# ---- anchors and deltas ------------------------------------------------------------------------------------

def anchor_grid(grid: int, anchors_px, stride: int) -> np.ndarray:
    """Anchors of one level as cxcywh in grid units, [nA, S, S, 4] laid out [anchor, y, x] (centres at +0.5)."""
    anchors = np.asarray(anchors_px, np.float32) / float(stride)           # [nA, 2] grid units
    ys, xs = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32), indexing="ij")
    n = anchors.shape[0]
    cx = np.broadcast_to(xs + 0.5, (n, grid, grid))
    cy = np.broadcast_to(ys + 0.5, (n, grid, grid))
    w = np.broadcast_to(anchors[:, 0, None, None], (n, grid, grid))
    h = np.broadcast_to(anchors[:, 1, None, None], (n, grid, grid))
    return np.stack([cx, cy, w, h], axis=-1).astype(np.float32)


def encode_deltas(gt_cxcywh, anchors_cxcywh):
    """Deltas (dx, dy, dw, dh) of GT boxes relative to anchors, both cxcywh in the same units."""
    gx, gy, gw, gh = tf.unstack(tf.convert_to_tensor(gt_cxcywh, tf.float32), 4, axis=-1)
    ax, ay, aw, ah = tf.unstack(tf.convert_to_tensor(anchors_cxcywh, tf.float32), 4, axis=-1)
    return tf.stack([(gx - ax) / aw, (gy - ay) / ah,
                     tf.math.log(tf.maximum(gw, 1e-9) / aw), tf.math.log(tf.maximum(gh, 1e-9) / ah)], axis=-1)


# exp(dw) is capped so an untrained network cannot produce inf boxes; ln(1000/16) ~ 4.1 covers every real box.
MAX_LOG_SCALE = float(np.log(1000.0 / 16.0))


def decode_deltas(deltas, anchors_cxcywh, clip_log_scale: bool = True):
    """Inverse of `encode_deltas`: cxcywh boxes from deltas and anchors (same units as the anchors)."""
    dx, dy, dw, dh = tf.unstack(deltas, 4, axis=-1)
    ax, ay, aw, ah = tf.unstack(tf.cast(anchors_cxcywh, deltas.dtype), 4, axis=-1)
    if clip_log_scale:
        dw = tf.minimum(dw, MAX_LOG_SCALE)
        dh = tf.minimum(dh, MAX_LOG_SCALE)
    return tf.stack([ax + dx * aw, ay + dy * ah, aw * tf.exp(dw), ah * tf.exp(dh)], axis=-1)


# ---- Automatic Loss Balancing (info/DESIGN.md#m7-automatic-loss-balancing) ---------------------------------

# Range of the ALB log-variances. A term's own optimum is s = ln L (the minimum of 0.5 * (exp(-s) L + s)), so
# [-10, 10] admits every loss between 4.5e-5 and 2.2e4 and does not bind on a term that trains. A term that is
# exactly 0 has no optimum: its s falls at a constant rate, and below -88.7 exp(-s) overflows float32 and
# inf * 0 is NaN. The original's weight decay on these variables held them (near -50 at its step size); here
# they are not decayed, and the range holds them (info/DIFFERENCES.md).
ALB_LOG_VAR_RANGE = (-10.0, 10.0)


class AutoLossBalance(keras.layers.Layer):
    """Automatic Loss Balancing (Kendall et al.; report eq. 1): total = sum_i 0.5 * (exp(-s_i) * L_i + s_i).

    One learnable log-variance per loss term, initialised to 0 (weight 1). With `alb="per_level"` the terms are
    box, objectness and class for each of the 4 levels plus the mask loss (13); with `alb="global"` the original
    code's 4 scalars (box, objectness, class, mask), whose total 0.5 * (L_det + L_m) is the same formula. After
    every optimizer step the log-variances are clipped into `log_var_range` (a Keras weight constraint), so a
    term that stays 0 rests on the lower bound instead of running to -inf.

    Args:
        num_terms: number of loss terms, one log-variance each.
        log_var_range: (low, high) bounds of the log-variances.

    Example:
        alb = AutoLossBalance(13); total = alb(tf.stack(terms))   # terms: [13] scalar losses
    """

    def __init__(self, num_terms, log_var_range=ALB_LOG_VAR_RANGE, **kwargs):
        kwargs.setdefault("dtype", "float32")   # the loss total stays float32 under mixed precision (M13)
        super().__init__(**kwargs)
        self.num_terms = int(num_terms)
        self.log_var_range = (float(log_var_range[0]), float(log_var_range[1]))
        if not self.log_var_range[0] < self.log_var_range[1]:
            raise ValueError(f"AutoLossBalance: log_var_range must be (low, high) with low < high, "
                             f"got {log_var_range}")

    def build(self, input_shape=None):
        self.alb_log_vars = self.add_weight(shape=(self.num_terms,), initializer="zeros", name="alb_log_vars",
                                            trainable=True, constraint=self._clip)
        self.built = True

    def _clip(self, log_vars):
        return tf.clip_by_value(log_vars, *self.log_var_range)

    def call(self, losses):
        s = tf.cast(self.alb_log_vars, losses.dtype)
        return tf.reduce_sum(0.5 * (tf.exp(-s) * losses + s))

    def get_config(self):
        return {**super().get_config(), "num_terms": self.num_terms, "log_var_range": list(self.log_var_range)}


def alb_num_terms(alb: str, num_levels: int = 4) -> int:
    return num_levels * 3 + 1 if alb == "per_level" else 4


# ---- detection targets (info/DESIGN.md#anchor-assignment) -------------------------------------------------
# A level target is [B, nA, S, S, 7] like the original label: 0..3 tbox (deltas of the argmax GT, 0 off fg),
# 4 tconf (1 fg, 0 bg, -1 ignored), 5 tid (class index 0..K-1 at the centroid anchor, -1 elsewhere), 6 iou.
TARGET_CHANNELS = 7

# Anchor positions whose IoU with a GT equals that GT's best IoU are all "centroid" candidates .
# Identical anchors at different cells give IoUs that differ by float rounding only, so equality is taken
# within this tolerance rather than bit-exactly.
CENTROID_IOU_TOL = 1e-6


def level_targets(boxes, labels, anchors_cxcywh, stride, tol, fg_thresh, bg_thresh, id_thresh,
                  class_targets: str = "centroid"):
    """Targets of one pyramid level for a batch, vectorised over instances (info/DESIGN.md#anchor-assignment).

    Args:
        boxes: [B, N, 4] GT x1, y1, x2, y2 in canvas pixels (0-padded).
        labels: [B, N] int class 1..K, 0 = padding (padded rows never match anything).
        anchors_cxcywh: [nA, S, S, 4] from `anchor_grid` (grid units, [anchor, y, x], centres at +0.5).
        stride: pixels per grid cell of this level; tol: TOLERANCE of this level.
        class_targets: "centroid" (info/DESIGN.md#m6-class-head, faithful): the class label at each GT's centroid anchor
            only; "fg": at every foreground anchor (tiny-preset departure: a short run then also trains the
            class logits of the anchors that end up scoring the detections).
    Returns:
        [B, nA, S, S, 7] float32 (see TARGET_CHANNELS).
    """
    anchors = tf.convert_to_tensor(anchors_cxcywh, tf.float32)
    n_a, s = anchors.shape[0], anchors.shape[1]
    labels = tf.cast(labels, tf.int32)
    valid = labels > 0                                                         # [B, N]
    gt = tf.clip_by_value(tf.cast(boxes, tf.float32) / float(stride), 0.0, float(s))   # grid units
    flat_anchors = tf.reshape(cxcywh_to_xyxy(anchors), [-1, 4])                # [M, 4], M = nA*S*S
    iou = box_iou(flat_anchors[None], gt)                                      # [B, M, N]
    iou = tf.where(valid[:, None, :], iou, -1.0)
    iou_map = tf.maximum(tf.reduce_max(iou, axis=-1), 0.0)                     # [B, M]
    gt_index = tf.argmax(iou, axis=-1, output_type=tf.int32)                   # [B, M]

    # Centroid point: per GT, the positions at its global best IoU; per anchor plane holding any,
    # one point at the floor of the mean (row, col) of those positions; union over GTs.
    best = tf.reduce_max(iou, axis=1, keepdims=True)                           # [B, 1, N]
    marked = (iou >= best - CENTROID_IOU_TOL) & (best > 0.0) & valid[:, None, :]
    marked = tf.cast(tf.reshape(marked, [-1, n_a, s, s, tf.shape(iou)[-1]]), tf.float32)  # [B, nA, S, S, N]
    count = tf.reduce_sum(marked, axis=[2, 3])                                 # [B, nA, N]
    idx = tf.range(s, dtype=tf.float32)
    mean_row = tf.math.floor(tf.math.divide_no_nan(tf.einsum("bayxn,y->ban", marked, idx), count))
    mean_col = tf.math.floor(tf.math.divide_no_nan(tf.einsum("bayxn,x->ban", marked, idx), count))
    row_hot = tf.one_hot(tf.cast(mean_row, tf.int32), s, axis=2)               # [B, nA, S, N]
    col_hot = tf.one_hot(tf.cast(mean_col, tf.int32), s, axis=2)
    points = row_hot[:, :, :, None, :] * col_hot[:, :, None, :, :] * tf.cast(count > 0, tf.float32)[:, :, None, None, :]
    point_mask = tf.reshape(tf.reduce_max(points, axis=-1) > 0.0, [-1, n_a * s * s])   # [B, M]

    fg = iou_map > fg_thresh * tol
    bg = iou_map < bg_thresh * tol
    tconf = tf.where(fg, 1.0, tf.where(bg, 0.0, -1.0))
    matched_label = tf.gather(labels, gt_index, batch_dims=1)                  # [B, M]
    if class_targets == "fg":
        is_id = fg & (matched_label > 0)
    else:
        is_id = (iou_map > id_thresh * tol) & point_mask & (matched_label > 0)
    tid = tf.where(is_id, tf.cast(matched_label - 1, tf.float32), -1.0)

    gt_cxcywh = xyxy_to_cxcywh(tf.gather(gt, gt_index, batch_dims=1))         # [B, M, 4]
    # Off fg the GT is replaced by the anchor itself so the log never sees a degenerate box.
    safe_gt = tf.where(fg[..., None], gt_cxcywh, tf.reshape(anchors, [1, -1, 4]))
    tbox = tf.where(fg[..., None], encode_deltas(safe_gt, tf.reshape(anchors, [1, -1, 4])), 0.0)
    target = tf.concat([tbox, tconf[..., None], tid[..., None], iou_map[..., None]], axis=-1)
    return tf.reshape(target, [-1, n_a, s, s, TARGET_CHANNELS])


def build_targets(cfg, boxes, labels):
    """Targets of all levels: a list of 4 tensors [B, nA, S_k, S_k, 7] for a loader batch."""
    m = cfg.model
    targets = []
    for k, (stride, anchors_px) in enumerate(zip(m.strides, cfg.level_anchors())):
        grid = anchor_grid(m.input_size // stride, anchors_px, stride)
        targets.append(level_targets(boxes, labels, grid, stride, m.tolerance[k], m.fg_thresh, m.bg_thresh,
                                     m.id_thresh, m.class_targets))
    return targets


# ---- mask targets (info/DESIGN.md#mask-targets) -------------------------------------------------------------

def scale_boxes(boxes, scale: float):
    """Boxes [..., 4] (x1, y1, x2, y2, or y1, x1, y2, x2: any order of two corners) scaled by `scale` about their
    centres; numpy or TF, any units. The mask ROI of a proposal (model.mask_box_scale)."""
    if scale == 1.0:
        return boxes
    lo, hi = boxes[..., :2], boxes[..., 2:4]
    centre, half = (lo + hi) * 0.5, (hi - lo) * (0.5 * scale)
    stack = np.concatenate if isinstance(boxes, np.ndarray) else tf.concat
    return stack([centre - half, centre + half], axis=-1)


def aligned_crop_boxes(boxes_norm, src_size: int, crop_size: int):
    """Turn normalised (y1, x1, y2, x2) canvas boxes into `tf.image.crop_and_resize` boxes whose samples land at
    the centres of the crop_size x crop_size output cells (crop_and_resize maps 0 and 1 to the centres of the
    first and last source pixels, half a pixel off the canvas edges)."""
    y1, x1, y2, x2 = tf.unstack(boxes_norm, 4, axis=-1)
    r = float(src_size)

    def ends(a, b):
        step = (b - a) / crop_size
        first = (a + 0.5 * step) * r - 0.5                                     # source pixel index of sample 0
        last = (b - 0.5 * step) * r - 0.5
        return first / (r - 1.0), last / (r - 1.0)

    ny1, ny2 = ends(y1, y2)
    nx1, nx2 = ends(x1, x2)
    return tf.stack([ny1, nx1, ny2, nx2], axis=-1)


def positive_proposals(proposals, num_valid, boxes, labels, input_size: int, iou_thresh: float):
    """The proposals that get a mask target: a valid slot (< num_valid) whose best box IoU with a real GT
    (label > 0) is >= iou_thresh. proposals [B, P, >=4] normalised xyxy; boxes [B, N, 4] canvas px.
    Returns (positive [B, P] bool, target_index [B, P] int32: the best GT's slot)."""
    proposals = tf.stop_gradient(tf.cast(proposals[..., :4], tf.float32))
    gt = tf.cast(boxes, tf.float32) / float(input_size)
    iou = box_iou(proposals, gt)                                               # [B, P, N]
    iou = tf.where((tf.cast(labels, tf.int32) > 0)[:, None, :], iou, -1.0)
    target_index = tf.argmax(iou, axis=-1, output_type=tf.int32)
    slot_valid = tf.range(tf.shape(proposals)[1])[None, :] < tf.cast(num_valid, tf.int32)[:, None]
    return (tf.reduce_max(iou, axis=-1) >= iou_thresh) & slot_valid, target_index


def mask_targets(proposals, num_valid, boxes, labels, masks, input_size: int, iou_thresh: float,
                 mask_size: int = 28, box_scale: float = 1.0):
    """Mask targets for the (stop-gradient) proposals.

    A valid proposal (slot < num_valid) is positive iff its best box IoU with a real GT is >= iou_thresh; its
    target is that GT's mask (R x R over the canvas) cropped by the proposal box, scaled by `box_scale` about its
    centre (the mask ROI, model.mask_box_scale; zero outside the canvas), to mask_size^2, threshold 0.5.

    Args:
        proposals: [B, P, >=4] x1, y1, x2, y2 normalised to [0, 1] of the canvas.
        num_valid: [B] int; boxes [B, N, 4] canvas px; labels [B, N]; masks [B, N, R, R] (0/1).
    Returns:
        (targets [B, P, mask_size, mask_size] float32 0/1, positive [B, P] float32 0/1)
    """
    proposals = tf.stop_gradient(tf.cast(proposals[..., :4], tf.float32))
    b, p = tf.shape(proposals)[0], tf.shape(proposals)[1]
    n = tf.shape(boxes)[1]
    positive, target_index = positive_proposals(proposals, num_valid, boxes, labels, input_size, iou_thresh)

    res = masks.shape[-1]
    images = tf.reshape(tf.cast(masks, tf.float32), [-1, res, res, 1])       # [B*N, R, R, 1]
    box_indices = tf.reshape(tf.range(b)[:, None] * n + target_index, [-1])
    crop = aligned_crop_boxes(scale_boxes(tf.gather(proposals, [1, 0, 3, 2], axis=-1), box_scale), res, mask_size)
    crops = tf.image.crop_and_resize(images, tf.reshape(crop, [-1, 4]), box_indices, [mask_size, mask_size])
    crops = tf.reshape(tf.cast(crops[..., 0] >= 0.5, tf.float32), [b, p, mask_size, mask_size])
    positive = tf.cast(positive, tf.float32)
    return crops * positive[:, :, None, None], positive


# ---- losses (info/DESIGN.md#losses) ------------------------------------------------------------------------

FOCAL_ALPHA = 0.25     # loss_norm="focal": weight of the foreground term (RetinaNet's alpha; gamma is 2)


def smooth_l1(d):
    a = tf.abs(d)
    return tf.where(a < 1.0, 0.5 * d * d, a - 0.5)


def _identity(x):
    return x


def level_losses(pred, target, loss_norm: str = "positives", global_sum=_identity, global_batch=None):
    """Box, objectness and class losses of one level: a [3] tensor.

    Each loss is a sum over this replica's examples divided by a count taken over the GLOBAL batch
    (`global_sum` all-reduces a local count; identity on one device), so summing the per-replica values gives the
    loss of the whole batch whatever the replica count (M9).

    loss_norm="positives" (M8): box over fg anchors (x 4 coordinates), objectness over non-ignored anchors, class
    over centroid anchors. "balanced" (tiny-preset departure): as "positives", but objectness is the mean over
    foreground anchors plus the mean over background anchors. "focal" (tiny-preset option): as "positives", but
    objectness is the focal loss summed over the non-ignored anchors over the positive count. "all" (original):
    box and objectness over every anchor entry of the global batch (`global_batch` examples), class still over
    centroid anchors, as the original.
    """
    pred = tf.cast(pred, tf.float32)
    tbox, tconf, tid = target[..., 0:4], target[..., 4], target[..., 5]
    pos = tf.cast(tconf > 0, tf.float32)
    valid = tf.cast(tconf >= 0, tf.float32)
    box_sum = tf.reduce_sum(smooth_l1(tbox - pred[..., 0:4]) * pos[..., None])
    obj_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(tf.maximum(tconf, 0.0), tf.int32), logits=pred[..., 4:6])
    has_id = tf.cast(tid >= 0, tf.float32)
    cls_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(tf.maximum(tid, 0.0), tf.int32), logits=pred[..., 6:])
    cls_sum = tf.reduce_sum(cls_ce * has_id)
    n_cls = global_sum(tf.reduce_sum(has_id))
    if loss_norm == "all":
        per_example = float(np.prod(target.shape[1:4]))
        n_entries = tf.cast(global_batch, tf.float32) * per_example
        box = box_sum / (4.0 * n_entries)
        # Ignored anchors count as the original (target 0, no gradient): a constant added to the value.
        obj = tf.reduce_sum(tf.where(valid > 0, obj_ce, tf.stop_gradient(obj_ce))) / n_entries
    elif loss_norm == "balanced":
        # Positives and negatives each averaged on their own: with ~0.1% positive anchors, the M8 mean over
        # valid anchors leaves the foreground logits almost no gradient in a short run.
        neg = valid - pos
        box = tf.math.divide_no_nan(box_sum, 4.0 * global_sum(tf.reduce_sum(pos)))
        obj = (tf.math.divide_no_nan(tf.reduce_sum(obj_ce * pos), global_sum(tf.reduce_sum(pos)))
               + tf.math.divide_no_nan(tf.reduce_sum(obj_ce * neg), global_sum(tf.reduce_sum(neg))))
    elif loss_norm == "focal":
        # Focal loss (Lin et al. 2017, gamma 2, alpha 0.25 on foreground) summed over the non-ignored anchors and
        # divided by the positives: every background anchor is penalised, the easy ones hardly at all.
        n_pos = global_sum(tf.reduce_sum(pos))
        p_true = tf.exp(-obj_ce)
        alpha = tf.where(pos > 0, FOCAL_ALPHA, 1.0 - FOCAL_ALPHA)
        focal = alpha * tf.square(1.0 - p_true) * obj_ce
        box = tf.math.divide_no_nan(box_sum, 4.0 * n_pos)
        obj = tf.reduce_sum(focal * valid) / tf.maximum(n_pos, 1.0)
    else:
        box = tf.math.divide_no_nan(box_sum, 4.0 * global_sum(tf.reduce_sum(pos)))
        obj = tf.math.divide_no_nan(tf.reduce_sum(obj_ce * valid), global_sum(tf.reduce_sum(valid)))
    cls = tf.math.divide_no_nan(cls_sum, n_cls)
    return tf.stack([box, obj, cls])


def mask_loss(mask_logits, targets, positive, global_sum=_identity):
    """2-way softmax cross entropy over each pixel of the positive proposals, class-agnostic (info/DESIGN.md#losses)."""
    logits = tf.cast(mask_logits, tf.float32)                                  # [B, P, m, m, 2]
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(targets, tf.int32), logits=logits)
    pixels = float(np.prod(targets.shape[2:4]))
    total = tf.reduce_sum(ce * positive[:, :, None, None])
    return tf.math.divide_no_nan(total, global_sum(tf.reduce_sum(positive)) * pixels)


LEVEL_LOSSES = ("box", "obj", "cls")   # the detection losses of each pyramid level, in the order loss_terms stacks them
FIRST_LEVEL = 2                          # the pyramid levels are 2..5 (strides 4..32)


def loss_terms(level_loss_list, mask_value, alb: str = "per_level"):
    """The ALB input vector: per_level = [box_2, obj_2, cls_2, ..., box_5, obj_5, cls_5, mask] (13);
    global = [mean box, mean obj, mean cls, mask] (4, the original code's terms). `loss_term_names` names them."""
    stacked = tf.stack(level_loss_list)                                        # [L, 3]
    if alb == "per_level":
        return tf.concat([tf.reshape(stacked, [-1]), [mask_value]], axis=0)
    return tf.concat([tf.reduce_mean(stacked, axis=0), [mask_value]], axis=0)


def loss_term_names(alb: str = "per_level", num_levels: int = 4):
    """The name of each entry of `loss_terms`, in its order (`box_2` ... `cls_5`, `mask`; or `box`, `obj`, `cls`,
    `mask`): the names of the ALB log-variances in TensorBoard."""
    if alb == "per_level":
        return [f"{name}_{k + FIRST_LEVEL}" for k in range(num_levels) for name in LEVEL_LOSSES] + ["mask"]
    return list(LEVEL_LOSSES) + ["mask"]


def alb_total(alb_layer, terms, num_replicas: int = 1):
    """sum 0.5 * (exp(-s) L + s) for one replica's share: the L are already global-batch shares, the s term is
    split evenly so that the replicas' totals add up to the formula exactly once."""
    total = alb_layer(terms)
    if num_replicas > 1:
        total -= 0.5 * (1.0 - 1.0 / num_replicas) * tf.reduce_sum(tf.cast(alb_layer.alb_log_vars, total.dtype))
    return total


def compute_losses(cfg, outputs, batch, alb_layer, global_sum=_identity, global_batch=None, num_replicas=1):
    """All losses of a forward pass. Returns a dict: total, box/obj/cls (level means), box_2..cls_5, mask, terms."""
    targets = build_targets(cfg, batch["boxes"], batch["labels"])
    per_level = [level_losses(p, t, cfg.train.loss_norm, global_sum,
                              global_batch if global_batch is not None else tf.shape(batch["boxes"])[0])
                 for p, t in zip(outputs["level_preds"], targets)]
    # A model built with mask_positives=True computed masks for its positive proposals only (`mask_proposals`,
    # the first `mask_num` slots of each image); the targets and the loss over them are the same.
    props = outputs.get("mask_proposals", outputs["proposals"])
    mt, pos = mask_targets(props, outputs.get("mask_num", outputs["num_valid"]), batch["boxes"], batch["labels"],
                           batch["masks"], cfg.model.input_size, cfg.model.mask_iou_thresh, cfg.model.mask_size,
                           cfg.model.mask_box_scale)
    m = mask_loss(outputs["mask_logits"], mt, pos, global_sum)
    terms = loss_terms(per_level, m, cfg.train.alb)
    out = {"total": alb_total(alb_layer, terms, num_replicas), "mask": m, "terms": terms}
    stacked = tf.stack(per_level)
    for j, name in enumerate(LEVEL_LOSSES):
        out[name] = tf.reduce_mean(stacked[:, j])
        for k in range(len(per_level)):
            out[f"{name}_{k + FIRST_LEVEL}"] = stacked[k, j]
    return out
