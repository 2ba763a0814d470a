"""Config presets, overrides, validation errors and run-directory round trips (info/DESIGN.md#configuration)."""
import json
import os
import sys

import pytest

import config
from config import ConfigError, apply_overrides, get_preset, load_config, save_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_yolov4p1_preset_has_the_original_head_values():
    cfg = get_preset("yolov4p1")
    m = cfg.model
    assert m.input_size == 416 and m.anchors_per_level == 6 and len(m.anchors) == 24
    assert m.tolerance == [0.6, 0.8, 1.0, 1.2]
    assert (m.fg_thresh, m.bg_thresh, m.id_thresh) == (0.4, 0.3, 0.4)
    assert (m.nms_thresh, m.pre_nms_limit, m.max_prop) == (0.3, 200, 50)
    assert (m.mask_pool, m.mask_size, m.emb_dim, m.mask_layers) == (14, 28, 208, 256)
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.freeze_epochs) == (1e-3, 60, 2)
    # the original's level 3 anchors in grid units (stride 8)
    anchors = cfg.level_anchors()
    assert anchors.shape == (4, 6, 2)
    assert (anchors[1] / 8).tolist()[0] == [1.875, 2.375]
    assert anchors[3, 5].tolist() == [398, 228]


def test_challenge_preset_uses_four_anchors_a_level():
    cfg = get_preset("challenge2021")
    assert cfg.level_anchors().shape == (4, 4, 2)
    assert cfg.model.tolerance == [0.4, 0.6, 0.8, 1.0] and cfg.model.nms_thresh == 0.2


def test_tiny_preset_scales_anchors_with_the_input():
    cfg = get_preset("tiny")
    assert cfg.model.input_size % 32 == 0 and cfg.model.width < 1
    # the largest HEAD anchor (398 x 228 at 416) scaled to the tiny input size
    w, h = cfg.level_anchors()[3, 5]
    assert w == pytest.approx(398 * cfg.model.input_size / 416, abs=0.01)
    assert h == pytest.approx(228 * cfg.model.input_size / 416, abs=0.01)


def test_overrides_parse_types():
    cfg = apply_overrides(get_preset("tiny"), ["train.lr=0.002", "model.sync_bn=true", "track.max_age=5",
                                               "model.tolerance=[0.5, 0.6, 0.7, 0.8]", "track.max_age=null"])
    assert cfg.train.lr == 0.002 and cfg.model.sync_bn is True and cfg.track.max_age is None
    assert cfg.model.tolerance == [0.5, 0.6, 0.7, 0.8]
    assert apply_overrides(cfg, ["train.epochs=3"]).train.epochs == 3
    # YAML 1.1 reads "1e-6" (no dot in the mantissa) as a string; number fields still take it.
    assert apply_overrides(cfg, ["train.weight_decay=1e-6"]).train.weight_decay == 1e-6
    assert cfg.train.epochs == get_preset("tiny").train.epochs  # the input is not mutated


@pytest.mark.parametrize("override, message", [
    ("model.nope=1", "unknown config key 'model.nope'"),
    ("nope.lr=1", "unknown config key 'nope.lr'"),
    ("train.epochs=1.5", "expects an integer"),
    ("train.lr=fast", "expects a number"),
    ("model.sync_bn=3", "expects a boolean"),
    ("model.anchors_per_level=5", "not divisible into 4 levels of 5"),
    ("model.input_size=100", "multiple of 32"),
    ("train.alb=sometimes", "train.alb"),
    ("train.lr", "key=value"),
    ("track.refind=-1", "track.refind must be >= 0"),
    ("model.mask_box_scale=0.9", "model.mask_box_scale must be in [1, 2]"),
    ("model.mask_pixels=-8", "model.mask_pixels must be 0 or a positive multiple of model.gn_groups"),
    ("model.mask_pixels=12", "model.mask_pixels must be 0 or a positive multiple of model.gn_groups"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        apply_overrides(get_preset("tiny"), [override])


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_save_and_load_round_trip(tmp_path, suffix):
    cfg = apply_overrides(get_preset("tiny"), ["train.lr=0.0042", "model.num_classes=3"])
    cfg.data.categories = [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}, {"id": 9, "name": "c"}]
    path = str(tmp_path / f"config.{suffix}")
    save_config(cfg, path)
    back = load_config(path)
    assert back.to_dict() == cfg.to_dict()
    assert back.category_ids() == [1, 5, 9] and back.class_names() == ["a", "b", "c"]


def test_load_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"train": {"lr": 0.1')
    with pytest.raises(ConfigError, match="broken.json"):
        load_config(str(bad))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"train": {"lrr": 0.1}}))
    with pytest.raises(ConfigError, match=r"wrong.json: unknown config key 'train.lrr'"):
        load_config(str(wrong))


def test_overriding_the_input_size_scales_the_anchors(tmp_path):
    """Like the original's ANCHORS x TRAIN_SIZE / 416 (kept to 2 decimals, at least 1 px, where it truncates)."""
    full = apply_overrides(get_preset("yolov4p1"), ["model.input_size=320"])
    assert full.model.anchors[-1] == [306.15, 175.38]                  # 398 x 228 at 416, x 320 / 416
    assert full.model.anchors[0] == [1.54, 1.54] and full.model.anchors[2] == [3.85, 4.62]   # 2x2, 5x6 at 416
    # the tiny preset's own anchors are the 416 ones at 192 (unchanged by this rule); an override scales them on
    tiny = get_preset("tiny")
    assert tiny.model.anchors[2] == [2.31, 2.77] and tiny.model.anchors[-1] == [183.69, 105.23]
    assert apply_overrides(tiny, ["model.input_size=64"]).model.anchors[-1] == [61.23, 35.08]  # x 64 / 192
    assert apply_overrides(tiny, ["train.lr=0.01"]).model.anchors == tiny.model.anchors
    # an override file does the same; anchors given with the size are taken at that size
    assert config.apply_dict(get_preset("yolov4p1"), {"model": {"input_size": 320}}).model.anchors == full.model.anchors
    given = [[10, 10]] * 24
    assert apply_overrides(get_preset("yolov4p1"), ["model.input_size=320", f"model.anchors={given}"]).model.anchors \
        == given
    assert config.apply_dict(get_preset("yolov4p1"), {"model.anchors": given, "model.input_size": 320}).model.anchors \
        == given
    # a saved run's config holds its anchors at its size: reading it back (and resuming it) does not scale again
    save_config(full, str(tmp_path / "config.yaml"))
    again = load_config(str(tmp_path / "config.yaml"))
    assert again.model.anchors == full.model.anchors
    assert apply_overrides(again, ["train.epochs=3"]).model.anchors == full.model.anchors


def test_anchor_file_round_trip_and_scaling(tmp_path):
    path = str(tmp_path / "anchors.txt")
    levels = [[[4, 6], [8, 8]], [[16, 12], [20, 30]], [[40, 44], [60, 50]], [[100, 90], [200, 150]]]
    config.write_anchor_file(path, levels, 416, comment="test anchors")
    cfg = apply_overrides(get_preset("yolov4p1"), [f"model.anchors_file={path}"])
    assert cfg.model.anchors_per_level == 2
    assert cfg.level_anchors()[3, 1].tolist() == [200, 150]
    tiny = apply_overrides(get_preset("tiny"), [f"model.anchors_file={path}"])
    s = tiny.model.input_size / 416
    assert tiny.level_anchors()[0, 0].tolist() == pytest.approx([4 * s, 6 * s], abs=1e-3)
    # a resolved config with an anchor file reloads without reading the file again
    save_config(cfg, str(tmp_path / "config.yaml"))
    (tmp_path / "anchors.txt").unlink()
    assert load_config(str(tmp_path / "config.yaml")).level_anchors()[3, 1].tolist() == [200, 150]


def test_anchor_file_errors(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("1,2 3,4\n")
    with pytest.raises(ConfigError, match="size N"):
        config.read_anchor_file(str(p), 416)
    p.write_text("# size 416\n1,2 3\n")
    with pytest.raises(ConfigError, match="line 2"):
        config.read_anchor_file(str(p), 416)


def test_conv_init_bn_momentum_and_optimizer_fields():
    # the published preset keeps the original N(0, 0.01) kernels, SGD and Keras's BN momentum
    full = get_preset("yolov4p1")
    assert (full.model.conv_init, full.train.optimizer, full.model.bn_momentum) == ("normal", "sgd", 0.99)
    for bad in ("model.conv_init=xavier", "train.optimizer=adam", "model.bn_momentum=1.0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            apply_overrides(full, [bad])


def test_mask_res_zero_follows_the_input_size():
    assert get_preset("yolov4p1").mask_res == 104                     # the original: a quarter of 416
    tiny = get_preset("tiny")
    assert tiny.data.mask_res == 0 and tiny.mask_res == 192
    assert apply_overrides(tiny, ["model.input_size=64"]).mask_res == 64
    assert apply_overrides(tiny, ["data.mask_res=32"]).mask_res == 32
    with pytest.raises(ConfigError, match=r"data.mask_res must be 0 .* \(64\), got 96"):
        apply_overrides(tiny, ["model.input_size=64", "data.mask_res=96"])


def test_inference_canvas_follows_infer_scale_and_keeps_anchor_pixels(tmp_path):
    tiny = get_preset("tiny")
    assert (tiny.model.input_size, tiny.infer_size) == (192, 224)            # 192 x 7/6
    assert get_preset("yolov4p1").infer_size == 416                         # the original infers at its trained size
    # Rounded to the nearest multiple of 32, at least 64: 160 x 7/6 = 186.7 -> 192, 64 x 7/6 = 74.7 -> 64.
    assert apply_overrides(tiny, ["model.input_size=160"]).infer_size == 192
    assert apply_overrides(tiny, ["model.input_size=64"]).infer_size == 64
    # Anchors from a file are read at the trained size and keep those pixels on the larger canvas.
    path = tmp_path / "anchors.txt"
    config.write_anchor_file(str(path), [[[2 * i + 1, 2 * i + 2]] * 6 for i in range(4)], 96)
    cfg = apply_overrides(tiny, [f"model.anchors_file={path}"])
    assert cfg.model.anchors[0] == [2.0, 4.0]                               # 96 -> 192: x2
    inf = cfg.for_inference()
    assert inf.model.input_size == 224 and inf.model.anchors == cfg.model.anchors
    assert cfg.model.input_size == 192                                      # the original is untouched
    assert inf.for_inference().model.input_size == 224                      # applying it again changes nothing
    save_config(inf, str(tmp_path / "inf.yaml"))
    again = load_config(str(tmp_path / "inf.yaml"))
    assert again.model.input_size == 224 and again.model.anchors == cfg.model.anchors
    with pytest.raises(ConfigError, match="infer.scale"):
        apply_overrides(tiny, ["infer.scale=0"])
    # A training mask resolution that does not divide the inference size (packing needs it to divide the input)
    # does not follow the copy: export.py saves it and ExportedModel reads it back through validate().
    inf96 = apply_overrides(tiny, ["data.mask_res=96"]).for_inference()
    save_config(inf96, str(tmp_path / "inf96.yaml"))
    assert load_config(str(tmp_path / "inf96.yaml")).model.input_size == 224


def test_saved_config_missing_newer_keys_names_them(tmp_path, capsys):
    # A run saved before an option existed: its resolved config lacks the key, which then comes from today's
    # preset; load_config says so on stderr, naming the key and the value taken. A complete file says nothing.
    import yaml
    cfg = get_preset("tiny")
    save_config(cfg, str(tmp_path / "full.yaml"))
    assert load_config(str(tmp_path / "full.yaml")) == cfg and capsys.readouterr().err == ""
    data = cfg.to_dict()
    del data["model"]["mask_pixels"], data["track"]["refind"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(data))
    assert load_config(str(tmp_path / "old.yaml")) == cfg
    err = capsys.readouterr().err
    assert "old.yaml: has no model.mask_pixels=8, track.refind=2.0;" in err
    # a hand-written override file (not every section) is not a saved run: no message
    (tmp_path / "mine.yaml").write_text("preset: tiny\ntrain:\n  lr: 0.001\n")
    assert load_config(str(tmp_path / "mine.yaml")).train.lr == 0.001 and capsys.readouterr().err == ""


def test_saved_config_with_the_retired_shuffle_buffer_still_loads(tmp_path, capsys):
    # data.shuffle_buffer was never read (the loader shuffles the frame list itself): it is gone, and a run saved
    # while it existed still loads, to the same config; setting it now is an error naming the key.
    import yaml
    cfg = get_preset("tiny")
    assert not hasattr(cfg.data, "shuffle_buffer")
    data = cfg.to_dict()
    data["data"]["shuffle_buffer"] = 1024
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert load_config(str(tmp_path / "config.yaml")) == cfg and capsys.readouterr().err == ""
    assert config.apply_dict(get_preset("tiny"), {"data.shuffle_buffer": 8}) == cfg
    with pytest.raises(ConfigError, match="unknown config key 'data.shuffle_buffer'"):
        apply_overrides(cfg, ["data.shuffle_buffer=1024"])


@pytest.mark.parametrize("override, message", [
    ("train.lr=.nan", "train.lr must be a finite number, got nan"),
    ("train.lr=0", "train.lr must be positive, got 0"),
    ("data.scale_jitter=[0.5, .inf]", r"data.scale_jitter\[1\] must be a finite number"),
    ("track.tau=.nan", "track.tau must be a finite number, got nan"),
    ("track.lam=-0.5", "track.lam, track.gamma and track.refind must be >= 0"),
    ("track.min_score=1.5", r"track.min_score is a score, in \[0, 1\]; got 1.5"),
    ("track.max_age=-1", "track.max_age must be >= 0, got -1"),
])
def test_non_finite_and_out_of_range_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(get_preset("tiny"), [override])


@pytest.mark.slow
def test_config_command_prints_one_line_for_a_bad_value():
    import subprocess
    r = subprocess.run([sys.executable, "config.py", "--preset", "tiny", "--set", "train.lr=.nan"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr == "error: train.lr must be a finite number, got nan\n"


def test_importing_config_turns_onednn_on_unless_the_user_chose():
    """TensorFlow enables oneDNN by default only on CPUs with VNNI/AMX; config.py (imported before TensorFlow by
    every command) turns it on everywhere, and an explicit TF_ENABLE_ONEDNN_OPTS=0 still wins."""
    import subprocess
    code = "import os, config; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "1", out.stderr
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=dict(env, TF_ENABLE_ONEDNN_OPTS="0"),
                         capture_output=True, text=True)
    assert out.stdout.strip() == "0", out.stderr
