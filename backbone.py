"""CSPDarknet53 + SPP backbone (info/DESIGN.md#backbone) and the Darknet reader (info/DESIGN.md#m2-darknet-weights).

The 78 conv+BN layers are named `bb_conv_{i}` / `bb_bn_{i}` in Darknet order, so weight loading and freezing go by
name. The backbone returns b2..b5 at strides 4/8/16/32.
"""
from __future__ import annotations

import argparse
import os

import keras
import numpy as np

from fileio import InputError

NUM_BACKBONE_CONVS = 78
# conv indices whose outputs are b2, b3, b4, b5 (unfrozen by the faithful schedule, info/DESIGN.md#backbone)
OUTPUT_CONVS = (16, 37, 58, 77)


class DarknetWeightsError(InputError):
    """A Darknet weights file does not fit the backbone."""


def scaled(channels: int, width: float) -> int:
    """Channel count under the width multiplier (at least 4 so tiny models keep every layer)."""
    return max(4, int(round(channels * width)))


def bn_conv_initializer(cfg):
    """Kernel initialiser of a conv that feeds a BN layer. The original's N(0, 0.01) only ever meets pretrained
    Darknet weights; from scratch, BN makes the loss invariant to the kernel's scale, so its gradient grows as
    1 / |kernel|: with 0.01 the backbone's gradient norm is ~2e4 at step 0 and global-norm clipping then starves
    every other layer. `he` (N(0, 2 / fan_in)) gives unit-scale kernels and gradients ~100x smaller."""
    if cfg.model.conv_init == "he":
        return keras.initializers.HeNormal()
    return keras.initializers.RandomNormal(stddev=0.01)


def batch_norm(cfg, name):
    """BN with the config's epsilon, momentum and cross-replica synchronisation (info/DESIGN.md#m14-synchronised-bn)."""
    return keras.layers.BatchNormalization(epsilon=cfg.model.bn_epsilon, momentum=cfg.model.bn_momentum,
                                           synchronized=cfg.model.sync_bn, name=name)


def conv_bn_act(x, filters, kernel, prefix, tag, cfg, activation="leaky", downsample=False):
    """Conv (no bias) + BN + Mish/leaky 0.1, named `<prefix>_{pad,conv,bn,mish|leaky}_<tag>`.

    Downsampling pads one row on top and one column on the left and runs a stride-2 'valid' conv: the same
    sampling grid as Darknet's symmetric pad-1 stride-2 conv (output i covers input rows 2i-1..2i+1).
    """
    if downsample:
        x = keras.layers.ZeroPadding2D(((1, 0), (1, 0)), name=f"{prefix}_pad_{tag}")(x)
    x = keras.layers.Conv2D(filters, kernel, strides=2 if downsample else 1,
                            padding="valid" if downsample else "same", use_bias=False,
                            kernel_initializer=bn_conv_initializer(cfg), name=f"{prefix}_conv_{tag}")(x)
    x = batch_norm(cfg, f"{prefix}_bn_{tag}")(x)
    if activation == "mish":
        return keras.layers.Activation(keras.activations.mish, name=f"{prefix}_mish_{tag}")(x)
    return keras.layers.LeakyReLU(negative_slope=0.1, name=f"{prefix}_leaky_{tag}")(x)


def conv_bn(x, filters, kernel, idx, cfg, activation="mish", downsample=False):
    """Darknet `[convolutional]` with batch_normalize=1, as backbone conv `idx` (`bb_conv_{idx}`, `bb_bn_{idx}`)."""
    return conv_bn_act(x, filters, kernel, "bb", idx, cfg, activation, downsample)


def csp_stage(x, idx, cfg, down_filters, half_filters, res_mid, res_out, num_blocks, out_filters):
    """One CSP stage: downsample, route branch B, branch A with residual blocks and a transition, concat [A, B],
    1x1 fuse. Uses conv indices idx .. idx + 4 + 2 * num_blocks; returns (output, next index)."""
    w = cfg.model.width
    x = conv_bn(x, scaled(down_filters, w), 3, idx, cfg, downsample=True)
    route = conv_bn(x, scaled(half_filters, w), 1, idx + 1, cfg)     # branch B is created first (Darknet order)
    a = conv_bn(x, scaled(half_filters, w), 1, idx + 2, cfg)
    i = idx + 3
    for _ in range(num_blocks):
        r = conv_bn(a, scaled(res_mid, w), 1, i, cfg)
        r = conv_bn(r, scaled(res_out, w), 3, i + 1, cfg)
        a = keras.layers.Add(name=f"bb_res_{i + 1}")([a, r])        # linear shortcut, no activation after
        i += 2
    a = conv_bn(a, scaled(half_filters, w), 1, i, cfg)
    x = keras.layers.Concatenate(name=f"bb_csp_cat_{i}")([a, route])
    x = conv_bn(x, scaled(out_filters, w), 1, i + 1, cfg)
    return x, i + 2


def spp(x):
    """Spatial pyramid pooling: stride-1 'same' max-pools 13/9/5, concat [13, 9, 5, input] (Darknet route
    -1,-3,-5,-6)."""
    pools = [keras.layers.MaxPooling2D(k, strides=1, padding="same", name=f"bb_spp_pool_{k}")(x) for k in (13, 9, 5)]
    return keras.layers.Concatenate(name="bb_spp_cat")(pools + [x])


def apply_backbone(image, cfg):
    """CSPDarknet53 + SPP on an image tensor [B, S, S, 3]; returns [b2, b3, b4, b5] (strides 4, 8, 16, 32)."""
    w = cfg.model.width
    x = conv_bn(image, scaled(32, w), 3, 0, cfg)
    x, i = csp_stage(x, 1, cfg, 64, 64, 32, 64, 1, 64)                 # convs 1..7, 208x208x64 at 416
    b2, i = csp_stage(x, i, cfg, 128, 64, 64, 64, 2, 128)              # convs 8..16   [B, S/4, S/4, 128]
    b3, i = csp_stage(b2, i, cfg, 256, 128, 128, 128, 8, 256)          # convs 17..37  [B, S/8, S/8, 256]
    b4, i = csp_stage(b3, i, cfg, 512, 256, 256, 256, 8, 512)          # convs 38..58  [B, S/16, S/16, 512]
    x, i = csp_stage(b4, i, cfg, 1024, 512, 512, 512, 4, 1024)         # convs 59..71
    x = conv_bn(x, scaled(512, w), 1, 72, cfg, "leaky")
    x = conv_bn(x, scaled(1024, w), 3, 73, cfg, "leaky")
    x = conv_bn(x, scaled(512, w), 1, 74, cfg, "leaky")
    x = spp(x)
    x = conv_bn(x, scaled(512, w), 1, 75, cfg, "leaky")
    x = conv_bn(x, scaled(1024, w), 3, 76, cfg, "leaky")
    b5 = conv_bn(x, scaled(512, w), 1, 77, cfg, "leaky")               # [B, S/32, S/32, 512]
    assert i == 72, i
    return [b2, b3, b4, b5]


def build_backbone(cfg) -> keras.Model:
    """The backbone alone as a model: image [B, S, S, 3] -> [b2, b3, b4, b5]."""
    s = cfg.model.input_size
    image = keras.Input((s, s, 3), name="image")
    return keras.Model(image, apply_backbone(image, cfg), name="cspdarknet53")


def backbone_layer_names():
    """Names of the 78 conv and BN layers, Darknet order."""
    return ([f"bb_conv_{i}" for i in range(NUM_BACKBONE_CONVS)], [f"bb_bn_{i}" for i in range(NUM_BACKBONE_CONVS)])


# ---- Darknet weights ---------------------------------------------------------------------------------------

def read_darknet_header(f, path):
    """Header: major, minor, revision (int32), then `seen` as int64 if major*10+minor >= 2 else int32."""
    head = np.fromfile(f, dtype=np.int32, count=3)
    if head.size != 3:
        raise DarknetWeightsError(f"{path}: too short for a Darknet header (need 3 int32 version fields)")
    major, minor, revision = (int(v) for v in head)
    if major < 0 or minor < 0 or major > 1000 or minor > 1000:
        raise DarknetWeightsError(f"{path}: not a Darknet weights file (version {major}.{minor}.{revision})")
    wide = major * 10 + minor >= 2
    seen = np.fromfile(f, dtype=np.int64 if wide else np.int32, count=1)
    if seen.size != 1:
        raise DarknetWeightsError(f"{path}: header ends before the 'seen' counter")
    return {"major": major, "minor": minor, "revision": revision, "seen": int(seen[0]),
            "header_bytes": 20 if wide else 16}


def load_darknet_weights(model, path, verbose=True):
    """Load the first 78 conv+BN layers of `yolov4.weights` / `yolov4.conv.137` into `model` by name.

    Per conv, Darknet stores BN beta, gamma, mean, variance (`filters` floats each), then the kernel
    (out, in, kh, kw), which becomes Keras's (kh, kw, in, out). The rest of the file (neck and YOLO heads of the
    Darknet model) is ignored. Returns {"layers", "floats", "header"}.
    """
    convs, bns = backbone_layer_names()
    for name in convs[:1]:
        try:
            model.get_layer(name)
        except ValueError:
            raise DarknetWeightsError(f"model {model.name!r} has no layer {name!r}: not a YOLOV4+1 backbone") from None
    kernel = model.get_layer(convs[0]).kernel
    if tuple(kernel.shape) != (3, 3, 3, 32):
        raise DarknetWeightsError(f"Darknet weights need model.width = 1.0; {convs[0]} has kernel shape "
                                  f"{tuple(kernel.shape)}, Darknet's is (3, 3, 3, 32)")
    total = 0
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DarknetWeightsError(f"Darknet weights {path}: cannot read ({e.strerror})") from None
    with f:
        header = read_darknet_header(f, path)
        for i in range(NUM_BACKBONE_CONVS):
            conv, bn = model.get_layer(convs[i]), model.get_layer(bns[i])
            kh, kw, cin, cout = (int(d) for d in conv.kernel.shape)
            need_bn, need_k = 4 * cout, cout * cin * kh * kw
            bn_vals = np.fromfile(f, dtype=np.float32, count=need_bn)
            if bn_vals.size != need_bn:
                raise DarknetWeightsError(f"{path}: file ends in layer {convs[i]} (BN of Darknet conv {i}): expected "
                                          f"{need_bn} floats, found {bn_vals.size} ({total} floats read before)")
            k = np.fromfile(f, dtype=np.float32, count=need_k)
            if k.size != need_k:
                raise DarknetWeightsError(f"{path}: file ends in layer {convs[i]} (kernel {cout}x{cin}x{kh}x{kw}): "
                                          f"expected {need_k} floats, found {k.size} "
                                          f"({total + need_bn} floats read before)")
            beta, gamma, mean, var = bn_vals.reshape(4, cout)
            if not (np.isfinite(bn_vals).all() and (var > 0).all()):
                # Darknet's BN variances are positive: anything else means the floats are read out of step
                raise DarknetWeightsError(f"{path}: Darknet conv {i} ({convs[i]}) would get BN variances that are "
                                          f"not positive and finite: the file does not fit the backbone (written "
                                          f"for another width or network?)")
            bn.set_weights([gamma, beta, mean, var])                  # Keras order
            conv.set_weights([k.reshape(cout, cin, kh, kw).transpose(2, 3, 1, 0)])
            total += need_bn + need_k
        left = os.path.getsize(path) - f.tell()
    info = {"layers": NUM_BACKBONE_CONVS, "floats": total, "header": header, "bytes_left": left}
    if verbose:
        print(f"loaded {NUM_BACKBONE_CONVS} conv+BN layers ({total:,} floats) from {path} "
              f"(Darknet {header['major']}.{header['minor']}.{header['revision']}, {left:,} bytes not used)")
    return info


def write_darknet_weights(model, path, version=(0, 2, 5), seen=0):
    """Write the 78 backbone convs of `model` as a Darknet weights file (the inverse of load_darknet_weights);
    used by the tests and to hand a trained backbone to Darknet/OpenCV tools."""
    convs, bns = backbone_layer_names()
    major, minor, revision = version
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.asarray([major, minor, revision], np.int32).tofile(f)
        np.asarray([seen], np.int64 if major * 10 + minor >= 2 else np.int32).tofile(f)
        for i in range(NUM_BACKBONE_CONVS):
            gamma, beta, mean, var = model.get_layer(bns[i]).get_weights()
            np.concatenate([beta, gamma, mean, var]).astype(np.float32).tofile(f)
            (k,) = model.get_layer(convs[i]).get_weights()
            k.transpose(3, 2, 0, 1).astype(np.float32).tofile(f)
    os.replace(tmp, path)


if __name__ == "__main__":
    import config

    ap = argparse.ArgumentParser(description="Build the CSPDarknet53+SPP backbone, print b2..b5 shapes and "
                                             "parameter count, optionally load Darknet weights.")
    config.add_config_args(ap)
    ap.add_argument("--weights", default=None, help="yolov4.weights or yolov4.conv.137 (width 1.0 only)")
    args = ap.parse_args()
    cfg = config.config_from_args(args)
    model = build_backbone(cfg)
    for name, t in zip(("b2", "b3", "b4", "b5"), model.outputs):
        print(name, tuple(t.shape))
    print("backbone", model.count_params())
    if args.weights:
        try:
            load_darknet_weights(model, args.weights)
        except DarknetWeightsError as e:
            raise SystemExit(f"error: {e}") from None
