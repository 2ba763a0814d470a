"""Reading and writing checkpoints of a run directory (info/DESIGN.md, training): the one place that knows their
layout, shared by train.py, tracker.py, export.py, the benchmarks and the tests.

A checkpoint keys every layer's weights by the layer's name (`layers/<name>/...`) beside the ALB log-variances,
the step and epoch counters and, while training, the optimizer; so it restores into any model `build_model` makes
from the same config, whatever the graph order.
"""
from __future__ import annotations

import os

import config as config_lib


class CheckpointError(RuntimeError):
    """A run directory or checkpoint cannot be read: missing, truncated, or written for another configuration."""


def ensure_alb_built(model):
    """The model's ALB layer, built (its log-variances exist) so that a checkpoint can restore into it."""
    import tensorflow as tf
    if not model.alb.built:
        model.alb(tf.zeros([model.alb.num_terms]))
    return model.alb


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


def checkpoint_folder(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def latest_checkpoint(run_dir: str):
    """The prefix of the run's latest checkpoint (`<run_dir>/checkpoints/ckpt-N`), or None."""
    import tensorflow as tf
    return tf.train.latest_checkpoint(checkpoint_folder(run_dir))


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
    restore_weights(train_model, path)
    if mode == "train":
        return cfg, train_model
    cfg = cfg.for_inference()      # the inference canvas (Config.infer_size) in model.input_size
    infer_model = model_lib.build_model(cfg, "infer")
    model_lib.copy_weights_by_name(train_model, infer_model)
    return cfg, infer_model


def restore_weights(model, path: str):
    """The weights and ALB of checkpoint `path` into `model`, every layer with weights matched by name (an error
    names what is missing)."""
    import tensorflow as tf
    saved = {name.split("/")[1] for name, _ in tf.train.list_variables(path) if name.startswith("layers/")}
    missing = [layer.name for layer in model.layers if layer.weights and layer.name not in saved]
    if missing:
        raise CheckpointError(f"checkpoint {path}: no weights for {len(missing)} layer(s) of the model, e.g. "
                              f"{missing[:3]} (a checkpoint of another configuration?)")
    ckpt, _ = make_checkpoint(model)
    ckpt.read(path).assert_existing_objects_matched().expect_partial()   # every weight, BN statistic, ALB
