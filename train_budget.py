"""A --budget-minutes time budget (`budget.py`) wired into a training run of `train.py`: the plan made after the
warm-up steps and at each epoch end, agreed on by every worker, the epoch bounds it sets and the ETA it gives.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import TYPE_CHECKING

import tensorflow as tf

from budget import TimeBudget
from config import atomic_write_text
from progress import clock_after, format_seconds
from train_errors import TrainError

if TYPE_CHECKING:
    from train import Run

BUDGET_FILE = "budget.json"   # the plan of a --budget-minutes run, kept by --resume


def make_budget(args, cfg, schedule, t_start: float, step: int):
    """The TimeBudget of a --budget-minutes run (None without one); a resumed run keeps its saved plan."""
    if not args.budget_minutes:
        return None
    try:
        budget = TimeBudget(args.budget_minutes, cfg.train.epochs, cfg.train.batch_size, start=t_start)
    except ValueError as e:
        raise TrainError(str(e)) from None
    if args.resume and budget.load(os.path.join(args.run_dir, BUDGET_FILE)):
        schedule.set_total(budget.total)
        print(f"--resume: keeping the interrupted run's plan, {budget.describe(step)}")
    return budget


def epoch_bounds(run: Run, epoch: int):
    """(first global step, end step) of `epoch`; under a budget the end is None until the plan is made."""
    if run.budget is None:
        return epoch * run.steps_per_epoch, (epoch + 1) * run.steps_per_epoch
    if run.budget.epoch_ends is None:
        return 0, None
    return (run.budget.epoch_ends[epoch - 1] if epoch else 0), run.budget.epoch_ends[epoch]


def agree_max(strategy, values):
    """Element-wise maximum of `values` over every replica (one all-gather): all workers plan the same steps."""
    got = strategy.gather(strategy.run(lambda: tf.constant([values], tf.float64)), axis=0).numpy()
    return [float(v) for v in got.max(axis=0)]


def set_plan(run: Run, total: int, text: str, log=print):
    """A budget's new total: the LR schedule, the run's plan file and a line saying it."""
    run.total_steps = total
    run.schedule.set_total(total)
    log(f"{text}: {run.budget.describe(int(run.step_var.numpy()))}")
    if run.chief:
        atomic_write_text(os.path.join(run.out_dir, BUDGET_FILE), json.dumps(run.budget.to_dict(), indent=2))


def plan_budget(run: Run, epoch: int, start: int, step: int, log=print):
    """After the warm-up steps: the total that fits the budget, from their rate. Each validation is guessed at a
    training step's time an image a frame (high for a forward pass; the first validation corrects it)."""
    rate = run.budget.measured_sec_per_step()
    n_val = len(run.validator.source[0]) if run.validator is not None else 0
    guess = n_val * rate / run.global_batch + 5.0 if n_val else 0.0
    rate, spent = agree_max(run.strategy, [rate, time.time() - run.t_start])
    set_plan(run, run.budget.plan(step, guess, epoch, start, sec_per_step=rate, spent_s=spent), "plan", log)


def eta_text(bar, step: int, end, total, epochs_left: int, val_s: float, sec_per_step: float | None = None) -> str:
    """', ETA epoch 0:42, run 11:05 (18:02)' at `sec_per_step` (a budget's measured rate, which leaves the traced
    first steps out) or else this epoch's rate so far, the run's validations included."""
    rate = 1.0 / sec_per_step if sec_per_step and math.isfinite(sec_per_step) else bar.rate
    if end is None or not rate > 0:
        return ""
    text = f", ETA epoch {format_seconds((end - step) / rate)}"
    if total:
        left = (total - step) / rate + epochs_left * (val_s or 0.0)
        text += f", run {format_seconds(left)} ({clock_after(left)})"
    return text
