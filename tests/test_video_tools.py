"""scripts/concat_vis_videos.py and scripts/shrink_vis_video.py on tiny synthetic mp4s."""
import os

import numpy as np
import pytest
from PIL import Image

import concat_vis_videos as cc  # noqa: E402
import shrink_vis_video as sh  # noqa: E402
from vis_common import (  # noqa: E402
    LETTERBOX_BG,
    AtomicVideoWriter,
    VisError,
    count_frames,
    letterbox_into,
    natural_key,
    open_video,
    read_frames,
)

W, H = 64, 48


def write_clip(path, colours, fps=10.0, size=(W, H)):
    """A clip of constant-colour frames, one per BGR colour."""
    with AtomicVideoWriter(str(path), fps, size) as wr:
        for c in colours:
            img = np.zeros((size[1], size[0], 3), np.uint8)
            img[:] = c
            wr.write(img)
        return wr.close()


def centre_colour(frame):
    h, w = frame.shape[:2]
    return frame[h // 2 - 4:h // 2 + 4, w // 2 - 4:w // 2 + 4].reshape(-1, 3).mean(axis=0)


def test_natural_key_orders_numbers():
    names = ["vis_v10.mp4", "vis_v2.mp4", "vis_v1.mp4", "VIS_V3.mp4"]
    assert sorted(names, key=natural_key) == ["vis_v1.mp4", "vis_v2.mp4", "VIS_V3.mp4", "vis_v10.mp4"]


def test_letterbox_into_geometry():
    frame = np.full((H, W, 3), 200, np.uint8)
    out = letterbox_into(frame, 80, 40)
    # scale = min(80 / 64, 40 / 48) = 5/6 -> 53 x 40 pasted at x0 = (80 - 53) // 2 = 13
    assert out.shape == (40, 80, 3)
    assert (out[:, :13] == LETTERBOX_BG).all() and (out[:, 13 + 53:] == LETTERBOX_BG).all()
    assert (out[:, 13:13 + 53] == 200).all()


def test_concat_numeric_order_and_letterbox(tmp_path, capsys):
    d = tmp_path / "ov"
    red, green, blue = (0, 0, 255), (0, 255, 0), (255, 0, 0)
    write_clip(d / "vis_v10.mp4", [blue] * 3)
    write_clip(d / "vis_v2.mp4", [green] * 2)
    write_clip(d / "vis_v1.mp4", [red] * 1, size=(32, 32))  # another size: letterboxed like the others
    write_clip(d / "other_5.mp4", [red] * 4)
    paths = cc.list_inputs(str(d))
    assert [os.path.basename(p) for p in paths] == ["vis_v1.mp4", "vis_v2.mp4", "vis_v10.mp4"]
    out = cc.main(["-i", str(d), "-o", str(tmp_path / "all.mp4"), "--width", "80", "--height", "40",
                   "--fps", "4"])
    cap, fps, _, w, h = open_video(out)
    cap.release()
    assert (w, h, fps) == (80, 40, pytest.approx(4.0))
    frames = list(read_frames(out))
    assert len(frames) == 6
    dominant = [int(np.argmax(centre_colour(f))) for f in frames]  # channel index: 2 red, 1 green, 0 blue
    assert dominant == [2, 1, 1, 0, 0, 0]
    assert np.abs(frames[0][20, 2].astype(int) - LETTERBOX_BG).max() < 12  # side band of the 32x32 clip
    assert "wrote" in capsys.readouterr().out


def test_concat_pattern_honoured_and_errors(tmp_path):
    d = tmp_path / "ov"
    write_clip(d / "vis_v1.mp4", [(0, 0, 255)])
    write_clip(d / "other_5.mp4", [(0, 255, 0)] * 4)
    write_clip(d / "other_12.mp4", [(255, 0, 0)] * 2)
    paths = cc.list_inputs(str(d), "other_*.mp4")
    assert [os.path.basename(p) for p in paths] == ["other_5.mp4", "other_12.mp4"]
    out = cc.main(["-i", str(d), "-o", str(tmp_path / "o.mp4"), "--pattern", "other_*.mp4"])
    assert count_frames(out) == 6
    with pytest.raises(VisError, match=r"no file matches 'nothing_\*'"):
        cc.list_inputs(str(d), "nothing_*")
    (d / "vis_v3.mp4").write_bytes(b"not a video at all")
    with pytest.raises(VisError, match=r"vis_v3.mp4"):
        cc.main(["-i", str(d), "-o", str(tmp_path / "bad.mp4")])
    assert not os.path.exists(tmp_path / "bad.mp4")


def ramp_clip(path, n, fps=10.0):
    # clearly different frames, so neither the codec nor Pillow's duplicate merging can fold two into one
    return write_clip(path, [(20 + 23 * (k % 10), 250 - 23 * (k % 10), 60 + 60 * (k // 10)) for k in range(n)], fps)


def test_shrink_fraction_keeps_first_frames(tmp_path, capsys):
    ramp_clip(tmp_path / "in.mp4", 10)
    out = sh.main(["-i", str(tmp_path / "in.mp4"), "-o", str(tmp_path / "out.mp4"), "--fraction", "0.3"])
    assert count_frames(out) == 3
    cap, fps, _, w, h = open_video(out)
    cap.release()
    assert (w, h, fps) == (W, H, pytest.approx(10.0))
    first_in, first_out = next(read_frames(str(tmp_path / "in.mp4"))), next(read_frames(out))
    assert np.abs(first_in.astype(int) - first_out).max() <= 2
    assert "3 frames" in capsys.readouterr().out


def test_shrink_to_size_budget(tmp_path):
    ramp_clip(tmp_path / "in.mp4", 30)
    size_mb = os.path.getsize(tmp_path / "in.mp4") / 1e6
    n, mb = sh.shrink_to_size(str(tmp_path / "in.mp4"), str(tmp_path / "out.mp4"), size_mb / 2)
    assert mb <= size_mb / 2 and 1 <= n < 30 and count_frames(str(tmp_path / "out.mp4")) == n
    n_all, _ = sh.shrink_to_size(str(tmp_path / "in.mp4"), str(tmp_path / "all.mp4"), size_mb * 2)
    assert n_all == 30


def test_gif_frame_indices_by_hand():
    # 10 fps video, 5 fps GIF of 1 s: times 0, .2, .4, .6, .8 s -> frames 0, 2, 4, 6, 8
    assert sh.gif_frame_indices(10, 100, 1.0, 5) == [0, 2, 4, 6, 8]
    # 25 fps video, 4 fps of 1 s: 0, 6.25, 12.5, 18.75 -> rounded half to even: 0, 6, 12, 19
    assert sh.gif_frame_indices(25, 100, 1.0, 4) == [0, 6, 12, 19]
    assert sh.gif_frame_indices(10, 3, 1.0, 5) == [0, 2]  # a short video ends the GIF early


def test_gif_width_frames_and_loop(tmp_path):
    ramp_clip(tmp_path / "in.mp4", 20)
    out = sh.main(["-i", str(tmp_path / "in.mp4"), "-o", str(tmp_path / "demo.gif"), "--gif", "--seconds", "1",
                   "--fps", "5", "--width", "32"])
    with Image.open(out) as im:
        assert im.size == (32, 24)  # height 48 * 32 / 64 = 24, even
        assert im.n_frames == 5
        assert im.info.get("loop") == 0 and im.info.get("duration") == 200


def test_unreadable_input_names_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(VisError, match="broken.mp4"):
        sh.main(["-i", str(bad), "-o", str(tmp_path / "x.mp4"), "--fraction", "0.5"])
    with pytest.raises(VisError, match="missing.mp4: no such file"):
        sh.main(["-i", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "x.gif")])
