"""FLOPs of a built YOLOV4+1 model counted from its layers, by part, and the CPU's peak FP32 rate.

Counted: Conv2D, Conv2DTranspose and Dense, as 2 x multiply-accumulates per image (the convention of Darknet's
'BFLOPS', so the figure compares with bench/darknet_cfg.py's count of YOLOv4). Not counted: BN, activations,
pooling, resizing, NMS, ROI align, which are memory-bound and a few percent of the arithmetic. The mask-head layers
run once per ROI, so their count is multiplied by the number of ROIs the head sees (max_prop per image).

    counts = model_flops(net, rois=cfg.model.max_prop)    # {"backbone": ..., "neck": ..., "heads": ...,
                                                           #  "mask_head": ..., "total": ...}
"""
from __future__ import annotations

import os

import keras
import numpy as np

PARTS = (("backbone", "bb_"), ("neck", "neck_"), ("heads", "head_"), ("mask_head", "mask_"))


def layer_macs(layer) -> int:
    """Multiply-accumulates of one call of `layer` per leading (batch) item; 0 for layers without a kernel."""
    if isinstance(layer, keras.layers.Conv2DTranspose):
        kh, kw, cout, cin = layer.kernel.shape               # transposed conv kernel: [kh, kw, out, in]
        _, h, w, _ = layer.input.shape                       # every input pixel scatters a kh x kw x cout patch
        return int(h * w * kh * kw * cin * cout)
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw, cin_per_group, cout = layer.kernel.shape
        _, h, w, _ = layer.output.shape
        return int(h * w * kh * kw * cin_per_group * cout)
    if isinstance(layer, keras.layers.Dense):
        cin, cout = layer.kernel.shape
        positions = int(np.prod([d for d in layer.output.shape[1:-1]], dtype=np.int64))
        return int(positions * cin * cout)
    return 0


def model_flops(model, rois: int) -> dict:
    """FLOPs per image (2 x MACs) by part (layer-name prefix, model.PARTS), the mask head at `rois` ROIs."""
    counts = {part: 0 for part, _ in PARTS}
    for layer in model.layers:
        macs = layer_macs(layer)
        for part, prefix in PARTS:
            if macs and layer.name.startswith(prefix):
                counts[part] += 2 * macs * (rois if part == "mask_head" else 1)
    counts["total"] = sum(counts[part] for part, _ in PARTS)
    return counts


def simd_lanes(flags, environ=None):
    """FP32 lanes of the widest vectors oneDNN uses here: 16 with avx512f, 8 with avx2 + fma, 4 otherwise; an
    ONEDNN_MAX_CPU_ISA below AVX-512 (SSE41, AVX, AVX2...) caps it, as it caps oneDNN's kernels."""
    from export import onednn_isa_cap
    cap = onednn_isa_cap(environ)
    lanes = 16 if "avx512f" in flags else 8 if {"avx2", "fma"} <= flags else 4
    if cap.startswith("AVX") and not cap.startswith(("AVX512", "AVX10")):
        lanes = min(lanes, 8)
    elif cap == "SSE41":
        lanes = 4
    return lanes


def cpu_peak(clock_ghz=None):
    """Peak FP32 FLOP/s of this machine's cores: cores x clock x FMA units x SIMD lanes x 2 (an FMA is two FLOPs).

    Returns (flops per second, a one-line statement of the assumptions). The vector width comes from
    /proc/cpuinfo's flags and ONEDNN_MAX_CPU_ISA (`simd_lanes`); two FMA units per core are assumed for AVX-512
    server parts (Skylake-SP Gold/Platinum and later) and AVX2 cores. The clock is `clock_ghz` if given, else the
    'cpu MHz' /proc/cpuinfo reports (on a VM the TSC/nominal rate; all-core AVX-512 turbo may differ either way).
    """
    flags, mhz = set(), None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("cpu MHz") and mhz is None:
                    mhz = float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    lanes = simd_lanes(flags)
    fma_units = 2
    ghz = float(clock_ghz) if clock_ghz else (mhz / 1000 if mhz else 2.0)
    cores = os.cpu_count() or 1
    peak = cores * ghz * 1e9 * fma_units * lanes * 2
    how = (f"{cores} cores x {ghz:.2f} GHz "
           f"({'given' if clock_ghz else 'cpu MHz in /proc/cpuinfo' if mhz else 'guessed'})"
           f" x {fma_units} FMA units x {lanes} FP32 lanes "
           f"({'AVX-512' if lanes == 16 else 'AVX2' if lanes == 8 else 'SSE'})"
           f" x 2 = {peak / 1e9:.0f} GFLOP/s")
    return peak, how
