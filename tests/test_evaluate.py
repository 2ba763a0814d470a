"""scripts/evaluate.py end to end: the official-format table, the metrics JSON (info/DESIGN.md#metrics-json), plots, and
errors naming the bad entry."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import evaluate  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

H, W = 20, 30
KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
HOTA_KEYS = ["HOTA", "DetA", "AssA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr", "HOTA(0)", "LocA(0)", "IDF1", "IDR",
             "IDP"]


def enc(y0, y1, x0, x1):
    m = np.zeros((H, W), np.uint8, order="F")
    m[y0:y1, x0:x1] = 1
    r = mask_utils.encode(m)
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return str(p)


@pytest.fixture
def files(tmp_path):
    """Two videos; cat 1 found perfectly in video 1, cat 2 (video 2) only half its frames: IoU 0.5.
    AP50: both TPs -> 1; at t >= .55 cat 2 has only an FP -> 0. AP(cat 1) = 1, AP(cat 2) = 0.1 -> AP 0.55."""
    a, b = enc(0, 10, 0, 10), enc(10, 20, 15, 25)
    gt = {"videos": [{"id": 1, "height": H, "width": W, "length": 2}, {"id": 2, "height": H, "width": W, "length": 2}],
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "fox"}],
          "annotations": [
              {"id": 1, "video_id": 1, "category_id": 1, "segmentations": [a, a], "areas": [100, 100], "iscrowd": 0},
              {"id": 2, "video_id": 2, "category_id": 2, "segmentations": [b, b], "areas": [100, 100], "iscrowd": 0}]}
    results = [{"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [a, a]},
               {"video_id": 2, "category_id": 2, "score": 0.8, "segmentations": [b, None]}]
    return write(tmp_path, "gt.json", gt), write(tmp_path, "results.json", results), tmp_path


def test_cli_end_to_end(files, capsys):
    gt, results, tmp = files
    out = str(tmp / "metrics.json")
    assert evaluate.main(["--gt", gt, "--results", results, "--out", out, "--plot", str(tmp / "plots"), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.550" in text
    assert " Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 1.000" in text
    assert " Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = -1.000" in text
    assert f"metrics written to {out}" in text
    m = json.load(open(out))
    assert list(m) == KEYS + HOTA_KEYS + ["hota_det_averaged", "per_category"]
    assert m["AP"] == pytest.approx(0.55, abs=1e-12) and m["AP50"] == pytest.approx(1, abs=1e-12)
    assert (m["APm"], m["APl"], m["ARm"], m["ARl"]) == (-1, -1, -1, -1)
    assert m["AR100"] == pytest.approx(0.55)           # recall: cat 1 always 1, cat 2 only at t = .5
    assert m["per_category"]["dog"]["id"] == 2 and m["per_category"]["dog"]["AP"] == pytest.approx(0.1, abs=1e-12)
    assert m["per_category"]["fox"] == {"id": 3, "AP": -1.0, "HOTA": -1.0, "DetA": -1.0, "AssA": -1.0}
    # HOTA (TrackEval): cat perfect (1); dog's GT track found in 1 of its 2 frames: DetA = 1/(1+1+0) = 1/2,
    # AssA = TPA/(TPA+FNA+FPA) = 1/2, HOTA 1/2; fox has neither GT nor result and is left out of the class mean
    assert m["per_category"]["dog"]["DetA"] == pytest.approx(0.5, abs=1e-12)
    assert m["per_category"]["dog"]["AssA"] == pytest.approx(0.5, abs=1e-12)
    assert (m["HOTA"], m["DetA"], m["AssA"], m["LocA"]) == pytest.approx((0.75, 0.75, 0.75, 1.0), abs=1e-12)
    assert "TrackEval, class-averaged:     HOTA 0.750  DetA 0.750  AssA 0.750  LocA 1.000" in text
    for name in ("per_category_ap.png", "pr_curves.png"):
        assert (tmp / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_runs_as_a_script_and_answers_help(files, tmp_path):
    gt, results, _ = files
    env = dict(os.environ, MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), "--help"],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0 and "--results" in r.stdout and "--plot" in r.stdout
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), "--gt", gt,
                        "--results", results], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0 and "maxDets=100 ] = 0.550" in r.stdout


@pytest.mark.parametrize("entry, message", [
    ({"video_id": 9, "category_id": 1, "score": 0.5, "segmentations": []}, r"entry 1: video_id 9 is not a GT video"),
    ({"video_id": 1, "category_id": 1, "score": "high", "segmentations": []},
     r"entry 1 \(video_id 1\): 'score' 'high' is not a finite number"),
    ({"video_id": 1, "category_id": 1, "score": 0.5, "segmentations": [None, {"size": [H, W], "counts": "zz"}]},
     r"entry 1 \(video_id 1\) frame 1: malformed compressed RLE"),
    ({"video_id": 1, "category_id": 1, "score": 0.5, "segmentations": [{"size": [H, W]}]},
     r"entry 1 \(video_id 1\) frame 0: malformed RLE"),
])
def test_cli_bad_results_name_the_entry(files, capsys, entry, message):
    gt, results, tmp = files
    bad = json.load(open(results))[:1] + [entry]
    out = str(tmp / "metrics.json")
    code = evaluate.main(["--gt", gt, "--results", write(tmp, "bad.json", bad), "--out", out, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "bad.json" in err
    import re
    assert re.search(message, err), err
    assert not os.path.exists(out)                     # nothing written on bad input


def test_cli_results_not_a_list(files, capsys):
    gt, _, tmp = files
    code = evaluate.main(["--gt", gt, "--results", write(tmp, "obj.json", {"video_id": 1}), "--quiet"])
    assert code == 2 and "want a list of results, got dict" in capsys.readouterr().err


def test_cli_unknown_category_is_a_warning(files, capsys):
    gt, results, tmp = files
    extra = json.load(open(results)) + [{"video_id": 1, "category_id": 99, "score": 1.0, "segmentations": []}]
    assert evaluate.main(["--gt", gt, "--results", write(tmp, "extra.json", extra), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "warning: 1 result(s) name a category that is not in the GT" in captured.err
    assert "maxDets=100 ] = 0.550" in captured.out      # and they change nothing


def test_evaluation_does_not_import_tensorflow():
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/scripts']; import compute_ap, evaluate; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == ["False", "False"], r.stderr


# ---- bad GT and results: one line naming the entry, or a warning where the official evaluation is kept --------

def _gt_with(files, change):
    gt_path, results, tmp = files
    gt = json.load(open(gt_path))
    change(gt)
    return write(tmp, "gt_bad.json", gt), results


@pytest.mark.parametrize("change, message", [
    (lambda g: g["videos"][0].update(height=-20), r"video 1: 'height' must be an integer >= 1, got -20"),
    (lambda g: g["annotations"][0].update(category_id=99),
     r"annotations\[0\] \(video_id 1\): category_id 99 is not among the GT categories \[1, 2, 3\]"),
    (lambda g: g["annotations"][1].update(areas=[100, float("nan")]),
     r"annotations\[1\] \(video_id 2\): 'areas' must be a list of finite numbers >= 0 or nulls"),
    (lambda g: g.update(annotations=[]), r"GT .*gt_bad.json: no annotations, nothing to evaluate against"),
])
def test_cli_bad_gt_is_one_line_naming_the_entry(files, capsys, change, message):
    import re
    gt, results = _gt_with(files, change)
    assert evaluate.main(["--gt", gt, "--results", results, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: GT ") and re.search(message, err), err


def test_cli_short_results_and_odd_scores_are_kept_with_a_warning(files, capsys):
    """A result listing 1 of its video's 2 frames is scored over that frame only (the official zip), so the
    half-found dog of video 2 becomes a perfect match: AP(dog) 0.1 -> 1, AP 0.55 -> 1. Scores outside [0, 1]
    only order the results."""
    gt, results_path, tmp = files
    results = json.load(open(results_path))
    results[1]["segmentations"] = results[1]["segmentations"][:1]
    results[0]["score"], results[1]["score"] = 1e308, -5
    out = str(tmp / "m.json")
    assert evaluate.main(["--gt", gt, "--results", write(tmp, "short.json", results), "--out", out, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert ("warning: 1 result(s) list fewer segmentations than their video has frames (entries [2], 1-based)"
            in err)
    assert "warning: 2 result(s) have a score outside [0, 1] (entries [1, 2], 1-based)" in err
    assert json.load(open(out))["AP"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("flag, path, message", [
    ("--out", "/proc/metrics.json", "error: --out /proc/metrics.json: cannot write in /proc"),
    ("--plot", "FILE/plots", "error: --plot {tmp}/gt.json/plots: {tmp}/gt.json is not a folder"),
])
def test_cli_unwritable_output_is_found_before_the_evaluation(files, capsys, monkeypatch, flag, path, message):
    gt, results, tmp = files
    monkeypatch.setattr(evaluate, "evaluate_vis", lambda *a, **k: pytest.fail("evaluated before the check"))
    path = path.replace("FILE", gt)
    assert evaluate.main(["--gt", gt, "--results", results, flag, path, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(message.format(tmp=tmp)), err


def test_workers_flag_checked_and_the_metrics_do_not_depend_on_it(files, capsys):
    gt, results, tmp = files
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--gt", gt, "--results", results, "--workers", "0", "--quiet"])
    assert e.value.code == 2 and "--workers must be at least 1, got 0" in capsys.readouterr().err
    got = []
    for n in ("1", "2"):  # 2 videos: 2 workers split them one each
        out = str(tmp / f"metrics{n}.json")
        assert evaluate.main(["--gt", gt, "--results", results, "--out", out, "--no-hota", "--quiet",
                              "--workers", n]) == 0
        got.append(json.load(open(out)))
    assert got[0] == got[1] and got[0]["AP"] == pytest.approx(0.55, abs=1e-12)


def test_a_forked_worker_that_dies_is_named_and_nothing_is_written(files, capsys, monkeypatch):
    """A forked evaluation process that ends without its answer (here it exits as it starts, as an out-of-memory
    kill would end it) gives one line naming what happened and what to do, exit 2, and no --out file."""
    import compute_ap
    gt, results, tmp = files
    monkeypatch.setattr(compute_ap, "_init_forked", lambda *args: os._exit(9))
    out = tmp / "dead.json"
    assert evaluate.main(["--gt", gt, "--results", results, "--out", str(out), "--no-hota", "--quiet",
                          "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: a forked evaluation process ended without its answer") and "--workers" in err, err
    assert not out.exists()
