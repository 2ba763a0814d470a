"""Deployment: the YOLOV4+1 inference model as a SavedModel or a TFLite model with one serving signature that takes
a raw uint8 frame and returns the outputs of info/DESIGN.md#m12-outputs (letterboxed in the graph), plus the
runner `tracker.py --exported` uses to write frame predictions (info/DESIGN.md#frame-predictions). TFLite: builtin ops:
the tf.lite.Interpreter of the tensorflow 2.21 pip package has no Flex delegate. OpenVINO IR is converted from the
portable graph (its un-letterboxing is integer and float32 math; see `serving_fn`), optionally INT8 after NNCF
post-training quantisation calibrated on frames of a dataset split.

    python export.py --run-dir runs/demo --format saved_model --out exported/demo_sm
    python export.py --run-dir runs/demo --format tflite [--fp16] --out exported/demo_tflite
    python export.py --run-dir runs/demo --format openvino [--fp16] [--mask-rois 10] --out exported/demo_ov
    python export.py --run-dir runs/demo --format openvino --int8 data/shapes/train --out exported/demo_ov_int8
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np

from fileio import check_writable_file

SIGNATURE = "serving_default"
FORMATS = ("saved_model", "tflite", "openvino")
META_FILE = "model.json"
CONFIG_FILE = "config.yaml"
TFLITE_FILE = "model.tflite"
SAVED_MODEL_DIR = "saved_model"
OPENVINO_FILE = "model.xml"                   # weights beside it in model.bin
OUTPUTS = {
    "boxes": "float32 [P, 4]: x1, y1, x2, y2 in original-frame pixels, clipped to the frame",
    "scores": "float32 [P]: objectness x max class probability, descending over the valid slots",
    "category_ids": "int32 [P]: dataset category ids (cfg.category_ids()); 0 in padded slots",
    "class_probs": "float32 [P, K]: class probabilities, K = number of categories (order of category_ids)",
    "masks": "float32 [P, M, M]: foreground probability over mask_boxes, M = model.mask_size",
    "mask_boxes": "float32 [P, 4]: the box each mask covers (the box scaled by model.mask_box_scale about its "
                  "centre), original-frame pixels, not clipped",
    "num_valid": "int32 []: slots 0..num_valid-1 hold detections; the rest are zero padding",
}
INPUT = ("uint8 [H, W, 3] RGB, one frame of any size (no batch axis); letterboxed inside the graph to "
         "[S, S] with 128-gray padding like model.letterbox_image (same sizes and offsets; pixels at most one "
         "grey level apart)")


class ExportError(RuntimeError):
    """The model cannot be exported (bad arguments, missing checkpoint, unconvertible op) or loaded."""


# ---- letterboxing in the graph (matches model.letterbox_image) ---------------------------------------------

def _resize_taps(n_src, n_dst):
    """Per output index, K source indices and weights along one axis: [n_dst, K] int32, [n_dst, K] float32.

    Shrinking is OpenCV's INTER_AREA (each output pixel is the mean of the source interval [i*s, (i+1)*s) it
    covers, s = n_src / n_dst); enlarging is INTER_LINEAR (half-pixel centres, clamped at the borders). Written
    with gathers rather than tf.image.resize: ResizeArea is not a TFLite builtin, and the gather form keeps
    the TFLite model free of Flex ops for the letterbox.
    """
    import tensorflow as tf
    s = tf.cast(n_src, tf.float32) / tf.cast(n_dst, tf.float32)
    k_taps = tf.maximum(2, tf.cast(tf.math.ceil(s), tf.int32) + 1)
    i = tf.cast(tf.range(n_dst), tf.float32)[:, None]                               # [n, 1]
    k = tf.cast(tf.range(k_taps), tf.float32)[None, :]                               # [1, K]
    last = tf.cast(n_src - 1, tf.float32)
    # area: overlap of [i*s, (i+1)*s) with each source pixel [j, j+1), divided by s
    start, end = i * s, tf.minimum((i + 1.0) * s, last + 1.0)
    j = tf.floor(start) + k
    area_w = tf.maximum(0.0, tf.minimum(end, j + 1.0) - tf.maximum(start, j)) / (end - start)
    area_j = tf.minimum(j, last)
    # linear: two taps around (i + 0.5) * s - 0.5, clamped like cv2 (an edge pixel takes full weight)
    src = tf.maximum((i + 0.5) * s - 0.5, 0.0)
    j0 = tf.minimum(tf.floor(src), last)
    frac = tf.where(j0 >= last, 0.0, src - j0)
    lin_w = tf.where(k == 0.0, 1.0 - frac, tf.where(k == 1.0, frac, 0.0))
    lin_j = tf.minimum(j0 + k, last)
    shrink = s > 1.0
    idx = tf.cast(tf.where(shrink, area_j, lin_j), tf.int32)
    return idx, tf.where(shrink, area_w, lin_w)


def _resize_axis(x, n_dst, axis):
    """Resize float32 `x` [H, W, C] along `axis` (0 or 1) to `n_dst` with `_resize_taps`."""
    import tensorflow as tf
    idx, w = _resize_taps(tf.shape(x)[axis], n_dst)
    g = tf.gather(x, idx, axis=axis)                           # axis 0: [n, K, W, C]; axis 1: [H, n, K, C]
    # expand_dims, not w[:, :, None, None]: a slice adding two axes is a StridedSlice TFLite has no kernel for
    w = tf.expand_dims(tf.expand_dims(w, -1), -1) if axis == 0 else tf.expand_dims(tf.expand_dims(w, 0), -1)
    return tf.reduce_sum(g * w, axis=axis + 1)


MAX_SIDE = 8192    # frames up to this many pixels a side get numpy's letterbox sizes exactly (see below)


def _rounding_table(size, max_side=MAX_SIDE):
    """Per long side a = 1..max_side: t_a = (S/a - fl64(S/a)) * 2**53 where fl64(S/a) rounds below S/a, else 0.

    utils.Letterbox computes n = int(fl64(S/a) * b) in float64; that is floor(S*b/a) except when S*b/a is an
    integer k and the float64 product lands below k. With b*|error of fl64(S/a)| = b*t_a*2**-53, the product
    rounds back up to k iff that is within half the float64 gap below k, which this table lets the graph decide
    with float32 and int32 ops only (TFLite has no float64 arithmetic builtins).
    """
    from fractions import Fraction
    t = np.zeros(max_side, np.float64)
    for a in range(1, max_side + 1):
        d = Fraction(size, a) - Fraction(size / a)
        if d > 0:
            t[a - 1] = float(d * 2 ** 53)
    return t.astype(np.float32)


def letterbox_sizes_tf(h, w, size, table=None):
    """int32 tensors h, w (any shape) -> (nh, nw) of utils.Letterbox(h, w, size), bit-exact, with int32 and float32
    ops only (see `_rounding_table`)."""
    import tensorflow as tf
    table = tf.constant(_rounding_table(size) if table is None else table)
    a = tf.maximum(h, w)                                                   # scale = S / (long side)
    t = tf.gather(table, tf.clip_by_value(a - 1, 0, MAX_SIDE - 1))
    pows = tf.constant([2 ** j for j in range(31)], tf.int32)

    def side(b):
        k = (size * b) // a
        exact = size * b - k * a == 0
        p2 = tf.reduce_max(tf.where(pows <= k[..., None], pows, 0), axis=-1)  # largest power of two <= k
        half_gap = tf.cast(tf.where(p2 == k, p2 // 2, p2), tf.float32)     # in units of 2**-53
        below = exact & (tf.cast(b, tf.float32) * t > half_gap)
        return tf.maximum(1, k - tf.cast(below, tf.int32))
    return side(h), side(w)


def letterbox_tf(image, size):
    """uint8 [H, W, 3] -> float32 [size, size, 3] in [0, 1]: `model.letterbox_image` as TF ops.

    Sizes and offsets equal utils.Letterbox's exactly (`letterbox_sizes_tf`). The resized frame is rounded to
    uint8 as cv2 does (floor(x + 0.5), cv2's rounding on its integer-factor INTER_AREA path); pixels can differ
    from cv2 by one grey level where cv2 resizes in fixed point (INTER_LINEAR) or rounds half to even. Equal when
    the frame already has the canvas size or shrinks by 2 on both axes.
    """
    import tensorflow as tf
    hw = tf.shape(image)[:2]
    nh, nw = letterbox_sizes_tf(hw[0], hw[1], size)
    dh, dw = (size - nh) // 2, (size - nw) // 2
    x = tf.cast(image, tf.float32)
    x = _resize_axis(_resize_axis(x, nw, 1), nh, 0)            # horizontal first, as cv2
    x = tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0)
    x = tf.pad(x - 128.0, [[dh, size - nh - dh], [dw, size - nw - dw], [0, 0]]) + 128.0
    return tf.reshape(x, [size, size, 3]) / 255.0


# ---- the serving function ------------------------------------------------------------------------------

def crop_and_resize_tf(fmap, boxes, crop):
    """`tf.image.crop_and_resize(fmap[None], boxes, zeros, (crop, crop), "bilinear")` with gathers, for one map.

    fmap [H, W, E], boxes [N, 4] normalised y1, x1, y2, x2 -> [N, crop, crop, E]. Same sampling as TF's kernel
    (sample i at y1*(H-1) + i*(y2-y1)*(H-1)/(crop-1), zero outside the map); CropAndResize is not a TFLite builtin.
    """
    import tensorflow as tf
    h, w = tf.shape(fmap)[0], tf.shape(fmap)[1]
    hf, wf = tf.cast(h - 1, tf.float32), tf.cast(w - 1, tf.float32)
    i = tf.cast(tf.range(crop), tf.float32)[None, :]                                # [1, c]
    # the kernel's own float32 order of operations, so a sample on the map's last row stays inside
    ys = boxes[:, 0:1] * hf + i * ((boxes[:, 2:3] - boxes[:, 0:1]) * hf / float(crop - 1))   # [N, c]
    xs = boxes[:, 1:2] * wf + i * ((boxes[:, 3:4] - boxes[:, 1:2]) * wf / float(crop - 1))
    # TF zeroes samples outside the map. A box clipped to exactly 1.0 puts its last sample on the last row/column
    # give or take one rounding, which fused multiply-adds (graph mode, XNNPACK) decide differently: 1e-3 px of
    # slack keeps such samples inside, the only place where this differs from the kernel. The first row/column
    # needs none (a box at exactly 0 samples exactly 0), and slack there would keep samples of a box that starts
    # above or left of the map (a mask ROI, model.mask_box_scale) that TF zeroes.
    eps = 1e-3
    inside = (((ys >= 0.0) & (ys <= hf + eps))[:, :, None]
              & ((xs >= 0.0) & (xs <= wf + eps))[:, None, :])                    # [N, c, c]
    y0, x0 = tf.floor(ys), tf.floor(xs)
    yl = tf.expand_dims(tf.expand_dims(ys - y0, -1), -1)                          # [N, c, 1, 1]
    xl = tf.expand_dims(tf.expand_dims(xs - x0, 1), -1)                            # [N, 1, c, 1]
    # clipped in float32, then cast: an int32 clip to [0, 6] (a 7x7 map, tiny at 224) becomes an int32 RELU6,
    # which TFLite has no kernel for
    y0 = tf.cast(tf.clip_by_value(y0, 0.0, hf), tf.int32)
    x0 = tf.cast(tf.clip_by_value(x0, 0.0, wf), tf.int32)
    y1, x1 = tf.minimum(y0 + 1, h - 1), tf.minimum(x0 + 1, w - 1)
    flat = tf.reshape(fmap, [h * w, -1])

    def at(yy, xx):
        return tf.gather(flat, yy[:, :, None] * w + xx[:, None, :])                # [N, c, c, E]
    top = at(y0, x0) + (at(y0, x1) - at(y0, x0)) * xl
    bottom = at(y1, x0) + (at(y1, x1) - at(y1, x0)) * xl
    return (top + (bottom - top) * yl) * tf.cast(inside, fmap.dtype)[..., None]


def _portable_parts(model):
    """Split the Keras inference model around its TF-only ops: trunk (image -> proposals, num_valid, class_probs,
    e2..e5) and mask head (4 pooled ROI maps, and the pixel crops with model.mask_pixels -> mask logits [N, M, M, 2],
    one row per ROI, for any number N of ROIs). Both reuse the trained layers themselves."""
    import keras
    proposals = list(model.get_layer("head_proposals").output)
    embs = [model.get_layer(f"head_emb_{lvl}").output for lvl in (2, 3, 4, 5)]
    trunk = keras.Model(model.get_layer("image").output, proposals + embs, name="export_trunk")
    pooled = list(model.get_layer("mask_roi_align").output)
    if any(layer.name == "mask_pixel_align" for layer in model.layers):      # model.mask_pixels > 0
        pooled.append(model.get_layer("mask_pixel_align").output)
    mask_head = keras.Model(pooled, model.get_layer("mask_unflatten").input, name="export_mask_head")
    return trunk, mask_head


def serving_fn(model, cfg, graph="keras", mask_rois=None):
    """fn(image uint8 [H, W, 3]) -> dict of OUTPUTS for one frame.

    graph "keras": the Keras inference model as trained (DetectionOutputs' float64 box math, CropAndResize).
    graph "portable": the same layers and weights, with ROI pooling (`crop_and_resize_tf`) and un-letterboxing
    (float32, exact integer sizes) rewritten in TFLite builtin ops; boxes agree to ~1e-4 px. OpenVINO needs this
    graph: its CPU plugin runs float64 ops in float32, and DetectionOutputs' nh = floor(scale * h) then comes out
    one row larger for some frame sizes (320x180 at 224: floor(0.7 * 180) is 125 in float64, 126 in float32),
    which stretches every box vertically by up to ~1.4 px.
    mask_rois (portable only): the mask head runs on the `mask_rois` best proposals (slots are sorted by score);
    the other slots' masks are zero, as tracker.py --mask-rois gives them.
    """
    import tensorflow as tf

    import utils
    m = cfg.model
    size = m.input_size
    cat_ids = tf.constant([0] + [int(c) for c in cfg.category_ids()], tf.int32)    # class 0 = padding
    if graph not in ("keras", "portable"):
        raise ExportError(f"unknown graph {graph!r}; choose keras or portable")
    if mask_rois is not None and graph != "portable":
        raise ExportError("--mask-rois needs --graph portable (the Keras graph computes all max_prop masks)")
    k = m.max_prop if mask_rois is None else max(1, min(int(mask_rois), m.max_prop))

    def serve_keras(image):
        canvas = letterbox_tf(image, size)[None]
        hw = tf.shape(image)[None, :2]
        out = model({"image": canvas, "image_hw": hw}, training=False)
        return {"boxes": out["boxes"][0], "scores": out["scores"][0],
                "category_ids": tf.gather(cat_ids, out["classes"][0]), "class_probs": out["class_probs"][0],
                "masks": out["masks"][0], "mask_boxes": out["mask_boxes"][0], "num_valid": out["num_valid"][0]}
    if graph == "keras":
        return serve_keras

    trunk, mask_head = _portable_parts(model)
    table = _rounding_table(size)

    def serve_portable(image):
        canvas = letterbox_tf(image, size)[None]
        proposals, num_valid, class_probs, *embs = trunk(canvas, training=False)
        proposals, num_valid, class_probs = proposals[0], num_valid[0], class_probs[0]   # [P, 6], [], [P, K]
        roi = utils.scale_boxes(proposals[:, :4], m.mask_box_scale)                      # the mask ROIs
        yx = tf.gather(roi[:k], [1, 0, 3, 2], axis=-1)                                  # [k, 4]
        rois = [crop_and_resize_tf(e[0], yx, m.mask_pool) for e in embs]                  # 4 x [k, 14, 14, E]
        if m.mask_pixels:
            rois.append(crop_and_resize_tf(canvas[0], utils.aligned_crop_boxes(yx, size, m.mask_size),
                                           m.mask_size))                                  # [k, M, M, 3]
        logits = mask_head(rois, training=False)                                          # [k, M, M, 2]
        masks = tf.pad(tf.nn.softmax(logits, axis=-1)[..., 1], [[0, m.max_prop - k], [0, 0], [0, 0]])   # [P, M, M]
        valid = tf.cast(tf.range(m.max_prop) < num_valid, tf.float32)                     # [P]
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        nh, nw = letterbox_sizes_tf(h, w, size, table)
        dh, dw = tf.cast((size - nh) // 2, tf.float32), tf.cast((size - nw) // 2, tf.float32)
        hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
        b = proposals[:, :4] * float(size)                                                # canvas px
        x = (b[:, 0::2] - dw) * (wf / tf.cast(nw, tf.float32))
        y = (b[:, 1::2] - dh) * (hf / tf.cast(nh, tf.float32))
        mask_boxes = utils.scale_boxes(tf.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=-1), m.mask_box_scale)
        x, y = tf.clip_by_value(x, 0.0, wf), tf.clip_by_value(y, 0.0, hf)
        boxes = tf.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=-1) * valid[:, None]
        classes = tf.cast(tf.round(proposals[:, 5]), tf.int32) * tf.cast(valid, tf.int32)
        return {"boxes": boxes, "scores": proposals[:, 4] * valid, "category_ids": tf.gather(cat_ids, classes),
                "class_probs": class_probs, "masks": masks * tf.reshape(valid, [-1, 1, 1]),
                "mask_boxes": mask_boxes * valid[:, None], "num_valid": num_valid}
    return serve_portable


def _write_saved_model(model, cfg, path, graph, mask_rois=None):
    """The serving function as a SavedModel with one signature, SIGNATURE, over the model's variables. Saved
    directly rather than through Keras's ExportArchive, which traced the function twice and stored every variable
    twice (info/RESULTS.md#2026-12-07-savedmodel-written-directly)."""
    import tensorflow as tf
    fn = tf.function(serving_fn(model, cfg, graph, mask_rois), autograph=False,
                     input_signature=[tf.TensorSpec([None, None, 3], tf.uint8, name="image")]).get_concrete_function()
    holder = tf.Module()
    # the tf.Variables the graph captures (inside Keras's variables): tracked, they are saved as the signature's
    # variables, which the TFLite and OpenVINO converters freeze into constants
    holder.captured = list(fn.variables)
    tf.saved_model.save(holder, path, signatures={SIGNATURE: fn})


def folder_mb(path):
    """Size of a file or a folder tree in MiB."""
    if os.path.isfile(path):
        return os.path.getsize(path) / 2**20
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 2**20


def _flex_ops_in_error(message):
    """Names of the TF ops a ConverterError says have no TFLite builtin kernel."""
    listed = re.search(r"TF Select ops: ([^\n]+)", message)
    if listed:
        return sorted({n.strip() for n in listed.group(1).split(",") if n.strip()})
    return sorted(set(re.findall(r"'tf\.([A-Za-z0-9_]+)' op", message)))


class _stderr_to_file:
    """Send file descriptor 2 to a temp file: the MLIR converter prints one long location line per unsupported op
    straight to stderr; the error message below names them instead."""

    def __enter__(self):
        fd, self.path = tempfile.mkstemp(prefix="tflite_convert_", suffix=".log")
        sys.stderr.flush()
        self.saved = os.dup(2)
        os.dup2(fd, 2)
        os.close(fd)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        return False

    def text(self):
        with open(self.path, errors="replace") as f:
            return f.read()


def _convert_tflite(saved_model_dir, fp16, select_tf_ops):
    """SavedModel -> TFLite flatbuffer bytes. Raises ExportError naming the ops a builtin-only conversion lacks."""
    import tensorflow as tf
    conv = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[SIGNATURE])
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if select_tf_ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    conv.target_spec.supported_ops = ops
    if fp16:
        # float16 weights, dequantised to float32 at load: half the file, float32 arithmetic
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    log = _stderr_to_file()
    try:
        with log:
            return conv.convert()
    except Exception as e:  # ConverterError (its module path moves between TF releases)
        msg = str(e) + "\n" + log.text()
        names = _flex_ops_in_error(msg)
        hint = ("these ops have no TFLite builtin kernel: " + ", ".join(names) if names else
                "conversion failed: " + msg.strip().splitlines()[-1][:500])
        what = ("export with --graph portable (ROI pooling and box math in builtin ops), or allow them with "
                "--select-tf-ops (Flex; needs a runtime with the Flex delegate, which the tf.lite.Interpreter of "
                "the tensorflow 2.21 pip package lacks)" if not select_tf_ops else "this op has no Flex kernel either")
        raise ExportError(f"TFLite conversion failed: {hint}; {what}") from None
    finally:
        os.remove(log.path)


def _tflite_op_names(model_bytes):
    """Distinct op names in a TFLite model (Flex ops appear as Flex<TfOp>)."""
    import tensorflow as tf
    interp = tf.lite.Interpreter(model_content=model_bytes)
    try:
        return sorted({d["op_name"] for d in interp._get_ops_details()})
    except Exception:  # private API; the metadata is informative only
        return []


# ---- OpenVINO ------------------------------------------------------------------------------------------------

def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (an empty set where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# oneDNN's ONEDNN_MAX_CPU_ISA values (DNNL_MAX_CPU_ISA is the older name) that leave out its bfloat16 kernels
ONEDNN_CAPS_WITHOUT_BFLOAT16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                                          "AVX512_CORE_VNNI"})


def onednn_isa_cap(environ=None):
    """The ISA oneDNN is capped at by the environment (upper case), or "" when it is not capped."""
    env = os.environ if environ is None else environ
    return (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").strip().upper()


def native_bfloat16(flags=None, environ=None):
    """True when the CPU has bfloat16 arithmetic units (AVX512-BF16 or AMX-BF16) and oneDNN is not capped below
    them; elsewhere TensorFlow (oneDNN) and OpenVINO emulate bfloat16 with float32 instructions plus conversions,
    which is slower than float32."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16"}) and not bfloat16_capped_off(flags, environ)


def bfloat16_capped_off(flags=None, environ=None):
    """True when the CPU has bfloat16 but ONEDNN_MAX_CPU_ISA caps oneDNN below it (bfloat16 cannot run then)."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16"}) and onednn_isa_cap(environ) in ONEDNN_CAPS_WITHOUT_BFLOAT16


def check_bfloat16(what, flags=None, environ=None, stream=None):
    """Refuse or warn before `what` runs in bfloat16. Raises ExportError when the CPU has bfloat16 but
    ONEDNN_MAX_CPU_ISA caps oneDNN below it: TensorFlow and OpenVINO choose bfloat16 kernels from the CPU's flags,
    and the capped oneDNN then cannot create them (the first convolution fails). Prints a one-line warning (stderr)
    and returns True on a CPU without native bfloat16; returns False when bfloat16 is native."""
    flags = cpu_flags() if flags is None else flags
    if native_bfloat16(flags, environ):
        return False
    if bfloat16_capped_off(flags, environ):
        raise ExportError(f"{what}: ONEDNN_MAX_CPU_ISA={onednn_isa_cap(environ)} caps oneDNN below the bfloat16 "
                          f"this CPU has, and TensorFlow and OpenVINO would still pick bfloat16 kernels that oneDNN "
                          f"then cannot create; unset ONEDNN_MAX_CPU_ISA, or run in float32")
    print(f"warning: {what}: this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16 flag in /proc/cpuinfo); "
          f"bfloat16 is emulated there and is usually slower than float32", file=stream or sys.stderr, flush=True)
    return True


def calibration_frames(split_root, count):
    """Up to `count` RGB frames spread evenly over a dataset split's JPEGImages/<video>/<frame>.jpg (the NNCF
    calibration set). Raises ExportError naming the folder or the unreadable file."""
    import cv2
    paths = sorted(glob.glob(os.path.join(split_root, "JPEGImages", "*", "*.jpg")))
    if not paths:
        raise ExportError(f"--int8 {split_root}: no JPEGImages/<video>/*.jpg frames there (a dataset split root, "
                          f"e.g. data/shapes/train)")
    step = max(1, len(paths) // count)
    frames = []
    for path in paths[::step][:count]:
        bgr = cv2.imread(path)
        if bgr is None:
            raise ExportError(f"--int8: cannot read frame {path}")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return frames


def openvino_model(saved_model_dir, int8_frames=None, log=print):
    """SavedModel -> openvino.Model. int8_frames: NNCF post-training quantisation (8-bit weights and activations of
    the convolutions and matrix products) calibrated on these frames."""
    try:
        import openvino as ov
    except ImportError:
        raise ExportError("--format openvino needs the openvino package: pip install -r requirements.txt") \
            from None
    try:
        model = ov.convert_model(saved_model_dir)
    except Exception as e:  # OpConversionFailure and friends (their module moves between releases)
        raise ExportError(f"OpenVINO conversion failed: {str(e).strip().splitlines()[-1][:500]}") from None
    if int8_frames:
        try:
            import nncf
        except ImportError:
            raise ExportError("--int8 needs the nncf package: pip install -r requirements.txt") from None
        t0 = time.time()
        # 8-bit inputs for the convolutions and matrix products only: NNCF's default also quantises the element-wise
        # ops between them, among them the letterbox taps, the box decode and the un-letterboxing, which moved
        # boxes by hundreds of pixels on the demo run (measured with bench/bench_export.py)
        compute = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"}
        others = sorted({op.get_type_name() for op in model.get_ops()} - compute - {"Constant", "Parameter", "Result"})
        model = nncf.quantize(model, nncf.Dataset(int8_frames), subset_size=len(int8_frames),
                              preset=nncf.QuantizationPreset.MIXED,
                              ignored_scope=nncf.IgnoredScope(types=others, validate=False))
        log(f"NNCF INT8 quantisation calibrated on {len(int8_frames)} frames in {time.time() - t0:.1f} s", flush=True)
    return model


def _convert_openvino(saved_model_dir, xml_path, fp16, int8_frames=None, log=print):
    """SavedModel -> OpenVINO IR (model.xml + model.bin); returns the openvino version."""
    import openvino as ov
    model = openvino_model(saved_model_dir, int8_frames, log)
    # save_model stores float16 weights unless told not to; the default export keeps the trained float32 weights
    ov.save_model(model, xml_path, compress_to_fp16=bool(fp16))
    return ov.__version__


def _check_options(fmt, graph, fp16, int8, mask_rois, int8_frames):
    """The export's options checked against each other; returns the graph ("keras" or "portable")."""
    if fmt not in FORMATS:
        raise ExportError(f"unsupported format {fmt!r}; choose one of {', '.join(FORMATS)}")
    graph = graph or ("keras" if fmt == "saved_model" else "portable")
    if graph not in ("keras", "portable"):
        raise ExportError(f"unknown graph {graph!r}; choose keras or portable")
    if fp16 and fmt == "saved_model":
        raise ExportError("--fp16 applies to --format tflite or openvino (float16 weights); a SavedModel stays "
                          "float32")
    if fmt == "openvino" and graph != "portable":
        raise ExportError("--format openvino needs --graph portable: OpenVINO's CPU plugin runs the Keras graph's "
                          "float64 un-letterboxing in float32, which moves boxes by up to ~1.4 px")
    if int8 and fmt != "openvino":
        raise ExportError("--int8 applies to --format openvino (NNCF post-training quantisation)")
    if int8 and fp16:
        raise ExportError("--int8 and --fp16 exclude each other (INT8 weights are 8-bit already)")
    if mask_rois is not None and mask_rois < 1:
        raise ExportError("--mask-rois must be at least 1")
    if mask_rois is not None and graph != "portable":
        raise ExportError("--mask-rois needs --graph portable (the Keras graph computes all max_prop masks)")
    if int8 and int8_frames < 1:
        raise ExportError("--int8-frames must be at least 1")
    return graph


def _load_model(run_dir, checkpoint, log):
    """(cfg, inference model) of the run's checkpoint (the latest by default), its errors as ExportErrors."""
    import tensorflow as tf

    import config as config_lib
    from checkpoints import CheckpointError, load_run

    t0 = time.time()
    try:
        cfg, model = load_run(run_dir, checkpoint=checkpoint, mode="infer")
    except (CheckpointError, config_lib.ConfigError) as e:
        raise ExportError(str(e)) from None
    except (tf.errors.NotFoundError, ValueError) as e:
        raise ExportError(f"{run_dir}: cannot restore checkpoint {checkpoint or '(latest)'} ({e})") from None
    log(f"loaded {run_dir} ({cfg.preset}, input {cfg.model.input_size}) in {time.time() - t0:.1f} s", flush=True)
    return cfg, model


def _convert(tmp, sm_dir, fmt, fp16, select_tf_ops, frames, int8, meta, bar, log):
    """Converts the SavedModel in `sm_dir` to TFLite or OpenVINO inside `tmp` (removing it) and fills `meta`'s
    entries for the converted file; a SavedModel export keeps `sm_dir` as it is."""
    if fmt == "tflite":
        t0 = time.time()
        data = _convert_tflite(sm_dir, fp16, select_tf_ops)
        with open(os.path.join(tmp, TFLITE_FILE), "wb") as f:
            f.write(data)
        shutil.rmtree(sm_dir)
        ops = _tflite_op_names(data)
        meta["file"] = TFLITE_FILE
        meta["tflite_ops"] = ops                            # of the main subgraph (not WHILE bodies)
        # a builtin-only conversion succeeds only without Flex ops; with --select-tf-ops, list what we see
        meta["flex_ops"] = [o for o in ops if o.startswith("Flex")] if select_tf_ops else []
        log(f"TFLite converted in {time.time() - t0:.1f} s ({len(data) / 2**20:.1f} MiB, flex ops: "
            f"{', '.join(meta['flex_ops']) or 'none'})", flush=True)
        bar.update(1, part="TFLite")
    elif fmt == "openvino":
        t0 = time.time()
        meta["openvino"] = _convert_openvino(sm_dir, os.path.join(tmp, OPENVINO_FILE), fp16, frames, log)
        shutil.rmtree(sm_dir)
        meta["file"] = OPENVINO_FILE
        meta["int8"] = {"calibration": int8, "frames": len(frames)} if frames else None
        log(f"OpenVINO IR written in {time.time() - t0:.1f} s ({folder_mb(tmp):.1f} MiB, "
            f"{'INT8' if frames else 'FP16' if fp16 else 'FP32'} weights)", flush=True)
        bar.update(1, part="OpenVINO")
    else:
        meta["file"] = SAVED_MODEL_DIR


def export(run_dir, fmt, out, checkpoint=None, fp16=False, graph=None, select_tf_ops=False, mask_rois=None,
           int8=None, int8_frames=300, log=print):
    """Export the run's inference model to `out` (a new folder, written through a temp folder and a rename).
    graph: "keras" or "portable" (see `serving_fn`); default keras for a SavedModel, portable for TFLite and
    OpenVINO. mask_rois: masks for the k best proposals only (portable graph). int8: a dataset split root whose
    frames (`int8_frames` of them) calibrate NNCF's INT8 quantisation (OpenVINO only).
    Returns the metadata dict written to out/model.json."""
    import tensorflow as tf

    import config as config_lib

    graph = _check_options(fmt, graph, fp16, int8, mask_rois, int8_frames)
    frames = calibration_frames(int8, int8_frames) if int8 else None     # a bad split fails before the slow part
    if os.path.exists(out):
        raise ExportError(f"output folder {out} already exists; remove it or choose another --out")
    check_writable_file(out, "--out", ExportError)    # before the minutes of tracing, not after
    if checkpoint is None and not os.path.isdir(os.path.join(run_dir, "checkpoints")):
        raise ExportError(f"{run_dir}: no checkpoints/ folder (is this a run directory written by train.py?)")
    from progress import Progress
    bar = Progress(2 if fmt == "saved_model" else 3, f"export {fmt}", unit="part")   # load, trace (, convert)
    cfg, model = _load_model(run_dir, checkpoint, log)
    bar.update(1, part="load")

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp_export_")
    try:
        sm_dir = os.path.join(tmp, SAVED_MODEL_DIR)
        t0 = time.time()
        _write_saved_model(model, cfg, sm_dir, graph, mask_rois)
        log(f"SavedModel traced and written in {time.time() - t0:.1f} s", flush=True)
        bar.update(1, part="SavedModel")
        meta = {"format": fmt, "fp16": bool(fp16), "graph": graph, "signature": SIGNATURE, "input": {"image": INPUT},
                "mask_rois": mask_rois,
                "outputs": dict(OUTPUTS), "input_size": cfg.model.input_size, "mask_size": cfg.model.mask_size,
                "max_detections": cfg.model.max_prop,
                "categories": cfg.categories(),
                "source": {"run_dir": run_dir, "checkpoint": checkpoint},
                "tensorflow": tf.__version__, "config": cfg.to_dict()}
        _convert(tmp, sm_dir, fmt, fp16, select_tf_ops, frames, int8, meta, bar, log)
        config_lib.save_config(cfg, os.path.join(tmp, CONFIG_FILE))
        config_lib.atomic_write_text(os.path.join(tmp, META_FILE), json.dumps(meta, indent=2))
        os.chmod(tmp, 0o755)                                   # mkdtemp makes 0700 folders
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    return meta


# ---- loading and running an export ---------------------------------------------------------------------------

class ExportedModel:
    """One exported model, any format: `model(frame_rgb_uint8)` -> dict of numpy OUTPUTS for that frame.

    OpenVINO models compile for the CPU with INFERENCE_PRECISION_HINT `precision` ("f32" by default: OpenVINO
    would otherwise pick bf16 on a CPU with AMX; "bf16" warns on a CPU without native bfloat16) and the LATENCY
    performance hint (or THROUGHPUT with `throughput=True`, for several frames in flight: `compiled`).

    Attributes: cfg (the resolved config it came from), meta (model.json), format, compiled (OpenVINO only).
    """

    def __init__(self, path, num_threads=None, precision=None, throughput=False):
        import config as config_lib
        meta_path = os.path.join(path, META_FILE)
        if not os.path.exists(meta_path):
            raise ExportError(f"{path}: no {META_FILE} (is this a folder written by export.py?)")
        try:
            with open(meta_path) as f:
                self.meta = json.load(f)
        except json.JSONDecodeError as e:
            raise ExportError(f"{meta_path}: not valid JSON ({e})") from None
        self.format = self.meta.get("format")
        if self.format not in FORMATS:
            raise ExportError(f"{meta_path}: unknown format {self.format!r}")
        if "file" not in self.meta:
            raise ExportError(f"{meta_path}: no 'file' entry")
        try:
            self.cfg = config_lib.load_config(os.path.join(path, CONFIG_FILE))
        except config_lib.ConfigError as e:
            raise ExportError(str(e)) from None
        file = os.path.join(path, self.meta["file"])
        if not os.path.exists(file):
            raise ExportError(f"{path}: {self.meta['file']} is missing")
        if precision not in (None, "f32", "bf16"):
            raise ExportError(f"unknown precision {precision!r}; choose f32 or bf16")
        if precision and self.format != "openvino":
            raise ExportError(f"{path}: a precision hint applies to OpenVINO exports, not {self.format}")
        if self.format == "openvino":
            self._load_openvino(file, num_threads, precision or "f32", throughput)
            return
        import tensorflow as tf
        try:
            if self.format == "saved_model":
                self._fn = tf.saved_model.load(file).signatures[SIGNATURE]
            else:
                interp = tf.lite.Interpreter(model_path=file, num_threads=num_threads or os.cpu_count())
                self._fn = interp.get_signature_runner(SIGNATURE)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ExportError(f"{file}: cannot load the {self.format} model ({e})") from None

    def _load_openvino(self, file, num_threads, precision, throughput):
        try:
            import openvino as ov
        except ImportError:
            raise ExportError(f"{file}: running an OpenVINO export needs the openvino package: "
                              f"pip install -r requirements.txt") from None
        if precision == "bf16":
            check_bfloat16("OpenVINO INFERENCE_PRECISION_HINT bf16")
        props = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "THROUGHPUT" if throughput else "LATENCY"}
        if num_threads:
            props["INFERENCE_NUM_THREADS"] = int(num_threads)
        try:
            self.compiled = ov.Core().compile_model(file, "CPU", props)
        except RuntimeError as e:
            raise ExportError(f"{file}: cannot load the openvino model ({str(e).strip().splitlines()[0][:300]})") \
                from None
        self._names = [o.get_any_name() for o in self.compiled.outputs]
        request = self.compiled.create_infer_request()

        def run(image):
            # the request's output tensors are reused by the next call: copy them out
            return {n: np.array(v) for n, v in zip(self._names, request.infer([image]).values())}
        self._fn = run

    def __call__(self, frame):
        frame = np.ascontiguousarray(frame, np.uint8)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"exported model: expected an RGB frame [H, W, 3], got shape {frame.shape}")
        out = self._fn(image=frame)
        return {k: np.asarray(v) for k, v in out.items()}


class ExportedFramePredictor:
    """tracker.FramePredictor's interface over an ExportedModel: frames in, `model.postprocess` detections out.

    The exported graph takes one frame, so `batch_size` is 1; category ids go back to class indices so pasting
    and RLE encoding run through the very same `model.postprocess` as the Keras path.
    """

    def __init__(self, exported: ExportedModel, score_floor: float):
        import model as model_lib
        self.exported, self.cfg, self.score_floor, self.batch_size = exported, exported.cfg, score_floor, 1
        self.postprocess = model_lib.postprocess
        self._class_of = {c: i + 1 for i, c in enumerate(self.cfg.category_ids())}

    def outputs(self, frames_rgb):
        """Stack the per-frame outputs into the infer model's batched dict (classes 1..K, image_hw)."""
        outs = [self.exported(f) for f in frames_rgb]
        # an export made before `mask_boxes` existed has masks over the boxes themselves (mask_box_scale 1)
        outs = [o if "mask_boxes" in o else dict(o, mask_boxes=o["boxes"]) for o in outs]
        batch = {k: np.stack([o[k] for o in outs])
                 for k in ("boxes", "scores", "class_probs", "masks", "mask_boxes", "num_valid")}
        cats = np.stack([o["category_ids"] for o in outs])
        batch["classes"] = np.vectorize(lambda c: self._class_of.get(int(c), 0), otypes=[np.int32])(cats)
        batch["image_hw"] = np.array([f.shape[:2] for f in frames_rgb], np.int32)
        return batch

    def __call__(self, frames_rgb):
        return self.postprocess(self.outputs(frames_rgb), self.cfg, score_floor=self.score_floor)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Export a trained YOLOV4+1 run as a SavedModel, TFLite or OpenVINO "
                                             "model with one signature: uint8 frame [H, W, 3] in, detections out.")
    ap.add_argument("--run-dir", required=True, help="training run directory (config.yaml + checkpoints/)")
    ap.add_argument("--checkpoint", default=None, help="checkpoint path or prefix (default: the latest)")
    ap.add_argument("--format", required=True, help="saved_model, tflite or openvino")
    ap.add_argument("--fp16", action="store_true", help="TFLite / OpenVINO with float16 weights (float32 compute)")
    ap.add_argument("--int8", default=None, metavar="SPLIT",
                    help="OpenVINO: NNCF post-training INT8 quantisation calibrated on frames of this dataset split "
                         "root (e.g. data/shapes/train)")
    ap.add_argument("--int8-frames", type=int, default=300, help="calibration frames for --int8 (spread evenly)")
    ap.add_argument("--mask-rois", type=int, default=None, metavar="K",
                    help="portable graph: masks for the K best detections only (tracker.py --mask-rois)")
    ap.add_argument("--graph", default=None, choices=("keras", "portable"),
                    help="keras: the trained Keras graph as is; portable: ROI pooling and box math in TFLite builtin "
                         "ops (default: keras for saved_model, portable for tflite and openvino)")
    ap.add_argument("--select-tf-ops", action="store_true",
                    help="TFLite: allow Flex (select TF) ops; the tensorflow 2.21 pip interpreter cannot run them")
    ap.add_argument("--out", required=True, help="output folder (must not exist)")
    args = ap.parse_args(argv)
    try:
        meta = export(args.run_dir, args.format, args.out, checkpoint=args.checkpoint, fp16=args.fp16,
                      graph=args.graph, select_tf_ops=args.select_tf_ops, mask_rois=args.mask_rois, int8=args.int8,
                      int8_frames=args.int8_frames)
    except ExportError as e:
        sys.exit(f"export.py: {e}")
    kind = " (fp16)" if meta["fp16"] else " (int8)" if meta.get("int8") else ""
    print(f"{meta['format']}{kind} model written to "
          f"{os.path.join(args.out, meta['file'])}; metadata in {os.path.join(args.out, META_FILE)}")


if __name__ == "__main__":
    main()
