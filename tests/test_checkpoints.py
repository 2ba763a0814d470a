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
    assert (any(n.startswith("layers/bb_conv_0/") for n in names)
            and any(n.startswith("layers/mask_out/") for n in names))
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


def _saved_run(tmp_path, cfg):
    """A run directory holding `cfg` and one checkpoint (ckpt-1) of a model built from it."""
    import tensorflow as tf

    import checkpoints
    import config
    import model as model_lib
    m = model_lib.build_model(cfg, "train")
    checkpoints.ensure_alb_built(m)
    config.save_config(cfg, str(tmp_path / "config.yaml"))
    return tf.train.CheckpointManager(checkpoints.make_checkpoint(m)[0], str(tmp_path / "checkpoints"), 2).save()


def test_a_config_that_does_not_fit_the_checkpoint_is_named_in_one_line(tmp_path):
    import checkpoints
    import config
    path = _saved_run(tmp_path, _tiny_cfg())
    wider = config.apply_overrides(_tiny_cfg(), ["model.width=0.5"])
    config.save_config(wider, str(tmp_path / "config.yaml"))
    with pytest.raises(checkpoints.CheckpointError) as e:
        checkpoints.load_run(str(tmp_path))
    assert str(e.value) == (f"checkpoint {path} does not fit the config of {tmp_path}: layer bb_conv_0 holds weights "
                            f"of shapes [[3, 3, 3, 8]], the config needs [[3, 3, 3, 16]] (a checkpoint of another "
                            f"configuration?)")


def test_a_missing_or_truncated_checkpoint_is_named(tmp_path):
    import checkpoints
    path = _saved_run(tmp_path, _tiny_cfg())
    with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint .*ckpt-9 does not exist \(no ckpt-9.index"):
        checkpoints.load_run(str(tmp_path), checkpoint=str(tmp_path / "checkpoints" / "ckpt-9"))
    data = path + ".data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    with pytest.raises(checkpoints.CheckpointError, match=r"ckpt-1 cannot be read, truncated or corrupt\? \(Read less"):
        checkpoints.load_run(str(tmp_path))
    import tensorflow as tf

    import model as model_lib
    m = model_lib.build_model(_tiny_cfg(), "train")
    checkpoints.ensure_alb_built(m)
    ckpt, parts = checkpoints.make_checkpoint(m)
    with pytest.raises(checkpoints.CheckpointError, match=r"--resume: checkpoint .*ckpt-1 cannot be read, truncated or "
                       r"corrupt\? \(Read less.*; the run directory is left as it was"):
        checkpoints.resume_training(m, ckpt, parts, str(tmp_path), tf.distribute.get_strategy())


def test_latest_checkpoint_counts_a_complete_save_the_state_file_does_not_list(tmp_path):
    """A kill between a save's last rename and the update of checkpoints/checkpoint (the first save: no state file
    at all) must not make --resume start over: the newest complete ckpt-N counts; a half-written one does not."""
    import shutil

    import checkpoints
    path = _saved_run(tmp_path, _tiny_cfg())
    folder = tmp_path / "checkpoints"
    os.remove(folder / "checkpoint")
    assert checkpoints.latest_checkpoint(str(tmp_path)) == path
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(path + suffix, str(folder / "ckpt-12") + suffix)
    os.remove(folder / "ckpt-12.data-00000-of-00001")                 # ckpt-12: index without its data
    assert checkpoints.latest_checkpoint(str(tmp_path)) == path
