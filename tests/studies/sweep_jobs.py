"""Job functions for tests/test_sweep.py that misbehave on purpose; spawned workers import them from here."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from interp.studies import jobs


def die_after_first_checkpoint(cfg_dict: dict, run_dir: str, device: str) -> str:
    """The first time for a run: train until its first checkpoint is written, then the worker is killed
    (SIGKILL, as by the OOM killer). Every later time: the real job."""
    marker = Path(run_dir).parent / f".{Path(run_dir).name}.killed"
    if marker.exists():
        return jobs.train_and_probe(cfg_dict, run_dir, device)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    import interp.training.trainer as trainer

    real = trainer.save_checkpoint

    def save_then_die(*args, **kw):
        real(*args, **kw)
        os.kill(os.getpid(), signal.SIGKILL)

    trainer.save_checkpoint = save_then_die
    return jobs.train_and_probe(cfg_dict, run_dir, device)


def always_die(*args) -> str:
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


def square(x: int) -> str:
    return str(x * x)
