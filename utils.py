"""Boxes, letterboxing, anchor grids and the one delta encode/decode pair shared by the decoder and the targets.

Conventions (decisions M4): boxes are (x1, y1, x2, y2) unless a name says cxcywh; grid tensors are laid out
[anchor, row = y, column = x]; an anchor's centre is its cell centre (i + 0.5, j + 0.5) in grid units.
Deltas are Faster R-CNN style without variances: dx = (gx - ax) / aw, dw = ln(gw / aw) (original-model.md §6.3).
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf


# ---- letterboxing ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Letterbox:
    """How a (height, width) frame maps into a size x size canvas (original-model.md §8.4.2).

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


# ---- Automatic Loss Balancing (decisions M7) ---------------------------------------------------------------

class AutoLossBalance(keras.layers.Layer):
    """Automatic Loss Balancing (Kendall et al.; report eq. 1): total = sum_i 0.5 * (exp(-s_i) * L_i + s_i).

    One learnable log-variance per loss term, initialised to 0 (weight 1). With `alb="per_level"` the terms are
    box, objectness and class for each of the 4 levels plus the mask loss (13); with `alb="global"` the original
    code's 4 scalars (box, objectness, class, mask), whose total 0.5 * (L_det + L_m) is the same formula.

    Args:
        num_terms: number of loss terms, one log-variance each.

    Example:
        alb = AutoLossBalance(13); total = alb(tf.stack(terms))   # terms: [13] scalar losses
    """

    def __init__(self, num_terms, **kwargs):
        super().__init__(**kwargs)
        self.num_terms = int(num_terms)

    def build(self, input_shape=None):
        self.alb_log_vars = self.add_weight(shape=(self.num_terms,), initializer="zeros", name="alb_log_vars",
                                            trainable=True)
        self.built = True

    def call(self, losses):
        s = tf.cast(self.alb_log_vars, losses.dtype)
        return tf.reduce_sum(0.5 * (tf.exp(-s) * losses + s))

    def get_config(self):
        return {**super().get_config(), "num_terms": self.num_terms}


def alb_num_terms(alb: str, num_levels: int = 4) -> int:
    return num_levels * 3 + 1 if alb == "per_level" else 4
