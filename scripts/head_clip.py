"""The Keras model with the input of one level's detection output conv (`head_det_out_<level>`) clipped to a range,
rounded to its 8-bit steps, or both (what an INT8 FakeQuantize does there), run over a dataset split and written as
frame predictions for `tracking.track` and `scripts/evaluate.py`. It is how the NNCF INT8 export's higher video AP on
the demo run was traced to the clipping at level 5 (info/RESULTS.md#2026-12-07-why-int8-scores-a-higher-ap).

The range is given (`--range LO HI`) or read from an INT8 OpenVINO export (`--int8 DIR`: the FakeQuantize on that
conv's input). It also prints the fraction of the conv's input values that fall outside the range.

    python scripts/head_clip.py --run-dir runs/demo --data data/shapes/valid --int8 exported/demo_ov_int8 \
        --mask-rois 10 --out runs/demo/valid_frames_clip5.json
    python -m tracking.track --pred runs/demo/valid_frames_clip5.json --out runs/demo/results_clip5.json \
        --config runs/demo/config.yaml
    python scripts/evaluate.py --results runs/demo/results_clip5.json
"""
from __future__ import annotations

import argparse
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODES = ("clip", "round", "fake_quant")


def det_out_channels(cfg) -> int:
    from layers import NUM_BOX, NUM_OBJ
    return cfg.model.anchors_per_level * (NUM_BOX + NUM_OBJ)


def int8_input_range(xml_path: str, level: int, cfg) -> tuple[float, float]:
    """(low, high) of the per-tensor 8-bit FakeQuantize that feeds level `level`'s detection output conv in an
    OpenVINO INT8 IR: the one conv with nA*6 output channels on the level's grid (input_size / 2**level). Raises
    ValueError naming the file when the IR cannot be read, holds no such conv or several, or that conv's input is not
    quantised to 256 levels per tensor (an FP32 or FP16 export)."""
    import numpy as np
    import openvino as ov

    if not os.path.isfile(xml_path):
        raise ValueError(f"{xml_path}: no such file (--int8 takes a folder written by export.py --format openvino)")
    try:
        ops = ov.Core().read_model(xml_path).get_ordered_ops()
    except RuntimeError as e:
        raise ValueError(f"{xml_path}: cannot read the OpenVINO model ({str(e).strip().splitlines()[0][:300]})") \
            from None
    grid = cfg.model.input_size // 2 ** level
    found = []
    for op in ops:
        shape = op.output(0).get_partial_shape() if op.get_type_name() == "Convolution" else None
        if shape is not None and shape.is_static and shape.rank.get_length() == 4 and \
                list(shape.to_shape())[1:] == [det_out_channels(cfg), grid, grid]:
            found.append(op)
    if len(found) != 1:
        raise ValueError(f"{xml_path}: {len(found) or 'no'} convs with the level-{level} detection output's shape "
                         f"({det_out_channels(cfg)} channels on a {grid}x{grid} grid) in this IR; expected one")
    op = found[0]
    fq = op.input(0).get_source_output().get_node()
    if fq.get_type_name() != "FakeQuantize":
        raise ValueError(f"{xml_path}: the level-{level} detection output conv ({op.get_friendly_name()}) has no "
                         f"FakeQuantize on its input (not an INT8 export, or that conv was left in float)")
    if fq.get_levels() != 256:
        raise ValueError(f"{xml_path}: the level-{level} FakeQuantize has {fq.get_levels()} levels, not 256")
    low, high = (np.asarray(fq.input(i).get_source_output().get_node().get_data(), np.float64) for i in (1, 2))
    if low.size != 1 or high.size != 1:
        raise ValueError(f"{xml_path}: the level-{level} FakeQuantize is per-channel ({low.size} ranges)")
    return float(low.ravel()[0]), float(high.ravel()[0])


def export_input_range(folder: str, level: int, cfg, run_dir: str) -> tuple[float, float]:
    """`int8_input_range` of an export folder, after checking its model.json: an OpenVINO INT8 export of a model at
    the same inference canvas. An export of another run than `run_dir` (when its recorded run folder is found from
    here) is named in a warning: its range belongs to that run's weights."""
    import export
    from fileio import read_json

    meta = read_json(os.path.join(folder, export.META_FILE), "export metadata", ValueError)
    if meta.get("format") != "openvino" or not meta.get("int8"):
        raise ValueError(f"{folder}: not an OpenVINO INT8 export (model.json: format {meta.get('format')!r}, int8 "
                         f"{meta.get('int8')!r}); write one with export.py --format openvino --int8 SPLIT")
    if meta.get("input_size") != cfg.model.input_size:
        raise ValueError(f"{folder}: exported at input {meta.get('input_size')}, but --run-dir infers at "
                         f"{cfg.model.input_size}")
    source = (meta.get("source") or {}).get("run_dir")   # as given to export.py, maybe relative to another folder
    if source and os.path.isdir(source) and os.path.isdir(run_dir) and not os.path.samefile(source, run_dir):
        print(f"warning: {folder} was exported from {source}, not {run_dir}: its range belongs to that run's weights",
              file=sys.stderr, flush=True)
    return int8_input_range(os.path.join(folder, export.OPENVINO_FILE), level, cfg)


class HeadInputPatch:
    """Wraps `head_det_out_<level>`'s call in `model` so that its input is clipped to [low, high] ("clip"), rounded to
    the 255 steps of that range without clipping ("round"), or both ("fake_quant", as an 8-bit asymmetric
    FakeQuantize). Counts the input values seen and those outside the range (`outside_fraction`), over the first
    `rows` examples of each batch when `rows` is set (>= 0), so that padding copies are not counted. Patch before the
    model's graph is traced."""

    def __init__(self, model, level: int, low: float, high: float, mode: str = "clip"):
        import tensorflow as tf
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"the range must be finite with low < high, got [{low}, {high}]")
        self.low, self.high, self.mode = float(low), float(high), mode
        self.rows = tf.Variable(-1, dtype=tf.int32, trainable=False)
        self.seen = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.outside = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        layer = model.get_layer(f"head_det_out_{level}")
        call = layer.call

        def patched(x):
            real = x[:tf.where(self.rows < 0, tf.shape(x)[0], self.rows)]
            self.seen.assign_add(tf.cast(tf.size(real), tf.float64))
            self.outside.assign_add(tf.reduce_sum(tf.cast((real < self.low) | (real > self.high), tf.float64)))
            return call(self.transform(x))
        layer.call = patched

    def transform(self, x):
        import tensorflow as tf
        step = (self.high - self.low) / 255.0
        if self.mode == "clip":
            return tf.clip_by_value(x, self.low, self.high)
        if self.mode == "round":
            return tf.round((x - self.low) / step) * step + self.low
        return tf.round((tf.clip_by_value(x, self.low, self.high) - self.low) / step) * step + self.low

    @property
    def outside_fraction(self) -> float:
        seen = float(self.seen.numpy())
        return float(self.outside.numpy()) / seen if seen else 0.0


def clipped_predictions(cfg, model, videos, level: int, low: float, high: float, mode: str = "clip",
                        mask_rois: int | None = None, batch_size: int | None = None):
    """(frame-predictions document, fraction of the head's input values outside [low, high]) of `tracker.py`'s
    predictor over `videos` (`tracker.dataset_source`), with `HeadInputPatch` on level `level`; categories from the
    model's config, as tracker.py writes them."""
    import tracker
    predictor = tracker.FramePredictor(cfg, model, batch_size or cfg.infer.batch_size, cfg.infer.score_floor,
                                       mask_rois=mask_rois)
    patch = HeadInputPatch(predictor.model, level, low, high, mode)
    forward = predictor.forward

    def forward_counted(frames):
        patch.rows.assign(len(frames))          # a short batch is padded with copies of its last frame
        return forward(frames)
    predictor.forward = forward_counted
    return tracker.predict_videos(predictor, videos, cfg.categories()), patch.outside_fraction


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="the trained run (its latest checkpoint)")
    ap.add_argument("--data", required=True, help="a dataset split root (instances.json, JPEGImages/)")
    ap.add_argument("--out", required=True, help="frame-predictions JSON to write")
    ap.add_argument("--level", type=int, default=5, choices=(2, 3, 4, 5), help="pyramid level (default 5)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--range", type=float, nargs=2, metavar=("LO", "HI"), help="the range to clip / round to")
    src.add_argument("--int8", metavar="DIR", help="read the range from this OpenVINO INT8 export (export.py --int8)")
    ap.add_argument("--mode", choices=MODES, default="clip", help="clip (default), round, or fake_quant (both)")
    ap.add_argument("--mask-rois", type=int, default=None, metavar="K", help="as tracker.py --mask-rois")
    ap.add_argument("--max-videos", type=int, default=None, metavar="N", help="the first N videos only")
    args = ap.parse_args(argv)
    if args.range and not (all(map(math.isfinite, args.range)) and args.range[0] < args.range[1]):
        ap.error(f"--range needs finite LO < HI, got {args.range[0]:g} {args.range[1]:g}")
    if args.mask_rois is not None and args.mask_rois < 1:
        ap.error("--mask-rois must be at least 1")
    if args.max_videos is not None and args.max_videos < 1:
        ap.error("--max-videos must be at least 1")

    import tracker
    from checkpoints import load_run
    from fileio import InputError, check_writable_file
    from tracking.io import write_frame_predictions
    try:
        check_writable_file(args.out, "--out")
        cfg, model = load_run(args.run_dir, mode="infer")
        if args.int8:
            low, high = export_input_range(args.int8, args.level, cfg, args.run_dir)
            print(f"range [{low:.6g}, {high:.6g}] from {args.int8}")
        else:
            low, high = args.range
        videos, _ = tracker.dataset_source(args.data)
        doc, outside = clipped_predictions(cfg, model, videos[:args.max_videos], args.level, low, high, args.mode,
                                           args.mask_rois)
        write_frame_predictions(args.out, doc)
    except (InputError, ValueError) as e:
        sys.exit(f"head_clip.py: {e}")
    print(f"level {args.level}: {outside:.2%} of head_det_out_{args.level}'s input values outside "
          f"[{low:.6g}, {high:.6g}] ({args.mode})")
    print(f"frame predictions written to {args.out}")


if __name__ == "__main__":
    main()
