"""Backbone: Darknet-order names, shapes and counts (info/DESIGN.md#backbone), and an independent
reference: OpenCV's Darknet reader running tests/data/yolov4_backbone.cfg with the same random weights file."""
import os
import re

import numpy as np
import pytest

import backbone
import config

CFG_PATH = os.path.join(os.path.dirname(__file__), "data", "yolov4_backbone.cfg")
REF_SIZE = 64
# OpenCV's Darknet importer gives its BatchNorm layers eps = 1e-6 (Darknet adds .000001 too); measured below:
# with 1e-6 the largest b2..b5 difference is ~8e-7, with 1e-5 it is ~2e-5, with Keras's 1e-3 ~2e-3.
DARKNET_BN_EPS = 1e-6
# float32 accumulation over 78 layers of outputs of size ~0.5: ~78 * 1.2e-7 * 0.5 = 5e-6 worst case.
ATOL = 5e-6


def _cfg(size, width=1.0, eps=DARKNET_BN_EPS):
    cfg = config.get_preset("yolov4p1")
    cfg.model.input_size = size
    cfg.model.width = width
    cfg.model.bn_epsilon = eps
    cfg.model.sync_bn = False
    return cfg


@pytest.fixture(scope="module")
def full_416():
    return backbone.build_backbone(_cfg(416))


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A 64x64 full-width backbone with random but tame weights (var in [0.5, 1.5], kernels ~ N(0, 1/fan_in)),
    written as a Darknet file."""
    model = backbone.build_backbone(_cfg(REF_SIZE))
    rng = np.random.default_rng(0)
    convs, bns = backbone.backbone_layer_names()
    for i in range(backbone.NUM_BACKBONE_CONVS):
        conv = model.get_layer(convs[i])
        kh, kw, cin, cout = conv.kernel.shape
        conv.set_weights([rng.normal(0, 1 / np.sqrt(kh * kw * cin), (kh, kw, cin, cout)).astype(np.float32)])
        model.get_layer(bns[i]).set_weights([rng.uniform(0.8, 1.2, cout).astype(np.float32),     # gamma
                                             rng.uniform(-0.1, 0.1, cout).astype(np.float32),    # beta
                                             rng.uniform(-0.1, 0.1, cout).astype(np.float32),    # mean
                                             rng.uniform(0.5, 1.5, cout).astype(np.float32)])    # variance
    path = str(tmp_path_factory.mktemp("darknet") / "random.weights")
    backbone.write_darknet_weights(model, path)
    return model, path


@pytest.mark.slow
def test_full_width_count_and_shapes(full_416):
    assert full_416.count_params() == 38_727_520       # info/DESIGN.md#parameter-counts
    shapes = [tuple(t.shape) for t in full_416.outputs]
    assert shapes == [(None, 104, 104, 128), (None, 52, 52, 256), (None, 26, 26, 512), (None, 13, 13, 512)]
    spp = full_416.get_layer("bb_spp_cat").output
    assert tuple(spp.shape) == (None, 13, 13, 2048)


@pytest.mark.slow
def test_names_order_and_activations(full_416):
    convs, bns = backbone.backbone_layer_names()
    layer_names = [l.name for l in full_416.layers]
    # (Darknet order itself is proved by test_matches_opencv_darknet: the file is read in name order.)
    for i, name in enumerate(convs):
        conv = full_416.get_layer(name)
        assert not conv.use_bias and conv.get_config()["kernel_initializer"]["config"]["stddev"] == 0.01
        bn = full_416.get_layer(bns[i])
        assert bn.epsilon == DARKNET_BN_EPS
        act = "bb_leaky_" if i >= 72 else "bb_mish_"           # convs 72..77 (SPP block) are leaky
        assert act + str(i) in layer_names
    # downsampling convs: 3x3 stride 2 after a top-left pad
    for i in (1, 8, 17, 38, 59):
        assert full_416.get_layer(convs[i]).strides == (2, 2)
        assert full_416.get_layer(f"bb_pad_{i}").padding == ((1, 0), (1, 0))
    # kernel sizes of yolov4.cfg: 3x3 at 0, the downsamplers, every second conv of a residual block and 73 / 76
    three = {0, 1, 8, 17, 38, 59, 5, 12, 14, 73, 76} | set(range(21, 36, 2)) | set(range(42, 57, 2)) \
        | set(range(63, 70, 2))
    assert {i for i in range(78) if full_416.get_layer(convs[i]).kernel_size == (3, 3)} == three


def test_tiny_preset_shapes():
    cfg = config.get_preset("tiny")
    model = backbone.build_backbone(cfg)
    s = cfg.model.input_size
    expect = [(None, s // 4, s // 4, 32), (None, s // 8, s // 8, 64), (None, s // 16, s // 16, 128),
              (None, s // 32, s // 32, 128)]
    assert [tuple(t.shape) for t in model.outputs] == expect
    assert model.get_layer("bb_bn_0").synchronized is False


def _opencv_outputs(weights_path, image, tmp_path):
    cv2 = pytest.importorskip("cv2")
    text = open(CFG_PATH).read()
    text = re.sub(r"(?m)^width=\d+", f"width={REF_SIZE}", text)
    text = re.sub(r"(?m)^height=\d+", f"height={REF_SIZE}", text)
    cfg_path = str(tmp_path / "backbone.cfg")
    with open(cfg_path, "w") as f:
        f.write(text)
    net = cv2.dnn.readNetFromDarknet(cfg_path, weights_path)
    # Darknet layer index of each [convolutional] section; OpenCV names a layer's activation after its BN.
    sections = re.findall(r"(?m)^\[(\w+)\]", text)[1:]
    conv_layer = [i for i, s in enumerate(sections) if s == "convolutional"]
    assert len(conv_layer) == 78
    names = list(net.getLayerNames())
    outs = [names[names.index(f"bn_{conv_layer[k]}") + 1] for k in backbone.OUTPUT_CONVS]
    net.setInput(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))            # NHWC -> NCHW
    return [o.transpose(0, 2, 3, 1) for o in net.forward(outs)]


@pytest.mark.slow
def test_matches_opencv_darknet(random_weights, tmp_path):
    _, path = random_weights
    model = backbone.build_backbone(_cfg(REF_SIZE))
    info = backbone.load_darknet_weights(model, path, verbose=False)
    assert info["layers"] == 78 and info["bytes_left"] == 0
    # floats = BN (4 per filter) + kernels of all 78 convs = the backbone's trainable-plus-moving count
    assert info["floats"] == model.count_params() == 38_727_520
    image = np.random.default_rng(1).uniform(0, 1, (1, REF_SIZE, REF_SIZE, 3)).astype(np.float32)
    ref = _opencv_outputs(path, image, tmp_path)
    got = [np.asarray(t) for t in model(image, training=False)]
    for name, g, r in zip(("b2", "b3", "b4", "b5"), got, ref):
        assert g.shape == r.shape, name
        assert np.abs(r).max() > 0.1, name                           # activations are not trivially small
        np.testing.assert_allclose(g, r, atol=ATOL, rtol=0, err_msg=name)
    # the tolerance is tight enough to tell Darknet's epsilon from a wrong one
    wrong = backbone.build_backbone(_cfg(REF_SIZE, eps=1e-5))
    backbone.load_darknet_weights(wrong, path, verbose=False)
    assert np.abs(np.asarray(wrong(image, training=False)[2]) - ref[2]).max() > ATOL


@pytest.mark.slow
def test_loader_round_trip_and_old_header(random_weights, tmp_path):
    src, _ = random_weights
    path = str(tmp_path / "old.weights")
    backbone.write_darknet_weights(src, path, version=(0, 1, 0))      # major*10+minor < 2: int32 'seen'
    assert os.path.getsize(path) == 16 + 4 * 38_727_520
    dst = backbone.build_backbone(_cfg(REF_SIZE))
    info = backbone.load_darknet_weights(dst, path, verbose=False)
    assert info["header"]["header_bytes"] == 16
    for name in ("bb_conv_0", "bb_bn_0", "bb_conv_77", "bb_bn_40"):
        for a, b in zip(src.get_layer(name).get_weights(), dst.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_short_file_names_layer_and_counts(random_weights, tmp_path):
    model, path = random_weights
    short = str(tmp_path / "short.weights")
    with open(path, "rb") as f:
        data = f.read(20 + 4 * (128 + 10))          # header, conv 0's BN (4 x 32), 10 of its 864 kernel floats
    with open(short, "wb") as f:
        f.write(data)
    with pytest.raises(backbone.DarknetWeightsError, match=r"bb_conv_0 .*expected 864 floats, found 10"):
        backbone.load_darknet_weights(model, short, verbose=False)
    # ends inside a later layer's BN
    with open(path, "rb") as f:
        data = f.read(20 + 4 * (128 + 864 + 5))
    with open(short, "wb") as f:
        f.write(data)
    with pytest.raises(backbone.DarknetWeightsError, match=r"bb_conv_1 \(BN of Darknet conv 1\): expected 256 floats, "
                                                            r"found 5"):
        backbone.load_darknet_weights(model, short, verbose=False)


@pytest.mark.slow
def test_wrong_width_and_bad_header(tmp_path):
    model = backbone.build_backbone(_cfg(64, width=0.25))
    path = str(tmp_path / "x.weights")
    np.asarray([0, 2, 5], np.int32).tofile(path)
    with pytest.raises(backbone.DarknetWeightsError, match="width = 1.0"):
        backbone.load_darknet_weights(model, path)
    full = backbone.build_backbone(_cfg(64))
    np.asarray([-7, 99999, 1], np.int32).tofile(path)
    with pytest.raises(backbone.DarknetWeightsError, match="not a Darknet weights file"):
        backbone.load_darknet_weights(full, path)


@pytest.mark.slow
def test_bn_conv_init_and_from_scratch_gradient_scale():
    """Convs followed by BN: N(0, 0.01) (original, meant for pretrained weights) or He N(0, 2 / fan_in) (tiny).
    BN makes the loss invariant to a kernel's scale, so its gradient scales as 1 / |kernel|: from scratch the
    0.01 kernels give backbone gradients ~20x larger than He kernels (the bug that starved the tiny preset's
    heads under global-norm clipping)."""
    import keras
    import tensorflow as tf

    norms, stds = {}, {}
    for init in ("normal", "he"):
        cfg = config.apply_overrides(config.get_preset("tiny"), ["model.input_size=64", f"model.conv_init={init}"])
        keras.utils.set_random_seed(0)
        net = backbone.build_backbone(cfg)
        kernel = net.get_layer("bb_conv_40").kernel                   # 1x1, fan_in = in channels
        stds[init] = (float(np.std(kernel.numpy())), kernel.shape[2])
        x = tf.constant(np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype(np.float32))
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_mean(tf.sin(o)) for o in net(x, training=True)])
        grads = tape.gradient(loss, [v for v in net.trainable_variables if v.path.endswith("kernel")])
        norms[init] = float(tf.linalg.global_norm(grads))
    assert stds["normal"][0] == pytest.approx(0.01, rel=0.2)
    assert stds["he"][0] == pytest.approx(np.sqrt(2.0 / stds["he"][1]), rel=0.2)   # truncated normal: ~0.88x
    assert norms["normal"] > 10 * norms["he"], norms


def test_missing_file_and_floats_out_of_step(random_weights, tmp_path):
    """A missing file is named; a file whose floats land out of step (written for another width or network)
    is caught by the BN variances it would load, which Darknet keeps positive."""
    model, path = random_weights
    with pytest.raises(backbone.DarknetWeightsError, match=r"Darknet weights .*none.weights: cannot read \(No such"):
        backbone.load_darknet_weights(model, str(tmp_path / "none.weights"))
    shifted = str(tmp_path / "shifted.weights")
    data = open(path, "rb").read()
    with open(shifted, "wb") as f:         # the header, then the floats one conv-0 BN row (32 floats) late
        f.write(data[:20] + np.full(32, -1.0, np.float32).tobytes() + data[20:])
    with pytest.raises(backbone.DarknetWeightsError, match=r"Darknet conv 0 \(bb_conv_0\) would get BN variances "
                                                           r"that are not positive"):
        backbone.load_darknet_weights(model, shifted)


@pytest.mark.slow
def test_command_prints_one_line_for_bad_weights(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "backbone.py", "--preset", "tiny", "--set", "model.input_size=64",
                        "--weights", str(tmp_path / "none.weights")], cwd=os.path.dirname(backbone.__file__),
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: Darknet weights need model.width = 1.0")
