"""What bounds a video AP: the per-frame detections against the ground truth, before and after tracking.

From tracker.py's frame predictions (info/DESIGN.md#frame-predictions), the split's GT and, optionally, the tracker's
results (info/DESIGN.md#results-json), it prints:
  - frame mask mAP@[.5:.95] and @.5 over every annotated frame, with the class and class-agnostic;
  - found: the share of object-frames that have a detection at the score floor with mask IoU >= 0.5, by the
    object's area as a share of the frame, and the median mask IoU of those best detections;
  - oracle association: the YouTube-VIS AP / AP50 / AP75 of tracks made by giving every GT object its
    best-overlapping detection (score >= floor, IoU >= 0.1) in every frame, with the detections' most frequent class
    and with the GT class: the best any tracker could do with these detections; with HOTA, DetA and AssA
    (TrackEval), and the same for the tracker's results when given: AssA below the oracle's is association lost;
  - with --results: object-frames covered by a kept track (mask IoU >= 0.5), objects with no track or split over
    several, and identity through same-class crossings (`identity_report`).
numpy + pycocotools + trackeval only (no TensorFlow).

    python scripts/diagnose.py --gt data/shapes/valid/instances.json --pred runs/demo/valid_frames.json \
        --results runs/demo/results_lam0.5.json --config runs/demo/config.yaml [--out runs/demo/diagnosis.json]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import numpy as np
from pycocotools import mask as mask_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from compute_ap import EvalInputError, _read_json, evaluate_vis, frame_map, load_gt, load_results, to_rle  # noqa: E402
from compute_hota import evaluate_hota  # noqa: E402
from config import TrackConfig, load_config  # noqa: E402
from fileio import InputError, atomic_write_text, check_writable_file  # noqa: E402
from tracking.io import read_frame_predictions  # noqa: E402

AREA_BINS = [0.0, 0.01, 0.03, 0.1, 1.01]    # object area as a share of the frame area


def diagnose(gt: dict, pred: dict, score_floor: float, results=None) -> dict:
    videos = {v["id"]: v for v in pred["videos"]}
    missing = [v["id"] for v in gt["videos"] if v["id"] not in videos]
    if missing:
        raise EvalInputError(f"frame predictions have no video {missing[0]} of the GT ({len(missing)} missing)")
    cats = gt["categories"]

    # Frame mAP, class-aware and class-agnostic; every annotated frame is an image.
    gt_frames, dt_frames, frame_id = [], [], {}
    for v in gt["videos"]:
        for t in range(v["length"]):
            frame_id[(v["id"], t)] = len(frame_id) + 1
    by_video = collections.defaultdict(list)
    for a in gt["annotations"]:
        by_video[a["video_id"]].append(a)
    for v in gt["videos"]:
        h, w = v["height"], v["width"]
        frames = videos[v["id"]]["frames"]
        for t in range(v["length"]):
            inst = [{"category_id": a["category_id"], "segmentation": a["segmentations"][t],
                     "iscrowd": a.get("iscrowd", 0)} for a in by_video[v["id"]] if a["segmentations"][t] is not None]
            gt_frames.append({"id": frame_id[(v["id"], t)], "height": h, "width": w, "instances": inst})
            dets = [{"category_id": d["category_id"], "score": d["score"], "segmentation": d["segmentation"]}
                    for d in frames[t]["detections"] if d.get("segmentation") is not None]
            dt_frames.append({"id": frame_id[(v["id"], t)], "instances": dets})
    aware = frame_map(gt_frames, dt_frames, cats)
    agnostic = frame_map([{**f, "instances": [{**i, "category_id": 1} for i in f["instances"]]} for f in gt_frames],
                         [{**f, "instances": [{**i, "category_id": 1} for i in f["instances"]]} for f in dt_frames],
                         [{"id": 1, "name": "object"}])

    # Best detection of every object-frame; oracle tracks.
    found = np.zeros(len(AREA_BINS) - 1, np.int64)
    seen = np.zeros(len(AREA_BINS) - 1, np.int64)
    best_ious, oracle_det, oracle_gt = [], [], []
    for v in gt["videos"]:
        h, w = v["height"], v["width"]
        frames = videos[v["id"]]["frames"]
        for a in by_video[v["id"]]:
            segs, scores, classes = [], [], []
            for t, seg in enumerate(a["segmentations"]):
                if seg is None:
                    segs.append(None)
                    continue
                g = to_rle(seg, h, w, f"GT video {v['id']} annotation {a['id']} frame {t}")
                k = int(np.searchsorted(AREA_BINS, float(mask_utils.area(g)) / (h * w), side="right")) - 1
                seen[k] += 1
                dets = [(d, to_rle(d["segmentation"], h, w, f"frame predictions video {v['id']} frame {t}",
                                   allow_polygon=False))
                        for d in frames[t]["detections"] if d["score"] >= score_floor and d.get("segmentation")]
                ious = np.asarray(mask_utils.iou([r for _, r in dets], [g], [0])).ravel() if dets else []
                j = int(np.argmax(ious)) if len(ious) else -1
                if j < 0 or ious[j] < 0.1:
                    segs.append(None)
                    continue
                if ious[j] >= 0.5:
                    found[k] += 1
                    best_ious.append(float(ious[j]))
                segs.append(dets[j][0]["segmentation"])
                scores.append(float(dets[j][0]["score"]))
                classes.append(int(dets[j][0]["category_id"]))
            if scores:
                mode = collections.Counter(classes).most_common()
                top = max(n for _, n in mode)
                entry = {"video_id": v["id"], "score": float(np.mean(scores)), "segmentations": segs}
                oracle_det.append({**entry, "category_id": min(c for c, n in mode if n == top)})
                oracle_gt.append({**entry, "category_id": a["category_id"]})
    out = {"score_floor": score_floor,
           "frame_mAP": aware["mAP"], "frame_mAP50": aware["mAP50"],
           "frame_mAP_agnostic": agnostic["mAP"], "frame_mAP50_agnostic": agnostic["mAP50"],
           "object_frames": int(seen.sum()), "found": int(found.sum()),
           "found_by_area": [{"area_share": [AREA_BINS[i], min(AREA_BINS[i + 1], 1.0)], "objects": int(seen[i]),
                              "found": int(found[i])} for i in range(len(seen))],
           "median_mask_iou_found": float(np.median(best_ious)) if best_ious else 0.0}
    for name, res in (("oracle_det_class", oracle_det), ("oracle_gt_class", oracle_gt)):
        out[name] = video_scores(gt, res)
    if results is not None:
        out["tracker"] = video_scores(gt, results)
        out["tracks"] = track_coverage(gt, results)
    return out


def video_scores(gt, results) -> dict:
    """AP, AP50, AP75 (compute_ap) and HOTA, DetA, AssA (TrackEval) of a results list: DetA moves with the
    detections, AssA with the association, so a tracker change shows apart from the detector's."""
    m, E = evaluate_vis(gt, results)
    h = evaluate_hota(E.gt, E.results)
    return {**{k: m[k] for k in ("AP", "AP50", "AP75")}, **{k: h[k] for k in ("HOTA", "DetA", "AssA")}}


def covering_tracks(gt: dict, results: list) -> dict:
    """{annotation id: [per frame where the object is visible, the index (in `results`) of the result whose mask
    overlaps it most with IoU >= 0.5, or None]}."""
    tracks = collections.defaultdict(list)
    for k, r in enumerate(results):
        tracks[r["video_id"]].append((k, r))
    videos = {v["id"]: v for v in gt["videos"]}
    out = {}
    for a in gt["annotations"]:
        v = videos[a["video_id"]]
        h, w = v["height"], v["width"]
        ids = []
        for t, seg in enumerate(a["segmentations"]):
            if seg is None:
                continue
            g = to_rle(seg, h, w, f"GT video {v['id']} annotation {a['id']} frame {t}")
            best, best_iou = None, 0.5
            for k, r in tracks[v["id"]]:
                d = r["segmentations"][t] if t < len(r["segmentations"]) else None
                if d is None:
                    continue
                d = to_rle(d, h, w, f"result {k} (video {v['id']}) frame {t}", allow_polygon=False)
                iou = float(mask_utils.iou([d], [g], [0])[0][0])
                if iou >= best_iou:
                    best, best_iou = k, iou
            ids.append(best)
        out[a["id"]] = ids
    return out


def _boxes_overlap(b1, b2):
    return (b1 is not None and b2 is not None and b1[0] < b2[0] + b2[2] and b2[0] < b1[0] + b1[2]
            and b1[1] < b2[1] + b2[3] and b2[1] < b1[1] + b1[3])


def identity_report(gt: dict, results: list, covering=None):
    """Identity through crossings. A crossing is two GT instances of one class in one video whose boxes overlap
    in some frame. A GT track of a crossing is kept if, in every frame where it is visible, its best-overlapping
    predicted mask (mask IoU >= 0.5) exists and always belongs to the same predicted track.

    Also counted, as in MOT's IDSW: `switches`, the times a crossing GT track's covering predicted track changes
    from one covered frame to the next covered one (missed frames in between do not count as a switch), the
    crossing GT tracks with no switch, and the fraction of their visible frames that are covered.

    Identity *through* each crossing (`encounters`: each object of each crossing pair): `through` if the predicted
    track covering the object in most of its covered frames before the pair's boxes first overlap is the one
    covering it most after they last overlap; `changed` if they differ; `uncovered` if either side has no covered
    frame. A track that takes the other object's mask for a frame while the two overlap is two switches but still
    `through`. None without crossings."""
    covering = covering if covering is not None else covering_tracks(gt, results)
    by_video = collections.defaultdict(list)
    for a in gt["annotations"]:
        by_video[a["video_id"]].append(a)
    kept = total = switches = clean = covered = visible = 0
    ends = collections.Counter()
    for group in by_video.values():
        crossing = set()
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if a["category_id"] != b["category_id"]:
                    continue
                overlap = [t for t, (x, y) in enumerate(zip(a["bboxes"], b["bboxes"])) if _boxes_overlap(x, y)]
                if overlap:
                    crossing.update([a["id"], b["id"]])
                    for o in (a, b):
                        ends[_through(o, covering[o["id"]], overlap[0], overlap[-1])] += 1
        for a in group:
            if a["id"] not in crossing:
                continue
            ids = covering[a["id"]]
            hits = [k for k in ids if k is not None]
            n_switch = sum(x != y for x, y in zip(hits, hits[1:]))
            total += 1
            switches += n_switch
            clean += n_switch == 0
            covered += len(hits)
            visible += len(ids)
            kept += len(set(ids)) == 1 and None not in ids
    if not total:
        return None
    return {"kept": kept, "total": total, "switches": switches, "no_switch": clean,
            "covered": covered / visible if visible else 0.0, "encounters": sum(ends.values()),
            "through": ends["through"], "changed": ends["changed"], "uncovered": ends["uncovered"]}


def _through(annotation, ids, first: int, last: int) -> str:
    """'through', 'changed' or 'uncovered' (identity_report) for one object of a crossing pair whose boxes overlap
    from frame `first` to `last`; `ids` are its covering tracks in its visible frames."""
    frames = [t for t, seg in enumerate(annotation["segmentations"]) if seg is not None]
    before = [k for t, k in zip(frames, ids) if t < first and k is not None]
    after = [k for t, k in zip(frames, ids) if t > last and k is not None]
    if not before or not after:
        return "uncovered"
    most = lambda ks: collections.Counter(ks).most_common(1)[0][0]   # noqa: E731
    return "through" if most(before) == most(after) else "changed"


def track_coverage(gt: dict, results: list) -> dict:
    """Object-frames covered by a kept track (mask IoU >= 0.5); objects with no such track, or split over several;
    identity through same-class crossings."""
    covering = covering_tracks(gt, results)
    hits = [[k for k in ids if k is not None] for ids in covering.values()]
    return {"object_frames": sum(len(ids) for ids in covering.values()), "covered": sum(len(h) for h in hits),
            "objects": len(covering), "objects_without_track": sum(not h for h in hits),
            "objects_split": sum(len(set(h)) > 1 for h in hits),
            "crossings": identity_report(gt, results, covering)}


def report(d: dict) -> str:
    lines = [f"frame mask mAP {d['frame_mAP']:.3f}, mAP@.5 {d['frame_mAP50']:.3f}; class-agnostic "
             f"{d['frame_mAP_agnostic']:.3f}, {d['frame_mAP50_agnostic']:.3f}",
             f"object-frames with a detection (score >= {d['score_floor']:g}) of mask IoU >= 0.5: {d['found']} of "
             f"{d['object_frames']}; median mask IoU of those {d['median_mask_iou_found']:.3f}"]
    for b in d["found_by_area"]:
        if b["objects"]:
            lo, hi = b["area_share"]
            lines.append(f"  objects of {100 * lo:g}-{100 * hi:g} % of the frame: {b['found']} of {b['objects']} "
                         f"({b['found'] / b['objects']:.2f})")
    for name, label in (("tracker", "the tracker's results"), ("oracle_det_class", "oracle association, "
                                                                    "detections' class"),
                        ("oracle_gt_class", "oracle association, GT class")):
        if name in d:
            m = d[name]
            hota = (f"; HOTA {m['HOTA']:.3f}, DetA {m['DetA']:.3f}, AssA {m['AssA']:.3f}" if "AssA" in m else "")
            lines.append(f"{label}: AP {m['AP']:.3f}, AP50 {m['AP50']:.3f}, AP75 {m['AP75']:.3f}{hota}")
    if "tracks" in d:
        t = d["tracks"]
        lines.append(f"tracker: {t['covered']} of {t['object_frames']} object-frames covered by a kept track; of "
                     f"{t['objects']} objects, {t['objects_without_track']} have no track and {t['objects_split']} "
                     f"are split over several")
        c = t["crossings"]
        if c:
            lines.append(f"same-class crossings: {c['through']} of {c['encounters']} crossing objects keep their "
                         f"track through the crossing ({c['changed']} change it, {c['uncovered']} not covered on "
                         f"one side); {c['no_switch']} of {c['total']} objects never change track where covered "
                         f"({c['switches']} identity switches), {c['kept']} followed by one track in every visible "
                         f"frame; {100 * c['covered']:.0f} % of their frames covered")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gt", required=True, help="GT annotation JSON of the split (YouTube-VIS format)")
    ap.add_argument("--pred", required=True, help="frame predictions written by tracker.py")
    ap.add_argument("--results", default=None, help="the tracker's results JSON (optional)")
    ap.add_argument("--config", default=None, help="a run's config.yaml: its track.score_floor is the floor")
    ap.add_argument("--score-floor", type=float, default=None,
                    help=f"detections taking part (default: the config's, else {TrackConfig().score_floor})")
    ap.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = ap.parse_args(argv)
    try:
        if args.out:
            check_writable_file(args.out, "--out")
        floor = args.score_floor
        if floor is None:
            floor = load_config(args.config).track.score_floor if args.config else TrackConfig().score_floor
        gt, _ = _read_json(args.gt, "GT")
        gt_checked = load_gt(args.gt)                       # validates, naming the file, video and frame
        pred = read_frame_predictions(args.pred)            # validates likewise
        results = None
        if args.results:
            load_results(args.results, gt_checked)
            results, _ = _read_json(args.results, "results")
        d = diagnose(gt, pred, floor, results)
    except InputError as e:
        sys.exit(f"diagnose: {e}")
    print(report(d))
    if args.out:
        atomic_write_text(args.out, json.dumps(d, indent=2))
        print(f"wrote {args.out}")
    return d


if __name__ == "__main__":
    main()
