"""Distributed training loop of YOLOV4+1Tr (info/DESIGN.md#training).

A custom loop (`strategy.run` inside a `tf.function`) that is the same on one device, several GPUs and several
machines; decoupled SGDW, global-norm clipping after the cross-replica sum, ALB, checkpoints (`checkpoints.py`),
TensorBoard, and a per-epoch validation on held-out videos (`validation.py`).

    python train.py --preset tiny --data data/shapes/train --run-dir runs/demo
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf  # importing runs no op: make_strategy still comes before the first one

import backbone
import checkpoints
import config as config_lib  # noqa: I001 (before TensorFlow loads: config.py turns oneDNN on for every x86 CPU)
import loader_ytvos
import model as model_lib
import rundir
import utils
import validation
from budget import TimeBudget, machine
from config import atomic_write_text
from fileio import InputError
from freezing import backbone_layers, set_backbone_phase, trainable_vars
from progress import Progress
from train_budget import agree_max, epoch_bounds, eta_text, make_budget, plan_budget, set_plan
from train_data import data_stream, next_batch
from train_errors import Stopped, TrainError

# Test-only hook: the total loss becomes NaN at this global step (1-based), to exercise the NaN guard.
NAN_HOOK_ENV = "YOLOV4P1_TEST_NAN_AT_STEP"


# ---- distribution -------------------------------------------------------------------------------------------

def worker_tf_config(workers: str, index: int) -> dict:
    hosts = [h.strip() for h in workers.split(",") if h.strip()]
    if not hosts or not 0 <= index < len(hosts):
        raise TrainError(f"--worker-index {index} is not an index into --worker {workers!r}")
    return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}


def make_strategy(kind: str = "auto", workers: str | None = None, worker_index: int = 0):
    """Returns (strategy, worker_index). Must run before any other TensorFlow op (collectives need it so)."""
    if workers:
        os.environ["TF_CONFIG"] = json.dumps(worker_tf_config(workers, worker_index))
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    n_workers = len(tf_config.get("cluster", {}).get("worker", []))
    if kind == "auto":
        if n_workers > 1:
            kind = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "one_device"
    if kind == "multi_worker":
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        index = int(tf_config.get("task", {}).get("index", 0))
        return strategy, index
    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices), 0
    if kind == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0"), 0
    raise TrainError(f"unknown --strategy {kind!r}")


# ---- optimizer, learning rate ---------------------------------------------------------------------------

class DecoupledDecay:
    """Mixin for a Keras optimizer: each update first shrinks the decayed variables by v -= wd * v (SGDW: not
    scaled by the learning rate), and the ALB log-variances step at `alb_lr_mult` times the learning rate.

    Gradients reach `apply` already summed across replicas and clipped, so the base class's own cross-replica sum
    is switched off.
    """

    def __init__(self, decoupled_decay=0.0, alb_lr_mult=1.0, **kwargs):
        super().__init__(**kwargs)
        self.decoupled_decay = float(decoupled_decay)
        self.alb_lr_mult = float(alb_lr_mult)
        self._decay_flags, self._alb_flags = [], []
        self._shared = None       # step_scalars() while a step's updates are built

    def build(self, variables):
        super().build(variables)
        self._decay_flags = [is_decayed(v) for v in variables]
        self._alb_flags = [is_alb(v) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        if self.decoupled_decay and self._decay_flags[index]:
            self.assign_sub(variable, self.decoupled_decay * variable)
        if self.alb_lr_mult != 1.0 and self._alb_flags[index]:
            learning_rate = learning_rate * self.alb_lr_mult
        self.base_update(gradient, variable, learning_rate)

    def base_update(self, gradient, variable, learning_rate):
        """The Keras class's own update of one variable."""
        super().update_step(gradient, variable, learning_rate)

    def step_scalars(self):
        """What the update of every variable shares in one step (None: nothing)."""
        return None

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        # The shared scalars once a step, in the cross-replica context, instead of once per variable.
        self._shared = self.step_scalars()
        try:
            super()._distributed_tf_update_step(distribution, grads_and_vars, learning_rate)
        finally:
            self._shared = None

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)


class DecoupledSGD(DecoupledDecay, keras.optimizers.SGD):
    """SGD with momentum and decoupled weight decay: the original's optimizer."""


class DecoupledAdam(DecoupledDecay, keras.optimizers.Adam):
    """Adam with the same decoupled decay (train.optimizer=adamw).

    The update is Keras's Adam to the bit, with its step-dependent scalars (the bias corrections, 1 - beta, epsilon)
    computed once a step rather than once per variable: half the optimizer's ops, and a fifth fewer in the tiny
    preset's traced training step, which traces and compiles faster
    (info/RESULTS.md#2026-12-07-trace-and-compile-time)."""

    def step_scalars(self):
        if self.amsgrad:
            return None
        t = tf.cast(self.iterations + 1, tf.float32)
        beta_1, beta_2 = tf.constant(self.beta_1, tf.float32), tf.constant(self.beta_2, tf.float32)
        return {"root": tf.sqrt(1 - tf.pow(beta_2, t)), "denom": 1 - tf.pow(beta_1, t),
                "keep_1": tf.constant(1 - self.beta_1, tf.float32), "keep_2": tf.constant(1 - self.beta_2, tf.float32),
                "epsilon": tf.constant(self.epsilon, tf.float32)}

    def base_update(self, gradient, variable, learning_rate):
        k = self._shared
        if k is None or variable.dtype != tf.float32:
            return super().base_update(gradient, variable, learning_rate)
        lr = tf.cast(learning_rate, tf.float32)
        gradient = tf.cast(gradient, tf.float32)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        alpha = lr * k["root"] / k["denom"]          # Keras: lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
        self.assign_add(m, (gradient - m) * k["keep_1"])
        self.assign_add(v, (tf.square(gradient) - v) * k["keep_2"])
        self.assign_sub(variable, (m * alpha) / (tf.sqrt(v) + k["epsilon"]))


def make_optimizer(cfg, schedule):
    """SGD with momentum and decoupled weight decay; train.optimizer=adamw swaps SGD for Adam with the same decay
    and clipping: a departure for CPU runs of the tiny preset only (from scratch, the backbone's gradients are ~1e3
    times the heads', and a per-parameter step size lets the heads learn within minutes;
    info/DIFFERENCES.md#the-tiny-preset)."""
    kwargs = {"decoupled_decay": cfg.train.weight_decay, "alb_lr_mult": cfg.train.alb_lr_mult,
              "learning_rate": schedule}
    if cfg.train.optimizer == "adamw":
        return DecoupledAdam(**kwargs)
    return DecoupledSGD(momentum=cfg.train.momentum, **kwargs)


def is_alb(variable) -> bool:
    path = getattr(variable, "path", None) or variable.name
    return "alb_log_vars" in path


def is_decayed(variable) -> bool:
    """Weight decay applies to conv/dense kernels only: ALB log-variances, BN/GN scales and offsets and biases
    are left alone (the original decayed everything; info/DIFFERENCES.md)."""
    path = getattr(variable, "path", None) or variable.name
    return path.split("/")[-1].split(":")[0] == "kernel" and "alb" not in path


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up over `warmup` steps, then constant or cosine down to 0 at `total` steps."""

    def __init__(self, lr, warmup, total, cosine):
        self.lr, self.warmup, self.cosine = float(lr), int(warmup), bool(cosine)
        # a variable, so that a time budget sets the total after the warm-up without tracing the step again
        self.total = tf.Variable(float(total), trainable=False, dtype=tf.float32, name="lr_total_steps")

    def set_total(self, total: int):
        self.total.assign(float(total))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        lr = tf.constant(self.lr, tf.float32)
        if self.cosine:
            span = tf.maximum(1.0, self.total - self.warmup)
            done = tf.clip_by_value((step - self.warmup) / span, 0.0, 1.0)
            lr = lr * 0.5 * (1.0 + tf.cos(math.pi * done))
        if self.warmup > 0:
            lr = lr * tf.minimum(1.0, (step + 1.0) / self.warmup)
        return lr

    def get_config(self):
        return {"lr": self.lr, "warmup": self.warmup, "total": int(self.total.numpy()), "cosine": self.cosine}


def make_schedule(cfg, total_steps: int):
    return WarmupSchedule(cfg.train.lr, cfg.train.warmup_steps, total_steps, cfg.train.lr_schedule == "cosine")


def build_state(cfg, strategy, total_steps: int, weights: str | None = None, mask_positives: bool = True):
    """Model, optimizer (built over every variable that can ever train, so unfreezing needs no new slots), LR
    schedule and checkpoint, all created inside the strategy scope before the first step (Keras 3 wants it so).
    The model runs the mask head on the positive proposals only unless `mask_positives` is False."""
    with strategy.scope():
        previous = keras.config.dtype_policy()
        if cfg.model.mixed_precision:      # float16 compute, float32 variables, the heads' math float32
            keras.config.set_dtype_policy("mixed_float16")
        try:
            model = model_lib.build_model(cfg, "train", mask_positives=mask_positives)
        finally:
            keras.config.set_dtype_policy(previous)
        checkpoints.ensure_alb_built(model)
        if weights:
            backbone.load_darknet_weights(model, weights)
        for layer in backbone_layers(model):
            layer.trainable = True
        schedule = make_schedule(cfg, total_steps)
        optimizer = make_optimizer(cfg, schedule)
        if cfg.model.mixed_precision:
            # dynamic loss scaling: a step whose gradients overflow float16 is skipped and the scale halved
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(trainable_vars(model))
        ckpt, parts = checkpoints.make_checkpoint(model, optimizer)
    return model, optimizer, schedule, ckpt, parts


# ---- one training step ---------------------------------------------------------------------------------------

def log_keys(num_levels: int = 4):
    """The losses a step logs, besides the total: the level means, the mask, then each level's."""
    return [*utils.LEVEL_LOSSES, "mask"] + [f"{name}_{k + utils.FIRST_LEVEL}" for name in utils.LEVEL_LOSSES
                                            for k in range(num_levels)]


def make_train_step(model, optimizer, cfg, strategy, train_variables):
    """A tf.function running one distributed step on a distributed batch; returns the global loss dict and the
    gradient global norm. Rebuilt whenever the set of trainable variables changes."""
    n_rep = strategy.num_replicas_in_sync
    clip = float(cfg.train.clip_norm)
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)   # model.mixed_precision

    def replica_step(batch, nan_flag, stop_flag):
        ctx = tf.distribute.get_replica_context()

        def global_sum(x):
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)

        global_batch = global_sum(tf.cast(tf.shape(batch["image"])[0], tf.float32))
        with tf.GradientTape() as tape:
            outputs = model(model_lib.train_inputs(model, batch), training=True)
            # targets and losses in float32 whatever the compute dtype (info/DESIGN.md#m13-mixed-precision)
            outputs = tf.nest.map_structure(lambda t: tf.cast(t, tf.float32) if t.dtype.is_floating else t, outputs)
            losses = utils.compute_losses(cfg, outputs, batch, model.alb, global_sum, global_batch, n_rep)
            total = tf.where(nan_flag > 0, tf.constant(float("nan")), losses["total"])
            scaled = optimizer.scale_loss(total) if loss_scaled else total
        grads = tape.gradient(scaled, train_variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, train_variables)]
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        if loss_scaled:   # clip the true gradients; LossScaleOptimizer.apply divides by the scale again
            scale = tf.cast(optimizer.dynamic_scale, tf.float32)
            grads = [g / scale for g in grads]
        grads, norm = tf.clip_by_global_norm(grads, clip) if clip > 0 else (grads, tf.linalg.global_norm(grads))
        optimizer.apply([g * scale for g in grads] if loss_scaled else grads, train_variables)
        if loss_scaled:   # float16 gradients overflowed: the scaler skipped the step; it logs grad_norm 0
            norm = tf.where(tf.math.is_finite(norm), norm, 0.0)
        logs = {k: losses[k] for k in log_keys(cfg.num_levels)}
        logs["total"] = total
        logs["grad_norm"] = norm / n_rep     # summed below like the losses, which are per-replica shares
        if stop_flag is not None:            # summed below: above 0 when any worker was asked to stop
            logs["stop"] = stop_flag
        return logs

    # No tensor-dependent Python control flow below (tracing would fail if there were): autograph would only spend
    # seconds of each trace converting the ~50 functions the step calls.
    @tf.function(autograph=False)
    def step(dist_batch, nan_flag, stop_flag=None):
        per_replica = strategy.run(replica_step, args=(dist_batch, nan_flag, stop_flag))
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

    return step


# ---- the loop -----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """What `setup` builds and every epoch uses."""
    cfg: object
    strategy: object
    chief: bool
    out_dir: str
    ytvis: dict
    train_ids: list
    image_root: str
    model: object
    optimizer: object
    schedule: object
    manager: object
    step_var: object          # the global step, saved in every checkpoint
    epoch_var: object         # epochs completed
    iterator: object = None
    writer: object = None
    metrics: rundir.MetricsFile = None
    validator: validation.Validator = None
    steps_per_epoch: int = 1
    nan_at: int = 0
    stop: rundir.StopRequest = None
    stop_agreed: bool = False   # several workers: a stop the step's reduction shared with every worker
    total_steps: int = 0
    budget: TimeBudget = None   # --budget-minutes: the steps and epoch ends follow from the measured rate
    t_start: float = 0.0      # when the command started (a budget counts from here)
    train_seconds: float = 0.0   # spent in steps (validation left out), for the run's images/s
    images: int = 0           # images trained on by this process
    val_s: float = None       # seconds of the last validation

    @property
    def global_batch(self) -> int:
        return self.cfg.train.batch_size


@dataclasses.dataclass
class EpochStats:
    """Sums of the logged values over an epoch's steps, for its metrics row."""
    t0: float = dataclasses.field(default_factory=time.time)
    sums: dict = dataclasses.field(default_factory=dict)
    n: int = 0
    lr: float | None = None
    resumed_at: int | None = None    # the global step a resumed epoch started after

    def add(self, logs: dict):
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    seconds: float = None     # the epoch's steps, once they are done
    start: int = 0            # the global step the epoch began after

    def images_per_s(self, global_batch: int) -> float:
        return self.n * global_batch / max(1e-9, self.seconds if self.seconds is not None else time.time() - self.t0)


def setup(args) -> Run:
    """Strategy, config, run directory, model and optimizer (restored on --resume), data stream, summaries and
    validation, in the order that fixes the random draws of a seeded run."""
    t_start = time.time()
    strategy, worker_index = make_strategy(args.strategy, args.worker, args.worker_index)
    chief = worker_index == 0
    if chief:
        rundir.guard(args.run_dir, args.resume, args.overwrite)
    cfg = rundir.resolve_config(args)
    ann_path = args.ann or os.path.join(args.data, "instances.json")
    image_root = os.path.join(args.data, "JPEGImages")
    ytvis = loader_ytvos.load_annotations(ann_path)
    cfg = rundir.add_dataset_classes(cfg, ytvis, ann_path)
    train_ids, val_ids = loader_ytvos.split_videos(ytvis, cfg.train.val_fraction, cfg.train.split_seed)
    keras.utils.set_random_seed(cfg.train.seed)

    # Only worker 0 writes into the run directory; the others write to a private temporary folder.
    out_dir = args.run_dir if chief else tempfile.mkdtemp(prefix=f"worker{worker_index}_")
    n_rep, gb = strategy.num_replicas_in_sync, cfg.train.batch_size
    if gb % n_rep:
        raise TrainError(f"train.batch_size {gb} is not divisible by the {n_rep} replicas")
    n_frames = len(ytvis.samples(train_ids, cfg.data.frame_stride))
    steps_per_epoch = cfg.train.steps_per_epoch or max(1, n_frames // gb)
    total_steps = steps_per_epoch * cfg.train.epochs
    model, optimizer, schedule, ckpt, parts = build_state(cfg, strategy, total_steps, args.weights)
    if chief and args.overwrite and rundir.run_contents(out_dir):
        print(f"--overwrite: removed {', '.join(rundir.remove_run(out_dir))} from {out_dir}")
    manager = tf.train.CheckpointManager(ckpt, checkpoints.checkpoint_folder(out_dir),
                                         max_to_keep=cfg.train.keep_ckpts)
    if args.resume:      # before anything is written: a config that does not fit the checkpoints stops here
        checkpoints.resume_training(model, ckpt, parts, args.run_dir, strategy, worker_index)
    if chief:
        for name in rundir.remove_stale_temps(out_dir):
            print(f"removed {name}/ (a checkpoint save that was killed half-way)")
        config_lib.save_config(cfg, os.path.join(out_dir, "config.yaml"))
    run = Run(cfg, strategy, chief, out_dir, ytvis, train_ids, image_root, model, optimizer, schedule, manager,
              parts["step"], parts["epoch"], steps_per_epoch=steps_per_epoch,
              nan_at=int(os.environ.get(NAN_HOOK_ENV, "0") or 0), total_steps=total_steps, t_start=t_start)
    run.budget = make_budget(args, cfg, schedule, t_start, int(run.step_var.numpy()))
    run.iterator = data_stream(run, ann_path, n_frames)
    run.writer = tf.summary.create_file_writer(os.path.join(out_dir, "logs")) if chief else \
        tf.summary.create_noop_writer()
    run.metrics = rundir.MetricsFile(os.path.join(out_dir, "metrics.jsonl"), int(run.epoch_var.numpy()))
    if chief and val_ids:
        run.validator = validation.Validator(cfg, ytvis, val_ids, image_root,
                                             os.path.join(out_dir, "confusion_matrix.png"))
    if run.budget is None:
        plan = f"{total_steps} steps ({cfg.train.epochs} epochs x {steps_per_epoch})"
    else:
        plan = (f"within {args.budget_minutes:g} minutes ({cfg.train.epochs} epochs; the step count follows from the "
                f"rate of the first {run.budget.skip_steps + run.budget.probe_steps} steps)")
    print(f"training {plan} on {len(train_ids)} videos / {n_frames} frames, {len(val_ids)} held-out videos, "
          f"{n_rep} replica(s), global batch {gb}")
    return run


def enter_phase(run: Run, epoch: int, frozen: bool):
    """Freezes or unfreezes the backbone and traces the step for the new set of trainable variables."""
    set_backbone_phase(run.model, run.cfg, frozen)
    variables = trainable_vars(run.model)
    step_fn = make_train_step(run.model, run.optimizer, run.cfg, run.strategy, variables)
    print(f"epoch {epoch + 1}: backbone {'frozen' if frozen else 'unfrozen (' + run.cfg.train.unfreeze + ')'}, "
          f"{sum(int(np.prod(v.shape)) for v in variables):,} trainable parameters")
    return step_fn


def run_epoch(run: Run, epoch: int, step_fn) -> EpochStats:
    """The steps of one epoch (from the saved step on a resumed one), with periodic checkpoints."""
    cfg, stats, budget = run.cfg, EpochStats(), run.budget
    step = int(run.step_var.numpy())
    start, end = epoch_bounds(run, epoch)
    if step > start:
        stats.resumed_at = step
    bar = Progress(end - start if end else None, f"epoch {epoch + 1}/{cfg.train.epochs}", unit="step",
                   scale=run.global_batch, scale_unit="img", initial=step - start, lines=False, file=sys.stdout)
    while end is None or step < end:
        i = step - start
        stop_if_asked(run)
        batch = next_batch(run.iterator, lambda: loader_ytvos.find_undecodable_frames(
            run.ytvis, run.image_root, run.train_ids, cfg.data.frame_stride, log=print))
        logs = step_fn(batch, tf.constant(1.0 if step + 1 == run.nan_at else 0.0), stop_flag(run))
        logs = {k: float(v) for k, v in logs.items()}
        run.stop_agreed = logs.pop("stop", 0.0) > 0 or run.stop_agreed
        step += 1
        run.step_var.assign(step)
        if not all(math.isfinite(v) for v in logs.values()):
            bad = [k for k, v in logs.items() if not math.isfinite(v)]
            raise TrainError(f"non-finite loss at step {step} (epoch {epoch + 1}): {', '.join(bad)}; stopped "
                             f"without saving; last good checkpoint: {run.manager.latest_checkpoint or 'none'}")
        stats.add(logs)
        stats.lr = float(run.schedule(step - 1))
        write_step_summaries(run, logs, stats.lr, step)
        if budget is not None:
            budget.step_done(step)
            if budget.wants_plan(step):
                plan_budget(run, epoch, start, step, log=bar.write)
                end = budget.epoch_end(epoch)
                bar.set_total(end - start)
        bar.update(1, loss=f"{logs['total']:.3f}")
        if step % cfg.train.log_every == 0 or step == end:
            known = budget is None or budget.total is not None
            bar.write(f"epoch {epoch + 1}/{cfg.train.epochs} step {i + 1}/{end - start if end else '?'} (global "
                      f"{step}) loss {logs['total']:.4f} box {logs['box']:.4f} obj {logs['obj']:.4f} cls "
                      f"{logs['cls']:.4f} mask {logs['mask']:.4f} lr {stats.lr:.2e} "
                      f"{stats.images_per_s(run.global_batch):.1f} img/s"
                      + eta_text(bar, step, end, run.total_steps if known else None, cfg.train.epochs - epoch,
                                 run.val_s if run.val_s is not None else (budget.val_s if budget else 0.0),
                                 budget.sec_per_step if budget else None))
        if cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0 and step != end:
            run.manager.save(checkpoint_number=step)
    bar.close()
    stats.seconds = time.time() - stats.t0
    stats.start = start
    run.train_seconds += stats.seconds
    run.images += stats.n * run.global_batch
    return stats


def several_workers(run: Run) -> bool:
    return isinstance(run.strategy, tf.distribute.MultiWorkerMirroredStrategy)


def stop_flag(run: Run):
    """With several workers, the step's input saying this worker was asked to stop (None otherwise). A signal
    reaches one worker, or reaches them between different steps, but they must stop after the same step: one that
    stops alone leaves the others waiting in its collectives. So the flag travels in the step's reduction, and every
    worker stops after the step in which any of them asked (`stop_if_asked`)."""
    if not several_workers(run):
        return None
    return tf.constant(1.0 if run.stop is not None and run.stop.signum is not None else 0.0)


def stop_if_asked(run: Run):
    """After SIGINT/SIGTERM: a checkpoint at the current step (unless the last save was at it), then Stopped. With
    several workers, once the step has shared the request (`stop_flag`): the same step on every worker."""
    if run.stop is None or not (run.stop_agreed if several_workers(run) else run.stop.signum is not None):
        return
    step, signum = int(run.step_var.numpy()), run.stop.signum
    why = f"stopped by {run.stop.name}" if signum is not None else "stopped: another worker was asked to stop"
    path = run.manager.latest_checkpoint
    if step == 0:
        raise Stopped(f"{why} before the first step; nothing to save", signum)
    if not path or not path.endswith(f"ckpt-{step}"):
        path = run.manager.save(checkpoint_number=step)
    run.writer.flush()
    raise Stopped(f"{why} at step {step} ({int(run.epoch_var.numpy())} epoch(s) done); saved {path}; "
                  f"continue with --resume", signum)


def write_step_summaries(run: Run, logs: dict, lr: float, step: int):
    """TensorBoard: every loss, the gradient norm, the learning rate and every ALB log-variance."""
    names = utils.loss_term_names(run.cfg.train.alb, run.cfg.num_levels)
    with run.writer.as_default():
        for k, v in logs.items():
            tf.summary.scalar(f"loss/{k}" if k != "grad_norm" else "grad_norm", v, step=step)
        tf.summary.scalar("lr", lr, step=step)
        for name, s in zip(names, run.model.alb.alb_log_vars.numpy()):
            tf.summary.scalar(f"alb/{name}", s, step=step)


def end_epoch(run: Run, epoch: int, stats: EpochStats):
    """The epoch's checkpoint, validation and metrics row."""
    run.epoch_var.assign(epoch + 1)
    step = int(run.step_var.numpy())
    run.manager.save(checkpoint_number=step)
    row = {"epoch": epoch + 1, "step": step,
           **{(k if k == "grad_norm" else f"loss_{k}"): v / max(1, stats.n) for k, v in stats.sums.items()},
           "lr": stats.lr if stats.n else None, "images_per_s": stats.images_per_s(run.global_batch),
           "seconds": stats.seconds}
    if stats.resumed_at is not None:   # the means above are over the steps after the resume only
        row.update(resumed_at_step=stats.resumed_at, steps_averaged=stats.n)
    if run.validator is not None:
        t1 = time.time()
        val, png = run.validator(run.model)
        row.update(val)
        with run.writer.as_default():
            for k in ("val_frame_mAP", "val_frame_mAP50"):
                tf.summary.scalar(k, val[k], step=step)
            tf.summary.image("confusion_matrix", tf.image.decode_png(png, channels=3)[None], step=step)
        run.val_s = time.time() - t1
        print(f"epoch {epoch + 1} validation: frame mask mAP {val['val_frame_mAP']:.4f} "
              f"mAP@.5 {val['val_frame_mAP50']:.4f} on {val['val_frames']} frames ({run.val_s:.1f} s)")
    if run.budget is not None and epoch + 1 < run.cfg.train.epochs and stats.n:
        # the rate and validation time of this epoch refit the epochs left to the time left
        rate = run.budget.epoch_sec_per_step(stats.start)
        rate, val_s, spent = agree_max(run.strategy, [rate if math.isfinite(rate) else stats.seconds / stats.n,
                                                      run.val_s or 0.0, time.time() - run.t_start])
        set_plan(run, run.budget.replan(step, epoch, rate, val_s, spent_s=spent), f"plan after epoch {epoch + 1}")
        row["planned_steps"] = run.total_steps
    if run.chief:
        run.metrics.append(row)
    run.writer.flush()


def finish(run: Run, dump_path: str | None = None, trained: bool = True):
    """The end of a run: the weights dumped if asked, a worker's scratch folder removed, and (when this call trained)
    train_done.json; a resumed run that had nothing left to train keeps the record of the run that did."""
    if dump_path:
        checkpoints.dump_weights(run.model, dump_path)
    if not run.chief:
        shutil.rmtree(run.out_dir, ignore_errors=True)
        return
    if not trained:
        return
    atomic_write_text(os.path.join(run.out_dir, "train_done.json"),
                      json.dumps({"epochs": run.cfg.train.epochs, "step": int(run.step_var.numpy()),
                                  "checkpoint": run.manager.latest_checkpoint,
                                  "images_per_s": run.images / run.train_seconds if run.train_seconds else None,
                                  "train_seconds": time.time() - run.t_start,
                                  "budget_minutes": run.budget.budget_s / 60 if run.budget else None,
                                  "machine": machine()}, indent=2) + "\n")
    print(f"run directory: {run.out_dir} (config.yaml, checkpoints/, logs/, metrics.jsonl, confusion_matrix.png)")


def train(args):
    with rundir.StopRequest() as stop:
        run = setup(args)
        run.stop = stop
        if several_workers(run):        # the request reaches the others through the next step (`stop_flag`)
            stop.plan = "stopping after the next step, every worker with it, worker 0 saving a checkpoint"
        phase, step_fn = None, None
        first = int(run.epoch_var.numpy())
        if first >= run.cfg.train.epochs:
            print(f"--resume: the run finished its {run.cfg.train.epochs} epoch(s) at step "
                  f"{int(run.step_var.numpy())}; nothing left to train (a larger --epochs trains on)")
        for epoch in range(first, run.cfg.train.epochs):
            frozen = epoch < run.cfg.train.freeze_epochs
            if phase != frozen:       # a new set of trainable variables needs a new traced step
                step_fn, phase = enter_phase(run, epoch, frozen), frozen
            end_epoch(run, epoch, run_epoch(run, epoch, step_fn))
            stop_if_asked(run)
        finish(run, args.dump_weights, trained=first < run.cfg.train.epochs)
    return run.model


def build_parser():
    ap = argparse.ArgumentParser(description="Train YOLOV4+1Tr with a custom distributed loop.")
    config_lib.add_config_args(ap, default_preset="tiny")
    ap.add_argument("--data", default="data/shapes/train",
                    help="split root holding JPEGImages/ and instances.json")
    ap.add_argument("--ann", default=None, help="annotation JSON (default: <data>/instances.json)")
    ap.add_argument("--run-dir", default="runs/demo", help="where config, checkpoints, logs and metrics go")
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    again = ap.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of --run-dir")
    again.add_argument("--overwrite", action="store_true",
                       help="start over in a --run-dir that holds a run (removes its checkpoints, logs and metrics)")
    ap.add_argument("--strategy", default="auto", choices=["auto", "one_device", "mirrored", "multi_worker"])
    ap.add_argument("--worker", default=None, metavar="HOST:PORT,...",
                    help="all workers' addresses, for multi-worker training (builds TF_CONFIG)")
    ap.add_argument("--worker-index", type=int, default=0, help="this worker's index in --worker")
    ap.add_argument("--weights", default=None, help="Darknet weights (yolov4.conv.137 or yolov4.weights)")
    ap.add_argument("--budget-minutes", type=float, default=None, metavar="M",
                    help="end within M minutes, validation included: the step count follows from the rate measured "
                         "after the warm-up steps, and the LR schedule and epochs from that count")
    ap.add_argument("--dump-weights", default=None, metavar="NPZ",
                    help="also write this worker's final weights to NPZ (any worker; for checks)")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    new_run_dir = not os.path.exists(args.run_dir)
    try:
        train(args)
    except Stopped as e:
        print(f"train.py: {e}", file=sys.stderr)
        sys.exit(128 + e.signum if e.signum is not None else 1)
    except (TrainError, InputError, validation.ValidationError, rundir.RunDirError) as e:
        # InputError: config, annotations, frames, Darknet weights, checkpoints
        sys.exit(f"train.py: {e}")
    finally:
        if new_run_dir:              # made by the writability check, then nothing written: not left behind
            rundir.remove_if_empty(args.run_dir)


if __name__ == "__main__":
    main()
