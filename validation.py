"""Validation during training (info/DESIGN.md, training): the frame mask mAP over the held-out videos (the metric
of `compute_ap.frame_map`) and the confusion matrix of the confident detections, with its plot.

train.py calls `validate` at the end of every epoch; `gt_frames_for` picks the held-out frames once.
"""
from __future__ import annotations

import os

import numpy as np

import compute_ap


class ValidationError(RuntimeError):
    """A held-out frame cannot be read."""


def gt_frames_for(ytvis: dict, video_ids, max_frames: int, frame_stride: int = 1):
    """The validation frames [(video, frame_index)] and their GT for compute_ap.frame_map: every `frame_stride`-th
    frame of the held-out videos, thinned evenly to at most `max_frames`."""
    vids = {v["id"]: v for v in ytvis["videos"]}
    anns_by_video = {}
    for a in ytvis.get("annotations", []):
        anns_by_video.setdefault(a["video_id"], []).append(a)
    frames = []
    for vid in video_ids:
        v = vids[vid]
        for t in range(0, int(v["length"]), frame_stride):
            frames.append({"id": int(vid) * 100000 + t, "height": int(v["height"]), "width": int(v["width"]),
                           "video_id": int(vid), "frame_index": t,
                           "instances": _frame_instances(v, anns_by_video.get(vid, []), t)})
    if max_frames and len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in sorted(set(keep.tolist()))]
    return frames


def _frame_instances(video: dict, annotations, t: int):
    """The GT instances of frame `t` of `video` as {category_id, segmentation (RLE), iscrowd}."""
    inst = []
    for a in annotations:
        segs = a.get("segmentations") or []
        seg = segs[t] if t < len(segs) else None
        if seg is None:
            continue
        rle = compute_ap.to_rle(seg, video["height"], video["width"],
                                f"video {video['id']} frame {t} annotation {a['id']}")
        if rle is not None:
            inst.append({"category_id": int(a["category_id"]), "segmentation": rle,
                         "iscrowd": int(a.get("iscrowd", 0))})
    return inst


def confusion_pairs(gt_frame, detections, iou_thresh=0.5):
    """(true category, predicted category) of every detection whose best box IoU with a GT is >= 0.5."""
    from pycocotools import mask as mask_utils
    if not gt_frame["instances"] or not detections:
        return []
    gt_boxes = np.array([mask_utils.toBbox(i["segmentation"]) for i in gt_frame["instances"]], np.float64)
    dt_boxes = np.array([d["bbox"] for d in detections], np.float64)
    ious = mask_utils.iou(dt_boxes.tolist(), gt_boxes.tolist(), [0] * len(gt_boxes))
    pairs = []
    for i, d in enumerate(detections):
        j = int(np.argmax(ious[i]))
        if ious[i, j] >= iou_thresh:
            pairs.append((gt_frame["instances"][j]["category_id"], int(d["category_id"])))
    return pairs


def plot_confusion(cm, names, path):
    """The confusion matrix `cm` (rows true, columns predicted) as a PNG at `path` (written atomically); returns
    the PNG's bytes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    size = max(5.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title("confusion matrix (box IoU >= 0.5)")
    for (i, j), n in np.ndenumerate(cm):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color="black" if n < cm.max() / 2 else "white")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
    with open(path, "rb") as f:
        return f.read()


def _read_batch(chunk, image_path, size: int, bs: int):
    """The letterboxed frames of `chunk` as one inference batch of `bs` (zero-padded)."""
    import cv2

    import model as model_lib
    images = np.zeros((bs, size, size, 3), np.float32)
    hw = np.ones((bs, 2), np.int32)
    for i, f in enumerate(chunk):
        path = image_path(f)
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise ValidationError(f"validation frame {path} (video {f['video_id']}, frame {f['frame_index']}) "
                                  f"cannot be read")
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        images[i] = model_lib.letterbox_image(rgb, size)
        hw[i] = rgb.shape[:2]
    return {"image": images, "image_hw": hw}


def validate(cfg, train_model, infer_model, val_source, out_png, call=None):
    """Frame mask mAP@[.5:.95] / @.5 on the held-out frames (detections with score >= infer.score_floor) and the
    confusion matrix PNG of the detections with score >= infer.conf_thresh (bytes returned). `call` runs the
    inference model on a batch (the training loop passes one traced graph, reused every epoch); default: eager.
    `cfg` is the inference config (`Config.for_inference`): frames are letterboxed to the inference canvas."""
    from sklearn.metrics import confusion_matrix

    import model as model_lib

    gt_frames, image_path = val_source
    model_lib.copy_weights_by_name(train_model, infer_model)
    size, bs = cfg.model.input_size, max(1, cfg.infer.batch_size)
    dt_frames, pairs = [], []
    for start in range(0, len(gt_frames), bs):
        chunk = gt_frames[start:start + bs]
        inputs = _read_batch(chunk, image_path, size, bs)
        out = call(inputs) if call is not None else infer_model(inputs, training=False)
        out = {k: np.asarray(v)[:len(chunk)] for k, v in out.items()}
        # COCO-style mAP ranks every detection above the low storage floor (as tracker.py stores them);
        # the confusion matrix counts only the confident ones (conf_thresh), as a user would see them.
        dets = model_lib.postprocess(out, cfg, score_floor=cfg.infer.score_floor)
        for f, d in zip(chunk, dets):
            dt_frames.append({"id": f["id"], "instances": d})
            pairs += confusion_pairs(f, [x for x in d if x["score"] >= cfg.infer.conf_thresh])
    cats = cfg.data.categories
    res = compute_ap.frame_map(gt_frames, dt_frames, cats)
    ids = [c["id"] for c in cats]
    cm = confusion_matrix([p[0] for p in pairs], [p[1] for p in pairs], labels=ids) if pairs else \
        np.zeros((len(ids), len(ids)), np.int64)
    png = plot_confusion(cm, [c["name"] for c in cats], out_png)
    return {"val_frame_mAP": res["mAP"], "val_frame_mAP50": res["mAP50"], "val_frames": len(gt_frames),
            "val_matched": int(cm.sum())}, png


class Validator:
    """The end-of-epoch validation of a training run: the held-out frames (picked once) and the inference model at
    the inference canvas, called through one traced graph that every epoch reuses."""

    def __init__(self, cfg, ytvis: dict, video_ids, image_root: str, out_png: str):
        import tensorflow as tf

        import model as model_lib
        frames = gt_frames_for(ytvis, video_ids, cfg.train.val_max_frames, cfg.data.frame_stride)
        names = {v["id"]: v["file_names"] for v in ytvis["videos"]}
        self.source = (frames, lambda f: os.path.join(image_root, names[f["video_id"]][f["frame_index"]]))
        self.out_png = out_png
        self.cfg = cfg.for_inference()   # validation sees what tracker.py will: the inference canvas
        self.model = model_lib.build_model(self.cfg, "infer")
        bs, size = max(1, cfg.infer.batch_size), self.cfg.model.input_size
        self.call = tf.function(lambda x: self.model(x, training=False), input_signature=[{
            "image": tf.TensorSpec([bs, size, size, 3], tf.float32), "image_hw": tf.TensorSpec([bs, 2], tf.int32)}])

    def __call__(self, train_model):
        """({val_frame_mAP, val_frame_mAP50, val_frames, val_matched}, confusion-matrix PNG bytes)."""
        return validate(self.cfg, train_model, self.model, self.source, self.out_png, call=self.call)
