"""Darknet `.cfg` walking for the benchmarks: the shape of every layer of a network such as YOLOv4, its multiply-
accumulate count (Darknet's own BFLOPs figure), and a random `.weights` file in Darknet's format so OpenCV's DNN
module can run the network without the real weights.

    layers = walk_cfg("bench/data/yolov4.cfg", 416)      # [{"type", "h", "w", "c", ...}, ...]
    flops = cfg_flops(layers)                            # 2 x MACs of the convolutions
    write_random_weights(layers, "/tmp/yolov4_random.weights")
"""
from __future__ import annotations

import os

import numpy as np


class DarknetCfgError(ValueError):
    """A cfg file uses a layer type or option this walker does not model."""


def read_sections(path):
    """The cfg as a list of (section name, {key: value string}); comments ('#', ';') and blank lines dropped."""
    sections = []
    with open(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].split(";", 1)[0].strip()
            if not line:
                continue
            if line.startswith("["):
                if not line.endswith("]"):
                    raise DarknetCfgError(f"{path}:{lineno}: unterminated section header {line!r}")
                sections.append((line[1:-1].strip(), {}))
            elif "=" in line:
                if not sections:
                    raise DarknetCfgError(f"{path}:{lineno}: option before the first section")
                key, value = line.split("=", 1)
                sections[-1][1][key.strip()] = value.strip()
            else:
                raise DarknetCfgError(f"{path}:{lineno}: not 'key=value' nor a section: {line!r}")
    if not sections or sections[0][0] not in ("net", "network"):
        raise DarknetCfgError(f"{path}: the first section must be [net]")
    return sections


def walk_cfg(path, size):
    """Output shape of every layer for a size x size x channels input (Darknet's layer order, [net] excluded).

    Each entry: {"type", "h", "w", "c"} and, for a convolution, "filters", "size", "stride", "in_c", "bn",
    "macs" (multiply-accumulates per image). Darknet's 'same' padding is size // 2 when pad=1.
    """
    sections = read_sections(path)
    h = w = int(size)
    c = int(sections[0][1].get("channels", 3))
    out = []
    for index, (kind, opts) in enumerate(sections[1:]):
        where = f"{path}: layer {index} [{kind}]"
        if kind in ("convolutional", "conv"):
            filters, k = int(opts.get("filters", 1)), int(opts.get("size", 1))
            stride, groups = int(opts.get("stride", 1)), int(opts.get("groups", 1))
            if groups != 1:
                raise DarknetCfgError(f"{where}: grouped convolutions are not modelled")
            pad = k // 2 if int(opts.get("pad", 0)) else int(opts.get("padding", 0))
            oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
            entry = {"type": "conv", "h": oh, "w": ow, "c": filters, "filters": filters, "size": k,
                     "stride": stride, "in_c": c, "bn": bool(int(opts.get("batch_normalize", 0))),
                     "macs": oh * ow * filters * k * k * c}
        elif kind == "maxpool":
            k, stride = int(opts.get("size", 2)), int(opts.get("stride", 2))
            # Darknet: padding defaults to size - 1, out = (in + padding - size) / stride + 1
            padding = int(opts.get("padding", k - 1))
            entry = {"type": kind, "h": (h + padding - k) // stride + 1, "w": (w + padding - k) // stride + 1,
                     "c": c}
        elif kind == "upsample":
            s = int(opts.get("stride", 2))
            entry = {"type": kind, "h": h * s, "w": w * s, "c": c}
        elif kind == "route":
            refs = [int(v) for v in opts["layers"].split(",")]
            refs = [index + r if r < 0 else r for r in refs]
            if any(not 0 <= r < index for r in refs):
                raise DarknetCfgError(f"{where}: route to a layer outside 0..{index - 1}: {opts['layers']}")
            srcs = [out[r] for r in refs]
            if len({(s["h"], s["w"]) for s in srcs}) != 1:
                raise DarknetCfgError(f"{where}: routed layers differ in size: {[(s['h'], s['w']) for s in srcs]}")
            entry = {"type": kind, "h": srcs[0]["h"], "w": srcs[0]["w"], "c": sum(s["c"] for s in srcs)}
        elif kind in ("shortcut", "yolo"):
            entry = {"type": kind, "h": h, "w": w, "c": c}
        else:
            raise DarknetCfgError(f"{where}: layer type not modelled")
        out.append(entry)
        h, w, c = entry["h"], entry["w"], entry["c"]
    return out


def cfg_flops(layers):
    """2 x the convolutions' multiply-accumulates per image (how Darknet counts its 'BFLOPS')."""
    return 2 * sum(layer["macs"] for layer in layers if layer["type"] == "conv")


def write_random_weights(layers, path, seed=0):
    """A Darknet weights file (version 0.2.5, 64-bit `seen`) with random but tame values for every convolution:
    kernels ~ N(0, 1 / fan_in), BN gamma 1, beta 0, mean 0, variance 1 (biases 0 for convs without BN), so the
    activations keep their scale through the network (no overflow, no denormals to slow either side down)."""
    rng = np.random.default_rng(seed)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.asarray([0, 2, 5], np.int32).tofile(f)
        np.asarray([0], np.int64).tofile(f)
        for layer in layers:
            if layer["type"] != "conv":
                continue
            n, fan_in = layer["filters"], layer["size"] ** 2 * layer["in_c"]
            head = [np.zeros(n), np.ones(n), np.zeros(n), np.ones(n)] if layer["bn"] else [np.zeros(n)]
            np.concatenate(head).astype(np.float32).tofile(f)                   # beta, gamma, mean, var | bias
            rng.normal(0.0, 1.0 / np.sqrt(fan_in), n * fan_in).astype(np.float32).tofile(f)   # [out, in, kh, kw]
    os.replace(tmp, path)
