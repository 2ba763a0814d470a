"""The benchmarks' arithmetic: FLOPs of Keras layers and of a Darknet cfg against hand counts, the random Darknet
weights file against its exact size and OpenCV's reader, and the CPU peak formula."""
import os

import cv2
import keras
import numpy as np
import pytest

import darknet_cfg  # noqa: E402
import flops  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _conv(filters, size, bn=True, activation="leaky"):
    return (f"[convolutional]\n{'batch_normalize=1' if bn else ''}\nfilters={filters}\nsize={size}\nstride=1\n"
            f"pad=1\nactivation={activation}\n")


# conv 3x3 -> maxpool /2 -> conv 3x3 -> shortcut -> route (concat) -> upsample x2 -> 1x1 conv with bias
SMALL_CFG = "\n".join([
    "[net]\nwidth=32\nheight=32\nchannels=3\n", _conv(8, 3), "[maxpool]\nsize=2\nstride=2\n",
    _conv(8, 3, activation="mish"), "[shortcut]\nfrom=-2\nactivation=linear\n", "[route]\nlayers=-1,-3\n",
    "[upsample]\nstride=2\n", _conv(5, 1, bn=False, activation="linear")])


def test_keras_layer_macs_hand_counted():
    x = keras.Input((10, 10, 8))
    a = keras.layers.Conv2D(16, 3, padding="same", name="bb_a")(x)                 # 10*10*9*8*16 = 115,200
    b = keras.layers.Conv2D(4, 3, strides=2, padding="valid", name="neck_b")(a)    # 4*4*9*16*4 = 9,216
    c = keras.layers.Conv2DTranspose(6, 2, strides=2, name="mask_c")(b)            # 4*4 inputs * 4*4*6 = 1,536
    d = keras.layers.Dense(5, name="head_d")(c)                                    # 8*8 positions * 6*5 = 1,920
    m = keras.Model(x, d)
    assert [flops.layer_macs(m.get_layer(n)) for n in ("bb_a", "neck_b", "mask_c", "head_d")] == \
        [115_200, 9_216, 1_536, 1_920]
    counts = flops.model_flops(m, rois=3)
    assert counts == {"backbone": 2 * 115_200, "neck": 2 * 9_216, "heads": 2 * 1_920, "mask_head": 2 * 3 * 1_536,
                      "total": 2 * (115_200 + 9_216 + 1_920 + 3 * 1_536)}


def test_darknet_walk_shapes_and_flops(tmp_path):
    path = tmp_path / "small.cfg"
    path.write_text(SMALL_CFG)
    layers = darknet_cfg.walk_cfg(str(path), 32)
    assert [(l["type"], l["h"], l["c"]) for l in layers] == [
        ("conv", 32, 8), ("maxpool", 16, 8), ("conv", 16, 8), ("shortcut", 16, 8), ("route", 16, 16),
        ("upsample", 32, 16), ("conv", 32, 5)]
    # 32*32*8*27 + 16*16*8*72 + 32*32*5*16
    assert darknet_cfg.cfg_flops(layers) == 2 * (221_184 + 147_456 + 81_920)


def test_yolov4_cfg_flops_and_heads():
    layers = darknet_cfg.walk_cfg(os.path.join(ROOT, "bench", "data", "yolov4.cfg"), 416)
    assert sum(l["type"] == "conv" for l in layers) == 110 and len(layers) == 161 + 1
    assert [(l["h"], l["c"]) for l in layers if l["type"] == "yolo"] == [(52, 255), (26, 255), (13, 255)]
    assert layers[0]["macs"] == 416 * 416 * 32 * 27
    assert darknet_cfg.cfg_flops(layers) / 1e9 == pytest.approx(60.10, abs=0.01)   # Darknet: ~60.1 BFLOPS


def test_random_weights_size_and_opencv_reads_them(tmp_path):
    path = tmp_path / "small.cfg"
    path.write_text(SMALL_CFG)
    layers = darknet_cfg.walk_cfg(str(path), 32)
    weights = str(tmp_path / "small.weights")
    darknet_cfg.write_random_weights(layers, weights)
    floats = (4 * 8 + 27 * 8) + (4 * 8 + 72 * 8) + (5 + 16 * 5)    # BN convs: beta, gamma, mean, var + kernel
    assert os.path.getsize(weights) == 20 + 4 * floats                 # header: 3 int32 + int64 seen
    net = cv2.dnn.readNetFromDarknet(str(path), weights)
    net.setInput(cv2.dnn.blobFromImage(np.full((32, 32, 3), 128, np.uint8), 1 / 255.0, (32, 32)))
    out = net.forward()
    assert out.shape == (1, 5, 32, 32) and np.isfinite(out).all() and out.std() > 0


def test_cpu_peak_formula():
    peak, how = flops.cpu_peak(clock_ghz=2.0)
    lanes = 16 if "AVX-512" in how else 8 if "AVX2" in how else 4
    assert peak == pytest.approx(os.cpu_count() * 2.0e9 * 2 * lanes * 2)
    assert "2.00 GHz (given)" in how


def test_simd_lanes_follow_the_flags_and_the_onednn_cap():
    avx512 = {"avx2", "fma", "avx512f"}
    assert flops.simd_lanes(avx512, {}) == 16 and flops.simd_lanes({"avx2", "fma"}, {}) == 8
    assert flops.simd_lanes({"sse4_2"}, {}) == 4
    assert flops.simd_lanes(avx512, {"ONEDNN_MAX_CPU_ISA": "AVX2"}) == 8
    assert flops.simd_lanes(avx512, {"DNNL_MAX_CPU_ISA": "avx2_vnni"}) == 8
    assert flops.simd_lanes(avx512, {"ONEDNN_MAX_CPU_ISA": "SSE41"}) == 4
    assert flops.simd_lanes(avx512, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}) == 16
    assert flops.simd_lanes({"avx2", "fma"}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}) == 8
