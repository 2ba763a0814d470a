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
