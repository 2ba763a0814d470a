"""Tests of scripts/make_synthetic_ytvis.py: determinism, the official schema, masks consistent with boxes and
areas, occlusion, and the presence of every segmentation form."""
import filecmp
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest

import make_synthetic_ytvis as gen  # noqa: E402


def _load(root, split="train"):
    with open(os.path.join(root, split, "instances.json")) as f:
        return json.load(f)


def _decode(seg, h, w):
    if isinstance(seg, list):
        return mask_util.decode(mask_util.merge(mask_util.frPyObjects(seg, h, w)))
    if isinstance(seg["counts"], list):
        return mask_util.decode(mask_util.frPyObjects(seg, h, w))
    return mask_util.decode({"size": seg["size"], "counts": seg["counts"].encode()})


def test_same_seed_same_bytes(synthetic_root, tmp_path):
    out = str(tmp_path / "again")
    gen.main(["--out", out, "--seed", "0", "--train-videos", "4", "--valid-videos", "2", "--min-frames", "6",
              "--max-frames", "8", "--width", "160", "--height", "90", "--quiet"])
    for split in ("train", "valid"):
        a, b = os.path.join(synthetic_root, split), os.path.join(out, split)
        assert filecmp.cmp(os.path.join(a, "instances.json"), os.path.join(b, "instances.json"), shallow=False)
        for v in _load(synthetic_root, split)["videos"]:
            for fn in v["file_names"]:
                assert filecmp.cmp(os.path.join(a, "JPEGImages", fn), os.path.join(b, "JPEGImages", fn), shallow=False)
    other = str(tmp_path / "seed1")
    gen.main(["--out", other, "--seed", "1", "--train-videos", "1", "--valid-videos", "0", "--min-frames", "6",
              "--max-frames", "8", "--width", "160", "--height", "90", "--quiet"])
    assert _load(other)["annotations"] != _load(synthetic_root)["annotations"][:len(_load(other)["annotations"])]


def test_official_schema(synthetic_root):
    d = _load(synthetic_root)
    assert set(d) == {"info", "licenses", "videos", "annotations", "categories"}
    assert [c["name"] for c in d["categories"]] == gen.CLASSES and len(gen.CLASSES) >= 4
    assert set(d["categories"][0]) == {"id", "name", "supercategory"}
    for v in d["videos"]:
        assert set(v) >= {"id", "width", "height", "length", "file_names", "license", "coco_url", "flickr_url",
                          "date_captured"}
        assert (v["width"], v["height"]) == (160, 90) and 6 <= v["length"] <= 8
        assert len(v["file_names"]) == v["length"]
        name = v["file_names"][0].split("/")[0]
        assert v["file_names"] == [f"{name}/{5 * t:05d}.jpg" for t in range(v["length"])]
        assert os.path.isfile(os.path.join(synthetic_root, "train", "JPEGImages", v["file_names"][-1]))
    lengths = {v["id"]: v["length"] for v in d["videos"]}
    for a in d["annotations"]:
        assert set(a) == {"id", "video_id", "category_id", "iscrowd", "segmentations", "bboxes", "areas", "height",
                          "width", "length"}
        n = lengths[a["video_id"]]
        assert len(a["segmentations"]) == len(a["bboxes"]) == len(a["areas"]) == n
        # Absent frames are null in all three lists together.
        for s, b, ar in zip(a["segmentations"], a["bboxes"], a["areas"]):
            assert (s is None) == (b is None) == (ar is None)
    per_video = {}
    for a in d["annotations"]:
        per_video.setdefault(a["video_id"], []).append(a)
    assert all(1 <= len(x) <= 8 for x in per_video.values())


def test_boxes_and_areas_match_masks(synthetic_root):
    for split in ("train", "valid"):
        d = _load(synthetic_root, split)
        for a in d["annotations"]:
            for seg, box, area in zip(a["segmentations"], a["bboxes"], a["areas"]):
                if seg is None:
                    continue
                m = _decode(seg, 90, 160)
                ys, xs = np.nonzero(m)
                assert area == int(m.sum()) > 0
                assert box == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_every_segmentation_form_present(synthetic_root):
    kinds = set()
    for split in ("train", "valid"):
        for a in _load(synthetic_root, split)["annotations"]:
            for s in a["segmentations"]:
                if s is None:
                    kinds.add("null")
                elif isinstance(s, list):
                    kinds.add("polygon")
                elif isinstance(s["counts"], str):
                    kinds.add("compressed")
                else:
                    kinds.add("uncompressed")
    assert kinds == {"null", "polygon", "compressed", "uncompressed"}


def test_uncompressed_rle_matches_pycocotools():
    m = np.zeros((5, 4), np.uint8)
    m[1:3, 1] = 1
    m[0, 3] = 1
    rle = gen.uncompressed_rle(m)
    # Column-major: column 0 is 5 zeros, column 1 is 0,1,1,0,0, column 2 zeros, column 3 is 1,0,0,0,0.
    assert rle == {"counts": [6, 2, 7, 1, 4], "size": [5, 4]}
    assert (mask_util.decode(mask_util.frPyObjects(rle, 5, 4)) == m).all()
    first = np.zeros((2, 2), np.uint8)
    first[0, 0] = 1
    assert gen.uncompressed_rle(first)["counts"] == [0, 1, 3]


def test_occluded_mask_excludes_hidden_pixels():
    """Render one video and check the depth rule directly: an instance's visible mask is its full shape minus
    the shapes drawn above it, and the pixels left show the top instance's colour."""
    rng = np.random.default_rng([0, 1, 2])   # video index 2: a scripted same-class crossing pair
    frames, insts = gen.make_video(rng, 12, 90, 160, 2)
    pair = [i for i in insts if i.get("crossing")]
    assert len(pair) == 2 and pair[0]["cls"] == pair[1]["cls"]
    lo, hi = pair
    overlapped = 0
    for t in range(12):
        if lo["segs"][t] is None or hi["segs"][t] is None:
            continue
        m_lo = _decode(lo["segs"][t][0], 90, 160).astype(bool)
        m_hi = _decode(hi["segs"][t][0], 90, 160).astype(bool)
        assert not (m_lo & m_hi).any()          # no pixel belongs to both
        # Where they cross, the lower one's full shape would have covered part of the upper one's pixels.
        frac = t / 11
        cx, cy = lo["p0"] + lo["v"] * t
        size = lo["s0"] + (lo["s1"] - lo["s0"]) * frac
        full = gen.render_mask(lo["cls"], cx, cy, size, lo["a0"], 90, 160).astype(bool) if lo["fmt"] != "polygon" \
            else None
        if full is not None and (full & m_hi).any():
            overlapped += 1
            assert (m_lo == (full & ~m_hi & ~_above(insts, lo, t))).all()
    assert overlapped >= 1


def _above(insts, inst, t):
    k = next(i for i, x in enumerate(insts) if x is inst)
    cover = np.zeros((90, 160), bool)
    for x in insts[k + 1:]:
        if x["segs"][t] is not None:
            cover |= _decode(x["segs"][t][0], 90, 160).astype(bool)
    return cover


def test_fully_hidden_or_absent_frames_are_null():
    rng = np.random.default_rng([5, 1, 7])
    frames, insts = gen.make_video(rng, 10, 90, 160, 7)
    for inst in insts:
        for t, s in enumerate(inst["segs"]):
            if not inst["t_in"] <= t <= inst["t_out"]:
                assert s is None
            if s is not None:
                assert s[2] > 0


def test_object_sizes_follow_the_size_flags():
    # Free (non-crossing) instances draw their start and end extents from --min-size..--max-size (px at 320x180,
    # scaled with the frame); the scripted crossing pair keeps its own 28..48 px.
    rng = np.random.default_rng([0, 1, 3])
    insts = gen.plan_instances(rng, 12, 360, 640, 2.0, 0, sizes=(30.0, 40.0))
    free = [inst for inst in insts if not inst.get("crossing")]
    assert free
    for inst in free:
        assert 60.0 <= inst["s0"] <= 80.0 and 60.0 <= inst["s1"] <= 80.0


def _hues(img):
    """OpenCV hues (0..179) of an RGB image's pixels that are saturated enough to have one."""
    import cv2
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).reshape(-1, 3)
    return hsv[hsv[:, 1] > 40, 0].astype(int)


def test_texture_hue_lies_in_its_class_band():
    # Class k's textures take hues 30k + 15 +- 8. The pattern's second colour is a darker copy with per-channel
    # jitter, which may leave the band, and pixel noise has sd 6; at least the main colour's pixels, 0.4 of the
    # texture or more (measured minimum over 180 textures: 0.48), stay within 8 + 6 of the centre. Without a
    # class (the --shape-only variant) the dominant hues spread over all six bands.
    for k in range(len(gen.CLASSES)):
        centre = gen.HUE_BAND * k + gen.HUE_BAND // 2
        for s in range(8):
            hue = _hues(gen.texture(np.random.default_rng([k, s]), 24, 32, k))
            near = np.abs((hue - centre + 90) % 180 - 90) <= gen.HUE_JITTER + 6
            assert near.mean() >= 0.4, (k, s, near.mean())
    free = {int(np.bincount(_hues(gen.texture(np.random.default_rng([9, s]), 24, 32)) // gen.HUE_BAND).argmax())
            for s in range(60)}
    assert free == set(range(6))


def test_shape_only_flag_draws_hues_independently_of_the_class():
    # Same seed, same scripts and masks: only the textures' colours change.
    rng_a, rng_b = np.random.default_rng([0, 1, 5]), np.random.default_rng([0, 1, 5])
    frames_a, insts_a = gen.make_video(rng_a, 3, 90, 160, 5, class_hues=True)
    frames_b, insts_b = gen.make_video(rng_b, 3, 90, 160, 5, class_hues=False)
    assert [i["cls"] for i in insts_a] == [i["cls"] for i in insts_b]
    assert [i["segs"] for i in insts_a] == [i["segs"] for i in insts_b]
    assert any((a != b).any() for a, b in zip(frames_a, frames_b))


def test_class_hue_variant_mutes_the_backdrop():
    # The backdrop gradient keeps BACKDROP_CHROMA of its colour (same draws, so the same layout): its median
    # saturation falls (measured: at most 0.61 of the full-colour backdrop's over these 20 seeds, pixel noise
    # keeps dark backdrops from reaching grey), and the same seed gives the same picture otherwise.
    import cv2
    for s in range(20):
        muted = gen.background(np.random.default_rng([s]), 90, 160, 0.5, gen.BACKDROP_CHROMA)
        full = gen.background(np.random.default_rng([s]), 90, 160, 0.5, 1.0)
        sat_m = np.median(cv2.cvtColor(muted, cv2.COLOR_RGB2HSV)[..., 1])
        sat_f = np.median(cv2.cvtColor(full, cv2.COLOR_RGB2HSV)[..., 1])
        assert sat_m <= 0.7 * sat_f, (s, sat_m, sat_f)


@pytest.mark.parametrize("flags, message", [
    (["--train-videos", "-1"], "need --train-videos >= 1 and --valid-videos >= 0 (0: no valid split), got -1 and 12"),
    (["--valid-videos", "-2"], "got 48 and -2"),
])
def test_negative_video_counts_are_refused(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        gen.main(["--out", str(tmp_path / "out")] + flags)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_valid_videos_zero_writes_no_valid_split(tmp_path):
    gen.main(["--out", str(tmp_path / "out"), "--train-videos", "1", "--valid-videos", "0", "--min-frames", "2",
              "--max-frames", "2", "--width", "64", "--height", "48", "--quiet"])
    assert sorted(os.listdir(tmp_path / "out")) == ["train"]


def test_unwritable_out_is_refused_before_drawing(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as e:
        gen.main(["--out", str(tmp_path / "file" / "shapes")])
    assert e.value.code == 2 and "error: --out" in capsys.readouterr().err
