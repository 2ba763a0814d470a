"""scripts/overlay_vis_on_video.py and the drawing helpers of scripts/vis_common.py on a tiny synthetic split."""
import json
import os

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

import overlay_vis_on_video as ov  # noqa: E402
from fileio import InputError  # noqa: E402
from vis_common import (  # noqa: E402
    AtomicVideoWriter,
    VisError,
    blend,
    class_label,
    count_frames,
    decode_rle,
    draw_frame,
    load_results,
    open_video,
    track_colour,
)

H, W = 120, 160


def compressed(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def uncompressed(mask):
    """Official uncompressed RLE written by hand: run lengths of the column-major pixels, zeros first."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def rect_mask(y1, y2, x1, x2, h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    m[y1:y2, x1:x2] = 1
    return m


def test_track_colour_golden_angle_by_hand():
    # id 1: hue 137.508 deg, S 0.8, V 0.95 -> V = 242.25, min = 48.45, sector 2 (G max, R min):
    # B = 48.45 + 193.8 * (137.508 / 60 - 2) = 105.0 -> RGB (48, 242, 105), BGR (105, 242, 48).
    assert track_colour(1) == (105, 242, 48)
    assert track_colour(7) == track_colour(7)
    cols = [np.array(track_colour(i), float) for i in range(1, 30)]
    # neighbours differ by at least ~50 grey levels somewhere
    assert min(np.abs(a - b).max() for a, b in zip(cols, cols[1:])) > 50


def test_blend_exact_by_hand():
    px = np.full((1, 3), 100, np.uint8)
    # 0.25 * (105, 242, 48) + 0.75 * 100 = (101.25, 135.5, 87) -> (101, 136, 87) (half to even)
    assert blend(px, (105, 242, 48), 0.25).tolist() == [[101, 136, 87]]


def test_draw_frame_inside_blended_outside_unchanged():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    before = frame.copy()
    mask = rect_mask(50, 80, 40, 80)
    out = draw_frame(frame, [{"track_id": 3, "category_id": 2, "score": 0.9, "mask": mask}], {2: "cat"},
                     alpha=0.45, draw_boxes=True)
    assert np.array_equal(frame, before)  # the input is not drawn on
    c = np.array(track_colour(3), np.float64)
    inner = (slice(53, 77), slice(43, 77))  # inside the mask, away from the 2-px box line
    expect = np.rint(0.45 * c + 0.55 * frame[inner].astype(np.float64)).astype(np.uint8)
    assert np.array_equal(out[inner], expect)
    # the label sits above the box (rows ~33..49); everything below the box, left or right of it is untouched
    assert np.array_equal(out[83:], frame[83:])
    assert np.array_equal(out[:30], frame[:30])
    assert np.array_equal(out[50:, :37], frame[50:, :37])
    assert np.array_equal(out[50:, 84:], frame[50:, 84:])
    # the box line is drawn in the track's colour
    assert tuple(out[65, 40]) == track_colour(3)


def test_draw_frame_no_boxes_changes_only_mask_and_label():
    frame = np.full((H, W, 3), 77, np.uint8)
    mask = rect_mask(60, 100, 20, 60)
    out = draw_frame(frame, [{"track_id": 1, "category_id": 5, "score": 0.5, "mask": mask}], alpha=0.25,
                     draw_boxes=False)
    changed = (out != frame).any(axis=2)
    assert changed[mask.astype(bool)].all()
    assert not changed[60:, :].copy()[~mask[60:].astype(bool)].any()  # no box line outside the mask
    label_rows = changed[:60].any(axis=1)
    assert label_rows.any() and not label_rows[:35].any()  # the label is just above the mask


def test_overlapping_tracks_later_on_top():
    frame = np.full((H, W, 3), 10, np.uint8)
    a, b = rect_mask(40, 90, 20, 80), rect_mask(60, 110, 50, 120)
    out = draw_frame(frame, [{"track_id": 1, "category_id": 1, "score": 1, "mask": a},
                             {"track_id": 2, "category_id": 1, "score": 1, "mask": b}], alpha=0.5, draw_boxes=False)
    both = out[70:85, 55:75]
    expect = blend(blend(frame[70:85, 55:75].reshape(-1, 3), track_colour(1), 0.5), track_colour(2), 0.5)
    assert np.array_equal(both.reshape(-1, 3), expect)


def test_compressed_and_uncompressed_rle_same_picture():
    mask = np.zeros((H, W), np.uint8)
    cv2.circle(mask, (70, 60), 25, 1, -1)
    mask[10:20, 140:159] = 1
    u, c = uncompressed(mask), compressed(mask)
    assert isinstance(c["counts"], str) and isinstance(u["counts"], list)
    assert np.array_equal(decode_rle(u, "u"), mask) and np.array_equal(decode_rle(c, "c"), mask)
    frame = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    outs = [draw_frame(frame, [{"track_id": 4, "category_id": 1, "score": 0.7, "mask": decode_rle(s, "x")}])
            for s in (u, c)]
    assert np.array_equal(outs[0], outs[1])


def test_bad_rle_error_names_where():
    with pytest.raises(VisError, match="video 9, frame 2"):
        decode_rle({"size": [4, 4]}, "video 9, frame 2")


def test_class_label_falls_back():
    assert class_label(3, {3: "dog"}) == "dog"
    assert class_label(4, {3: "dog"}) == "class 4"


# ---- end to end on a tiny split -------------------------------------------------------------------------------

FH, FW, NF = 48, 64, 3


def _frame(v, f):
    img = np.zeros((FH, FW, 3), np.uint8)
    img[:] = (40 * f + 20, 60 + 10 * v, 90)
    return img


def make_split(root, video_ids=(2, 10), n_frames=NF):
    videos = []
    for v in video_ids:
        os.makedirs(os.path.join(root, "JPEGImages", f"vid{v}"), exist_ok=True)
        names = []
        for f in range(n_frames):
            name = f"vid{v}/{f * 5:05d}.jpg"
            cv2.imwrite(os.path.join(root, "JPEGImages", name), _frame(v, f))
            names.append(name)
        videos.append({"id": v, "width": FW, "height": FH, "length": n_frames, "file_names": names})
    data = {"videos": videos, "annotations": [], "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}]}
    with open(os.path.join(root, "instances.json"), "w") as f:
        json.dump(data, f)
    return data


def make_results(path, video_ids=(2, 10), n_frames=NF, h=FH, w=FW, rle=compressed):
    res = []
    for v in video_ids:
        segs1 = [rle(rect_mask(5 + f, 25 + f, 5, 30, h, w)) for f in range(n_frames)]
        segs2 = [None] + [rle(rect_mask(20, 40, 30 + 5 * f, 55, h, w)) for f in range(1, n_frames)]
        res += [{"video_id": v, "category_id": 1, "score": 0.9, "segmentations": segs1},
                {"video_id": v, "category_id": 2, "score": 0.8, "segmentations": segs2}]
    with open(path, "w") as f:
        json.dump(res, f)
    return res


def test_overlay_dataset_one_mp4_per_video(tmp_path, capsys):
    split = tmp_path / "valid"
    make_split(str(split))
    make_results(str(tmp_path / "results.json"))
    out = ov.main(["--results", str(tmp_path / "results.json"), "--data", str(split), "--out-dir",
                   str(tmp_path / "ov")])
    assert [os.path.basename(p) for p in out] == ["vis_v2.mp4", "vis_v10.mp4"]
    for p in out:
        cap, fps, n, w, h = open_video(p)
        cap.release()
        assert (w, h) == (FW, FH) and fps == pytest.approx(6.0)
        assert count_frames(p) == NF
    assert "vis_v10.mp4" in capsys.readouterr().out
    assert not [n for n in os.listdir(tmp_path / "ov") if n.startswith(".tmp_")]

    one = ov.main(["--results", str(tmp_path / "results.json"), "--data", str(split), "--out-dir",
                   str(tmp_path / "one"), "--video-id", "10", "--no-boxes", "--fps", "3"])
    assert [os.path.basename(p) for p in one] == ["vis_v10.mp4"]


def test_same_track_same_colour_every_frame(tmp_path):
    make_results(str(tmp_path / "r.json"), rle=uncompressed)
    tracks = load_results(str(tmp_path / "r.json"))[2]
    assert [t["track_id"] for t in tracks] == [1, 2]
    frame = np.full((FH, FW, 3), 100, np.uint8)
    for f in range(NF):
        present = ov.frame_tracks(tracks, f, (FH, FW))
        # track 2 is absent at frame 0, so its id must not depend on which tracks are present
        assert [t["track_id"] for t in present] == ([1] if f == 0 else [1, 2])
        out = draw_frame(frame, present, alpha=0.5, draw_boxes=False)
        # labels are wider than this frame: track 1's sits on rows 0-16, track 2's inside its box from row 22,
        # so rows 19-21 show the masks themselves
        assert tuple(out[19, 10]) == tuple(blend(frame[:1, 0], track_colour(1), 0.5)[0])
        if f:
            assert tuple(out[21, 52]) == tuple(blend(frame[:1, 0], track_colour(2), 0.5)[0])


def test_mask_size_mismatch_is_error_then_lenient(tmp_path, capsys):
    split = tmp_path / "valid"
    make_split(str(split), video_ids=(2,))
    make_results(str(tmp_path / "r.json"), video_ids=(2,), h=FH + 2)
    args = ["--results", str(tmp_path / "r.json"), "--data", str(split), "--out-dir", str(tmp_path / "o")]
    with pytest.raises(VisError, match=r"video 2, track #1, frame 0: mask size 50x64"):
        ov.main(args)
    assert not os.path.exists(tmp_path / "o" / "vis_v2.mp4")
    out = ov.main(args + ["--lenient"])
    assert count_frames(out[0]) == NF
    assert "warning" in capsys.readouterr().err


def test_length_mismatch_is_error_then_lenient(tmp_path, capsys):
    split = tmp_path / "valid"
    make_split(str(split), video_ids=(2,), n_frames=NF + 1)
    make_results(str(tmp_path / "r.json"), video_ids=(2,))  # one frame short, like the original's last video
    args = ["--results", str(tmp_path / "r.json"), "--data", str(split), "--out-dir", str(tmp_path / "o")]
    with pytest.raises(VisError, match=r"video 2: track #1 has 3 segmentations, the video has 4 frames"):
        ov.main(args)
    out = ov.main(args + ["--lenient"])
    assert count_frames(out[0]) == NF + 1
    assert "3 segmentations" in capsys.readouterr().err


def test_unknown_video_and_missing_frame_are_errors(tmp_path):
    split = tmp_path / "valid"
    make_split(str(split), video_ids=(2,))
    make_results(str(tmp_path / "r.json"), video_ids=(2, 99))
    args = ["--results", str(tmp_path / "r.json"), "--data", str(split), "--out-dir", str(tmp_path / "o")]
    with pytest.raises(VisError, match=r"\[99\] are not in"):
        ov.main(args)
    os.remove(split / "JPEGImages" / "vid2" / "00005.jpg")
    with pytest.raises(VisError, match=r"video 2, frame 1: cannot read image .*00005.jpg"):
        ov.main(args + ["--lenient"])


def test_overlay_from_frame_predictions(tmp_path):
    split = tmp_path / "valid"
    data = make_split(str(split), video_ids=(10,))
    pred = {"format": "ytvis-frame-predictions", "version": 1, "categories": data["categories"],
            "videos": [{**data["videos"][0], "frames": [{"index": f, "detections": []} for f in range(NF)]}]}
    with open(tmp_path / "pred.json", "w") as f:
        json.dump(pred, f)
    make_results(str(tmp_path / "r.json"), video_ids=(10,))
    out = ov.main(["--results", str(tmp_path / "r.json"), "--pred", str(tmp_path / "pred.json"),
                   "--frames-root", str(split / "JPEGImages"), "--out-dir", str(tmp_path / "o")])
    assert count_frames(out[0]) == NF


def test_overlay_from_video_file(tmp_path):
    with AtomicVideoWriter(str(tmp_path / "clip.mp4"), 5, (FW, FH)) as wr:
        for f in range(NF):
            wr.write(_frame(0, f))
        wr.close()
    make_results(str(tmp_path / "r.json"), video_ids=(7,))
    out = ov.main(["--results", str(tmp_path / "r.json"), "--video", str(tmp_path / "clip.mp4"),
                   "--out-dir", str(tmp_path / "o")])
    assert os.path.basename(out[0]) == "vis_v7.mp4" and count_frames(out[0]) == NF
    make_results(str(tmp_path / "r2.json"), video_ids=(7, 8))
    with pytest.raises(VisError, match="holds 2 videos"):
        ov.main(["--results", str(tmp_path / "r2.json"), "--video", str(tmp_path / "clip.mp4"),
                 "--out-dir", str(tmp_path / "o")])


def test_labels_do_not_hide_each_other_or_the_header():
    frame = np.full((H, W, 3), 128, np.uint8)
    same = rect_mask(60, 100, 20, 140)
    tracks = [{"track_id": i, "category_id": 1, "score": 0.5, "mask": same} for i in (1, 2)]
    out = draw_frame(frame, tracks, alpha=0.5, draw_boxes=False)
    # label 1 above the box (rows 41..58 from x = 20), label 2 moved inside the box's top (rows 62..79)
    assert tuple(out[50, 20]) == (0, 0, 0) and tuple(out[70, 20]) == (0, 0, 0)
    assert tuple(out[90, 20]) == tuple(blend(blend(frame[:1, 0], track_colour(1), 0.5), track_colour(2), 0.5)[0])
    # a box touching the top: above and inside would cover the header, so the label goes below the box
    top = [{"track_id": 1, "category_id": 1, "score": 0.5, "mask": rect_mask(0, 30, 10, 50)}]
    out = draw_frame(frame, top, alpha=0.5, draw_boxes=False, header="video 1")
    assert tuple(out[40, 10]) == (0, 0, 0)          # label below the box (rows 32..49)
    assert tuple(out[25, 12]) == tuple(blend(frame[:1, 0], track_colour(1), 0.5)[0])  # box top left visible


def test_empty_results_draw_plain_videos(tmp_path, capsys):
    split = tmp_path / "valid"
    make_split(str(split))
    (tmp_path / "empty.json").write_text("[]")
    out = ov.main(["--results", str(tmp_path / "empty.json"), "--data", str(split), "--out-dir", str(tmp_path / "o"),
                   "--max-videos", "1"])
    assert [os.path.basename(p) for p in out] == ["vis_v2.mp4"] and count_frames(out[0]) == NF
    with AtomicVideoWriter(str(tmp_path / "clip.mp4"), 5, (FW, FH)) as wr:
        wr.write(_frame(0, 0))
        wr.close()
    out = ov.main(["--results", str(tmp_path / "empty.json"), "--video", str(tmp_path / "clip.mp4"),
                   "--out-dir", str(tmp_path / "v")])
    assert os.path.basename(out[0]) == "vis_v0.mp4" and count_frames(out[0]) == 1
    assert "no tracks" in capsys.readouterr().err


@pytest.mark.parametrize("key, value, message", [
    ("video_id", "2", r"entry 0: 'video_id' must be an integer, got '2'"),
    ("video_id", None, r"entry 0: 'video_id' must be an integer, got None"),
    ("category_id", True, r"entry 0: 'category_id' must be an integer, got True"),
    ("score", "0.9", r"entry 0 \(video 2\): 'score' must be a finite number, got '0.9'"),
])
def test_results_with_a_mistyped_field_name_the_entry(tmp_path, key, value, message):
    res = make_results(str(tmp_path / "r.json"))
    res[0][key] = value
    (tmp_path / "r.json").write_text(json.dumps(res))
    with pytest.raises(VisError, match=r"results file .*r.json, " + message):
        load_results(str(tmp_path / "r.json"))


def test_frame_names_that_leave_the_frames_folder_are_refused(tmp_path):
    split = tmp_path / "valid"
    data = make_split(str(split))
    make_results(str(tmp_path / "results.json"))
    for name in ("../../outside.jpg", str(split / "JPEGImages" / data["videos"][0]["file_names"][0])):
        data["videos"][0]["file_names"][1] = name
        (split / "instances.json").write_text(json.dumps(data))
        with pytest.raises(VisError, match=r"instances.json: video 2, file_names\[1\]: file name .* leaves the folder"):
            ov.main(["--results", str(tmp_path / "results.json"), "--data", str(split), "--out-dir",
                     str(tmp_path / "ov")])


def test_unwritable_out_dir_is_refused_before_reading(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match=r"--out-dir .*file/ov: .*file is not a folder"):
        ov.main(["--results", str(tmp_path / "missing.json"), "--data", str(tmp_path), "--out-dir",
                 str(tmp_path / "file" / "ov")])
