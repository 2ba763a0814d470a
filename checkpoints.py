"""Reading and writing checkpoints of a run directory (info/DESIGN.md, training): the one place that knows their
layout, shared by train.py, tracker.py, export.py, the benchmarks and the tests.

A checkpoint keys every layer's weights by the layer's name (`layers/<name>/...`) beside the ALB log-variances,
the step and epoch counters and, while training, the optimizer; so it restores into any model `build_model` makes
from the same config, whatever the graph order.
"""
from __future__ import annotations

import glob
import os
import re
import tempfile

import numpy as np
import tensorflow as tf

import config as config_lib
from fileio import InputError


class CheckpointError(InputError):
    """A run directory or checkpoint cannot be read: missing, truncated, or written for another configuration."""


# What TensorFlow raises on a truncated or corrupt checkpoint file (a short .data file gives an IndexError).
READ_ERRORS = (tf.errors.OpError, ValueError, AssertionError, IndexError)


def ensure_alb_built(model):
    """The model's ALB layer, built (its log-variances exist) so that a checkpoint can restore into it."""
    if not model.alb.built:
        model.alb(tf.zeros([model.alb.num_terms]))
    return model.alb


def make_checkpoint(model, optimizer=None):
    """tf.train.Checkpoint of a model (its layers with weights keyed by layer name, `layers/<name>/...`), its ALB
    layer, the step and epoch counters and, given, the optimizer; returns (checkpoint, parts). Keyed by name, a
    checkpoint restores into any model `build_model` makes from the same config: the training model (GT inputs,
    mask gate) and the plain one have the same named layers in a different graph order."""
    layers = tf.train.Checkpoint(**{layer.name: layer for layer in model.layers if layer.weights})
    parts = {"layers": layers, "alb": model.alb,
             "step": tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step"),
             "epoch": tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")}
    if optimizer is not None:
        parts["optimizer"] = optimizer
    return tf.train.Checkpoint(**parts), parts


def checkpoint_folder(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def latest_checkpoint(run_dir: str):
    """The prefix of the run's latest complete checkpoint (`<run_dir>/checkpoints/ckpt-N`), or None. The state file
    `checkpoints/checkpoint` names it, except after a kill between a save's last rename and the state file's update:
    a complete `ckpt-N` (its index and every data shard) newer than the state's counts too."""
    folder = checkpoint_folder(run_dir)
    best = tf.train.latest_checkpoint(folder)
    for index in glob.glob(os.path.join(folder, "ckpt-*.index")):
        prefix = index[:-len(".index")]
        if _number(prefix) > _number(best) and _complete(prefix):
            best = prefix
    return best


def _number(prefix) -> int:
    m = re.search(r"ckpt-(\d+)$", prefix or "")
    return int(m.group(1)) if m else -1


def _complete(prefix: str) -> bool:
    shards = glob.glob(glob.escape(prefix) + ".data-*-of-*")
    return bool(shards) and len(shards) == int(shards[0].rsplit("-of-", 1)[1])


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
        raise CheckpointError(f"{run_dir}: no config.yaml (is this a run directory written by train.py?)")
    cfg = config_lib.load_config(cfg_path)
    train_model = model_lib.build_model(cfg, "train", mask_positives=True)
    ensure_alb_built(train_model)
    path = checkpoint or latest_checkpoint(run_dir)
    if path is None:
        raise CheckpointError(f"{run_dir}: no checkpoint in {checkpoint_folder(run_dir)}")
    restore_weights(train_model, path, f"the config of {run_dir}")
    if mode == "train":
        return cfg, train_model
    cfg = cfg.for_inference()      # the inference canvas (Config.infer_size) in model.input_size
    infer_model = model_lib.build_model(cfg, "infer")
    model_lib.copy_weights_by_name(train_model, infer_model)
    return cfg, infer_model


def restore_weights(model, path: str, what: str = "the model"):
    """The weights and ALB of checkpoint `path` into `model`, every layer with weights matched by name and shape
    first (`check_fits`: an error names the first layer that does not fit, before anything is assigned)."""
    check_fits(model, path, what)
    ckpt, _ = make_checkpoint(model)
    try:
        ckpt.read(path).assert_existing_objects_matched().expect_partial()   # every weight, BN statistic, ALB
    except READ_ERRORS as e:
        raise CheckpointError(f"checkpoint {path} cannot be read, truncated or corrupt? ({first_line(e)})") from None


def _read_shapes(path: str) -> dict:
    """{variable key: shape} of checkpoint `path`; a missing or unreadable checkpoint is a CheckpointError."""
    if not os.path.exists(path + ".index"):
        raise CheckpointError(f"checkpoint {path} does not exist (no {os.path.basename(path)}.index in "
                              f"{os.path.dirname(path) or '.'})")
    try:
        return dict(tf.train.list_variables(path))
    except READ_ERRORS as e:
        raise CheckpointError(f"checkpoint {path} cannot be read, truncated or corrupt? ({first_line(e)})") from None


def first_line(error) -> str:
    text = getattr(error, "message", None) or str(error)
    return (text.strip().splitlines() or [type(error).__name__])[0][:200]


def check_fits(model, path: str, what: str = "the model"):
    """A CheckpointError unless checkpoint `path` holds weights of the same shapes for every layer of `model` (and
    its ALB), `what` naming where the model comes from: a config that does not match the checkpoint (another width,
    class count, ALB form) is named here, before any weight is assigned (and before TensorFlow's restore warnings)."""
    shapes = _read_shapes(path)
    by_layer = {}
    for key, shape in shapes.items():
        parts = key.split("/")
        if parts[0] == "layers" and len(parts) > 2:
            by_layer.setdefault(parts[1], []).append(list(shape))
        elif parts[0] == "alb" and len(parts) > 2:
            by_layer.setdefault("alb", []).append(list(shape))
    missing = [layer.name for layer in model.layers if layer.weights and layer.name not in by_layer]
    if missing:
        raise CheckpointError(f"checkpoint {path}: no weights for {len(missing)} layer(s) of {what}, e.g. "
                              f"{missing[:3]} (a checkpoint of another configuration?)")
    layers = [(layer.name, layer.weights) for layer in model.layers if layer.weights]
    for name, weights in layers + [("alb", model.alb.weights)]:
        want = sorted(list(w.shape) for w in weights)
        have = sorted(by_layer.get(name, []))
        if want != have:
            raise CheckpointError(f"checkpoint {path} does not fit {what}: layer {name} holds weights of shapes "
                                  f"{have}, the config needs {want} (a checkpoint of another configuration?)")


def resume_training(model, ckpt, parts, run_dir: str, strategy, worker_index: int = 0):
    """--resume: restore the latest checkpoint of `run_dir` into `ckpt` (weights, optimizer slots, ALB, step, epoch)
    after checking that it fits `model` (built from the config: a --set that changes the model is named here).

    Every worker reads the chief's checkpoints (only worker 0 keeps them), so with several workers `run_dir` must
    be a folder they all see (a shared filesystem, or a copy of its `checkpoints/` at each worker's --run-dir). The
    workers then check, with one all-gather, that they restored the same step: a worker that starts over while the
    others resume would run a different number of steps and hang the collectives at the end.
    """
    folder = checkpoint_folder(run_dir)
    path = latest_checkpoint(run_dir)
    if path:
        try:
            check_fits(model, path, "the config")
            ckpt.restore(path).assert_existing_objects_matched()
        except CheckpointError as e:
            raise CheckpointError(f"--resume: {e}; the run directory is left as it was") from None
        except READ_ERRORS as e:
            raise CheckpointError(f"--resume: checkpoint {path} cannot be read, truncated or corrupt? "
                                  f"({first_line(e)}); the run directory is left as it was") from None
    step = int(parts["step"].numpy())
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        low, high = worker_steps(strategy, step)
        if low != high:
            raise CheckpointError(f"--resume: worker {worker_index} found step {step} in {folder} ("
                                  f"{'latest ' + os.path.basename(path) if path else 'no checkpoint'}), but the "
                                  f"workers found steps {low} to {high}: every worker must see the chief's "
                                  f"checkpoints, so give them a --run-dir on a shared filesystem, or copy worker 0's "
                                  f"checkpoints/ there")
    if path:
        print(f"resumed from {path} (step {step}, epoch {int(parts['epoch'].numpy())})")
    else:
        print(f"--resume: no checkpoint in {folder}, starting fresh")


def worker_steps(strategy, step: int):
    """(lowest, highest) of `step` over every replica of `strategy` (one all-gather)."""
    steps = strategy.gather(strategy.run(lambda: tf.constant([step], tf.int64)), axis=0).numpy()
    return int(steps.min()), int(steps.max())


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
