"""tracker.py end to end on a tiny trained run: a split to frame predictions (info/DESIGN.md#frame-predictions), a video
and a frame folder to results JSON + overlay mp4, the one-graph batching, and errors naming the video and frame."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

import export

# every test here uses a run trained by a train.py subprocess
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
SMALL = ["--preset", "tiny", "--set", "model.input_size=64", "--set", "train.batch_size=2",
         "--set", "train.steps_per_epoch=2", "--set", "train.epochs=1", "--set", "data.mask_res=32",
         "--set", "train.val_fraction=0", "--set", "data.max_instances=4", "--set", "train.warmup_steps=0"]


def _run(args, **kw):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([PY] + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A synthetic dataset (3 train + 2 valid videos of 5 frames, 96x64) and a 2-step tiny run on it."""
    base = tmp_path_factory.mktemp("tracker")
    r = _run(["scripts/make_synthetic_ytvis.py", "--out", str(base / "shapes"), "--seed", "3", "--train-videos", "3",
              "--valid-videos", "2", "--min-frames", "5", "--max-frames", "5", "--width", "96", "--height", "64",
              "--quiet"])
    assert r.returncode == 0, r.stderr
    r = _run(["train.py", "--data", str(base / "shapes" / "train"), "--run-dir", str(base / "run")] + SMALL)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return base


def test_split_to_frame_predictions(run):
    out = run / "valid_frames.json"
    r = _run(["tracker.py", "--run-dir", str(run / "run"), "--data", str(run / "shapes" / "valid"), "--out", str(out),
              "--score-floor", "0", "--batch-size", "3"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert str(out) in r.stdout
    assert "inference: 100% 10/10 frame" in r.stderr       # progress lines (not a terminal): 2 videos x 5 frames
    doc = json.load(open(out))
    gt = json.load(open(run / "shapes" / "valid" / "instances.json"))
    assert doc["format"] == "ytvis-frame-predictions" and doc["version"] == 1
    assert [c["name"] for c in doc["categories"]] == [c["name"] for c in json.load(
        open(run / "shapes" / "train" / "instances.json"))["categories"]]
    assert [v["id"] for v in doc["videos"]] == [v["id"] for v in gt["videos"]]
    for v, g in zip(doc["videos"], gt["videos"]):
        assert v["file_names"] == g["file_names"] and v["length"] == g["length"] == len(v["frames"])
        assert [f["index"] for f in v["frames"]] == list(range(v["length"]))
        for f in v["frames"]:
            scores = [d["score"] for d in f["detections"]]
            assert scores == sorted(scores, reverse=True)
            for d in f["detections"]:
                assert d["segmentation"]["size"] == [g["height"], g["width"]]
                assert isinstance(d["segmentation"]["counts"], str)
                assert len(d["class_scores"]) == len(doc["categories"])
                x, y, w, h = d["bbox"]
                assert 0 <= x <= x + w <= g["width"] and 0 <= y <= y + h <= g["height"]
    # the tracker (no TensorFlow) accepts the file
    r = _run(["-m", "tracking.track", "--pred", str(out), "--out", str(run / "results.json")])
    assert r.returncode == 0, r.stderr


def _frames(run):
    root = run / "shapes" / "valid"
    gt = json.load(open(root / "instances.json"))
    v = gt["videos"][0]
    return [cv2.imread(str(root / "JPEGImages" / n)) for n in v["file_names"]]


def test_video_file_gives_results_and_overlay(run):
    frames = _frames(run)
    clip = str(run / "clip.avi")
    writer = cv2.VideoWriter(clip, cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 64))
    for f in frames:
        writer.write(f)
    writer.release()
    out_dir = run / "clip_out"
    r = _run(["tracker.py", "--run-dir", str(run / "run"), "--video", clip, "--out-dir", str(out_dir),
              "--score-floor", "0"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    doc = json.load(open(out_dir / "frames.json"))
    assert len(doc["videos"]) == 1 and doc["videos"][0]["length"] == len(frames)
    assert isinstance(json.load(open(out_dir / "results.json")), list)
    mp4s = [n for n in os.listdir(out_dir / "overlay") if n.endswith(".mp4")]
    assert len(mp4s) == 1
    cap = cv2.VideoCapture(str(out_dir / "overlay" / mp4s[0]))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == len(frames)


def test_frame_folder_and_bad_frame(run, tmp_path):
    folder = tmp_path / "myclip"
    folder.mkdir()
    for t, f in enumerate(_frames(run)):
        cv2.imwrite(str(folder / f"{t:05d}.png"), f)
    out_dir = tmp_path / "out"
    r = _run(["tracker.py", "--run-dir", str(run / "run"), "--video", str(folder), "--out-dir", str(out_dir)])
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.load(open(out_dir / "frames.json"))
    assert doc["videos"][0]["file_names"][0] == "myclip/00000.png"
    # a frame of another size is an error naming the video and the frame
    cv2.imwrite(str(folder / "00002.png"), np.zeros((10, 12, 3), np.uint8))
    r = _run(["tracker.py", "--run-dir", str(run / "run"), "--video", str(folder), "--out-dir", str(out_dir)])
    assert r.returncode != 0 and "video 1, frame 2" in r.stderr and "differs" in r.stderr
    # an unreadable video file
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    r = _run(["tracker.py", "--run-dir", str(run / "run"), "--video", str(bad), "--out-dir", str(out_dir)])
    assert r.returncode != 0 and "broken.mp4" in r.stderr


def test_frame_predictor_gated_mask_head_same_detections(run):
    """FramePredictor's default mask-head gate (masks only for proposals >= score_floor) stores the detections the
    published graph gives (masks within 1e-5 before thresholding, see test_model), and the padded batches keep
    the graph traced once."""
    from checkpoints import load_run
    from tracker import FramePredictor
    cfg, model = load_run(str(run / "run"))
    frames = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in _frames(run)]
    full = FramePredictor(cfg, model, 2, 0.0, gate_masks=False)
    scores = np.sort(full.forward(frames[:2])["scores"].ravel())[::-1]
    floor = float(scores[3])                       # a few detections above the floor, most below
    full.score_floor = floor
    gated = FramePredictor(cfg, model, 2, floor)
    assert gated.model is not model and full.model is model
    for batch in (frames[:2], frames[2:3]):        # a full and a padded batch
        got, want = gated(batch), full(batch)
        strip = lambda dets: [[{k: v for k, v in d.items() if k != "segmentation"} for d in f] for f in dets]
        assert strip(got) == strip(want)
        for f_got, f_want in zip(got, want):
            for a, b in zip(f_got, f_want):
                diff = mask_utils.decode(a["segmentation"]) != mask_utils.decode(b["segmentation"])
                assert diff.mean() < 1e-4
    assert sum(len(f) for f in gated(frames[:2])) >= 1
    assert gated._call.experimental_get_tracing_count() == 1


def test_frame_predictor_bfloat16_within_tolerance(run):
    """FramePredictor(bfloat16=True) approximates the float32 outputs within a stated tolerance: the top-5 sorted
    valid scores within 0.01 and, for each of those float32 detections, the best-overlapping bfloat16 one of the
    same class with box IoU >= 0.98 and mean |mask probability difference| < 0.02 (measured on the first, more
    trained fixture: scores within 3e-4, box IoU >= 0.999, mask differences <= 0.003; bfloat16 keeps 8 mantissa
    bits). The exception: where two candidates overlap beyond the NMS threshold with scores within 0.01 (a
    near-tie; this briefly trained tiny run has many), or several tie at the max_prop cap, bfloat16 may keep
    another candidate, whose score must then be within 0.01; at least one of the top-n a frame matches exactly."""
    import utils
    from checkpoints import load_run
    from tracker import FramePredictor
    cfg, model = load_run(str(run / "run"))
    if export.bfloat16_capped_off():                # ONEDNN_MAX_CPU_ISA below this CPU's bfloat16
        with pytest.raises(export.ExportError, match="--bfloat16: ONEDNN_MAX_CPU_ISA"):
            FramePredictor(cfg, model, 2, 0.0, bfloat16=True)
        return
    frames = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in _frames(run)][:2]
    f32 = FramePredictor(cfg, model, 2, 0.0).forward(frames)
    b16 = FramePredictor(cfg, model, 2, 0.0, bfloat16=True).forward(frames)
    for b in range(len(frames)):
        n32, n16 = int(f32["num_valid"][b]), int(b16["num_valid"][b])
        s32, s16 = np.sort(f32["scores"][b, :n32])[::-1], np.sort(b16["scores"][b, :n16])[::-1]
        n = min(n32, n16, 5)
        assert n > 0 and np.abs(s32[:n] - s16[:n]).max() < 0.01, (s32[:n], s16[:n])
        ious = np.asarray(utils.box_iou(f32["boxes"][b, :n], b16["boxes"][b, :n16]))     # [n, n16]
        swaps = 0
        for i in range(n):                           # the float32 top-n against all bfloat16 detections
            j = int(ious[i].argmax())
            if ious[i, j] < 0.98:                    # a near-tie resolved the other way (NMS or the max_prop cap)
                swaps += 1
                gap = np.abs(b16["scores"][b, :n16] - f32["scores"][b, i]).min()
                assert gap < 0.01, (i, ious[i, j], gap)
                continue
            mask_diff = float(np.abs(f32["masks"][b, i] - b16["masks"][b, j]).mean())
            assert f32["classes"][b, i] == b16["classes"][b, j], (i, ious[i, j])
            assert mask_diff < 0.02, (i, mask_diff)
        assert swaps < n, swaps


def test_cli_mask_rois_and_bfloat16(run):
    """--mask-rois 2 leaves masks on the two best detections a frame only, with --bfloat16; where ONEDNN_MAX_CPU_ISA
    caps oneDNN below the CPU's bfloat16, --bfloat16 is refused in one line and --mask-rois is checked without it."""
    out = run / "capped_frames.json"
    args = ["tracker.py", "--run-dir", str(run / "run"), "--data", str(run / "shapes" / "valid"), "--out", str(out),
            "--score-floor", "0", "--mask-rois", "2", "--max-videos", "1"]
    r = _run(args + ["--bfloat16"])
    if export.bfloat16_capped_off():
        assert r.returncode != 0 and "tracker.py: --bfloat16: ONEDNN_MAX_CPU_ISA" in r.stderr, r.stderr[-3000:]
        assert "Traceback" not in r.stderr and not out.exists()
        r = _run(args)
    assert r.returncode == 0, r.stderr[-3000:]
    frames = json.load(open(out))["videos"][0]["frames"]
    for f in frames:
        areas = [int(mask_utils.area(d["segmentation"])) for d in f["detections"]]
        assert len(areas) > 2 and sum(a > 0 for a in areas) <= 2        # only the two best have masks
    r = _run(["tracker.py", "--run-dir", str(run / "run"), "--data", str(run / "shapes" / "valid"), "--out", str(out),
              "--mask-rois", "0"])
    assert r.returncode != 0 and "--mask-rois must be at least 1" in r.stderr


# ---- bad input, found before any model is loaded ---------------------------------------------------------------

def test_dataset_frames_are_confined_to_jpegimages(synthetic_root, tmp_path):
    import tracker
    data = json.load(open(os.path.join(synthetic_root, "valid", "instances.json")))
    vid = data["videos"][0]["id"]
    for name in ("../../train/JPEGImages/x.jpg", "/etc/passwd"):
        data["videos"][0]["file_names"][1] = name
        ann = tmp_path / "ann.json"
        ann.write_text(json.dumps(data))
        with pytest.raises(tracker.FrameError, match=rf"ann.json: video {vid}, file_names\[1\]: file name "
                                                     rf"'{name}' leaves the folder .*valid/JPEGImages"):
            tracker.dataset_source(os.path.join(synthetic_root, "valid"), str(ann))


@pytest.mark.parametrize("args, message", [
    (["--data", "DATA", "--out", "/proc/frames.json"], "tracker.py: --out /proc/frames.json: cannot write in /proc"),
    (["--video", "DATA", "--out-dir", "FILE/out"], "tracker.py: --out-dir FILE/out: FILE is not a folder"),
])
def test_unwritable_output_is_found_before_the_model_loads(synthetic_root, tmp_path, args, message):
    import tracker
    (tmp_path / "file").write_text("")
    swap = {"DATA": os.path.join(synthetic_root, "valid"), "FILE": str(tmp_path / "file")}
    args = [swap.get(a, a).replace("FILE", str(tmp_path / "file")) for a in args]
    with pytest.raises(SystemExit) as e:           # --run-dir does not exist: the check comes first
        tracker.main(["--run-dir", str(tmp_path / "no_run")] + args)
    assert str(e.value.code).startswith(message.replace("FILE", str(tmp_path / "file"))), e.value.code


def test_lam_nan_is_refused_by_the_parser(tmp_path, capsys):
    import tracker
    with pytest.raises(SystemExit) as e:
        tracker.main(["--run-dir", str(tmp_path), "--video", str(tmp_path), "--out-dir", str(tmp_path / "o"),
                      "--lam", "nan"])
    assert e.value.code == 2 and "--lam must be a finite number >= 0, got nan" in capsys.readouterr().err
