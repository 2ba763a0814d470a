"""The training time budget (`train.py --budget-minutes M`): after the warm-up steps the measured step rate fixes
how many steps end the run within M minutes (validation included), and that total sets the learning-rate
schedule and the epochs. Each epoch end corrects the plan for the rate and the validation time seen so far, so a
machine that gets busier (or quieter) mid-run still ends on time. TensorFlow-free.
"""
from __future__ import annotations

import json
import math
import os
import time

from progress import clock_after, format_seconds


class TimeBudget:
    """Steps and epoch boundaries of a run that must end `minutes` after `start`.

    Args:
        minutes: wall-clock budget of the whole training command, from `start` to the last epoch's validation.
        epochs: epochs to split the steps into (each ends with validation and a checkpoint).
        batch: images a step (for the plan's img/s).
        start: time the command started (`clock()` units), so set-up and tracing count against the budget.
        probe_steps: steps timed before the plan is made (after `skip_steps` that include tracing).
        skip_steps: first steps left out of the rate (the traced first step and a few slow ones after it).
        reserve: share of the budget kept free for what the rate does not see (checkpoints, the final save).
        clock: seconds (time.time), replaceable in tests.
    """

    def __init__(self, minutes: float, epochs: int, batch: int, start: float, probe_steps: int = 20,
                 skip_steps: int = 3, reserve: float = 0.03, clock=time.time):
        if not minutes > 0:
            raise ValueError(f"--budget-minutes must be positive, got {minutes}")
        self.budget_s = 60.0 * float(minutes)
        self.epochs, self.batch, self.start = int(epochs), int(batch), float(start)
        self.probe_steps, self.skip_steps, self.reserve = int(probe_steps), int(skip_steps), float(reserve)
        self.clock = clock
        self.total = None              # planned steps of the run, once known
        self.epoch_ends = None         # cumulative step at the end of each epoch
        self.sec_per_step = None       # latest measured rate (seconds a step, training only)
        self.val_s = None              # latest measured seconds of one validation (epoch-end work)
        self.first_step = None
        self.from_epoch = 0            # the first epoch the plan covers (its validation still to come)
        self._marks = {}               # step -> clock() after it

    # -- measuring -------------------------------------------------------------------------------------------
    def step_done(self, step: int):
        """Call after every step with the global step count."""
        if self.first_step is None:
            self.first_step = step - 1
        self._marks[step] = self.clock()

    def wants_plan(self, step: int) -> bool:
        """True once the probe steps are timed and no plan exists yet."""
        return self.total is None and step - self.first_step >= self.skip_steps + self.probe_steps

    def measured_sec_per_step(self, since: int | None = None) -> float:
        """Seconds a step from the marks after step `since` (default: the first step timed) to the last one,
        leaving out the first `skip_steps` steps of this process (tracing)."""
        first = self.first_step + self.skip_steps
        a = max(first, since if since is not None else first)
        b = max(self._marks) if self._marks else a
        if a not in self._marks or b <= a:
            return float("nan")
        return (self._marks[b] - self._marks[a]) / (b - a)

    def epoch_sec_per_step(self, epoch_start: int) -> float:
        """Seconds a step in the epoch that began after step `epoch_start`: from the end of its first step (so the
        validation before it and a retrace at its start are left out) to the last step."""
        return self.measured_sec_per_step(since=epoch_start + 1)

    # -- planning --------------------------------------------------------------------------------------------
    def spent_s(self) -> float:
        return self.clock() - self.start

    def plan(self, step: int, val_s_guess: float, epoch: int = 0, epoch_start: int = 0,
             sec_per_step: float | None = None, spent_s: float | None = None) -> int:
        """Fix the total from the probe's rate, during epoch `epoch` (0-based) that began at `epoch_start`;
        `val_s_guess`: seconds one validation is expected to take. Several workers pass the slowest worker's
        `sec_per_step` and `spent_s` so that all of them plan the same steps."""
        self.sec_per_step = self.measured_sec_per_step() if sec_per_step is None else float(sec_per_step)
        self.val_s = float(val_s_guess)
        return self._fit(step, epoch, epoch_start, spent_s)

    def replan(self, step: int, epoch: int, sec_per_step: float, val_s: float, spent_s: float | None = None) -> int:
        """After epoch `epoch` (0-based) ended at `step`: refit the remaining epochs to the time left, at the rate
        and validation time of that epoch."""
        if math.isfinite(sec_per_step) and sec_per_step > 0:
            self.sec_per_step = float(sec_per_step)
        self.val_s = float(val_s)
        return self._fit(step, epoch + 1, step, spent_s)

    def _fit(self, step: int, epoch: int, epoch_start: int, spent_s: float | None = None) -> int:
        """Total steps such that epochs `epoch`.. (their steps and one validation each) end within the budget,
        shared evenly from `epoch_start` on; every epoch keeps one step at least."""
        n_epochs = self.epochs - epoch
        self.from_epoch = epoch
        if n_epochs <= 0:
            self.total = step
            return self.total
        spent = self.spent_s() if spent_s is None else float(spent_s)
        for_steps = self.budget_s * (1.0 - self.reserve) - spent - n_epochs * self.val_s
        more = int(for_steps // self.sec_per_step) if self.sec_per_step and self.sec_per_step > 0 else 0
        total = step + max(more, 0)
        span = max(0, total - epoch_start)
        ends = [epoch_start + round(span * (k + 1) / n_epochs) for k in range(n_epochs)]
        ends[0] = max(ends[0], step, epoch_start + 1)
        for k in range(1, n_epochs):
            ends[k] = max(ends[k], ends[k - 1] + 1)
        self.total = ends[-1]
        self.epoch_ends = (self.epoch_ends or [])[:epoch] + ends
        return self.total

    def epoch_end(self, epoch: int) -> int | None:
        """Global step at which epoch `epoch` (0-based) ends; None before the plan."""
        return None if self.epoch_ends is None else self.epoch_ends[epoch]

    def describe(self, step: int) -> str:
        """'N steps of B images, ~M min at R img/s, done at HH:MM' for the steps left after `step`."""
        left = self.total - step
        epochs_left = self.epochs - self.from_epoch
        secs = left * self.sec_per_step + epochs_left * self.val_s
        rate = self.batch / self.sec_per_step
        return (f"{self.total} steps of {self.batch} images ({left} to go, {epochs_left} epoch(s) with "
                f"validation), ~{secs / 60:.1f} min at {rate:.1f} img/s, done at {clock_after(secs)} "
                f"(budget {self.budget_s / 60:.1f} min, {format_seconds(self.clock() - self.start)} spent)")

    # -- the run directory -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"budget_minutes": self.budget_s / 60.0, "total_steps": self.total, "epoch_ends": self.epoch_ends,
                "sec_per_step": self.sec_per_step, "images_per_s": self.batch / self.sec_per_step
                if self.sec_per_step else None, "val_s": self.val_s, "from_epoch": self.from_epoch}

    def load(self, path: str) -> bool:
        """Take the plan saved by an interrupted run (a resumed run keeps its schedule); False if none."""
        if not os.path.exists(path):
            return False
        with open(path) as f:
            d = json.load(f)
        self.total, self.epoch_ends = int(d["total_steps"]), [int(e) for e in d["epoch_ends"]]
        self.from_epoch = int(d.get("from_epoch", 0))
        self.sec_per_step, self.val_s = d.get("sec_per_step"), d.get("val_s")
        return True


def machine() -> dict:
    """The CPU a rate was measured on: model, cores, its vector ISA (AVX2 / AVX-512 / AMX) and the oneDNN cap
    (ONEDNN_MAX_CPU_ISA) in force, if any."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    if model is None:
        import platform
        model = platform.processor() or platform.machine() or "unknown CPU"
    isa = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AMX", "amx_tile")) if flag in flags]
    return {"cpu": model, "cores": os.cpu_count(), "isa": isa,
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or None}


def describe_machine(m: dict) -> str:
    """'Intel(R) Xeon(R) Processor, 2 cores, AVX2 AVX-512 AMX (oneDNN capped at AVX2)'."""
    text = f"{m['cpu']}, {m['cores']} cores, {' '.join(m['isa']) or 'no AVX2'}"
    if m.get("onednn_max_cpu_isa"):
        text += f" (oneDNN capped at {m['onednn_max_cpu_isa']})"
    return text
