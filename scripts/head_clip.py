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
    """(low, high) of the per-tensor FakeQuantize that feeds level `level`'s detection output conv in an OpenVINO
    INT8 IR: the conv with nA*6 output channels on the level's grid (input_size / 2**level). Raises ValueError naming
    the file when there is none (an FP32 or FP16 export)."""
    import numpy as np
    import openvino as ov

    if not os.path.isfile(xml_path):
        raise ValueError(f"{xml_path}: no such file (--int8 takes a folder written by export.py --format openvino)")
    grid = cfg.model.input_size // 2 ** level
    for op in ov.Core().read_model(xml_path).get_ordered_ops():
        if op.get_type_name() != "Convolution":
            continue
        shape = op.output(0).get_partial_shape()
        if shape.rank.get_length() != 4 or not shape.is_static:
            continue
        if list(shape.to_shape())[1:] != [det_out_channels(cfg), grid, grid]:
            continue
        fq = op.input(0).get_source_output().get_node()
        if fq.get_type_name() != "FakeQuantize":
            raise ValueError(f"{xml_path}: the level-{level} detection output conv ({op.get_friendly_name()}) has no "
                             f"FakeQuantize on its input (not an INT8 export, or that conv was left in float)")
        low, high = (np.asarray(fq.input(i).get_source_output().get_node().get_data(), np.float64) for i in (1, 2))
        if low.size != 1 or high.size != 1:
            raise ValueError(f"{xml_path}: the level-{level} FakeQuantize is per-channel ({low.size} ranges)")
        return float(low.ravel()[0]), float(high.ravel()[0])
    raise ValueError(f"{xml_path}: no level-{level} detection output conv ({det_out_channels(cfg)} channels on a "
                     f"{grid}x{grid} grid) in this IR")


class HeadInputPatch:
    """Wraps `head_det_out_<level>`'s call in `model` so that its input is clipped to [low, high] ("clip"), rounded to
    the 255 steps of that range without clipping ("round"), or both ("fake_quant", as an 8-bit asymmetric
    FakeQuantize). Counts the input values seen and those outside the range (`outside_fraction`). Patch before the
    model's graph is traced."""

    def __init__(self, model, level: int, low: float, high: float, mode: str = "clip"):
        import tensorflow as tf
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not low < high:
            raise ValueError(f"the range must have low < high, got [{low}, {high}]")
        self.low, self.high, self.mode = float(low), float(high), mode
        self.seen = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.outside = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        layer = model.get_layer(f"head_det_out_{level}")
        call = layer.call

        def patched(x):
            self.seen.assign_add(tf.cast(tf.size(x), tf.float64))
            self.outside.assign_add(tf.reduce_sum(tf.cast((x < self.low) | (x > self.high), tf.float64)))
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
    if args.range and not args.range[0] < args.range[1]:
        ap.error(f"--range needs LO < HI, got {args.range[0]:g} {args.range[1]:g}")

    import tracker
    from checkpoints import load_run
    from fileio import InputError, check_writable_file
    from tracking.io import write_frame_predictions
    try:
        check_writable_file(args.out, "--out")
        cfg, model = load_run(args.run_dir, mode="infer")
        if args.int8:
            import export
            xml = os.path.join(args.int8, export.OPENVINO_FILE)
            low, high = int8_input_range(xml, args.level, cfg)
            print(f"range [{low:.6g}, {high:.6g}] from {xml}")
        else:
            low, high = args.range
        videos, categories = tracker.dataset_source(args.data)
        videos = videos[:args.max_videos] if args.max_videos else videos
        predictor = tracker.FramePredictor(cfg, model, cfg.infer.batch_size, cfg.infer.score_floor,
                                           mask_rois=args.mask_rois)
        patch = HeadInputPatch(predictor.model, args.level, low, high, args.mode)
        doc = tracker.predict_videos(predictor, videos, categories)
    except (InputError, ValueError) as e:
        sys.exit(f"head_clip.py: {e}")
    write_frame_predictions(args.out, doc)
    print(f"level {args.level}: {patch.outside_fraction:.2%} of head_det_out_{args.level}'s input values outside "
          f"[{low:.6g}, {high:.6g}] ({args.mode})")
    print(f"frame predictions written to {args.out}")


if __name__ == "__main__":
    main()
