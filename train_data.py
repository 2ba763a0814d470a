"""The training data stream of `train.py`: the distributed iterator over the training batches, resumed at the
saved step, and the loader's errors turned into one-line TrainErrors.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import tensorflow as tf

import loader_ytvos
from train_errors import TrainError

if TYPE_CHECKING:
    from train import Run


def next_batch(iterator, locate):
    """next(iterator), where the loader's error raised inside the pipeline (a missing, truncated or mis-sized
    frame, bad run lengths) becomes a TrainError with its message, and a frame TensorFlow cannot decode (its
    header passed the loader's checks, so the error names no file) one naming it: `locate()` decodes every frame
    to find it."""
    try:
        return next(iterator)
    except tf.errors.InvalidArgumentError as e:
        loader_error = re.search(r"\b(FrameError|AnnotationError): ([^\n]+)", e.message)
        if loader_error:
            hint = ("; data.skip_bad_frames=true skips such frames (reported)"
                    if loader_error.group(1) == "FrameError" and "data.skip_bad_frames" not in e.message else "")
            raise TrainError(loader_error.group(2) + hint) from None
        print(f"the input pipeline failed ({e.message.splitlines()[0][:160]}); decoding every frame to find "
              f"the bad one ...", flush=True)
        bad = locate()
        if not bad:
            raise
        raise TrainError(f"{len(bad)} frame(s) cannot be decoded although their headers are intact: "
                         + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
                         + ". data.skip_bad_frames cannot skip these: remove or re-encode the files") from None


def resume_position(step: int, batches_per_pass: int):
    """(loader pass, batches to skip in it) after `step` global batches: each pass of the training dataset gives
    `batches_per_pass` = frames // global batch batches (the remainder is dropped), so a resumed run sees the
    batches the uninterrupted run would have seen next (with data.skip_bad_frames, skipped frames shift it)."""
    if batches_per_pass < 1:
        return 0, 0
    return step // batches_per_pass, step % batches_per_pass


def data_stream(run: Run, ann_path: str, n_frames: int):
    """The distributed iterator over the training batches, continuing where the saved step left the data: the
    loader pass and the batch within it."""
    gb = run.global_batch
    data_epoch, data_skip = resume_position(int(run.step_var.numpy()), n_frames // gb)
    ds = loader_ytvos.build_dataset(run.cfg, ann_path, run.image_root, video_ids=run.train_ids, training=True,
                                    first_epoch=data_epoch, skip_frames=data_skip * gb)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.repeat().with_options(options)
    if data_epoch or data_skip:
        print(f"data stream resumed at pass {data_epoch + 1}, batch {data_skip + 1} of {n_frames // gb}")
    return iter(run.strategy.experimental_distribute_dataset(ds))
