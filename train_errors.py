"""The errors of a training run (`train.py`): one that stops it with a message, and a stop on SIGINT/SIGTERM
after a checkpoint.
"""
from __future__ import annotations


class TrainError(RuntimeError):
    """Training cannot go on: bad data, a non-finite loss, an unusable run directory."""


class Stopped(TrainError):
    """SIGINT or SIGTERM: the run saved a checkpoint at the current step and stops (exit code 128 + signal; 1 on a
    worker that stops because another one was signalled, `signum` None)."""

    def __init__(self, message: str, signum: int | None):
        super().__init__(message)
        self.signum = signum
