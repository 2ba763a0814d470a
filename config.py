"""Configuration of YOLOV4+1Tr: one typed `Config` dataclass, named presets, overrides and run-directory I/O.

Presets follow decisions.md §1: `yolov4p1` is the published system at 416x416 with the original HEAD values
(original-model.md §1.1), `tiny` the same architecture narrowed and shrunk for CPU runs, tests and the demo, and
`challenge2021` the state that produced the challenge submission (4 anchors a level).

    cfg = get_preset("tiny")
    cfg = apply_overrides(cfg, ["train.lr=0.002", "model.input_size=320"])
    save_config(cfg, "runs/demo/config.yaml"); cfg = load_config("runs/demo/config.yaml")
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import tempfile
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

# TensorFlow's Linux wheels route convolutions and matmuls through oneDNN only on CPUs with AVX512_VNNI,
# AVX512_BF16, AVX_VNNI or AMX (tensorflow/core/util/port.cc, DefaultOneDnnPolicy); elsewhere (an AMD EPYC, any
# AVX2-only CPU) they fall back to Eigen, which made the tiny preset's training step 3.3x slower on 2 cores
# (info/RESULTS.md). Every command imports this module before TensorFlow, so oneDNN is on unless the user says
# otherwise (TF_ENABLE_ONEDNN_OPTS=0).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# HEAD anchors of the original (original-model.md §1.2): 24 (w, h) pairs in pixels at 416, sorted by width,
# split in order into 4 levels of 6.
HEAD_ANCHORS_416 = [
    [2, 2], [4, 4], [5, 6], [7, 7], [9, 8], [14, 11],
    [15, 19], [20, 24], [22, 25], [27, 33], [33, 35], [47, 45],
    [56, 48], [72, 63], [86, 67], [106, 89], [113, 91], [143, 113],
    [184, 122], [253, 168], [287, 220], [323, 223], [376, 228], [398, 228],
]
# Challenge-era anchors (original-model.md §1.3, line 2 of info/anchors_yt_16.txt): 16 pairs, 4 a level.
CHALLENGE_ANCHORS_416 = [
    [2, 2], [4, 7], [6, 14], [8, 3],
    [20, 15], [22, 41], [25, 24], [34, 48],
    [69, 61], [81, 34], [100, 102], [101, 66],
    [268, 219], [305, 84], [314, 154], [378, 222],
]


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or inconsistent."""


@dataclass
class ModelConfig:
    input_size: int = 416                 # square letterboxed input side, multiple of 32
    width: float = 1.0                    # channel multiplier of backbone, neck and heads (1.0 = original)
    num_classes: int = 40                 # set from the dataset's `categories` by train.py
    anchors: list = field(default_factory=lambda: copy.deepcopy(HEAD_ANCHORS_416))  # (w, h) px at input_size
    anchors_per_level: int = 6            # anchors are split evenly over the levels in order
    anchors_file: Optional[str] = None    # anchor file written by clusters.py; replaces `anchors` when set
    strides: list = field(default_factory=lambda: [4, 8, 16, 32])   # levels 2..5
    tolerance: list = field(default_factory=lambda: [0.6, 0.8, 1.0, 1.2])  # per-level multiplier of thresholds
    fg_thresh: float = 0.4                # anchor IoU > fg*tol: positive
    bg_thresh: float = 0.3                # anchor IoU < bg*tol: negative; between: ignored
    id_thresh: float = 0.4                # centroid anchor carries the class label if IoU > id*tol
    class_targets: str = "centroid"       # centroid (decisions M6) | fg: every foreground anchor (tiny only)
    obj_prior: float = 0.0                # 0: zero bias (original); p in (0, 1): objectness starts at p (tiny only)
    class_conv: int = 0                   # 0: class logits are a Dense on n_k (original); N > 0: a 3x3 conv+BN+leaky of
                                          # max(N, C_k) filters first (tiny only: n2 has 16 channels at width 0.25)
    nms_thresh: float = 0.3               # IoU threshold of both NMS stages
    pre_nms_limit: int = 200              # proposals kept per level by the per-level NMS
    max_prop: int = 50                    # proposals kept by the global NMS (static)
    min_box_dim: float = 5e-4             # proposals narrower than this (normalised) are dropped
    min_box_ratio: float = 1e-3           # proposals with w/h or h/w below this are dropped
    emb_dim: int = 208                    # channels of the embedding maps e2..e5
    mask_layers: int = 256                # channels of the mask-subnet convs
    mask_pool: int = 14                   # ROI-align output side
    mask_size: int = 28                   # mask prediction side
    mask_box_scale: float = 1.0           # the mask's ROI is the proposal box scaled by this about its centre, in
                                          # training and at inference (1.0: the box itself, original; tiny only)
    mask_pixels: int = 0                  # 0: none (original); N > 0: a pixel branch, N-channel convs on the image
                                          # crop at mask_size, fused before the mask output (tiny only)
    gn_groups: int = 32                   # group normalisation groups in the mask subnet
    mask_iou_thresh: float = 0.5          # proposal-GT box IoU for a mask target
    sync_bn: bool = True                  # synchronised BN across replicas (decisions M14)
    bn_epsilon: float = 1e-6              # Darknet's (and OpenCV's reader's) BN epsilon (decisions M2)
    mixed_precision: bool = False         # mixed_float16 for GPUs (decisions M13)
    conv_init: str = "normal"             # kernels of convs followed by BN: normal = N(0, 0.01) (original) | he
    bn_momentum: float = 0.99             # BN moving-statistics momentum (Keras default)


@dataclass
class DataConfig:
    max_instances: int = 15               # GT padding per frame
    mask_res: int = 104                   # GT masks kept at this side (letterboxed frame, reduced resolution);
                                          # 0: at model.input_size (Config.mask_res resolves it)
    frame_stride: int = 1                 # use every k-th annotated frame
    augment: bool = True
    flip_prob: float = 0.5
    crop_prob: float = 0.5
    translate_prob: float = 0.5
    scale_jitter: list = field(default_factory=lambda: [0.75, 1.25])  # random scale range of the letterboxed frame
    hsv_prob: float = 0.5
    hsv_gains: list = field(default_factory=lambda: [0.015, 0.5, 0.3])  # hue, saturation, value jitter
    pack_prob: float = 0.0                # training canvases holding strips of two frames, one over the other
                                          # (loader_ytvos.pack_targets; an augmentation: off with augment=false;
                                          # not in the original)
    skip_bad_frames: bool = False         # skip missing/corrupt frames (reported) instead of failing
    shuffle_buffer: int = 1024
    categories: list = field(default_factory=list)  # [{"id": i, "name": s}] from the training JSON


@dataclass
class TrainConfig:
    batch_size: int = 4                   # global batch (split over replicas)
    lr: float = 1e-3
    optimizer: str = "sgd"                # sgd (decisions §0) | adamw (Adam + the same decay; CPU demo only)
    lr_schedule: str = "constant"         # constant | cosine
    warmup_steps: int = 0
    momentum: float = 0.9
    weight_decay: float = 1e-4            # decoupled (SGDW): v -= wd * v each step
    clip_norm: float = 5.0                # global-norm clipping after the cross-replica reduction
    epochs: int = 60
    steps_per_epoch: int = 0              # 0: one pass over the training frames
    freeze_epochs: int = 2                # backbone frozen for these epochs
    unfreeze: str = "outputs"             # outputs (the four b2..b5 convs, faithful) | all
    alb: str = "per_level"                # per_level (report) | global (original code's 4 scalars)
    alb_lr_mult: float = 1.0              # ALB log-variances step at lr x this (>1: they settle within a short run)
    loss_norm: str = "positives"          # positives (decisions M8) | all (original) | balanced (obj: fg + bg means)
                                          # | focal (obj: focal loss summed over non-ignored anchors / positives)
    val_fraction: float = 0.1             # whole videos held out from the training JSON
    val_max_frames: int = 400             # cap on validation frames per epoch (0: all)
    split_seed: int = 0
    seed: int = 0
    ckpt_every: int = 500                 # steps between checkpoints (also at each epoch end)
    keep_ckpts: int = 3
    log_every: int = 10


@dataclass
class InferConfig:
    score_floor: float = 0.05             # detections stored in frame predictions (decisions §6.2)
    conf_thresh: float = 0.5              # score gate for frame mAP and drawings
    mask_thresh: float = 0.5
    batch_size: int = 4
    scale: float = 1.0                    # inference canvas = model.input_size x scale, to a multiple of 32
                                          # (Config.infer_size); anchors keep their trained pixel sizes


@dataclass
class TrackConfig:
    lam: float = 0.5                      # class-mismatch cost (decisions T1)
    tau: float = 0.99                     # gate: cost < tau
    gamma: float = 0.01                   # Lonely Best Friend margin
    score_floor: float = 0.6              # detections with score >= floor take part
    min_hits: int = 4                     # track kept iff >= min_hits detections ...
    min_score: float = 0.6                # ... and mean score > min_score
    max_age: Optional[int] = None         # None: tracks never expire
    keep_doubtful: bool = False           # start tracks from detections failing BF/LBF
    motion: bool = False                  # compare detections with the last mask moved at the track's velocity
                                          # (not in the original: T4 compares the last mask where it was)
    refind: float = 0.0                   # 0: off (original); r > 0: a detection that would start a track goes to
                                          # the nearest same-class track unmatched in its frame whose expected
                                          # centre is within r object sizes (tracking.tracks.refind; not original)


@dataclass
class Config:
    preset: str = "yolov4p1"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    # ---- derived values ------------------------------------------------------------------------------
    @property
    def mask_res(self) -> int:
        """Side of the GT masks kept per instance: data.mask_res, or the input size when it is 0."""
        return self.data.mask_res or self.model.input_size

    @property
    def infer_size(self) -> int:
        """Side of the inference canvas: model.input_size x infer.scale, rounded to the nearest multiple of 32
        (at least 64); the trained size itself at scale 1."""
        return max(64, 32 * int(round(self.model.input_size * self.infer.scale / 32.0)))

    def for_inference(self) -> "Config":
        """A copy whose model.input_size is the inference canvas (infer_size). Everything that builds or feeds
        the inference model reads it there; the anchors keep their pixel sizes, because the network learned its
        box offsets against anchors of those pixel sizes (an object drawn larger on a larger canvas is matched
        as a larger object, as under the training scale jitter)."""
        cfg = copy.deepcopy(self)
        cfg.model.input_size = self.infer_size
        cfg.model.anchors_file = None          # the anchors are read already; do not rescale them to the new size
        cfg.infer.scale = 1.0                  # the copy is at its inference size: applying this again is a no-op
        # Training-only data options whose checks involve the input size: reset so the copy validates at its
        # size (export.py saves it and ExportedModel reads it back).
        cfg.data.pack_prob, cfg.data.mask_res = 0.0, 0
        return cfg

    @property
    def num_levels(self) -> int:
        return len(self.model.strides)

    def level_anchors(self):
        """Anchors as a [levels, anchors_per_level, 2] float32 array of (w, h) pixels at the input size."""
        import numpy as np
        anchors = np.asarray(self.model.anchors, np.float32).reshape(self.num_levels, self.model.anchors_per_level, 2)
        return anchors

    def class_names(self) -> list:
        if self.data.categories:
            return [c["name"] for c in self.data.categories]
        return [f"class_{i + 1}" for i in range(self.model.num_classes)]

    def category_ids(self) -> list:
        if self.data.categories:
            return [int(c["id"]) for c in self.data.categories]
        return list(range(1, self.model.num_classes + 1))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- presets -----------------------------------------------------------------------------------------------

def _scaled_anchors(anchors, size):
    # The original multiplies the 416 anchors by TRAIN_SIZE/416 and truncates to int; keep floats, floor at 1 px.
    return [[max(1.0, round(w * size / 416.0, 2)), max(1.0, round(h * size / 416.0, 2))] for w, h in anchors]


def _preset_yolov4p1() -> Config:
    return Config(preset="yolov4p1")


def _preset_tiny() -> Config:
    """The demo/test preset: the same architecture narrowed (width 0.25) at 192 px, tuned for short from-scratch
    runs of the built-in shapes dataset on a 2-core CPU (`make demo`; README §3 has what it reaches).

    Departures from the published recipe, for this preset only: He-initialised BN convs (no pretrained
    backbone), Adam with the decoupled decay, a focal objectness loss with the foreground bias started at 0.01,
    class labels on every foreground anchor, a 3x3 conv (64 filters) under each level's class Dense, ALB
    log-variances stepping 10x faster, BN momentum 0.9 (moving statistics must follow a network that changes fast
    in a few hundred steps), GT masks at the input resolution, two frames a training canvas (data.pack_prob), a
    mask ROI 1.25x the box and a pixel branch in the mask subnet (model.mask_box_scale, model.mask_pixels),
    inference on a 224 px canvas (infer.scale 7/6), and in the tracker the score floor and mean-score gate at 0.3
    (focal-loss scores), motion and refind."""
    cfg = Config(preset="tiny")
    # 320x180 demo frames -> 192x108; ~11 img/s a training step on 2 cores. In the demo (1,364 steps) 192 against
    # 160 px: frame mask mAP@.5 on the held-out training videos 0.30 / 0.55 / 0.66 / 0.69 after each pass against
    # 0.24 / 0.38 / 0.51 / 0.59 (0.22 / 0.50 / 0.55 / 0.62 in a second run), for 22 % more time a step.
    size = 192
    cfg.model.input_size = size
    cfg.model.width = 0.25
    cfg.model.anchors = _scaled_anchors(HEAD_ANCHORS_416, size)   # the demo passes k-means anchors instead
    cfg.model.emb_dim = 32
    cfg.model.mask_layers = 32
    cfg.model.gn_groups = 8
    # Masks (the video AP's IoU is the masks'): boxes from the short run are off by ~11 % in size (median box IoU
    # 0.78 with the object), and e2 is a quarter of the canvas, so the mask subnet saw a clipped, blurred object.
    # The mask ROI is the box x 1.25 and a pixel branch reads the image crop (model.mask_pixels). Demo runs of
    # 2026-11-30 on `valid`, before -> with both: median mask IoU of found objects 0.79 -> 0.89, frame mask mAP
    # 0.355 -> 0.496 / 0.538, video AP (lam 0.5, before refind) 0.254 -> 0.342; ~8 % more time a step.
    cfg.model.mask_box_scale = 1.25
    cfg.model.mask_pixels = 8
    cfg.model.pre_nms_limit = 100
    cfg.model.max_prop = 16               # the shapes dataset has at most 8 instances a frame
    cfg.model.sync_bn = False
    cfg.model.conv_init = "he"
    cfg.model.bn_momentum = 0.9
    cfg.model.class_targets = "fg"
    cfg.model.class_conv = 64
    cfg.model.obj_prior = 0.01
    # GT masks at the canvas resolution (0: the input size, whatever it is set to): at 64, 0.4 of it, the mask
    # targets alone capped the mean mask IoU of the demo's objects at 0.83 (0.65 under 400 px); at 160, 0.92.
    # Memory: 8 x 16 x 192 x 192 bytes (4.7 MB) a batch with max_instances 16 (below).
    cfg.data.mask_res = 0
    # Two frames a canvas (data.pack_prob): a 320x180 frame letterboxed at 192 is 108 rows of 192, so a packed
    # canvas (a 96-row strip of one frame over one of another) shows up to 1.78x the picture for the same step.
    # Demo runs of 2026-11-30 (the demo's 1,364 steps, inference at 224), without -> with, seeds 0 / 1: video AP
    # (lam 0.5) on the held-out training videos 0.289 -> 0.292 / 0.219 -> 0.331, AP50 0.594 -> 0.702 /
    # 0.550 -> 0.689; on `valid` 0.285 -> 0.265 / 0.191 -> 0.288, AP50 0.558 -> 0.612 / 0.447 -> 0.555; frame
    # mask mAP on `valid` 0.363 -> 0.361 / 0.326 -> 0.389. Training time unchanged (1,053 s against 1,010-1,054).
    cfg.data.pack_prob = 1.0
    cfg.data.max_instances = 16           # two frames of at most 8 instances each
    cfg.train.batch_size = 8
    cfg.train.optimizer = "adamw"
    cfg.train.lr = 2e-3
    cfg.train.lr_schedule = "cosine"
    cfg.train.warmup_steps = 50
    cfg.train.loss_norm = "focal"
    cfg.train.alb_lr_mult = 10.0
    cfg.train.epochs = 6                  # one pass over the frames an epoch: ~640 steps, ~11 min with validation
    cfg.train.freeze_epochs = 0
    cfg.train.unfreeze = "all"
    cfg.train.ckpt_every = 100
    cfg.train.val_max_frames = 100
    # The focal objectness loss gives lower scores than the original's cross entropy (on the demo's held-out
    # training videos after 3,069 steps, true positives' median score is ~0.4), so the tracker's 0.6 floor and
    # mean-score gate (decisions T5, T7) would drop most of them. Video AP there, lam 0.5: 0.057 at 0.6,
    # 0.096 at 0.5, 0.112 at 0.4, 0.148 at 0.3, 0.151 at 0.25, 0.152 at 0.2.
    cfg.track.score_floor = 0.3
    cfg.track.min_score = 0.3
    # Where a crossing hides both objects for a few frames, each last mask lies where the *other* object
    # reappears. Compared at its velocity instead (track.motion), demo run of 2026-11-30, lam 0.5: on the held-out
    # training videos video AP 0.132 -> 0.174, AP50 0.279 -> 0.444, identity switches at the crossings 16 -> 6;
    # on `valid` 0.165 -> 0.186, 0.390 -> 0.480, 12 -> 6.
    cfg.track.motion = True
    # An object hidden or missed for a few frames often comes back where its last mask (even moved) no longer
    # overlaps, and starts a second track: the video AP counts each half as a miss and a false track. track.refind
    # gives such a detection to a same-class track that lost its object nearby (within 2 object sizes).
    cfg.track.refind = 2.0
    # Train small, test large (FixRes, Touvron et al. 2019): the crop augmentation letterboxes a window around
    # the objects, so in training they are drawn larger than the test letterbox draws them (mean magnification
    # 1.18, geometric mean 1.13, over 2,000 sampled training frames), and the smallest objects are the ones
    # missed. Inference at 224 (scale 7/6), same weights, demo run of 2026-11-30 at 192: on the held-out training
    # videos frame mask mAP 0.306 -> 0.344, oracle-association video AP 0.287 -> 0.352, tracker video AP
    # 0.263 -> 0.289 (at 256: 0.314, 0.351, 0.272); on `valid` video AP 0.226 -> 0.285, AP75 0.136 -> 0.248.
    cfg.infer.scale = 224 / 192
    return cfg


def _preset_challenge2021() -> Config:
    cfg = Config(preset="challenge2021")
    cfg.model.anchors = copy.deepcopy(CHALLENGE_ANCHORS_416)
    cfg.model.anchors_per_level = 4
    cfg.model.tolerance = [0.4, 0.6, 0.8, 1.0]
    cfg.model.nms_thresh = 0.2
    cfg.infer.conf_thresh = 0.7
    return cfg


PRESETS = {"yolov4p1": _preset_yolov4p1, "tiny": _preset_tiny, "challenge2021": _preset_challenge2021}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return validate(PRESETS[name]())


# ---- overrides, validation, I/O -------------------------------------------------------------------------

def _field_types(obj) -> dict:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _coerce(value: Any, hint, key: str):
    """Check `value` against the annotation `hint`; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} expects a boolean (true/false), got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} expects an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-6" (no dot) as a string; accept any float literal for a number field.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r} expects a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. --set model.anchors_file=2021 parsed by YAML as a number
        raise ConfigError(f"config key {key!r} expects a string, got {value!r}")
    if hint is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
    return value


def _set(cfg: Config, key: str, value: Any, parsed: bool = True):
    parts = key.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(obj):
            raise ConfigError(f"unknown config key {key!r}")
        types = _field_types(obj)
        if part not in types:
            where = ".".join(parts[:i]) or "the top level"
            raise ConfigError(f"unknown config key {key!r}: {part!r} is not a field of {where} "
                              f"(fields: {', '.join(sorted(types))})")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                if not isinstance(value, dict):
                    raise ConfigError(f"config key {key!r} is a section; give a mapping")
                for k, v in value.items():
                    _set(cfg, f"{key}.{k}", v)
            else:
                setattr(obj, part, _coerce(value, types[part], key))
        else:
            obj = getattr(obj, part)


def apply_overrides(cfg: Config, overrides) -> Config:
    """Apply `key=value` strings (values parsed as YAML: numbers, booleans, lists, null) and validate."""
    cfg = copy.deepcopy(cfg)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        _set(cfg, key.strip(), value)
    return validate(cfg)


def apply_dict(cfg: Config, data: dict, source: str = "<dict>") -> Config:
    cfg = copy.deepcopy(cfg)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping")
    for key, value in data.items():
        if key == "preset":
            continue
        try:
            _set(cfg, key, value)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
    return validate(cfg)


def read_anchor_file(path: str, input_size: int):
    """Read an anchor file (format in clusters.py): returns (anchors [[w, h], ...] scaled to `input_size`,
    anchors_per_level). Lines: `# size N`, then one line per level of space-separated `w,h` pixel pairs."""
    size = None
    levels = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(f"anchor file {path}: cannot read ({e.strerror})") from None
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            tok = s[1:].split()
            if len(tok) == 2 and tok[0] == "size":
                size = int(tok[1])
            continue
        try:
            pairs = [[float(v) for v in pair.split(",")] for pair in s.split()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError
            levels.append(pairs)
        except ValueError:
            raise ConfigError(f"anchor file {path}, line {n}: expected space-separated w,h pairs, got {s!r}") from None
    if size is None:
        raise ConfigError(f"anchor file {path}: missing the '# size N' line giving the input size of the anchors")
    if not levels or any(len(lv) != len(levels[0]) or any(len(p) != 2 for p in lv) for lv in levels):
        raise ConfigError(f"anchor file {path}: every level line must hold the same number of w,h pairs")
    scale = input_size / size
    anchors = [[round(w * scale, 4), round(h * scale, 4)] for lv in levels for w, h in lv]
    return anchors, len(levels[0]), len(levels)


def write_anchor_file(path: str, level_anchors, input_size: int, comment: str = ""):
    """Write anchors given as [levels][per_level][(w, h)] pixels at `input_size` (atomically)."""
    lines = []
    for c in comment.splitlines():
        lines.append(f"# {c}")
    lines.append(f"# size {input_size}")
    for lv in level_anchors:
        lines.append(" ".join(f"{float(w):.2f},{float(h):.2f}" for w, h in lv))
    atomic_write_text(path, "\n".join(lines) + "\n")


def validate(cfg: Config) -> Config:
    m = cfg.model
    if m.anchors_file:
        anchors, per_level, n_levels = read_anchor_file(m.anchors_file, m.input_size)
        if n_levels != len(m.strides):
            raise ConfigError(f"anchor file {m.anchors_file}: {n_levels} levels, the model has {len(m.strides)}")
        m.anchors, m.anchors_per_level = anchors, per_level
    if m.input_size % 32 or m.input_size < 64:
        raise ConfigError(f"model.input_size must be a multiple of 32 and at least 64, got {m.input_size}")
    if not cfg.infer.scale > 0:
        raise ConfigError(f"infer.scale must be positive, got {cfg.infer.scale}")
    if len(m.strides) != 4 or list(m.strides) != [4, 8, 16, 32]:
        raise ConfigError(f"model.strides must be [4, 8, 16, 32] (the four levels b2..b5), got {m.strides}")
    if len(m.tolerance) != len(m.strides):
        raise ConfigError(f"model.tolerance needs one value per level ({len(m.strides)}), got {m.tolerance}")
    if any(not isinstance(a, (list, tuple)) or len(a) != 2 for a in m.anchors):
        raise ConfigError("model.anchors must be a list of [w, h] pairs")
    if m.anchors_per_level < 1 or len(m.anchors) != m.anchors_per_level * len(m.strides):
        raise ConfigError(f"model.anchors: {len(m.anchors)} anchors are not divisible into {len(m.strides)} levels "
                          f"of {m.anchors_per_level} (model.anchors_per_level)")
    if any(w <= 0 or h <= 0 for w, h in m.anchors):
        raise ConfigError("model.anchors: every width and height must be positive")
    if m.width <= 0:
        raise ConfigError(f"model.width must be positive, got {m.width}")
    if m.mask_layers % m.gn_groups or (m.mask_layers // 2) % m.gn_groups:
        raise ConfigError(f"model.mask_layers ({m.mask_layers}) and half of it must be divisible by "
                          f"model.gn_groups ({m.gn_groups})")
    if not 1.0 <= m.mask_box_scale <= 2.0:
        raise ConfigError(f"model.mask_box_scale must be in [1, 2], got {m.mask_box_scale}")
    if cfg.track.refind < 0:
        raise ConfigError(f"track.refind must be >= 0, got {cfg.track.refind}")
    if m.mask_pixels < 0 or m.mask_pixels % m.gn_groups:
        raise ConfigError(f"model.mask_pixels must be 0 or a positive multiple of model.gn_groups "
                          f"({m.gn_groups}), got {m.mask_pixels}")
    if m.mask_size != 2 * m.mask_pool:
        raise ConfigError(f"model.mask_size must be twice model.mask_pool (one 2x deconvolution), "
                          f"got {m.mask_size} and {m.mask_pool}")
    if m.max_prop > m.pre_nms_limit * len(m.strides):
        raise ConfigError("model.max_prop cannot exceed pre_nms_limit times the number of levels")
    if m.conv_init not in ("normal", "he"):
        raise ConfigError(f"model.conv_init must be 'normal' or 'he', got {m.conv_init!r}")
    if not 0.0 <= m.bn_momentum < 1.0:
        raise ConfigError(f"model.bn_momentum must be in [0, 1), got {m.bn_momentum}")
    if m.class_targets not in ("centroid", "fg"):
        raise ConfigError(f"model.class_targets must be 'centroid' or 'fg', got {m.class_targets!r}")
    if m.num_classes < 1:
        raise ConfigError("model.num_classes must be at least 1")
    if not 0.0 <= m.obj_prior < 1.0:
        raise ConfigError(f"model.obj_prior must be 0 (zero bias) or a probability in (0, 1), got {m.obj_prior}")
    if m.class_conv < 0:
        raise ConfigError(f"model.class_conv must be 0 (Dense on n_k) or a filter count, got {m.class_conv}")
    if cfg.data.categories and len(cfg.data.categories) != m.num_classes:
        raise ConfigError(f"data.categories lists {len(cfg.data.categories)} classes, model.num_classes is "
                          f"{m.num_classes}")
    t = cfg.train
    if t.lr_schedule not in ("constant", "cosine"):
        raise ConfigError(f"train.lr_schedule must be 'constant' or 'cosine', got {t.lr_schedule!r}")
    if t.optimizer not in ("sgd", "adamw"):
        raise ConfigError(f"train.optimizer must be 'sgd' or 'adamw', got {t.optimizer!r}")
    if t.alb_lr_mult <= 0:
        raise ConfigError(f"train.alb_lr_mult must be positive, got {t.alb_lr_mult}")
    if t.unfreeze not in ("outputs", "all"):
        raise ConfigError(f"train.unfreeze must be 'outputs' or 'all', got {t.unfreeze!r}")
    if t.alb not in ("per_level", "global"):
        raise ConfigError(f"train.alb must be 'per_level' or 'global', got {t.alb!r}")
    if t.loss_norm not in ("positives", "all", "balanced", "focal"):
        raise ConfigError(f"train.loss_norm must be 'positives', 'all', 'balanced' or 'focal', got {t.loss_norm!r}")
    if not 0.0 <= t.val_fraction < 1.0:
        raise ConfigError(f"train.val_fraction must be in [0, 1), got {t.val_fraction}")
    if t.batch_size < 1:
        raise ConfigError("train.batch_size must be at least 1")
    if len(cfg.data.scale_jitter) != 2 or cfg.data.scale_jitter[0] > cfg.data.scale_jitter[1]:
        raise ConfigError("data.scale_jitter must be [low, high] with low <= high")
    if cfg.data.mask_res != 0 and not 8 <= cfg.data.mask_res <= m.input_size:
        raise ConfigError(f"data.mask_res must be 0 (the input size) or between 8 and model.input_size "
                          f"({m.input_size}), got {cfg.data.mask_res}")
    if not 0.0 <= cfg.data.pack_prob <= 1.0:
        raise ConfigError(f"data.pack_prob must be in [0, 1], got {cfg.data.pack_prob}")
    if cfg.data.pack_prob > 0 and m.input_size % cfg.mask_res:
        raise ConfigError(f"data.pack_prob needs mask rows of a whole number of pixels: model.input_size "
                          f"({m.input_size}) must be a multiple of the mask resolution ({cfg.mask_res})")
    return cfg


def atomic_write_text(path: str, text: str):
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=os.path.basename(path))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_config(cfg: Config, path: str):
    """Write the resolved config as YAML (or JSON if `path` ends in .json), atomically."""
    data = cfg.to_dict()
    text = json.dumps(data, indent=2) if path.endswith(".json") else yaml.safe_dump(data, sort_keys=False)
    atomic_write_text(path, text)


SECTIONS = ("model", "data", "train", "infer", "track")


def load_config(path: str) -> Config:
    """Read a config file (YAML or JSON). A `preset` key picks the base; other keys override it."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read ({e.strerror})") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {path}: not valid {'JSON' if path.endswith('.json') else 'YAML'} ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    base = get_preset(data.get("preset", "yolov4p1"))
    # The anchors of a resolved config are already read; do not read the anchor file again.
    model = data.get("model") or {}
    if isinstance(model, dict) and model.get("anchors_file") and "anchors" in model:
        model = dict(model)
        model["anchors_file"] = None
        data = dict(data, model=model)
    cfg = apply_dict(base, data, source=path)
    cfg.preset = data.get("preset", cfg.preset)
    if all(isinstance(data.get(k), dict) for k in SECTIONS):       # a saved run's resolved config
        missing = [f"{k}.{name}={getattr(getattr(cfg, k), name)!r}" for k in SECTIONS
                   for name in _field_types(getattr(cfg, k)) if name not in data[k]]
        if missing:
            print(f"config file {path}: has no {', '.join(missing)}; these values come from today's "
                  f"`{cfg.preset}` preset. A run saved before they existed had the original behaviour (the "
                  f"defaults in config.py): add them to the file with those values where that matters",
                  file=sys.stderr)
    return cfg


def add_config_args(parser: argparse.ArgumentParser, default_preset: Optional[str] = "yolov4p1"):
    parser.add_argument("--preset", default=default_preset, choices=sorted(PRESETS), help="base configuration")
    parser.add_argument("--config", default=None, help="YAML or JSON file of overrides (applied after the preset)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one value, e.g. --set train.lr=0.002 (repeatable)")


def config_from_args(args) -> Config:
    cfg = get_preset(args.preset)
    if getattr(args, "config", None):
        try:
            with open(args.config) as f:
                data = json.load(f) if args.config.endswith(".json") else yaml.safe_load(f)
        except (OSError, json.JSONDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"config file {args.config}: {e}") from None
        cfg = apply_dict(cfg, data or {}, source=args.config)
    return apply_overrides(cfg, args.overrides)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Print a resolved configuration as YAML.")
    add_config_args(ap)
    print(yaml.safe_dump(config_from_args(ap.parse_args()).to_dict(), sort_keys=False), end="")
