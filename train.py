"""Distributed training loop of YOLOV4+1Tr (info/DESIGN.md#training).

A custom loop (`strategy.run` inside a `tf.function`) that is the same on one device, several GPUs and several
machines; decoupled SGDW, global-norm clipping after the cross-replica sum, ALB, checkpoints, TensorBoard, and a
per-epoch validation (frame mask mAP and a confusion matrix) on held-out videos.

    python train.py --preset tiny --data data/shapes/train --run-dir runs/demo
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np

import config as config_lib
from config import atomic_write_text
from fileio import InputError

# Test-only hook: the total loss becomes NaN at this global step (1-based), to exercise the NaN guard.
NAN_HOOK_ENV = "YOLOV4P1_TEST_NAN_AT_STEP"
# The four backbone convs that feed b2..b5 (info/DESIGN.md#backbone): unfrozen after the frozen epochs.
BACKBONE_OUTPUT_CONVS = (16, 37, 58, 77)


class TrainError(RuntimeError):
    """Training cannot go on: bad data, a non-finite loss, an unusable run directory."""


# ---- distribution -------------------------------------------------------------------------------------------

def worker_tf_config(workers: str, index: int) -> dict:
    hosts = [h.strip() for h in workers.split(",") if h.strip()]
    if not hosts or not 0 <= index < len(hosts):
        raise TrainError(f"--worker-index {index} is not an index into --worker {workers!r}")
    return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}


def make_strategy(kind: str = "auto", workers: str | None = None, worker_index: int = 0):
    """Returns (strategy, worker_index). Must run before any other TensorFlow op (collectives need it so)."""
    import tensorflow as tf
    if workers:
        os.environ["TF_CONFIG"] = json.dumps(worker_tf_config(workers, worker_index))
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    n_workers = len(tf_config.get("cluster", {}).get("worker", []))
    if kind == "auto":
        if n_workers > 1:
            kind = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "one_device"
    if kind == "multi_worker":
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        index = int(tf_config.get("task", {}).get("index", 0))
        return strategy, index
    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices), 0
    if kind == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0"), 0
    raise TrainError(f"unknown --strategy {kind!r}")


# ---- optimizer, learning rate, freezing ---------------------------------------------------------------------

def make_optimizer(cfg, schedule):
    """SGD with momentum and decoupled weight decay (info/DESIGN.md#optimizer), built lazily so TensorFlow loads late.

    train.optimizer=adamw swaps SGD for Adam with the same decoupled decay and clipping: a departure for CPU
    runs of the tiny preset only (from scratch, the backbone's gradients are ~1e3 times the heads', and a
    per-parameter step size lets the heads learn within minutes; info/DIFFERENCES.md#the-tiny-preset).
    """
    import keras

    base = keras.optimizers.Adam if cfg.train.optimizer == "adamw" else keras.optimizers.SGD

    class Decoupled(base):
        """`base` whose update step first shrinks decayed variables by v -= wd * v (not scaled by the LR).

        Gradients reach `apply` already summed across replicas and clipped (M9), so the base class's own
        cross-replica sum is switched off.
        """

        def __init__(self, decoupled_decay=0.0, alb_lr_mult=1.0, **kwargs):
            super().__init__(**kwargs)
            self.decoupled_decay = float(decoupled_decay)
            self.alb_lr_mult = float(alb_lr_mult)
            self._decay_flags, self._alb_flags = [], []

        def build(self, variables):
            super().build(variables)
            self._decay_flags = [is_decayed(v) for v in variables]
            self._alb_flags = [is_alb(v) for v in variables]

        def update_step(self, gradient, variable, learning_rate):
            index = self._get_variable_index(variable)
            if self.decoupled_decay and self._decay_flags[index]:
                self.assign_sub(variable, self.decoupled_decay * variable)
            if self.alb_lr_mult != 1.0 and self._alb_flags[index]:
                learning_rate = learning_rate * self.alb_lr_mult
            super().update_step(gradient, variable, learning_rate)

        def _all_reduce_sum_gradients(self, grads_and_vars):
            return list(grads_and_vars)

    kwargs = {"decoupled_decay": cfg.train.weight_decay, "alb_lr_mult": cfg.train.alb_lr_mult,
              "learning_rate": schedule}
    if cfg.train.optimizer == "adamw":
        return Decoupled(**kwargs)
    return Decoupled(momentum=cfg.train.momentum, **kwargs)


def is_alb(variable) -> bool:
    path = getattr(variable, "path", None) or variable.name
    return "alb_log_vars" in path


def is_decayed(variable) -> bool:
    """Weight decay applies to conv/dense kernels only: ALB log-variances, BN/GN scales and offsets and biases
    are left alone (info/DESIGN.md#optimizer; the original decayed everything)."""
    path = getattr(variable, "path", None) or variable.name
    return path.split("/")[-1].split(":")[0] == "kernel" and "alb" not in path


def make_schedule(cfg, total_steps: int):
    import keras
    import tensorflow as tf

    class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up over `warmup` steps, then constant or cosine down to 0 at `total` steps."""

        def __init__(self, lr, warmup, total, cosine):
            self.lr, self.warmup, self.total, self.cosine = float(lr), int(warmup), int(total), bool(cosine)

        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            lr = tf.constant(self.lr, tf.float32)
            if self.cosine:
                span = float(max(1, self.total - self.warmup))
                done = tf.clip_by_value((step - self.warmup) / span, 0.0, 1.0)
                lr = lr * 0.5 * (1.0 + tf.cos(math.pi * done))
            if self.warmup > 0:
                lr = lr * tf.minimum(1.0, (step + 1.0) / self.warmup)
            return lr

        def get_config(self):
            return {"lr": self.lr, "warmup": self.warmup, "total": self.total, "cosine": self.cosine}

    return WarmupSchedule(cfg.train.lr, cfg.train.warmup_steps, total_steps, cfg.train.lr_schedule == "cosine")


def all_layers(model):
    """Every layer of a model, nested sub-models included."""
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out += all_layers(layer)
    return out


def backbone_layers(model):
    return [layer for layer in all_layers(model) if layer.name.startswith(("bb_conv_", "bb_bn_"))]


def set_backbone_phase(model, cfg, frozen: bool):
    """Frozen: every backbone conv/BN untrainable (Keras runs untrainable BN in inference mode). Unfrozen: the
    four output convs with their BNs (faithful) or, with train.unfreeze=all, the whole backbone."""
    for layer in backbone_layers(model):
        idx = int(layer.name.rsplit("_", 1)[1])
        if frozen:
            layer.trainable = False
        else:
            layer.trainable = cfg.train.unfreeze == "all" or idx in BACKBONE_OUTPUT_CONVS


def trainable_vars(model):
    """The model's trainable variables plus the ALB log-variances, each once."""
    seen, out = set(), []
    for v in list(model.trainable_variables) + list(model.alb.trainable_variables):
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


# ---- one training step ---------------------------------------------------------------------------------------

LOG_KEYS = ["total", "box", "obj", "cls", "mask"] + [f"{n}_{k}" for n in ("box", "obj", "cls") for k in (2, 3, 4, 5)]


def make_train_step(model, optimizer, cfg, strategy, train_variables):
    """A tf.function running one distributed step on a distributed batch; returns the global loss dict and the
    gradient global norm. Rebuilt whenever the set of trainable variables changes."""
    import keras
    import tensorflow as tf
    import model as model_lib
    import utils

    n_rep = strategy.num_replicas_in_sync
    clip = float(cfg.train.clip_norm)
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)   # model.mixed_precision

    def replica_step(batch, nan_flag):
        ctx = tf.distribute.get_replica_context()

        def global_sum(x):
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)

        global_batch = global_sum(tf.cast(tf.shape(batch["image"])[0], tf.float32))
        with tf.GradientTape() as tape:
            outputs = model(model_lib.train_inputs(model, batch), training=True)
            # targets and losses in float32 whatever the compute dtype (info/DESIGN.md#m13-mixed-precision)
            outputs = tf.nest.map_structure(lambda t: tf.cast(t, tf.float32) if t.dtype.is_floating else t, outputs)
            losses = utils.compute_losses(cfg, outputs, batch, model.alb, global_sum, global_batch, n_rep)
            total = tf.where(nan_flag > 0, tf.constant(float("nan")), losses["total"])
            scaled = optimizer.scale_loss(total) if loss_scaled else total
        grads = tape.gradient(scaled, train_variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, train_variables)]
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        if loss_scaled:   # clip the true gradients; LossScaleOptimizer.apply divides by the scale again
            scale = tf.cast(optimizer.dynamic_scale, tf.float32)
            grads = [g / scale for g in grads]
        grads, norm = tf.clip_by_global_norm(grads, clip) if clip > 0 else (grads, tf.linalg.global_norm(grads))
        optimizer.apply([g * scale for g in grads] if loss_scaled else grads, train_variables)
        if loss_scaled:   # float16 gradients overflowed: the scaler skipped the step; it logs grad_norm 0
            norm = tf.where(tf.math.is_finite(norm), norm, 0.0)
        logs = {k: losses[k] for k in LOG_KEYS if k != "total"}
        logs["total"] = total
        logs["grad_norm"] = norm / n_rep     # summed below like the losses, which are per-replica shares
        return logs

    @tf.function
    def step(dist_batch, nan_flag):
        per_replica = strategy.run(replica_step, args=(dist_batch, nan_flag))
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

    return step


# ---- run directory ------------------------------------------------------------------------------------------

def resolve_config(args):
    """Preset + --config + --set, or on --resume the run's saved config with the new --set on top."""
    saved = os.path.join(args.run_dir, "config.yaml")
    if args.resume and os.path.exists(saved):
        cfg = config_lib.apply_overrides(config_lib.load_config(saved), args.overrides)
    else:
        cfg = config_lib.config_from_args(args)
    if args.epochs is not None:
        cfg.train.epochs = int(args.epochs)
    return cfg


def add_dataset_classes(cfg, ytvis: dict, ann_path: str):
    cats = ytvis.get("categories")
    if not cats:
        raise TrainError(f"{ann_path}: no 'categories' in the annotation file")
    cats = [{"id": int(c["id"]), "name": str(c["name"])} for c in sorted(cats, key=lambda c: int(c["id"]))]
    if cfg.data.categories and cfg.data.categories != cats:
        raise TrainError(f"{ann_path}: its categories differ from the run's saved config (data.categories)")
    cfg.data.categories = cats
    cfg.model.num_classes = len(cats)
    return config_lib.validate(cfg)


class MetricsFile:
    """metrics.jsonl: one JSON line per epoch, rewritten atomically (rows past a resumed epoch are dropped)."""

    def __init__(self, path: str, keep_through_epoch: int):
        self.path = path
        self.rows = []
        if os.path.exists(path):
            with open(path) as f:
                self.rows = [json.loads(line) for line in f if line.strip()]
            self.rows = [r for r in self.rows if r.get("epoch", 0) <= keep_through_epoch]

    def append(self, row: dict):
        self.rows.append(row)
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))


# ---- TensorBoard without the tensorboard package --------------------------------------------------------------
# tf.summary.scalar/image live in the `tensorboard` pip package, which is not a requirement; the core op
# tf.summary.write with the plugin's metadata writes the very same event records.

def _plugin_metadata(plugin: str) -> bytes:
    from tensorflow.core.framework import summary_pb2
    md = summary_pb2.SummaryMetadata()
    md.plugin_data.plugin_name = plugin
    return md.SerializeToString()


def tb_scalar(tag: str, value, step: int):
    import tensorflow as tf
    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step, metadata=_plugin_metadata("scalars"))


def tb_image(tag: str, png: bytes, height: int, width: int, step: int):
    """One PNG as a TensorBoard image summary ([width, height, encoded] strings, as the images plugin reads)."""
    import tensorflow as tf
    tf.summary.write(tag, tf.constant([str(width), str(height), png]), step=step,
                     metadata=_plugin_metadata("images"))


# ---- validation ---------------------------------------------------------------------------------------------

def gt_frames_for(ytvis: dict, video_ids, max_frames: int, frame_stride: int = 1):
    """The validation frames [(video, frame_index)] and their GT for compute_ap.frame_map."""
    import compute_ap
    vids = {v["id"]: v for v in ytvis["videos"]}
    anns_by_video = {}
    for a in ytvis.get("annotations", []):
        anns_by_video.setdefault(a["video_id"], []).append(a)
    frames = []
    for vid in video_ids:
        v = vids[vid]
        for t in range(0, int(v["length"]), frame_stride):
            inst = []
            for a in anns_by_video.get(vid, []):
                segs = a.get("segmentations") or []
                seg = segs[t] if t < len(segs) else None
                if seg is None:
                    continue
                rle = compute_ap.to_rle(seg, v["height"], v["width"], f"video {vid} frame {t} annotation {a['id']}")
                if rle is not None:
                    inst.append({"category_id": int(a["category_id"]), "segmentation": rle,
                                 "iscrowd": int(a.get("iscrowd", 0))})
            frames.append({"id": int(vid) * 100000 + t, "height": int(v["height"]), "width": int(v["width"]),
                           "video_id": int(vid), "frame_index": t, "instances": inst})
    if max_frames and len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in sorted(set(keep.tolist()))]
    return frames


def confusion_pairs(gt_frame, detections, iou_thresh=0.5):
    """(true, predicted class) of each detection with a GT at box IoU >= 0.5 (info/DESIGN.md#validation-metrics)."""
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


def validate(cfg, train_model, infer_model, val_source, out_png, log=print, call=None):
    """Frame mask mAP@[.5:.95] / @.5 on the held-out frames (detections with score >= infer.score_floor) and the
    confusion matrix PNG of the detections with score >= infer.conf_thresh (bytes returned). `call` runs the
    inference model on a batch (the training loop passes one traced graph, reused every epoch); default: eager.
    `cfg` is the inference config (`Config.for_inference`): frames are letterboxed to the inference canvas."""
    import cv2
    import compute_ap
    import model as model_lib
    from sklearn.metrics import confusion_matrix

    gt_frames, image_path = val_source
    model_lib.copy_weights_by_name(train_model, infer_model)
    size, bs = cfg.model.input_size, max(1, cfg.infer.batch_size)
    dt_frames, pairs = [], []
    for start in range(0, len(gt_frames), bs):
        chunk = gt_frames[start:start + bs]
        images = np.zeros((bs, size, size, 3), np.float32)
        hw = np.ones((bs, 2), np.int32)
        for i, f in enumerate(chunk):
            path = image_path(f)
            img = cv2.imread(path, cv2.IMREAD_COLOR)
            if img is None:
                raise TrainError(f"validation frame {path} (video {f['video_id']}, frame {f['frame_index']}) "
                                 f"cannot be read")
            rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            images[i] = model_lib.letterbox_image(rgb, size)
            hw[i] = rgb.shape[:2]
        inputs = {"image": images, "image_hw": hw}
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


# ---- loading a run --------------------------------------------------------------------------------------------

LEGACY_MODEL_KEY = "model/_operations/"   # checkpoints before 2026-12-01: layers by position in the graph


def make_checkpoint(model, optimizer=None):
    """tf.train.Checkpoint of a model (its layers with weights keyed by layer name, `layers/<name>/...`), its ALB
    layer, the step and epoch counters and, given, the optimizer; returns (checkpoint, parts). Keyed by name, a
    checkpoint restores into any model `build_model` makes from the same config: the training model (GT inputs,
    mask gate) and the plain one have the same named layers in a different graph order."""
    import tensorflow as tf
    layers = tf.train.Checkpoint(**{layer.name: layer for layer in model.layers if layer.weights})
    parts = {"layers": layers, "alb": model.alb,
             "step": tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step"),
             "epoch": tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")}
    if optimizer is not None:
        parts["optimizer"] = optimizer
    return tf.train.Checkpoint(**parts), parts


def load_run(run_dir: str, checkpoint: str | None = None, mode: str = "infer"):
    """(cfg, model) of a run directory: its saved config and the latest (or the given) checkpoint.

    mode="train" returns the train model itself (as train.py builds it: inputs {image, boxes, labels}, the mask head
    on the positive proposals; `model.train_inputs` picks them from a batch); mode="infer" builds the inference
    model at the inference canvas (`Config.for_inference`: the returned cfg's model.input_size is
    `Config.infer_size`) and copies the trained weights into it by layer name.
    """
    import model as model_lib
    cfg_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(cfg_path):
        raise TrainError(f"{run_dir}: no config.yaml (is this a run directory written by train.py?)")
    cfg = config_lib.load_config(cfg_path)
    train_model = model_lib.build_model(cfg, "train", mask_positives=True)
    ensure_alb_built(train_model)
    path = checkpoint or latest_checkpoint(run_dir)
    if path is None:
        raise TrainError(f"{run_dir}: no checkpoint in {os.path.join(run_dir, 'checkpoints')}")
    restore_weights(train_model, path, cfg)
    if mode == "train":
        return cfg, train_model
    cfg = cfg.for_inference()      # the inference canvas (Config.infer_size) in model.input_size
    infer_model = model_lib.build_model(cfg, "infer")
    model_lib.copy_weights_by_name(train_model, infer_model)
    return cfg, infer_model


def is_legacy_checkpoint(path: str) -> bool:
    import tensorflow as tf
    return any(name.startswith(LEGACY_MODEL_KEY) for name, _ in tf.train.list_variables(path))


def restore_weights(model, path: str, cfg):
    """The weights and ALB of checkpoint `path` into `model` (built from `cfg`), every layer with weights matched
    by name (an error names what is missing). A checkpoint written before layers were keyed by name is read
    through the plain training model it was written from and copied over by name."""
    import tensorflow as tf
    import model as model_lib
    source = model
    if is_legacy_checkpoint(path):
        source = model_lib.build_model(cfg, "train")
        ensure_alb_built(source)
        # read (not restore): no save_counter to match; every object of the model must be in the file
        tf.train.Checkpoint(model=source, alb=source.alb).read(path).assert_existing_objects_matched().expect_partial()
    else:
        saved = {name.split("/")[1] for name, _ in tf.train.list_variables(path) if name.startswith("layers/")}
        missing = [layer.name for layer in model.layers if layer.weights and layer.name not in saved]
        if missing:
            raise TrainError(f"checkpoint {path}: no weights for {len(missing)} layer(s) of the model, e.g. "
                             f"{missing[:3]} (a checkpoint of another configuration?)")
        ckpt, _ = make_checkpoint(model)
        ckpt.read(path).assert_existing_objects_matched().expect_partial()   # every weight, BN statistic, ALB
    if source is not model:
        model_lib.copy_weights_by_name(source, model)          # the ALB too


def latest_checkpoint(run_dir: str):
    import tensorflow as tf
    return tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))


def ensure_alb_built(model):
    import tensorflow as tf
    import utils
    if not model.alb.built:
        model.alb(tf.zeros([model.alb.num_terms]))
    return model.alb


# ---- main loop --------------------------------------------------------------------------------------------

def build_state(cfg, strategy, total_steps: int, weights: str | None = None, mask_positives: bool = True):
    """Model, optimizer (built over every variable that can ever train, so unfreezing needs no new slots), LR
    schedule and checkpoint, all made in the strategy scope before the first step (info/DESIGN.md#training). The model
    runs the mask head on the positive proposals only unless `mask_positives` is False (`model.build_model`)."""
    import backbone
    import model as model_lib
    import keras
    with strategy.scope():
        previous = keras.config.dtype_policy()
        if cfg.model.mixed_precision:      # info/DESIGN.md#m13-mixed-precision: float16 compute, float32 variables
            keras.config.set_dtype_policy("mixed_float16")
        try:
            model = model_lib.build_model(cfg, "train", mask_positives=mask_positives)
        finally:
            keras.config.set_dtype_policy(previous)
        ensure_alb_built(model)
        if weights:
            backbone.load_darknet_weights(model, weights)
        for layer in backbone_layers(model):
            layer.trainable = True
        schedule = make_schedule(cfg, total_steps)
        optimizer = make_optimizer(cfg, schedule)
        if cfg.model.mixed_precision:
            # dynamic loss scaling: a step whose gradients overflow float16 is skipped and the scale halved
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(trainable_vars(model))
        ckpt, parts = make_checkpoint(model, optimizer)
    return model, optimizer, schedule, ckpt, parts


def resume(ckpt, parts, run_dir: str, strategy, worker_index: int = 0):
    """--resume: restore the latest checkpoint of `run_dir` into `ckpt` (weights, optimizer slots, ALB, step, epoch).

    Every worker reads the chief's checkpoints (only worker 0 keeps them), so with several workers `run_dir` must
    be a folder they all see (a shared filesystem, or a copy of its `checkpoints/` at each worker's --run-dir). The
    workers then check, with one all-gather, that they restored the same step: a worker that starts over while the
    others resume would run a different number of steps and hang the collectives at the end.
    """
    import tensorflow as tf
    folder = os.path.join(run_dir, "checkpoints")
    path = tf.train.latest_checkpoint(folder)
    if path and is_legacy_checkpoint(path):
        raise TrainError(f"--resume: {path} was written before checkpoints keyed layers by name (2026-12-01); it "
                         f"loads for inference (tracker.py, export.py) but cannot resume: start over without "
                         f"--resume in a new run directory, or remove {folder} (the demo: FRESH=1 make demo)")
    if path:
        ckpt.restore(path).assert_existing_objects_matched()
    step = int(parts["step"].numpy())
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        low, high = worker_steps(strategy, step)
        if low != high:
            raise TrainError(f"--resume: worker {worker_index} found step {step} in {folder} ("
                             f"{'latest ' + os.path.basename(path) if path else 'no checkpoint'}), but the workers "
                             f"found steps {low} to {high}: every worker must see the chief's checkpoints, so give "
                             f"them a --run-dir on a shared filesystem, or copy worker 0's checkpoints/ there")
    if path:
        print(f"resumed from {path} (step {step}, epoch {int(parts['epoch'].numpy())})")
    else:
        print(f"--resume: no checkpoint in {folder}, starting fresh")


def worker_steps(strategy, step: int):
    """(lowest, highest) of `step` over every replica of `strategy` (one all-gather)."""
    import tensorflow as tf
    steps = strategy.gather(strategy.run(lambda: tf.constant([step], tf.int64)), axis=0).numpy()
    return int(steps.min()), int(steps.max())


def next_batch(iterator, locate):
    """next(iterator), where the loader's error raised inside the pipeline (a missing, truncated or mis-sized
    frame, bad run lengths) becomes a TrainError with its message, and a frame TensorFlow cannot decode (its
    header passed the loader's checks, so the error names no file) one naming it: `locate()` decodes every frame
    to find it."""
    import tensorflow as tf
    try:
        return next(iterator)
    except tf.errors.InvalidArgumentError as e:
        loader_error = re.search(r"\b(FrameError|AnnotationError): ([^\n]+)", e.message)
        if loader_error:
            hint = ("; data.skip_bad_frames=true skips such frames (reported)"
                    if loader_error.group(1) == "FrameError" and "data.skip_bad_frames" not in e.message else "")
            raise TrainError(loader_error.group(2) + hint) from None
        print(f"the input pipeline failed ({e.message.splitlines()[0][:160]}); decoding every frame to find "
              f"the bad one ...", flush=True)
        bad = locate()
        if not bad:
            raise
        raise TrainError(f"{len(bad)} frame(s) cannot be decoded although their headers are intact: "
                         + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
                         + ". data.skip_bad_frames cannot skip these: remove or re-encode the files") from None


def resume_position(step: int, batches_per_pass: int):
    """(loader pass, batches to skip in it) after `step` global batches: each pass of the training dataset gives
    `batches_per_pass` = frames // global batch batches (the remainder is dropped), so a resumed run sees the
    batches the uninterrupted run would have seen next (with data.skip_bad_frames, skipped frames shift it)."""
    if batches_per_pass < 1:
        return 0, 0
    return step // batches_per_pass, step % batches_per_pass


def count_train_frames(ytvis, video_ids, frame_stride):
    lengths = {v["id"]: int(v["length"]) for v in ytvis["videos"]}
    return sum((lengths[v] + frame_stride - 1) // frame_stride for v in video_ids)


def train(args):
    strategy, worker_index = make_strategy(args.strategy, args.worker, args.worker_index)
    import keras
    import tensorflow as tf
    import loader_ytvos
    import model as model_lib

    chief = worker_index == 0
    cfg = resolve_config(args)
    data_root = args.data
    ann_path = args.ann or os.path.join(data_root, "instances.json")
    image_root = os.path.join(data_root, "JPEGImages")
    ytvis = loader_ytvos.load_annotations(ann_path)
    cfg = add_dataset_classes(cfg, ytvis, ann_path)
    train_ids, val_ids = loader_ytvos.split_videos(ytvis, cfg.train.val_fraction, cfg.train.split_seed)
    keras.utils.set_random_seed(cfg.train.seed)

    # Only worker 0 writes into the run directory; the others write to a private temporary folder.
    out_dir = args.run_dir if chief else tempfile.mkdtemp(prefix=f"worker{worker_index}_")
    os.makedirs(out_dir, exist_ok=True)
    if chief:
        config_lib.save_config(cfg, os.path.join(out_dir, "config.yaml"))

    n_rep = strategy.num_replicas_in_sync
    gb = cfg.train.batch_size
    if gb % n_rep:
        raise TrainError(f"train.batch_size {gb} is not divisible by the {n_rep} replicas")
    n_frames = count_train_frames(ytvis, train_ids, cfg.data.frame_stride)
    steps_per_epoch = cfg.train.steps_per_epoch or max(1, n_frames // gb)
    total_steps = steps_per_epoch * cfg.train.epochs

    model, optimizer, schedule, ckpt, parts = build_state(cfg, strategy, total_steps, args.weights)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(out_dir, "checkpoints"), max_to_keep=cfg.train.keep_ckpts)
    if args.resume:
        resume(ckpt, parts, args.run_dir, strategy, worker_index)
    step_var, epoch_var = parts["step"], parts["epoch"]

    # The data stream continues where the saved step left it: loader pass and batch within it.
    data_epoch, data_skip = resume_position(int(step_var.numpy()), n_frames // gb)
    ds = loader_ytvos.build_dataset(cfg, ann_path, image_root, video_ids=train_ids, training=True,
                                    first_epoch=data_epoch, skip_frames=data_skip * gb)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.repeat().with_options(options)
    if data_epoch or data_skip:
        print(f"data stream resumed at pass {data_epoch + 1}, batch {data_skip + 1} of {n_frames // gb}")
    iterator = iter(strategy.experimental_distribute_dataset(ds))

    writer = tf.summary.create_file_writer(os.path.join(out_dir, "logs")) if chief else tf.summary.create_noop_writer()
    metrics = MetricsFile(os.path.join(out_dir, "metrics.jsonl"), int(epoch_var.numpy()))
    val_source = None
    if chief and val_ids:
        frames = gt_frames_for(ytvis, val_ids, cfg.train.val_max_frames, cfg.data.frame_stride)
        names = {v["id"]: v["file_names"] for v in ytvis["videos"]}
        val_source = (frames, lambda f: os.path.join(image_root, names[f["video_id"]][f["frame_index"]]))
    infer_cfg = infer_model = infer_call = None
    if val_source:
        infer_cfg = cfg.for_inference()   # validation sees what tracker.py will: the inference canvas
        infer_model = model_lib.build_model(infer_cfg, "infer")
        bs, size = max(1, cfg.infer.batch_size), infer_cfg.model.input_size
        infer_call = tf.function(lambda x: infer_model(x, training=False), input_signature=[{
            "image": tf.TensorSpec([bs, size, size, 3], tf.float32), "image_hw": tf.TensorSpec([bs, 2], tf.int32)}])
    nan_at = int(os.environ.get(NAN_HOOK_ENV, "0") or 0)
    print(f"training {total_steps} steps ({cfg.train.epochs} epochs x {steps_per_epoch}) on {len(train_ids)} "
          f"videos / {n_frames} frames, {len(val_ids)} held-out videos, {n_rep} replica(s), global batch {gb}")

    phase, step_fn = None, None
    step = int(step_var.numpy())
    for epoch in range(int(epoch_var.numpy()), cfg.train.epochs):
        frozen = epoch < cfg.train.freeze_epochs
        if phase != frozen:       # a new set of trainable variables needs a new traced step
            set_backbone_phase(model, cfg, frozen)
            step_fn = make_train_step(model, optimizer, cfg, strategy, trainable_vars(model))
            phase = frozen
            print(f"epoch {epoch + 1}: backbone {'frozen' if frozen else 'unfrozen (' + cfg.train.unfreeze + ')'}, "
                  f"{sum(int(np.prod(v.shape)) for v in trainable_vars(model)):,} trainable parameters")
        sums, n, t0 = {}, 0, time.time()
        first = step - epoch * steps_per_epoch
        for i in range(first, steps_per_epoch):
            batch = next_batch(iterator, lambda: loader_ytvos.find_undecodable_frames(
                ytvis, image_root, train_ids, cfg.data.frame_stride, log=print))
            logs = step_fn(batch, tf.constant(1.0 if step + 1 == nan_at else 0.0))
            logs = {k: float(v) for k, v in logs.items()}
            step += 1
            step_var.assign(step)
            if not all(math.isfinite(v) for v in logs.values()):
                bad = [k for k, v in logs.items() if not math.isfinite(v)]
                last = manager.latest_checkpoint
                raise TrainError(f"non-finite loss at step {step} (epoch {epoch + 1}): {', '.join(bad)}; "
                                 f"stopped without saving; last good checkpoint: {last or 'none'}")
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            lr = float(schedule(step - 1))
            with writer.as_default():
                for k, v in logs.items():
                    tb_scalar(f"loss/{k}" if k != "grad_norm" else "grad_norm", v, step)
                tb_scalar("lr", lr, step)
                for j, s in enumerate(model.alb.alb_log_vars.numpy()):
                    tb_scalar(f"alb/{alb_term_name(cfg, j)}", s, step)
            if step % cfg.train.log_every == 0 or i == steps_per_epoch - 1:
                rate = n * gb / max(1e-9, time.time() - t0)
                print(f"epoch {epoch + 1}/{cfg.train.epochs} step {i + 1}/{steps_per_epoch} (global {step}) "
                      f"loss {logs['total']:.4f} box {logs['box']:.4f} obj {logs['obj']:.4f} cls {logs['cls']:.4f} "
                      f"mask {logs['mask']:.4f} lr {lr:.2e} {rate:.1f} img/s", flush=True)
            if cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0 and i != steps_per_epoch - 1:
                manager.save(checkpoint_number=step)
        epoch_var.assign(epoch + 1)
        manager.save(checkpoint_number=step)
        row = {"epoch": epoch + 1, "step": step,
               **{(k if k == "grad_norm" else f"loss_{k}"): v / max(1, n) for k, v in sums.items()},
               "lr": lr if n else None, "images_per_s": n * gb / max(1e-9, time.time() - t0)}
        if val_source and chief:
            t1 = time.time()
            val, png = validate(infer_cfg, model, infer_model, val_source,
                                os.path.join(out_dir, "confusion_matrix.png"), call=infer_call)
            row.update(val)
            with writer.as_default():
                for k in ("val_frame_mAP", "val_frame_mAP50"):
                    tb_scalar(k, val[k], step)
                hw = tf.image.decode_png(png, channels=3).shape
                tb_image("confusion_matrix", png, int(hw[0]), int(hw[1]), step)
            print(f"epoch {epoch + 1} validation: frame mask mAP {val['val_frame_mAP']:.4f} "
                  f"mAP@.5 {val['val_frame_mAP50']:.4f} on {val['val_frames']} frames ({time.time() - t1:.1f} s)")
        if chief:
            metrics.append(row)
        writer.flush()
    if args.dump_weights:
        dump_weights(model, args.dump_weights)
    if chief:
        atomic_write_text(os.path.join(out_dir, "train_done.json"),
                          json.dumps({"epochs": cfg.train.epochs, "step": step,
                                      "checkpoint": manager.latest_checkpoint}, indent=2) + "\n")
        print(f"run directory: {out_dir} (config.yaml, checkpoints/, logs/, metrics.jsonl, confusion_matrix.png)")
    else:
        shutil.rmtree(out_dir, ignore_errors=True)
    return model


def dump_weights(model, path: str):
    """Every model weight and the ALB log-variances of this worker as one .npz (for comparing workers)."""
    arrays = {f"w{i:04d}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    arrays["alb"] = model.alb.alb_log_vars.numpy()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    print(f"final weights of worker written to {path}")


def alb_term_name(cfg, j: int) -> str:
    if cfg.train.alb == "per_level":
        return "mask" if j == 12 else f"{('box', 'obj', 'cls')[j % 3]}_{j // 3 + 2}"
    return ("box", "obj", "cls", "mask")[j]


def build_parser():
    ap = argparse.ArgumentParser(description="Train YOLOV4+1Tr with a custom distributed loop.")
    config_lib.add_config_args(ap, default_preset="tiny")
    ap.add_argument("--data", default="data/shapes/train",
                    help="split root holding JPEGImages/ and instances.json")
    ap.add_argument("--ann", default=None, help="annotation JSON (default: <data>/instances.json)")
    ap.add_argument("--run-dir", default="runs/demo", help="where config, checkpoints, logs and metrics go")
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of --run-dir")
    ap.add_argument("--strategy", default="auto", choices=["auto", "one_device", "mirrored", "multi_worker"])
    ap.add_argument("--worker", default=None, metavar="HOST:PORT,...",
                    help="all workers' addresses, for multi-worker training (builds TF_CONFIG)")
    ap.add_argument("--worker-index", type=int, default=0, help="this worker's index in --worker")
    ap.add_argument("--weights", default=None, help="Darknet weights (yolov4.conv.137 or yolov4.weights)")
    ap.add_argument("--dump-weights", default=None, metavar="NPZ",
                    help="also write this worker's final weights to NPZ (any worker; for checks)")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except (TrainError, InputError) as e:            # InputError: config, annotations, frames, Darknet weights
        sys.exit(f"train.py: {e}")


if __name__ == "__main__":
    main()
