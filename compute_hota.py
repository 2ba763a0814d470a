"""HOTA and its parts (DetA detection, AssA association, LocA localisation) of YouTube-VIS results, computed by
TrackEval (`trackeval.datasets.YouTubeVIS` + `trackeval.metrics.HOTA`, `Identity`), beside the video AP of
compute_ap.py. numpy + TrackEval only (no TensorFlow); TrackEval is imported when first needed.

    hota = evaluate_hota(gt, results)      # the outputs of compute_ap.load_gt / load_results
    hota["HOTA"], hota["DetA"], hota["AssA"], hota["per_category"]["disc"]["AssA"]

TrackEval reads a GT folder and a tracker folder of JSON files; `evaluate_hota` writes the already validated GT and
results there (compressed RLE, every list cut or padded to the video's frame count) and runs TrackEval's Evaluator
on them unchanged. Every result takes part whatever its score: HOTA has no score threshold, so the low-score tail
of a YouTube-VIS results file counts as false positives in DetA (AP, which ranks by score, is hurt far less).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile

import numpy as np

from compute_ap import EvalInputError, compressed_counts

# The class-averaged HOTA fields reported (TrackEval averages the array fields over the 19 localisation thresholds
# alpha = 0.05..0.95 in its summaries; HOTA(0) and LocA(0) are the values at alpha = 0.05).
HOTA_FIELDS = ["HOTA", "DetA", "AssA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr", "HOTA(0)", "LocA(0)"]
IDENTITY_FIELDS = ["IDF1", "IDR", "IDP"]
PER_CATEGORY_FIELDS = ["HOTA", "DetA", "AssA"]
SPLIT = "eval"  # TrackEval's folder names are <GT_FOLDER>youtube_vis_<split>, <TRACKERS_FOLDER>youtube_vis_<split>


def _rle_json(rle):
    return None if rle is None else {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _fit(seq, n):
    """A per-frame list cut or padded with None to the video's `n` frames (TrackEval indexes frames 0..n-1)."""
    return list(seq[:n]) + [None] * (n - len(seq))


def _write_inputs(gt: dict, results: list, root: str):
    """TrackEval's YouTube-VIS layout under `root`; categories are renamed c<id> so that two categories with one
    name stay apart. Returns (TrackEval dataset config, {c<id>: category})."""
    lengths = {}
    videos = []
    for vid in sorted(gt["videos"]):
        v = gt["videos"][vid]
        n = len(v["file_names"]) if isinstance(v.get("file_names"), list) else int(v.get("length") or 0)
        if n == 0:  # a video with no frames cannot hold a frame-level match; the AP path skips it the same way
            n = max([len(a["segmentations"]) for a in gt["annotations"] if a["video_id"] == vid], default=0)
        lengths[vid] = n
        videos.append({"id": vid, "file_names": [f"video{vid}/{t:05d}.jpg" for t in range(n)]})
    cats = {f"c{c['id']}": c for c in gt["categories"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    anns = []
    gt_rles = [_fit(a["segmentations"], lengths[a["video_id"]]) for a in gt["annotations"]]
    # TrackEval passes GT masks through frPyObjects, which takes a dict for uncompressed RLE (the GT format of
    # YouTube-VIS): the run lengths are written out as lists
    counts = iter(compressed_counts([r["counts"] for rles in gt_rles for r in rles if r is not None]))
    for a, rles in zip(gt["annotations"], gt_rles):
        size = next((r["size"] for r in rles if r is not None), [0, 0])
        anns.append({"id": a["id"], "video_id": a["video_id"], "category_id": a["category_id"],
                     "iscrowd": a["iscrowd"], "height": int(size[0]), "width": int(size[1]),
                     "segmentations": [None if r is None else {"size": list(r["size"]), "counts": next(counts)}
                                       for r in rles],
                     "areas": _fit(a["mask_areas"], len(rles))})
    dets = [{"video_id": r["video_id"], "category_id": r["category_id"], "score": r["score"],
             "segmentations": [_rle_json(s) for s in _fit(r["segmentations"], lengths[r["video_id"]])]}
            for r in results if r["category_id"] in cat_ids]  # as the AP: other categories are dropped
    gt_dir = os.path.join(root, "gt", f"youtube_vis_{SPLIT}")
    tr_dir = os.path.join(root, "trackers", f"youtube_vis_{SPLIT}", "results", "data")
    os.makedirs(gt_dir)
    os.makedirs(tr_dir)
    with open(os.path.join(gt_dir, "instances.json"), "w") as f:
        json.dump({"videos": videos, "annotations": anns,
                   "categories": [{"id": c["id"], "name": key} for key, c in cats.items()]}, f)
    with open(os.path.join(tr_dir, "results.json"), "w") as f:
        json.dump(dets, f)
    config = {"GT_FOLDER": os.path.join(root, "gt", ""), "TRACKERS_FOLDER": os.path.join(root, "trackers", ""),
              "OUTPUT_FOLDER": os.path.join(root, "out"), "SPLIT_TO_EVAL": SPLIT, "TRACKERS_TO_EVAL": ["results"],
              "PRINT_CONFIG": False}
    return config, cats


def _non_empty(res) -> bool:
    """A category with at least one GT or result detection (TrackEval's own test for ignore_empty_classes)."""
    return bool((res["HOTA_TP"] + res["HOTA_FN"] + res["HOTA_FP"] > 0).any())


def _mean(value) -> float:
    return float(np.mean(value))


def evaluate_hota(gt: dict, results: list) -> dict:
    """HOTA, DetA, AssA, LocA (and DetRe, DetPr, AssRe, AssPr, HOTA(0), LocA(0), IDF1, IDR, IDP) by TrackEval.

    `gt` and `results` are compute_ap.load_gt / load_results output. Returns the class-averaged fields (each
    category with a GT or a result weighs the same, as in the AP), `det_averaged` {HOTA, DetA, AssA, LocA} over
    all detections, and `per_category` {name: {HOTA, DetA, AssA}} (-1 for a category with neither, as the AP's
    -1). Raises EvalInputError if TrackEval is missing or rejects the data."""
    try:
        import trackeval
    except ImportError as e:
        raise EvalInputError(f"HOTA needs the trackeval package ({e}); `make setup` installs it") from None
    eval_config = {"USE_PARALLEL": False, "BREAK_ON_ERROR": True, "LOG_ON_ERROR": None, "PRINT_RESULTS": False,
                   "PRINT_CONFIG": False, "TIME_PROGRESS": False, "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False,
                   "PLOT_CURVES": False}
    with tempfile.TemporaryDirectory(prefix="hota_") as root:
        dataset_config, cats = _write_inputs(gt, results, root)
        log = io.StringIO()
        try:  # TrackEval prints its progress and, on failure, a traceback: kept out of the user's terminal
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                evaluator = trackeval.Evaluator(eval_config)
                dataset = trackeval.datasets.YouTubeVIS(dataset_config)
                metrics = [trackeval.metrics.HOTA(), trackeval.metrics.Identity({"PRINT_CONFIG": False})]
                out, msg = evaluator.evaluate([dataset], metrics)
        except Exception as e:  # noqa: BLE001 -- TrackEval raises bare exceptions as well as its own
            raise EvalInputError(f"TrackEval could not evaluate HOTA: {type(e).__name__}: {e}") from None
    res = out["YouTubeVIS"]["results"]["COMBINED_SEQ"]
    per_class = {key: res[key] for key in cats}
    # TrackEval's own class average, over the categories with a GT or a result (the Evaluator's default also
    # averages in a 0 for every empty category; the AP leaves those out too)
    cls_av = {name: metric.combine_classes_class_averaged({k: v[name] for k, v in per_class.items()},
                                                         ignore_empty_classes=True)
              for metric, name in zip(metrics, ["HOTA", "Identity"])}
    if not any(_non_empty(v["HOTA"]) for v in per_class.values()):  # no GT, no result: nothing to average
        cls_av = {"HOTA": {k: -1.0 for k in HOTA_FIELDS}, "Identity": {k: -1.0 for k in IDENTITY_FIELDS}}
    det_av = res["cls_comb_det_av"]["HOTA"]
    hota = {k: _mean(cls_av["HOTA"][k]) for k in HOTA_FIELDS}
    hota.update({k: float(cls_av["Identity"][k]) for k in IDENTITY_FIELDS})
    hota["det_averaged"] = {k: _mean(det_av[k]) for k in ["HOTA", "DetA", "AssA", "LocA"]}
    hota["per_category"] = {c["name"]: {k: _mean(per_class[key]["HOTA"][k]) if _non_empty(per_class[key]["HOTA"])
                                        else -1.0 for k in PER_CATEGORY_FIELDS}
                            for key, c in cats.items()}
    return hota


def format_hota(hota: dict) -> str:
    """Two lines for the printout: the class-averaged HOTA family, then the detection-averaged one."""
    main = "  ".join(f"{k} {hota[k]:.3f}" for k in ["HOTA", "DetA", "AssA", "LocA", "DetRe", "DetPr", "AssRe",
                                                     "AssPr", "IDF1"])
    det = hota["det_averaged"]
    return (f" TrackEval, class-averaged:     {main}\n"
            f" TrackEval, detection-averaged: " + "  ".join(f"{k} {v:.3f}" for k, v in det.items()))
