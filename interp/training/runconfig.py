"""The config of a training run, read from TOML in ``runs/``.

    name = "mess3_tf1"          # optional: defaults to the file's stem; outputs go to runs/<name>/
    seed = 0

    [process]
    name = "mess3"
    params = { x = 0.15, a = 0.6 }

    [model]
    family = "transformer"      # transformer | fixed_attention | ssm | belief_net
    n_layers = 1                # the family's own fields (interp.models.configs)

    [train]
    steps = 3000                # and the rest of TrainConfig
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from interp.config import load, load_config, to_dict
from interp.hmm import HMM, get_process
from interp.io import fingerprint
from interp.models.configs import ModelConfig


@dataclass(frozen=True)
class ProcessConfig:
    """A registered process and its parameters (see ``interp processes``)."""

    name: str = "mess3"
    params: dict = field(default_factory=dict)

    def build(self) -> HMM:
        return get_process(self.name, **self.params)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, data and evaluation of one run."""

    context: int = 10  # tokens per training sequence
    steps: int = 3000
    batch_size: int = 512
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.0
    betas: tuple[float, ...] = (0.9, 0.999)  # AdamW
    momentum: float = 0.9  # SGD
    schedule: Literal["constant", "cosine", "linear"] = "constant"  # decay after warm-up
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # the decayed schedules end at lr * min_lr_ratio
    grad_clip: float = 0.0  # max global gradient norm; 0 disables clipping
    data: Literal["fresh", "fixed"] = "fresh"  # fresh samples every step, or epochs over a fixed set
    dataset_size: int = 100_000  # sequences in the fixed set
    eval_sequences: int = 20_000  # held-out sequences, sampled once from their own seed
    eval_every: int = 250
    checkpoint_every: int = 500
    dtype: Literal["float32", "float64"] = "float32"

    def __post_init__(self):
        for key in ("context", "steps", "batch_size", "dataset_size", "eval_sequences", "eval_every",
                    "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.context < 2:
            raise ValueError(f"context must be >= 2 (a model predicts tokens 1..context-1), got {self.context}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        for key in ("weight_decay", "grad_clip", "warmup_steps"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")


@dataclass(frozen=True)
class RunConfig:
    """One training run: what it learns from, which model, how it is trained."""

    name: str  # the run's folder name; a TOML file's stem when left out
    process: ProcessConfig  # the data
    model: ModelConfig  # chosen by model.family (interp.models.configs)
    train: TrainConfig = TrainConfig()
    seed: int = 0  # the root of the model-init, training-data and held-out streams (see seeds())

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a non-empty string without '/', got {self.name!r}")
        try:
            hmm = self.process.build()
        except ValueError as err:
            raise ValueError(f"process.params: {err}") from err
        from interp.hmm.blocked import BlockedHMM

        if self.model.family == "blocked_belief_net" and not isinstance(hmm, BlockedHMM):
            raise ValueError(f"blocked_belief_net needs block-sparse data (process 'blocked'), not "
                             f"{self.process.name!r}")

    def to_dict(self) -> dict:
        return to_dict(self)

    def hash(self) -> str:
        """Stable short hash of the whole config (what a cache or a later stage is tied to)."""
        return fingerprint(self.to_dict())

    def seeds(self) -> dict[str, int]:
        """Independent streams for model init, training data and the held-out set."""
        children = np.random.SeedSequence(self.seed).spawn(3)
        return {k: int(c.generate_state(1)[0]) for k, c in zip(("model", "data", "eval"), children)}

    def with_steps(self, steps: int) -> "RunConfig":
        return replace(self, train=replace(self.train, steps=steps))


def run_config_from_dict(data: dict, *, default_name: str | None = None) -> RunConfig:
    """Validate a plain dict (parsed TOML or a saved config.json) into a RunConfig."""
    return load(RunConfig, data, default_name=default_name)


def load_run_config(path: str | Path) -> RunConfig:
    """Read ``runs/<file>.toml``; errors name the file and the key."""
    return load_config(path, RunConfig)
