"""scripts/head_clip.py: the patched level-5 detection output conv computes the 1x1 conv of its clipped or
rounded input (checked against numpy on the layer's own weights), and the fraction it reports outside the range is
the one numpy counts. The range read from an INT8 IR is tested with the OpenVINO exports
(tests/test_export_openvino.py)."""
import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny_infer(tiny_cfg):
    import model as model_lib
    cfg = tiny_cfg(input_size=64, num_classes=3)
    rng = np.random.default_rng(0)
    x = {"image": rng.uniform(0, 1, (2, 64, 64, 3)).astype(np.float32),
         "image_hw": np.array([[64, 64], [48, 64]], np.int32)}
    return cfg, model_lib, x


def _outputs(model, x, level=5):
    import keras
    sub = keras.Model(model.input, [model.get_layer(f"head_det_leaky_{level}").output,
                                    model.get_layer(f"head_det_out_{level}").output])
    a, out = sub(x)
    return np.asarray(a), np.asarray(out)


def _model(cfg, model_lib):
    """The infer model with head_det_out_5's kernel drawn from N(0, 1) (its N(0, 0.01) start would make the
    rounding's effect as small as float32's own error)."""
    import keras
    keras.utils.set_random_seed(0)
    model = model_lib.build_model(cfg, "infer")
    layer = model.get_layer("head_det_out_5")
    w, b = layer.get_weights()
    layer.set_weights([np.random.default_rng(1).normal(0, 1, w.shape).astype(np.float32), b])
    return model


def _conv1x1(layer, a):
    w, b = layer.get_weights()
    return np.einsum("bhwc,cd->bhwd", a.astype(np.float64), w[0, 0].astype(np.float64)) + b


@pytest.mark.parametrize("mode", ["clip", "round", "fake_quant"])
def test_the_patched_head_sees_its_input_clipped_or_rounded(tiny_infer, mode):
    import head_clip as hc
    cfg, model_lib, x = tiny_infer
    model = _model(cfg, model_lib)
    a, before = _outputs(model, x)
    layer = model.get_layer("head_det_out_5")
    assert np.allclose(before, _conv1x1(layer, a), atol=1e-4)
    low, high = (float(v) for v in np.percentile(a, [20, 80]))
    patch = hc.HeadInputPatch(model, 5, low, high, mode)
    a2, after = _outputs(model, x)
    assert np.array_equal(a, a2)                        # the layers before are untouched
    step = (high - low) / 255
    clipped = np.clip(a, low, high)
    expected = {"clip": clipped, "round": np.round((a - low) / step) * step + low,
                "fake_quant": np.round((clipped - low) / step) * step + low}[mode]
    assert np.allclose(after, _conv1x1(layer, expected), atol=1e-4)
    assert np.abs(after - before).max() > 1e-2          # and it does change the output
    outside = ((a < low) | (a > high)).mean()
    assert 0.35 < outside < 0.45 and patch.outside_fraction == pytest.approx(outside, abs=1e-9)


def test_a_range_holding_every_value_changes_nothing_and_bad_ranges_are_refused(tiny_infer):
    import head_clip as hc
    cfg, model_lib, x = tiny_infer
    model = _model(cfg, model_lib)
    _, before = _outputs(model, x)
    patch = hc.HeadInputPatch(model, 5, -1e9, 1e9, "clip")
    _, after = _outputs(model, x)
    assert np.array_equal(before, after) and patch.outside_fraction == 0.0
    with pytest.raises(ValueError, match="low < high"):
        hc.HeadInputPatch(model, 4, 1.0, 1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        hc.HeadInputPatch(model, 4, 0.0, 1.0, "floor")


@pytest.mark.slow
def test_clipped_predictions_on_a_split_count_real_frames_only(tiny_infer, synthetic_root):
    """Through tracker.py's traced predictor: a range holding every value gives tracker.py's detections exactly; a
    narrow one counts the values outside over the real frames, not the copies that pad a video's last batch (3
    frames a batch, videos of 6-8 frames)."""
    import keras

    import head_clip as hc
    import tracker
    cfg, model_lib, _ = tiny_infer
    model = _model(cfg, model_lib)
    videos, _ = tracker.dataset_source(f"{synthetic_root}/valid")
    predictor = tracker.FramePredictor(cfg, model, 3, cfg.infer.score_floor)
    plain = tracker.predict_videos(predictor, videos, cfg.categories())
    doc, outside = hc.clipped_predictions(cfg, model, videos, 5, -1e9, 1e9, batch_size=3)
    assert doc == plain and outside == 0.0
    sub = keras.Model(model.input, model.get_layer("head_det_leaky_5").output)
    assert any(rec["length"] % 3 for rec, _ in videos)      # so some batch is padded
    frames = [f for _, read in videos for _, f in read()]
    size = cfg.model.input_size
    a = np.concatenate([np.asarray(sub({"image": model_lib.letterbox_image(f, size)[None],
                                        "image_hw": np.array([f.shape[:2]], np.int32)})) for f in frames])
    low, high = (float(v) for v in np.percentile(a, [30, 70]))
    _, outside = hc.clipped_predictions(cfg, model, videos, 5, low, high, batch_size=3)
    assert outside == pytest.approx(((a < low) | (a > high)).mean(), abs=1e-6)


def test_bad_arguments_and_exports_end_in_one_line(tiny_cfg, tmp_path, capsys):
    import json

    import head_clip as hc
    cfg = tiny_cfg(input_size=64)
    with pytest.raises(SystemExit) as e:
        hc.main(["--run-dir", str(tmp_path), "--data", str(tmp_path), "--range", "0", "1", "--out",
                 str(tmp_path / "f.json")])
    assert "head_clip.py:" in str(e.value) and "no config.yaml" in str(e.value)
    for args in (["--range", "1", "0"], ["--range", "0", "inf"], ["--range", "0", "1", "--mask-rois", "0"],
                 ["--range", "0", "1", "--max-videos", "0"]):
        with pytest.raises(SystemExit) as e:
            hc.main(["--run-dir", "r", "--data", "d", "--out", "f.json"] + args)
        assert e.value.code == 2
    assert "--max-videos must be at least 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="export metadata"):
        hc.export_input_range(str(tmp_path), 5, cfg, "runs/x")
    (tmp_path / "model.json").write_text(json.dumps({"format": "openvino", "int8": None, "input_size": 64}))
    with pytest.raises(ValueError, match="not an OpenVINO INT8 export"):
        hc.export_input_range(str(tmp_path), 5, cfg, "runs/x")
    (tmp_path / "model.json").write_text(json.dumps({"format": "openvino", "int8": {"frames": 8}, "input_size": 96}))
    with pytest.raises(ValueError, match="exported at input 96, but --run-dir infers at 64"):
        hc.export_input_range(str(tmp_path), 5, cfg, "runs/x")


def test_an_export_of_another_run_is_named_in_a_warning(tiny_cfg, tmp_path, capsys):
    """The range check reads model.json first; a source run folder that exists and is not --run-dir is warned of
    (the IR itself is then read, and this folder has none)."""
    import json

    import head_clip as hc
    cfg = tiny_cfg(input_size=64)
    (tmp_path / "run_a").mkdir()
    (tmp_path / "run_b").mkdir()
    for source, warned in ((tmp_path / "run_a", False), (tmp_path / "run_b", True), ("runs/not_here", False)):
        (tmp_path / "model.json").write_text(json.dumps({"format": "openvino", "int8": {"frames": 8}, "input_size": 64,
                                                         "source": {"run_dir": str(source)}}))
        with pytest.raises(ValueError, match="model.xml: no such file"):
            hc.export_input_range(str(tmp_path), 5, cfg, str(tmp_path / "run_a"))
        assert ("was exported from" in capsys.readouterr().err) == warned
