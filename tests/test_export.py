"""export.py: the in-graph letterbox against model.letterbox_image and utils.Letterbox, the builtin ROI pooling
against tf.image.crop_and_resize, SavedModel / TFLite / TFLite-fp16 exports against the Keras inference model,
`tracker.py --exported` against `tracker.py --run-dir`, and the error cases (info/DESIGN.md#m12-outputs)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

# Tolerances of an export against the Keras model on the same frame (measured maxima on this fixture in brackets):
BOX_PX = 1.0        # boxes, original-frame pixels        [SavedModel 0.1, TFLite 0.3]
SCORE = 3e-4        # scores and class probabilities      [SavedModel 6e-5, TFLite 1.1e-4]
MASK_AGREE = 0.995  # fraction of equal thresholded 28x28 mask pixels, boxes off the right/bottom frame edge
MASK_IOU = 0.97     # mean IoU of pasted masks in frame predictions, same boxes [0.995]
MASK_POOLED = 0.98  # summed intersections / summed unions of those masks     [SavedModel 0.998, TFLite 0.997]


def _run(args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([PY] + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _make_run(data, run_dir):
    """A run directory (config.yaml + checkpoints/, what train.py writes) for the tiny preset at 64 px, with
    He-normal conv/dense kernels and BN statistics measured on noise frames instead of trained weights.

    A run of a few training steps keeps the 0.01-stddev initialisation: its features barely depend on the frame and
    many proposal scores tie exactly, so an NMS tie-break, not the export, would decide every comparison. With
    these weights the scores are distinct and depend on the input.
    """
    import keras
    import tensorflow as tf

    import checkpoints
    import config as config_lib
    import model as model_lib
    import rundir
    keras.utils.set_random_seed(0)                 # the mask head keeps Keras's (seeded) initialisation
    ann_path = os.path.join(data, "instances.json")
    cfg = config_lib.apply_overrides(config_lib.get_preset("tiny"), ["model.input_size=64", "data.mask_res=32"])
    cfg = rundir.add_dataset_classes(cfg, json.load(open(ann_path)), ann_path)
    m = model_lib.build_model(cfg, "train")
    checkpoints.ensure_alb_built(m)
    rng = np.random.default_rng(0)
    for layer in m.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and not layer.name.startswith("mask_"):
            w = layer.get_weights()
            gain = 0.2 if layer.name.startswith(("head_det_out_", "head_cls_")) else 1.0   # unsaturated scores
            w[0] = rng.normal(0, gain * np.sqrt(2.0 / np.prod(w[0].shape[:-1])), w[0].shape).astype(np.float32)
            layer.set_weights(w)
        if layer.name == "mask_out":                # mask probabilities away from the 0.5 threshold
            w = layer.get_weights()
            layer.set_weights([w[0] * 5.0, w[1]])
    for layer in m.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0                    # one training-mode pass sets the moving statistics
    m(rng.uniform(0, 1, (4, 64, 64, 3)).astype(np.float32), training=True)
    os.makedirs(run_dir)
    config_lib.save_config(cfg, os.path.join(run_dir, "config.yaml"))
    ckpt, _ = checkpoints.make_checkpoint(m)
    tf.train.CheckpointManager(ckpt, os.path.join(run_dir, "checkpoints"), 1).save()


def exported_run(tmp_path_factory, folder, exports, timeout, written=lambda out: out):
    """A synthetic dataset (128x128 frames: the letterbox to 64 is an exact 2x INTER_AREA, so cv2 and the graph
    agree bit for bit), a run directory, and its exports made in parallel: `exports(base)` maps a name to
    export.py's arguments besides --run-dir and --out; each must print `written(its --out folder)`."""
    base = tmp_path_factory.mktemp(folder)
    r = _run(["scripts/make_synthetic_ytvis.py", "--out", str(base / "shapes"), "--seed", "5", "--train-videos", "1",
              "--valid-videos", "1", "--min-frames", "6", "--max-frames", "6", "--width", "128", "--height", "128",
              "--quiet"])
    assert r.returncode == 0, r.stderr
    _make_run(str(base / "shapes" / "train"), str(base / "run"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    jobs = {name: subprocess.Popen([PY, "export.py", "--run-dir", str(base / "run"), "--out", str(base / name)] + a,
                                   cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name, a in exports(base).items()}
    for name, p in jobs.items():
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"{name}: {out[-2000:]}{err[-3000:]}"
        assert written(str(base / name)) in out
    return base


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The dataset, a run directory, and three exports of it: SavedModel, TFLite, TFLite with float16 weights."""
    exports = {"sm": ["--format", "saved_model"], "tfl": ["--format", "tflite"],
               "f16": ["--format", "tflite", "--fp16"]}
    return exported_run(tmp_path_factory, "export", lambda base: exports, timeout=600)


@pytest.fixture(scope="module")
def keras_model(run):
    import checkpoints
    return checkpoints.load_run(str(run / "run"))


def _noise_frames():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in ((64, 64), (128, 128), (48, 80), (120, 90))]


def _keras_outputs(keras_model, frame):
    """The Keras inference model in graph mode (as tracker.FramePredictor runs it) on the export's own canvas."""
    import tensorflow as tf

    import export
    cfg, model = keras_model
    if not hasattr(model, "_test_fn"):
        model._test_fn = tf.function(lambda x: model(x, training=False))
    canvas = export.letterbox_tf(tf.constant(frame), cfg.model.input_size)[None]
    out = model._test_fn({"image": canvas, "image_hw": tf.constant([frame.shape[:2]], tf.int32)})
    out = {k: np.asarray(v)[0] for k, v in out.items()}
    out["category_ids"] = np.array([0] + cfg.category_ids())[out["classes"]]
    return out


# ---- letterbox and ROI pooling in the graph ------------------------------------------------------------------

def test_letterbox_sizes_match_numpy_float64_exactly():
    import tensorflow as tf

    import export
    import utils
    # hand-checked: 64/49*49 is 63.99999999999999 in float64, so utils.Letterbox gives 63 rows, not 64
    assert utils.Letterbox(49, 1, 64).nh == 63
    nh, nw = export.letterbox_sizes_tf(tf.constant(49), tf.constant(1), 64)
    assert (int(nh), int(nw)) == (63, 1)
    hw = np.stack(np.meshgrid(np.arange(1, 701), np.arange(1, 701), indexing="ij"), -1).reshape(-1, 2)
    for size in (64, 416):
        scale = np.minimum(size / hw[:, 1], size / hw[:, 0])
        ref_h = np.maximum(1, (scale * hw[:, 0]).astype(np.int64))
        ref_w = np.maximum(1, (scale * hw[:, 1]).astype(np.int64))
        nh, nw = export.letterbox_sizes_tf(tf.constant(hw[:, 0], tf.int32), tf.constant(hw[:, 1], tf.int32), size)
        assert np.array_equal(nh.numpy(), ref_h) and np.array_equal(nw.numpy(), ref_w)
        assert (ref_h != size * hw[:, 0] // np.maximum(hw[:, 0], hw[:, 1])).sum() > 0   # the float64 cases occur


@pytest.mark.parametrize("h,w,size,exact", [(64, 64, 64, True), (128, 128, 64, True), (90, 160, 64, False),
                                            (64, 96, 64, False), (30, 40, 64, False), (720, 1280, 416, False),
                                            (200, 100, 416, False)])
def test_letterbox_matches_cv2(h, w, size, exact):
    """Shrinking (INTER_AREA) and enlarging (INTER_LINEAR): at most one grey level from cv2; exact at scale 1 and 2."""
    import tensorflow as tf

    import export
    import model as model_lib
    rng = np.random.default_rng(h * w)
    frame = np.clip(np.cumsum(rng.integers(-9, 10, (h, w, 3)), axis=1) + 128, 0, 255).astype(np.uint8)
    ref = model_lib.letterbox_image(frame, size)
    got = export.letterbox_tf(tf.constant(frame), size).numpy()
    diff = np.abs(ref - got) * 255
    assert got.shape == (size, size, 3) and diff.max() <= 1.0 + 1e-4
    assert (diff > 0.5).mean() < 0.1
    if exact:
        assert diff.max() < 1e-4


def test_crop_and_resize_matches_tf():
    import tensorflow as tf

    import export
    rng = np.random.default_rng(0)
    fmap = rng.normal(size=(13, 17, 6)).astype(np.float32)
    b = rng.uniform(0, 1, (40, 4)).astype(np.float32)
    boxes = np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], 1)
    boxes[0] = [0, 0, 0.5, 0.5]
    boxes[1] = [0.3, 0.3, 0.3, 0.3]                            # a point
    boxes[2] = [-0.2, 0.1, 0.4, 0.6]                           # partly outside the map: zeros there
    ref = tf.image.crop_and_resize(fmap[None], boxes, np.zeros(40, np.int32), (14, 14)).numpy()
    got = export.crop_and_resize_tf(tf.constant(fmap), tf.constant(boxes), 14).numpy()
    assert np.abs(ref - got).max() < 1e-5
    assert np.all(got[2, :4] == 0) and np.any(got[2, 5:] != 0)   # rows above the map (y < 0) are zero
    # hand-checked corner: box [0, 0, 0.5, 0.5] samples row 0 / column 0 exactly at its first bin
    assert np.allclose(got[0, 0, 0], fmap[0, 0])


# ---- exports against the Keras model ---------------------------------------------------------------------------

def _compare(out, ref, frame):
    n = int(ref["num_valid"])
    assert int(out["num_valid"]) == n and n > 0
    assert np.array_equal(out["category_ids"], ref["category_ids"])
    assert np.abs(out["boxes"] - ref["boxes"]).max() <= BOX_PX
    assert np.abs(out["scores"] - ref["scores"]).max() <= SCORE
    assert np.abs(out["class_probs"] - ref["class_probs"]).max() <= SCORE
    assert np.abs(out["mask_boxes"][:n] - ref["mask_boxes"][:n]).max() <= BOX_PX
    # Detections whose mask box reaches past an edge of the frame are left out: tf.image.crop_and_resize (the Keras
    # model) zeroes a sample that lands outside the map, and which side of the edge a sample there falls on
    # changes with a rounding (graph optimisations, box coordinates 1e-5 apart); a row of the pixel branch's crop
    # that flips between zero and the frame's pixels changes the mask. See info/RESULTS.md.
    h, w = frame.shape[:2]
    inner = [i for i in range(n) if ref["mask_boxes"][i, 0] > 0.01 and ref["mask_boxes"][i, 1] > 0.01
             and ref["mask_boxes"][i, 2] < w - 0.01 and ref["mask_boxes"][i, 3] < h - 0.01]
    agree = np.mean((out["masks"][inner] >= 0.5) == (ref["masks"][inner] >= 0.5)) if inner else 1.0
    assert agree >= MASK_AGREE, agree
    return len(inner)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sm", "tfl"])
def test_export_matches_keras(run, keras_model, name):
    import export
    exported = export.ExportedModel(str(run / name))
    meta = json.load(open(run / name / "model.json"))
    cfg = keras_model[0]
    assert meta["format"] == {"sm": "saved_model", "tfl": "tflite"}[name]
    assert meta["graph"] == {"sm": "keras", "tfl": "portable"}[name]
    assert meta["categories"] == [{"id": i, "name": n} for i, n in zip(cfg.category_ids(), cfg.class_names())]
    assert meta["config"]["model"]["input_size"] == 64 and set(meta["outputs"]) == set(export.OUTPUTS)
    if name == "tfl":
        assert meta["flex_ops"] == [] and "WHILE" in meta["tflite_ops"]     # NMS runs in a WHILE body
    inner = 0
    for frame in _noise_frames():
        out = exported(frame)
        assert set(out) == set(export.OUTPUTS)
        inner += _compare(out, _keras_outputs(keras_model, frame), frame)
    assert inner >= 6           # the mask check saw enough detections (8 mask boxes inside their frame here)


@pytest.mark.slow
def test_fp16_tflite(run, keras_model):
    """float16 weights: half the file. On these random He-initialised weights small weight errors grow through
    ~100 layers (measured: top boxes move up to ~100 px), so only structure and coarse agreement are asserted."""
    import export
    size32 = os.path.getsize(run / "tfl" / "model.tflite")
    size16 = os.path.getsize(run / "f16" / "model.tflite")
    assert 0.45 < size16 / size32 < 0.6
    assert json.load(open(run / "f16" / "model.json"))["fp16"] is True
    exported = export.ExportedModel(str(run / "f16"))
    for frame in _noise_frames():
        out, ref = exported(frame), _keras_outputs(keras_model, frame)
        n = int(out["num_valid"])
        assert 0 < n <= keras_model[0].model.max_prop
        h, w = frame.shape[:2]
        b = out["boxes"][:n]
        assert np.all(b[:, 0] >= 0) and np.all(b[:, 2] <= w) and np.all(b[:, 1] >= 0) and np.all(b[:, 3] <= h)
        assert np.all(np.diff(out["scores"][:n]) <= 1e-6)
        assert set(out["category_ids"][:n]) <= set(keras_model[0].category_ids())
        assert abs(float(out["scores"][0]) - float(ref["scores"][0])) < 0.25


# ---- tracker.py --exported ------------------------------------------------------------------------------------

def _iou(a, b):
    from pycocotools import mask as mask_utils
    if not mask_utils.area(a) and not mask_utils.area(b):
        return 1.0
    return float(mask_utils.iou([a], [b], [0])[0][0])


def _inter_union(a, b):
    from pycocotools import mask as mask_utils
    ma, mb = mask_utils.decode(a).astype(bool), mask_utils.decode(b).astype(bool)
    return int((ma & mb).sum()), int((ma | mb).sum())


@pytest.mark.slow
def test_tracker_exported_matches_run_dir(run):
    valid = str(run / "shapes" / "valid")
    outs = {}
    for name, src in (("keras", ["--run-dir", str(run / "run")]), ("sm", ["--exported", str(run / "sm")]),
                      ("tfl", ["--exported", str(run / "tfl")])):
        outs[name] = run / f"frames_{name}.json"
        r = _run(["tracker.py"] + src + ["--data", valid, "--out", str(outs[name])])
        assert r.returncode == 0, r.stderr[-3000:]
        assert str(outs[name]) in r.stdout
    ref = json.load(open(outs["keras"]))
    ious = []
    for name in ("sm", "tfl"):
        doc = json.load(open(outs[name]))
        assert doc["categories"] == ref["categories"]
        inter = union = 0
        for v, rv in zip(doc["videos"], ref["videos"]):
            assert {k: v[k] for k in v if k != "frames"} == {k: rv[k] for k in rv if k != "frames"}
            for f, rf in zip(v["frames"], rv["frames"]):
                assert len(f["detections"]) == len(rf["detections"])
                for d, rd in zip(f["detections"], rf["detections"]):
                    assert d["category_id"] == rd["category_id"]
                    assert abs(d["score"] - rd["score"]) <= SCORE
                    assert np.abs(np.subtract(d["bbox"], rd["bbox"])).max() <= BOX_PX
                    assert d["segmentation"]["size"] == rd["segmentation"]["size"]
                    x, y, w, h = rd["bbox"]
                    if x + w < v["width"] - 0.01 and y + h < v["height"] - 0.01:
                        ious.append(_iou(d["segmentation"], rd["segmentation"]))
                        i, u = _inter_union(d["segmentation"], rd["segmentation"])
                        inter, union = inter + i, union + u
        assert inter >= MASK_POOLED * union, (name, inter / union)
    # No bound on the single worst mask: the briefly trained tiny model draws fragmented masks on noise frames
    # whose probabilities sit near 0.5, and a small one can drop to IoU 0.6 (measured 2026-12-04, 17x6 px box).
    assert len(ious) >= 10 and np.mean(ious) >= MASK_IOU, np.mean(ious)
    # the tracker proper sees the same input: same tracks, categories and scores
    results = {}
    for name in outs:
        results[name] = run / f"results_{name}.json"
        r = _run(["-m", "tracking.track", "--pred", str(outs[name]), "--out", str(results[name])])
        assert r.returncode == 0, r.stderr
    ref = json.load(open(results["keras"]))
    for name in ("sm", "tfl"):
        got = json.load(open(results[name]))
        assert [(t["video_id"], t["category_id"]) for t in got] == [(t["video_id"], t["category_id"]) for t in ref]
        assert np.allclose([t["score"] for t in got], [t["score"] for t in ref], atol=SCORE)


@pytest.mark.slow
def test_tracker_exported_video_folder(run, tmp_path):
    root = run / "shapes" / "valid"
    gt = json.load(open(root / "instances.json"))
    folder = tmp_path / "clip"
    folder.mkdir()
    for t, n in enumerate(gt["videos"][0]["file_names"]):
        shutil.copy(root / "JPEGImages" / n, folder / f"{t:05d}.jpg")
    out_dir = tmp_path / "out"
    r = _run(["tracker.py", "--exported", str(run / "tfl"), "--video", str(folder), "--out-dir", str(out_dir)])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    doc = json.load(open(out_dir / "frames.json"))
    assert doc["videos"][0]["length"] == gt["videos"][0]["length"]
    assert isinstance(json.load(open(out_dir / "results.json")), list)
    assert [n for n in os.listdir(out_dir / "overlay") if n.endswith(".mp4")]
    # --checkpoint belongs to --run-dir; the two model sources exclude each other
    r = _run(["tracker.py", "--exported", str(run / "tfl"), "--checkpoint", "x", "--video", str(folder),
              "--out-dir", str(out_dir)])
    assert r.returncode != 0 and "--checkpoint" in r.stderr
    r = _run(["tracker.py", "--exported", str(run / "tfl"), "--run-dir", str(run / "run"), "--video", str(folder),
              "--out-dir", str(out_dir)])
    assert r.returncode != 0 and "not allowed with" in r.stderr


# ---- errors ------------------------------------------------------------------------------------------------------

def _no_leftovers(folder):
    return not [n for n in os.listdir(folder) if n.startswith(".tmp_export_")]


def _export_error(args):
    import export
    with pytest.raises(SystemExit) as e:
        export.main(args)
    assert e.value.code not in (0, None)
    return str(e.value.code)


@pytest.mark.slow
def test_export_errors(run, tmp_path):
    msg = _export_error(["--run-dir", str(run / "run"), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert "unsupported format 'onnx'" in msg
    bare = tmp_path / "bare_run"
    bare.mkdir()
    shutil.copy(run / "run" / "config.yaml", bare)
    msg = _export_error(["--run-dir", str(bare), "--format", "tflite", "--out", str(tmp_path / "y")])
    assert "bare_run" in msg and "checkpoint" in msg
    (bare / "checkpoints").mkdir()
    msg = _export_error(["--run-dir", str(bare), "--format", "tflite", "--out", str(tmp_path / "y")])
    assert "no checkpoint" in msg
    msg = _export_error(["--run-dir", str(run / "run"), "--format", "saved_model", "--fp16", "--out",
                         str(tmp_path / "z")])
    assert "--fp16" in msg
    msg = _export_error(["--run-dir", str(run / "run"), "--format", "tflite", "--out", str(run / "tfl")])
    assert "already exists" in msg
    assert not any(os.path.exists(tmp_path / n) for n in "xyz") and _no_leftovers(tmp_path)
    r = _run(["tracker.py", "--exported", str(tmp_path), "--data", str(run / "shapes" / "valid"),
              "--out", str(tmp_path / "f.json")])
    assert r.returncode != 0 and "model.json" in r.stderr


@pytest.mark.slow
def test_failed_conversion_leaves_no_folder(run, tmp_path, monkeypatch):
    """A conversion error after the SavedModel is written removes the temp folder; nothing appears at --out."""
    import export

    def write(model, cfg, path, graph, mask_rois=None):  # stands in for the (slow) SavedModel trace
        os.makedirs(path)
        open(os.path.join(path, "saved_model.pb"), "wb").close()

    def fail(*a, **k):
        raise export.ExportError("TFLite conversion failed: these ops have no TFLite builtin kernel: X")
    monkeypatch.setattr(export, "_write_saved_model", write)
    monkeypatch.setattr(export, "_convert_tflite", fail)
    msg = _export_error(["--run-dir", str(run / "run"), "--format", "tflite", "--out", str(tmp_path / "t")])
    assert "no TFLite builtin kernel" in msg
    assert not os.path.exists(tmp_path / "t") and _no_leftovers(tmp_path)


@pytest.mark.slow
def test_tflite_conversion_error_names_the_op(tmp_path):
    """A graph with CropAndResize (the Keras model's ROI pooling) converts only with Flex: the error says which op
    and what to do."""
    import tensorflow as tf

    import export

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 2], tf.float32)])
        def serve(self, x):
            return {"y": tf.image.crop_and_resize(x, [[0.0, 0.0, 1.0, 1.0]], [0], (3, 3))}

    m = M()
    tf.saved_model.save(m, str(tmp_path / "sm"), signatures={export.SIGNATURE: m.serve})
    with pytest.raises(export.ExportError, match="CropAndResize.*--graph portable.*--select-tf-ops"):
        export._convert_tflite(str(tmp_path / "sm"), fp16=False, select_tf_ops=False)
    assert export._convert_tflite(str(tmp_path / "sm"), fp16=False, select_tf_ops=True)   # Flex allowed


def test_unwritable_out_is_found_before_loading_the_run(tmp_path):
    import export
    (tmp_path / "file").write_text("")
    # the run directory does not exist: the output is checked first
    with pytest.raises(export.ExportError, match=r"--out .*file/exported: .*file is not a folder"):
        export.export(str(tmp_path / "no_run"), "saved_model", str(tmp_path / "file" / "exported"))
