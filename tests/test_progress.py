"""progress.py: the lines written when output is not a terminal, their rate and ETA on a fake clock."""
import io

import progress


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_lines_every_five_percent_with_rate_and_eta():
    clock, out = FakeClock(), io.StringIO()
    with progress.Progress(200, "epoch 1/2", unit="step", scale=8, scale_unit="img", file=out, clock=clock) as bar:
        for i in range(200):
            clock.t += 0.5                       # 2 steps a second, 16 images a second
            bar.update(1, loss=f"{1.0 / (i + 1):.3f}")
            if i + 1 == 50:
                assert bar.eta == 75.0           # 150 steps left at 2 steps/s
    lines = out.getvalue().splitlines()
    assert len(lines) == 20                      # every 10 steps (5 % of 200), the last one at 200/200 once
    assert lines[4].startswith("epoch 1/2:  25% 50/200 step, 2.00 step/s (16.0 img/s), 0:25 elapsed, ETA 1:15 (")
    assert lines[4].endswith("loss=0.020")
    assert lines[-1].startswith("epoch 1/2: 100% 200/200 step") and "ETA" not in lines[-1]


def test_close_prints_the_final_count_once():
    clock, out = FakeClock(), io.StringIO()
    bar = progress.Progress(1000, "frames", unit="frame", file=out, clock=clock)
    clock.t = 3.0
    bar.update(7)                                # below the first 5 % threshold: no line yet
    assert out.getvalue() == ""
    bar.close()
    bar.close()
    assert out.getvalue().splitlines() == ["frames:   1% 7/1000 frame, 2.33 frame/s, 0:03 elapsed, ETA 7:06 (" +
                                           progress.clock_after(993 / (7 / 3.0)) + ")"]


def test_unknown_total_and_resumed_start():
    clock, out = FakeClock(), io.StringIO()
    bar = progress.Progress(None, "videos", unit="video", every_n=4, file=out, clock=clock)
    for _ in range(9):
        clock.t += 1.0
        bar.update()
    assert [ln.split(",")[0] for ln in out.getvalue().splitlines()] == ["videos: 4 video", "videos: 8 video"]
    resumed = progress.Progress(100, "run", unit="step", initial=60, file=io.StringIO(), clock=clock)
    clock.t += 10.0
    resumed.update(10)
    assert resumed.rate == 1.0 and resumed.eta == 30.0   # the 60 steps before the resume are not in the rate


def test_format_seconds():
    assert progress.format_seconds(65) == "1:05"
    assert progress.format_seconds(3725) == "1:02:05"
    assert progress.format_seconds(float("nan")) == "?"


def test_track_counts_items():
    out = io.StringIO()
    assert list(progress.track(range(3), desc="x", file=out)) == [0, 1, 2]
    assert out.getvalue().splitlines()[-1].startswith("x: 100% 3/3 it")


def test_total_set_later_and_lines_off():
    clock, out = FakeClock(), io.StringIO()
    bar = progress.Progress(None, "epoch 1/4", unit="step", every_n=1000, file=out, clock=clock)
    clock.t = 10.0
    bar.update(20)
    bar.set_total(100)                           # a budget fixed the epoch at 100 steps: lines every 5 from now
    clock.t = 12.5
    bar.update(5)
    assert out.getvalue().splitlines()[0].startswith("epoch 1/4:  25% 25/100 step, 2.00 step/s, 0:12 elapsed, "
                                                     "ETA 0:38")
    silent = progress.Progress(10, "x", file=out, lines=False, clock=clock)
    silent.update(10)
    silent.close()
    assert len(out.getvalue().splitlines()) == 1
