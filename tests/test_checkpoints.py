"""Checkpoints of a run directory (checkpoints.py): layers keyed by name, so a checkpoint restores into every model
`build_model` makes from the same config; a checkpoint of another configuration is named, not a traceback."""
import os

import numpy as np
import pytest


def _tiny_cfg():
    import config
    return config.apply_overrides(config.get_preset("tiny"), ["model.input_size=64", "model.num_classes=3"])


def _perturbed_plain_model(cfg):
    """The plain training model with no weight at a value a fresh build would have (BN statistics, biases, GN)."""
    import keras

    import checkpoints
    import model as model_lib
    keras.utils.set_random_seed(1)
    plain = model_lib.build_model(cfg, "train")
    checkpoints.ensure_alb_built(plain)
    rng = np.random.default_rng(0)
    plain.set_weights([w + rng.uniform(0.5, 1.0, w.shape).astype(w.dtype) for w in plain.get_weights()])
    plain.alb.alb_log_vars.assign(np.arange(13, dtype=np.float32) / 7)
    return plain


def test_checkpoints_key_layers_by_name(tmp_path):
    """The plain training model's checkpoint loads into the one train.py builds (GT inputs and the mask gate change
    the graph order) and into the inference model, and the other way round, every weight equal."""
    import tensorflow as tf

    import checkpoints
    import config
    import model as model_lib
    cfg = _tiny_cfg()
    plain = _perturbed_plain_model(cfg)
    run = tmp_path / "run"
    os.makedirs(run / "checkpoints")
    config.save_config(cfg, str(run / "config.yaml"))
    path = checkpoints.make_checkpoint(plain)[0].write(str(run / "checkpoints" / "named"))
    names = [name for name, _ in tf.train.list_variables(path)]
    assert any(n.startswith("layers/bb_conv_0/") for n in names) and any(n.startswith("layers/mask_out/") for n in names)
    _, gated = checkpoints.load_run(str(run), checkpoint=path, mode="train")
    assert set(gated.input) == {"image", "boxes", "labels"}
    for a, b in zip(plain.get_weights(), gated.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(gated.alb.alb_log_vars.numpy(), np.arange(13, dtype=np.float32) / 7)
    _, infer = checkpoints.load_run(str(run), checkpoint=path, mode="infer")
    np.testing.assert_array_equal(infer.get_layer("mask_out").get_weights()[0],
                                  plain.get_layer("mask_out").get_weights()[0])
    # and back: the training model's checkpoint restores into a fresh plain model, every layer matched
    back = model_lib.build_model(cfg, "train")
    checkpoints.ensure_alb_built(back)
    checkpoints.restore_weights(back, checkpoints.make_checkpoint(gated)[0].write(str(tmp_path / "from_gated")))
    for a, b in zip(plain.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)
    # a checkpoint of another configuration (no pixel branch) names the layers it lacks
    other = model_lib.build_model(config.apply_overrides(cfg, ["model.mask_pixels=0"]), "train")
    checkpoints.ensure_alb_built(other)
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"no weights for 6 layer\(s\) of the model, e.g. \['mask_pix_conv1'"):
        checkpoints.restore_weights(back, checkpoints.make_checkpoint(other)[0].write(str(tmp_path / "other")))


def test_load_run_names_a_folder_without_config_or_checkpoint(tmp_path):
    import checkpoints
    import config
    with pytest.raises(checkpoints.CheckpointError, match=r"no config.yaml \(is this a run directory"):
        checkpoints.load_run(str(tmp_path))
    config.save_config(_tiny_cfg(), str(tmp_path / "config.yaml"))
    with pytest.raises(checkpoints.CheckpointError, match=f"{tmp_path}: no checkpoint in {tmp_path}/checkpoints"):
        checkpoints.load_run(str(tmp_path))
