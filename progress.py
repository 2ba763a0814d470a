"""Progress for every stage a person waits on (training, inference, dataset generation, evaluation, overlay,
export): one tqdm bar a stage on a terminal; elsewhere (CI logs, `make demo > log`) a plain line every few
percent with the count, the rate, the elapsed time and the ETA. TensorFlow-free.

    with Progress(total=340, desc="epoch 1/4", unit="step", scale=8, scale_unit="img") as bar:
        for ...:
            bar.update(1, loss=f"{loss:.3f}")
"""
from __future__ import annotations

import datetime
import math
import sys
import time


def format_seconds(seconds: float) -> str:
    """3725 -> '1:02:05', 65 -> '1:05'; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def clock_after(seconds: float, now: float | None = None) -> str:
    """Wall-clock time (HH:MM, local) `seconds` from `now`."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    return datetime.datetime.fromtimestamp((time.time() if now is None else now) + seconds).strftime("%H:%M")


class Progress:
    """One stage's progress: a tqdm bar when `file` is a terminal, else a line every `every_pct` percent.

    Args:
        total: units of work in the stage (steps, frames, videos); 0 or None: unknown, lines every `every_n`.
        desc: the stage's name, the start of every line.
        unit: what one unit is ("step", "frame").
        scale: units of `scale_unit` one unit stands for (8 images a step): the rate is shown in those as well.
        scale_unit: e.g. "img".
        every_pct: percent of `total` between two lines when not on a terminal.
        every_n: units between two lines when `total` is unknown.
        file: where to write (default sys.stderr).
        force_lines: never draw a bar (tests, logs).
        lines: False: no lines off a terminal (the caller logs its own, e.g. train.py's every log_every steps).
        clock: a function returning seconds (time.monotonic), replaceable in tests.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", scale: float = 1.0, scale_unit: str = "",
                 every_pct: float = 5.0, every_n: int = 50, file=None, force_lines: bool = False,
                 lines: bool = True, initial: int = 0, clock=time.monotonic):
        self.total = int(total) if total else 0
        self.desc, self.unit, self.scale, self.scale_unit = desc, unit, float(scale), scale_unit
        self.every_pct, self.every_n = float(every_pct), max(1, int(every_n))
        self.file = file if file is not None else sys.stderr
        self.clock, self.lines = clock, bool(lines)
        self.n = self.start_n = int(initial)
        self.t0 = clock()
        self.postfix = ""
        self.closed = False
        self._printed_at = self.n
        self._next_line = self._line_threshold(self.n)
        self.bar = None
        if not force_lines and _isatty(self.file):
            from tqdm import tqdm
            self.bar = tqdm(total=self.total or None, desc=desc, unit=unit, initial=self.n, file=self.file,
                            dynamic_ncols=True, leave=True, smoothing=0.1)

    def _line_threshold(self, n: int) -> int:
        if self.total:
            step = max(1, int(math.ceil(self.total * self.every_pct / 100.0)))
            return min(self.total, (n // step + 1) * step)
        return (n // self.every_n + 1) * self.every_n

    @property
    def elapsed(self) -> float:
        return self.clock() - self.t0

    @property
    def rate(self) -> float:
        """Units a second since this bar started (units of `initial` excluded)."""
        done = self.n - self.start_n
        return done / self.elapsed if done > 0 and self.elapsed > 0 else float("nan")

    @property
    def eta(self) -> float:
        """Seconds left at the rate so far (nan while unknown)."""
        if not self.total or not self.rate > 0:
            return float("nan")
        return max(0, self.total - self.n) / self.rate

    def update(self, n: int = 1, **postfix):
        """`n` more units done; keyword arguments are shown after the rate (loss=0.31)."""
        self.n += int(n)
        if postfix:
            self.postfix = " ".join(f"{k}={v}" for k, v in postfix.items())
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix_str(self._postfix_with_scale(), refresh=False)
            self.bar.update(int(n))
        elif self.lines and self.n >= self._next_line:
            self._next_line = self._line_threshold(self.n)
            self.write_line()

    def set_total(self, total: int):
        """The total became known (or changed), e.g. once a time budget fixed the epoch's steps."""
        self.total = int(total) if total else 0
        self._next_line = self._line_threshold(self.n)
        if self.bar is not None:
            self.bar.total = self.total or None
            self.bar.refresh()

    def _postfix_with_scale(self) -> str:
        parts = []
        if self.scale_unit and self.rate > 0:
            parts.append(f"{self.rate * self.scale:.1f} {self.scale_unit}/s")
        if self.postfix:
            parts.append(self.postfix)
        return " ".join(parts)

    def line(self) -> str:
        """The status line: 'desc: 25% 85/340 step, 2.71 step/s (21.7 img/s), 0:31 elapsed, ETA 1:34 (17:52) ...'."""
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f"{100.0 * self.n / self.total:3.0f}% " if self.total else ""
        rate = self.rate
        text = f"{self.desc}: {pct}{count} {self.unit}"
        if rate > 0:
            text += f", {rate:.2f} {self.unit}/s"
            if self.scale_unit:
                text += f" ({rate * self.scale:.1f} {self.scale_unit}/s)"
        text += f", {format_seconds(self.elapsed)} elapsed"
        if self.total and self.n < self.total:
            text += f", ETA {format_seconds(self.eta)} ({clock_after(self.eta)})"
        if self.postfix:
            text += f", {self.postfix}"
        return text

    def write_line(self):
        self._printed_at = self.n
        print(self.line(), file=self.file, flush=True)

    def write(self, text: str):
        """Print a message without breaking the bar."""
        if self.bar is not None:
            self.bar.write(text, file=self.file)
        else:
            print(text, file=self.file, flush=True)

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.lines and self.n != self._printed_at:
            self.write_line()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def track(iterable, total: int | None = None, desc: str = "", unit: str = "it", **kwargs):
    """Iterate over `iterable` with a Progress (total from len() when it has one)."""
    if total is None:
        try:
            total = len(iterable)
        except TypeError:
            total = None
    with Progress(total, desc, unit, **kwargs) as bar:
        for item in iterable:
            yield item
            bar.update(1)


def _isatty(f) -> bool:
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError):
        return False
