"""Configuration of YOLOV4+1Tr: one typed `Config` dataclass, named presets, overrides and run-directory I/O.

Presets (info/DESIGN.md#configuration): `yolov4p1` is the published system at 416x416 with the original HEAD values
(the original's config.py), `tiny` the same architecture narrowed and shrunk for CPU runs, tests and the demo, and
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
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from fileio import InputError, atomic_write_text

# TensorFlow's Linux wheels route convolutions and matmuls through oneDNN only on CPUs with AVX512_VNNI,
# AVX512_BF16, AVX_VNNI or AMX (tensorflow/core/util/port.cc, DefaultOneDnnPolicy); elsewhere (an AMD EPYC, any
# AVX2-only CPU) they fall back to Eigen, which made the tiny preset's training step 3.3x slower on 2 cores
# (info/RESULTS.md). Every command imports this module before TensorFlow, so oneDNN is on unless the user says
# otherwise (TF_ENABLE_ONEDNN_OPTS=0).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# HEAD anchors of the original (its config.py at HEAD): 24 (w, h) pairs in pixels at 416, sorted by width,
# split in order into 4 levels of 6.
HEAD_ANCHORS_416 = [
    [2, 2], [4, 4], [5, 6], [7, 7], [9, 8], [14, 11],
    [15, 19], [20, 24], [22, 25], [27, 33], [33, 35], [47, 45],
    [56, 48], [72, 63], [86, 67], [106, 89], [113, 91], [143, 113],
    [184, 122], [253, 168], [287, 220], [323, 223], [376, 228], [398, 228],
]
# Challenge-era anchors (line 2 of its info/anchors_yt_16.txt): 16 pairs, 4 a level.
CHALLENGE_ANCHORS_416 = [
    [2, 2], [4, 7], [6, 14], [8, 3],
    [20, 15], [22, 41], [25, 24], [34, 48],
    [69, 61], [81, 34], [100, 102], [101, 66],
    [268, 219], [305, 84], [314, 154], [378, 222],
]


class ConfigError(InputError):
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
    class_targets: str = "centroid"       # centroid (info/DESIGN.md#m6-class-head) | fg: every foreground anchor
    obj_prior: float = 0.0                # 0: zero bias (original); p in (0, 1): objectness starts at p (tiny only)
    class_conv: int = 0                   # 0: a Dense on n_k (original); N: a 3x3 conv of max(N, C_k) filters first
    nms_thresh: float = 0.3               # IoU threshold of both NMS stages
    pre_nms_limit: int = 200              # proposals kept per level by the per-level NMS
    max_prop: int = 50                    # proposals kept by the global NMS (static)
    min_box_dim: float = 5e-4             # proposals narrower than this (normalised) are dropped
    min_box_ratio: float = 1e-3           # proposals with w/h or h/w below this are dropped
    emb_dim: int = 208                    # channels of the embedding maps e2..e5
    mask_layers: int = 256                # channels of the mask-subnet convs
    mask_pool: int = 14                   # ROI-align output side
    mask_size: int = 28                   # mask prediction side
    mask_box_scale: float = 1.0           # mask ROI = the proposal box scaled about its centre (1.0: the box, original)
    mask_pixels: int = 0                  # 0: none (original); N: a pixel branch of N-channel convs on the crop
    gn_groups: int = 32                   # group normalisation groups in the mask subnet
    mask_iou_thresh: float = 0.5          # proposal-GT box IoU for a mask target
    sync_bn: bool = True                  # synchronised BN across replicas (info/DESIGN.md#m14-synchronised-bn)
    bn_epsilon: float = 1e-6              # Darknet's BN epsilon, as OpenCV's reader (info/DESIGN.md#m2-darknet-weights)
    mixed_precision: bool = False         # mixed_float16 for GPUs (info/DESIGN.md#m13-mixed-precision)
    conv_init: str = "normal"             # kernels of convs followed by BN: normal = N(0, 0.01) (original) | he
    bn_momentum: float = 0.99             # BN moving-statistics momentum (Keras default)


@dataclass
class DataConfig:
    max_instances: int = 15               # GT padding per frame
    mask_res: int = 104                   # side of the GT masks over the canvas; 0: model.input_size
    frame_stride: int = 1                 # use every k-th annotated frame
    augment: bool = True                  # training augmentation on (validation and inference never augment)
    flip_prob: float = 0.5                # horizontal flip
    crop_prob: float = 0.5                # crop around the union of the objects
    translate_prob: float = 0.5           # shift the frame on the canvas
    scale_jitter: list = field(default_factory=lambda: [0.75, 1.25])  # random scale range of the letterboxed frame
    hsv_prob: float = 0.5                 # HSV jitter
    hsv_gains: list = field(default_factory=lambda: [0.015, 0.5, 0.3])  # hue, saturation, value jitter
    pack_prob: float = 0.0                # share of training canvases holding strips of two frames (not original)
    skip_bad_frames: bool = False         # skip missing/corrupt frames (reported) instead of failing
    categories: list = field(default_factory=list)  # [{"id": i, "name": s}] from the training JSON


@dataclass
class TrainConfig:
    batch_size: int = 4                   # global batch (split over replicas)
    lr: float = 1e-3                      # base learning rate
    optimizer: str = "sgd"                # sgd (info/DESIGN.md#optimizer) | adamw (Adam + the same decay and clipping)
    lr_schedule: str = "constant"         # constant | cosine
    warmup_steps: int = 0                 # linear warm-up steps before the schedule
    momentum: float = 0.9                 # SGD momentum (Adam keeps its own betas)
    weight_decay: float = 1e-4            # decoupled (SGDW): v -= wd * v each step
    clip_norm: float = 5.0                # global-norm clipping after the cross-replica reduction
    epochs: int = 60                      # training epochs
    steps_per_epoch: int = 0              # 0: one pass over the training frames
    freeze_epochs: int = 2                # backbone frozen for these epochs
    unfreeze: str = "outputs"             # outputs (the four b2..b5 convs, faithful) | all
    alb: str = "per_level"                # per_level (report) | global (original code's 4 scalars)
    alb_lr_mult: float = 1.0              # ALB log-variances step at lr x this (>1: they settle within a short run)
    loss_norm: str = "positives"          # positives (info/DESIGN.md#m8-loss-normalisation) | all | balanced | focal
    val_fraction: float = 0.1             # whole videos held out from the training JSON
    val_max_frames: int = 400             # cap on validation frames per epoch (0: all)
    split_seed: int = 0                   # seed of the held-out videos
    seed: int = 0                         # seed of initialisation and the data stream
    ckpt_every: int = 500                 # steps between checkpoints (also at each epoch end)
    keep_ckpts: int = 3                   # checkpoints kept on disk
    log_every: int = 10                   # steps between log lines and TensorBoard records


@dataclass
class InferConfig:
    score_floor: float = 0.05             # detections stored in frame predictions (info/DESIGN.md#frame-predictions)
    conf_thresh: float = 0.5              # score gate of the validation confusion matrix (not the frame mAP)
    mask_thresh: float = 0.5              # mask probability threshold when pasting
    batch_size: int = 4                   # frames a batch in tracker.py
    scale: float = 1.0                    # inference canvas = model.input_size x scale (Config.infer_size)


@dataclass
class TrackConfig:
    lam: float = 0.5                      # class-mismatch cost (info/DESIGN.md#t1-cost)
    tau: float = 0.99                     # gate: cost < tau
    gamma: float = 0.01                   # Lonely Best Friend margin
    score_floor: float = 0.6              # detections with score >= floor take part
    min_hits: int = 4                     # track kept iff >= min_hits detections ...
    min_score: float = 0.6                # ... and mean score > min_score
    max_age: Optional[int] = None         # None: tracks never expire
    keep_doubtful: bool = False           # start tracks from detections failing BF/LBF
    motion: bool = False                  # compare with the last mask moved at the track's velocity (not original)
    refind: float = 0.0                   # r > 0: a lost track within r object sizes gets its object back


@dataclass
class Config:
    preset: str = "yolov4p1"              # the preset the overrides apply to
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

    def categories(self) -> list:
        """[{"id", "name"}] of the model's classes in their order, as the outputs and the JSON files name them."""
        return [{"id": i, "name": n} for i, n in zip(self.category_ids(), self.class_names())]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- presets: override tables over the defaults above (the original's HEAD values) -----------------------

def _scaled_anchors(anchors, size, from_size=416):
    # The original multiplies the 416 anchors by TRAIN_SIZE/416 and truncates to int; keep floats, floor at 1 px.
    f = size / float(from_size)
    return [[max(1.0, round(w * f, 2)), max(1.0, round(h * f, 2))] for w, h in anchors]


# Each preset is `{key: value}` applied over `Config()`; a comment gives the reason in one line. Every departure
# from the original has a row in info/DIFFERENCES.md and its measurement an entry in info/RESULTS.md.
PRESET_OVERRIDES = {
    # The published system at 416x416: the defaults.
    "yolov4p1": {},

    # The same architecture narrowed for CPU runs, tests and the demo (info/DIFFERENCES.md#the-tiny-preset).
    "tiny": {
        "model.input_size": 192,                  # 320x180 demo frames -> 192x108; learns faster than 160 px
        "model.width": 0.25,                      # a quarter of the channels: a CPU budget
        "model.anchors": _scaled_anchors(HEAD_ANCHORS_416, 192),  # the demo passes k-means anchors instead
        "model.emb_dim": 32,                      # narrow embeddings and mask subnet, in step with the width
        "model.mask_layers": 32,
        "model.gn_groups": 8,
        "model.mask_box_scale": 1.25,             # short-run boxes are off by ~11 %; a mask cannot leave its box
        "model.mask_pixels": 8,                   # e2 is a quarter of the canvas: small objects need the pixels
        "model.pre_nms_limit": 100,
        "model.max_prop": 16,                     # the shapes dataset has at most 8 instances a frame
        "model.sync_bn": False,                   # one device
        "model.conv_init": "he",                  # from scratch: N(0, 0.01) kernels starve the heads under clipping
        "model.bn_momentum": 0.9,                 # moving statistics follow a network that changes fast
        "model.class_targets": "fg",              # more class supervision in a short run
        "model.class_conv": 64,                   # n2 has 16 channels at width 0.25: the class gets its own conv
        "model.obj_prior": 0.01,                  # with the focal loss: objectness starts at p = 0.01
        "data.mask_res": 0,                       # GT masks at the input size: coarser targets cap small objects
        "data.pack_prob": 1.0,                    # two frames a canvas: a wide frame leaves 84 of 192 rows empty
        "data.max_instances": 16,                 # two frames of at most 8 instances each
        "train.batch_size": 8,
        "train.optimizer": "adamw",               # a run of a few hundred steps
        "train.lr": 2e-3,
        "train.lr_schedule": "cosine",
        "train.warmup_steps": 50,
        "train.loss_norm": "focal",               # about 0.1 % of anchors are positive
        "train.alb_lr_mult": 10.0,                # ALB settles within a short run
        "train.epochs": 6,                        # one pass over the frames an epoch
        "train.freeze_epochs": 0,                 # no pretrained backbone to protect
        "train.unfreeze": "all",
        "train.ckpt_every": 100,
        "train.val_max_frames": 100,
        "track.score_floor": 0.3,                 # the focal loss scores lower than the original's 0.6 assumes
        "track.min_score": 0.3,
        "track.motion": True,                     # crossings with a detection gap swapped identities
        "track.refind": 2.0,                      # an object missed for a few frames was split in two
        "infer.scale": 224 / 192,                 # train small, test large: objects are drawn larger in training
    },

    # The state that produced the challenge submission: 4 anchors a level (info/DESIGN.md#configuration).
    "challenge2021": {
        "model.anchors": CHALLENGE_ANCHORS_416,
        "model.anchors_per_level": 4,
        "model.tolerance": [0.4, 0.6, 0.8, 1.0],
        "model.nms_thresh": 0.2,
        "infer.conf_thresh": 0.7,
    },
}
PRESETS = tuple(PRESET_OVERRIDES)


def get_preset(name: str) -> Config:
    if name not in PRESET_OVERRIDES:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = Config(preset=name)
    for key, value in PRESET_OVERRIDES[name].items():
        _set(cfg, key, copy.deepcopy(value))
    return validate(cfg)


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


def _leaf_keys(key: str, value) -> set:
    """The dotted keys a `key: value` item sets (a mapping value sets each of its entries)."""
    if isinstance(value, dict):
        return set().union(*[_leaf_keys(f"{key}.{k}", v) for k, v in value.items()])
    return {key}


def _follow_input_size(cfg: Config, old_size: int, given: set):
    """Overrides that change model.input_size without giving anchors scale the anchors by new / old size, as the
    original scales its 416-pixel anchors by TRAIN_SIZE / 416. Anchors given with it are at the new size; an
    anchor file is read at it by validate()."""
    m = cfg.model
    if m.input_size != old_size and not m.anchors_file and not given & {"model.anchors", "model.anchors_file"}:
        m.anchors = _scaled_anchors(m.anchors, m.input_size, old_size)


def apply_overrides(cfg: Config, overrides) -> Config:
    """Apply `key=value` strings (values parsed as YAML: numbers, booleans, lists, null) and validate."""
    cfg = copy.deepcopy(cfg)
    old_size, given = cfg.model.input_size, set()
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        _set(cfg, key.strip(), value)
        given |= _leaf_keys(key.strip(), value)
    _follow_input_size(cfg, old_size, given)
    return validate(cfg)


# Keys that configs saved by older versions may hold, which no longer exist and never changed a result: dropped
# when a file is read, so those runs still load.
RETIRED_KEYS = {"data.shuffle_buffer"}


def _without_retired(data: dict) -> dict:
    out = {}
    for key, value in data.items():
        if key in RETIRED_KEYS:
            continue
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if f"{key}.{k}" not in RETIRED_KEYS}
        out[key] = value
    return out


def apply_dict(cfg: Config, data: dict, source: str = "<dict>") -> Config:
    cfg = copy.deepcopy(cfg)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping")
    data = _without_retired(data)
    old_size, given = cfg.model.input_size, set()
    for key, value in data.items():
        if key == "preset":
            continue
        try:
            _set(cfg, key, value)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        given |= _leaf_keys(key, value)
    _follow_input_size(cfg, old_size, given)
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


def _non_finite(value, key: str):
    """The first key (`train.lr`, `model.anchors[3][1]`) under `key` holding NaN or an infinity, else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return key
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            bad = _non_finite(v, f"{key}[{i}]")
            if bad:
                return bad
    return None


def validate_track(t: TrackConfig, prefix: str = "track.") -> TrackConfig:
    """Check the tracker's settings (also those given as tracking.track flags: `prefix` "--" names them so)."""
    name = (lambda k: f"--{k.replace('_', '-')}") if prefix == "--" else (lambda k: prefix + k)
    for f in dataclasses.fields(t):
        value = getattr(t, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name(f.name)} must be a finite number, got {value}")
    if t.lam < 0 or t.gamma < 0 or t.refind < 0:
        raise ConfigError(f"{name('lam')}, {name('gamma')} and {name('refind')} must be >= 0, got {t.lam}, "
                          f"{t.gamma}, {t.refind}")
    for key in ("score_floor", "min_score"):
        if not 0.0 <= getattr(t, key) <= 1.0:
            raise ConfigError(f"{name(key)} is a score, in [0, 1]; got {getattr(t, key)}")
    if t.min_hits < 1:
        raise ConfigError(f"{name('min_hits')} must be at least 1, got {t.min_hits}")
    if t.max_age is not None and t.max_age < 0:
        raise ConfigError(f"{name('max_age')} must be >= 0, got {t.max_age}")
    return t


def validate(cfg: Config) -> Config:
    """`cfg` itself after checking every section; a ConfigError names the first key that is wrong."""
    for section in SECTIONS:
        for key, value in getattr(cfg, section).__dict__.items():
            bad = _non_finite(value, f"{section}.{key}")
            if bad:
                raise ConfigError(f"{bad} must be a finite number, got {value!r}")
    _validate_model(cfg)
    _validate_train(cfg.train)
    _validate_data(cfg)
    return cfg


def _validate_model(cfg: Config):
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
    validate_track(cfg.track)
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


def _validate_train(t: TrainConfig):
    if not t.lr > 0:
        raise ConfigError(f"train.lr must be positive, got {t.lr}")
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


def _validate_data(cfg: Config):
    m = cfg.model
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
        raise ConfigError(f"config file {path}: not valid "
                          f"{'JSON' if path.endswith('.json') else 'YAML'} ({e})") from None
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
    try:
        resolved = config_from_args(ap.parse_args())
    except ConfigError as e:
        sys.exit(f"error: {e}")
    print(yaml.safe_dump(resolved.to_dict(), sort_keys=False), end="")
