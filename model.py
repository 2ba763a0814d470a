"""YOLOV4+1 assembled: train and inference models, mask pasting / RLE post-processing and frame letterboxing
(info/DESIGN.md#architecture, info/DESIGN.md#m12-outputs, info/DESIGN.md#mask-pasting).

    python model.py --preset yolov4p1 --summary
"""
from __future__ import annotations

import argparse

import cv2
import keras
import numpy as np

import layers
import utils
from backbone import apply_backbone

PARTS = (("backbone", "bb_"), ("neck", "neck_"), ("heads", "head_"), ("mask_head", "mask_"))


def build_model(cfg, mode="train", mask_rois=None, mask_floor=None, mask_positives=False) -> keras.Model:
    """YOLOV4+1 for `cfg`. mode "train": image -> {level_preds, proposals, num_valid, class_probs, mask_logits};
    mode "infer": {image, image_hw} -> {boxes, scores, classes, class_probs, masks, num_valid}.

    Training only, what train.py builds: `mask_positives` takes {image, boxes, labels} (the batch's GT, canvas px)
    and runs the mask head on the proposals that get a mask target only (`layers.MaskPositiveGate`,
    `layers.GatherPositiveROIs`): outputs mask_proposals [B, n, 6], mask_num [B] and mask_logits [B, n, 28, 28, 2]
    (slots j >= mask_num zero). The losses and gradients are those of the full graph (tests/test_model.py).

    Both modes build the same named layers and own the ALB layer (`model.alb`), so weights move between them by
    name (`copy_weights_by_name`) or through `save_weights` / `load_weights`.

    Inference only, off by default (the published graph computes a mask for all max_prop slots): `mask_rois` (k)
    and/or `mask_floor` gate the mask head (`layers.MaskROIGate`) to the k best proposals and/or those scoring
    >= mask_floor; the other slots get all-zero masks. Boxes, scores and classes do not change, nor does any mask
    that is computed; the gate adds two weightless layers (mask_gate, mask_pad) in place of mask_unflatten.
    """
    if mode not in ("train", "infer"):
        raise ValueError(f"build_model: mode must be 'train' or 'infer', got {mode!r}")
    gated = mask_rois is not None or mask_floor is not None
    if gated and mode != "infer":
        raise ValueError("build_model: mask_rois / mask_floor gate the mask head of the inference model only")
    if mask_positives and mode != "train":
        raise ValueError("build_model: mask_positives needs the GT, a training model's input")
    m = cfg.model
    s = m.input_size
    image = keras.Input((s, s, 3), name="image")                                  # [B, S, S, 3] in [0, 1]
    b = apply_backbone(image, cfg)                                                # b2..b5
    n = layers.apply_neck(b, cfg)                                                 # n2..n5
    level_preds, embs = layers.apply_heads(n, cfg)                                # [B, nA, S_k, S_k, 6+K], e2..e5
    anchors = cfg.level_anchors()
    candidates = [layers.DecodeLevel(anchors[i], stride, s, name=f"head_decode_{lvl}")(p)
                  for i, (lvl, stride, p) in enumerate(zip(layers.LEVELS, m.strides, level_preds))]
    proposals, num_valid, class_probs = layers.ProposalLayer(
        m.pre_nms_limit, m.max_prop, m.nms_thresh, m.min_box_dim, m.min_box_ratio,
        name="head_proposals")(candidates)                                        # [B, P, 6], [B], [B, P, K]
    mask_props = proposals
    if mask_positives:
        gt_boxes = keras.Input((None, 4), name="boxes")                          # [B, N, 4] canvas px
        gt_labels = keras.Input((None,), dtype="int32", name="labels")           # [B, N], 0: padding
        mask_props, mask_num = layers.MaskPositiveGate(s, m.mask_iou_thresh, name="mask_positives")(
            [proposals, num_valid, gt_boxes, gt_labels])                         # [B, n, 6], [B]
    if gated:
        mask_props = layers.MaskROIGate(m.max_prop if mask_rois is None else min(int(mask_rois), m.max_prop),
                                        mask_floor, name="mask_gate")([proposals, num_valid])   # [B, n, 6]
    rois = layers.PyramidROIAlign(m.mask_pool, m.mask_box_scale,
                                  name="mask_roi_align")([mask_props] + embs)     # 4 x [B*P, 14, 14, E]
    pixels = None
    if m.mask_pixels:
        pixels = layers.PixelROIAlign(m.mask_size, m.mask_box_scale,
                                      name="mask_pixel_align")([mask_props, image])   # [B*P, 28, 28, 3]
    if mask_positives:      # the subnet sees the positive slots alone, not the gate's padding
        rois = [layers.GatherPositiveROIs(name=f"mask_pos_rois_{lvl}")([r, mask_props, mask_num])
                for lvl, r in zip(layers.LEVELS, rois)]                           # 4 x [M, 14, 14, E]
        if pixels is not None:
            pixels = layers.GatherPositiveROIs(name="mask_pos_pixels")([pixels, mask_props, mask_num])
    mask_flat = layers.apply_mask_head(rois, cfg, pixels)                         # [B*P, 28, 28, 2]
    if mask_positives:
        mask_flat = layers.ScatterPositiveROIs(name="mask_pos_scatter")([mask_flat, mask_props, mask_num])
    if gated:
        mask_logits = layers.PadMaskLogits(m.max_prop, name="mask_pad")([mask_flat, proposals])
    elif mask_positives:
        mask_logits = layers.UnflattenROIs(None, name="mask_unflatten")([mask_flat, mask_props])  # [B, n, ...]
    else:
        mask_logits = layers.UnflattenROIs(m.max_prop, name="mask_unflatten")(mask_flat)  # [B, P, 28, 28, 2]
    if mode == "train":
        outputs = {"level_preds": level_preds, "proposals": proposals, "num_valid": num_valid,
                   "class_probs": class_probs, "mask_logits": mask_logits}
        inputs = image
        if mask_positives:
            outputs.update(mask_proposals=mask_props, mask_num=mask_num)
            inputs = {"image": image, "boxes": gt_boxes, "labels": gt_labels}
        model = keras.Model(inputs, outputs, name="yolov4p1_train")
    else:
        image_hw = keras.Input((2,), dtype="int32", name="image_hw")             # original (height, width)
        det = layers.DetectionOutputs(s, m.mask_box_scale, name="head_outputs")(
            [proposals, num_valid, mask_logits, image_hw])
        outputs = {"boxes": det["boxes"], "scores": det["scores"], "classes": det["classes"],
                   "class_probs": class_probs, "masks": det["masks"], "mask_boxes": det["mask_boxes"],
                   "num_valid": num_valid,
                   "image_hw": det["image_hw"]}                               # passed through for postprocess
        model = keras.Model({"image": image, "image_hw": image_hw}, outputs, name="yolov4p1_infer")
    # ALB log-variances (info/DESIGN.md#m7-automatic-loss-balancing) live on the model: checkpoints save them.
    model.alb = utils.AutoLossBalance(utils.alb_num_terms(cfg.train.alb, cfg.num_levels), name="alb")
    model.alb.build()
    return model


def train_inputs(model, batch):
    """What a training model built by `build_model` takes from a batch: the image, plus the GT boxes and labels
    for a `mask_positives` model."""
    if isinstance(model.input, dict):
        return {k: batch[k] for k in model.input}
    return batch["image"]


def copy_weights_by_name(src: keras.Model, dst: keras.Model) -> int:
    """Copy every layer's weights from `src` into the layer of the same name in `dst` (plus `alb`); returns the
    number of layers copied. Raises if a shared name has weights of a different shape."""
    copied = 0
    pairs = [(l.name, l, dst.get_layer(l.name)) for l in src.layers if l.weights and l.name in
             {d.name for d in dst.layers}]
    if hasattr(src, "alb") and hasattr(dst, "alb"):
        pairs.append(("alb", src.alb, dst.alb))
    for name, a, b in pairs:
        wa, wb = a.get_weights(), b.get_weights()
        if [w.shape for w in wa] != [w.shape for w in wb]:
            raise ValueError(f"layer {name}: weight shapes {[w.shape for w in wa]} != {[w.shape for w in wb]}")
        b.set_weights(wa)
        copied += 1
    return copied


def inference_model(model, cfg, mask_rois=None, mask_floor=None, bfloat16=False) -> keras.Model:
    """A faster copy of the inference model `model` (same weights, copied by name), or `model` itself when nothing
    is asked for.

    mask_rois / mask_floor: the mask head runs only on the `mask_rois` best proposals and/or those scoring
    >= `mask_floor` (build_model's gate). For a caller that drops the other detections anyway (postprocess at the
    same score floor) the detections are the same, and the head's cost falls with every ROI it skips.
    bfloat16: convolutions and dense layers compute in bfloat16 (Keras 'mixed_bfloat16': float32 weights, the
    float32 decode / NMS / output layers unchanged), which oneDNN runs on AMX / AVX512-BF16 units about twice as
    fast here; it is an approximation (8-bit mantissa): scores and mask probabilities move by ~1e-2, so near-tied
    proposals can swap places or cross the floor (tests/test_model.py states the measured tolerance).
    """
    if mask_rois is None and mask_floor is None and not bfloat16:
        return model
    previous = keras.config.dtype_policy()
    if bfloat16:
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        fast = build_model(cfg, "infer", mask_rois=mask_rois, mask_floor=mask_floor)
    finally:
        keras.config.set_dtype_policy(previous)
    copy_weights_by_name(model, fast)
    return fast


def part_param_counts(model) -> dict:
    """Parameter counts per part (layer-name prefix), Keras count_params semantics (BN moving stats included)."""
    counts = {part: 0 for part, _ in PARTS}
    for layer in model.layers:
        for part, prefix in PARTS:
            if layer.name.startswith(prefix):
                counts[part] += sum(int(np.prod(w.shape)) for w in layer.weights)
    counts["alb"] = sum(int(np.prod(w.shape)) for w in model.alb.weights)
    counts["total"] = sum(int(np.prod(w.shape)) for w in model.weights)
    return counts


# ---- frames in, detections out -----------------------------------------------------------------------------

def letterbox_image(frame_rgb_uint8, size):
    """Letterbox an RGB uint8 frame [h, w, 3] into a float32 [size, size, 3] canvas in [0, 1] with gray (128)
    padding, with `utils.Letterbox`'s geometry. Resizing uses cv2.INTER_AREA when shrinking and
    cv2.INTER_LINEAR when enlarging (the original used PIL Lanczos)."""
    frame = np.asarray(frame_rgb_uint8)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"letterbox_image: expected an RGB frame [h, w, 3], got shape {frame.shape}")
    lb = utils.Letterbox(frame.shape[0], frame.shape[1], int(size))
    interp = cv2.INTER_AREA if lb.nw < lb.width else cv2.INTER_LINEAR
    canvas = np.full((lb.size, lb.size, 3), 128, np.uint8)
    canvas[lb.dh:lb.dh + lb.nh, lb.dw:lb.dw + lb.nw] = cv2.resize(frame, (lb.nw, lb.nh), interpolation=interp)
    return canvas.astype(np.float32) / 255.0


def paste_mask_crop(prob, box, height, width, thresh):
    """The pasted mask of `paste_mask` as (y1, x1, crop): crop is the bool [y2 - y1, x2 - x1] part of the frame
    inside the box (x1, y1, x2, y2 px, float, rounded outwards); the frame is False elsewhere. The mask spans the
    whole box, so where the box leaves the frame the part outside is cut off, not squeezed in. None for a box with
    no pixel inside the frame."""
    bx1, by1 = int(np.floor(box[0])), int(np.floor(box[1]))
    bx2, by2 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    x1, y1 = min(max(bx1, 0), width), min(max(by1, 0), height)
    x2, y2 = min(max(bx2, x1), width), min(max(by2, y1), height)
    if x2 <= x1 or y2 <= y1:
        return None
    resized = cv2.resize(np.asarray(prob, np.float32), (bx2 - bx1, by2 - by1), interpolation=cv2.INTER_LINEAR)
    return y1, x1, resized[y1 - by1:y2 - by1, x1 - bx1:x2 - bx1] >= thresh


def paste_mask(prob, box, height, width, thresh, out=None):
    """Paste a [M, M] foreground probability into a (height, width) frame inside `box` (x1, y1, x2, y2 px, float)
    with bilinear resizing, then threshold (value >= thresh). Returns a uint8 [height, width] mask (written into
    `out`, a zeroed [height, width] view, when given)."""
    if out is None:
        out = np.zeros((height, width), np.uint8)
    pasted = paste_mask_crop(prob, box, height, width, thresh)
    if pasted is not None:
        y1, x1, crop = pasted
        out[y1:y1 + crop.shape[0], x1:x1 + crop.shape[1]] = crop
    return out


def crop_rle_counts(pasted, height, width):
    """Uncompressed COCO RLE counts (column-major runs, zeros first) of a frame that is False but for one crop
    (`paste_mask_crop`'s (y1, x1, crop) or None), computed from the crop alone: the same runs pycocotools'
    `encode` finds in the whole frame, at the cost of the box instead of the frame."""
    if pasted is None:
        return [height * width]
    y1, x1, crop = pasted
    # the crop's columns one after another, each with a zero above and below (the frame around the box): a value
    # change between neighbours of this flat sequence is a change within one column, in the RLE's order
    side = crop.shape[0] + 2
    columns = np.zeros((crop.shape[1], side), np.uint8)
    columns[:, 1:-1] = crop.T
    flat = columns.ravel()
    start = np.flatnonzero(flat[1:] != flat[:-1]) + 1             # where each new run starts in `flat`
    pos = (x1 + start // side).astype(np.int64) * height + y1 + start % side - 1   # ... in the frame
    # a crop spanning the full height ends one column's run where the next column's starts: the two changes
    # cancel (one run continues over the column break)
    pos, seen = np.unique(pos, return_counts=True)
    pos = pos[(seen == 1) & (pos < height * width)]               # a run ending on the last pixel is no change
    return np.diff(np.concatenate([[0], pos, [height * width]])).tolist()


def postprocess(outputs, cfg, score_floor=None, image_hw=None):
    """Inference outputs (numpy dict of the infer model, batch of frames) -> per frame, a list of detections
    {"score", "category_id", "class_scores", "bbox" [x, y, w, h] px, "segmentation" compressed RLE at the original
    frame size}, sorted by descending score; only valid slots with score >= score_floor (cfg.infer.score_floor if
    None). Each mask is pasted over its outputs["mask_boxes"] box. Frame sizes (height, width) come from
    outputs["image_hw"] unless `image_hw` [B, 2] is given."""
    from pycocotools import mask as mask_utils

    if image_hw is None:
        if "image_hw" not in outputs:
            raise ValueError("postprocess: outputs have no 'image_hw'; pass image_hw=[[height, width], ...]")
        image_hw = outputs["image_hw"]
    floor = cfg.infer.score_floor if score_floor is None else float(score_floor)
    cat_ids = cfg.category_ids()
    boxes, scores = np.asarray(outputs["boxes"]), np.asarray(outputs["scores"])
    classes, probs = np.asarray(outputs["classes"]), np.asarray(outputs["class_probs"])
    masks, num_valid = np.asarray(outputs["masks"]), np.asarray(outputs["num_valid"])
    mask_boxes = np.asarray(outputs["mask_boxes"])
    image_hw = np.asarray(image_hw).reshape(-1, 2)
    if len(image_hw) != len(scores):
        raise ValueError(f"postprocess: image_hw has {len(image_hw)} frames, outputs have {len(scores)}")
    frames = []
    for f in range(len(scores)):
        h, w = int(image_hw[f, 0]), int(image_hw[f, 1])
        valid = np.flatnonzero(scores[f, :int(num_valid[f])] >= floor)
        keep = valid[np.argsort(-scores[f, valid], kind="stable")]          # descending score, ties in slot order
        bad = keep[(classes[f, keep] < 1) | (classes[f, keep] > len(cat_ids))]
        if len(bad):
            raise ValueError(f"postprocess: frame {f}, slot {bad[0]}: class {int(classes[f, bad[0]])} outside "
                             f"1..{len(cat_ids)}")
        # runs from each box's crop (no full-frame buffers), compressed by pycocotools in one call
        counts = [{"size": [h, w], "counts": crop_rle_counts(
            paste_mask_crop(masks[f, i], mask_boxes[f, i], h, w, cfg.infer.mask_thresh), h, w)} for i in keep]
        rles = mask_utils.frPyObjects(counts, h, w) if counts else []
        dets = [{"score": score, "category_id": cat_ids[c - 1], "class_scores": class_scores,
                 "bbox": [x1, y1, x2 - x1, y2 - y1],
                 "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")}}
                for score, c, class_scores, (x1, y1, x2, y2), rle in zip(
                    scores[f, keep].tolist(), classes[f, keep].tolist(), probs[f, keep].tolist(),
                    boxes[f, keep].tolist(), rles)]
        frames.append(dets)
    return frames


def main():
    import config

    ap = argparse.ArgumentParser(description="Build YOLOV4+1 and print its parts' parameter counts.")
    config.add_config_args(ap)
    ap.add_argument("--mode", default="train", choices=("train", "infer"))
    ap.add_argument("--summary", action="store_true", help="print '<part> <parameter count>' lines")
    ap.add_argument("--keras-summary", action="store_true", help="print Keras's layer-by-layer summary")
    args = ap.parse_args()
    cfg = config.config_from_args(args)
    model = build_model(cfg, args.mode)
    if args.keras_summary:
        model.summary(line_length=140)
    if args.summary or not args.keras_summary:
        for part, count in part_param_counts(model).items():
            print(part, count)


if __name__ == "__main__":
    main()
