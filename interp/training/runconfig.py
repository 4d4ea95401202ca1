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

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from interp.config import check_folder_name, load, load_config, to_dict
from interp.hmm import HMM, get_process, list_processes
from interp.hmm.processes import has_process, import_process_module
from interp.io import fingerprint
from interp.models.configs import ModelConfig


@dataclass(frozen=True)
class ProcessConfig:
    """A registered process and its parameters (see ``interp processes``), and the user's module that
    registers it, if it is not built in (``interp.hmm.processes.import_process_module`` finds it)."""

    name: str = "mess3"
    params: dict = field(default_factory=dict)
    module: str | None = None  # e.g. "my_processes": imported before the name is looked up

    def __post_init__(self):
        self._import()
        if not has_process(self.name):
            raise ValueError(f"name: unknown process {self.name!r}; known: {', '.join(list_processes())}"
                             + ("" if self.module else " (set module to the module that registers it)"))

    def _import(self) -> None:
        if self.module is not None:
            try:
                import_process_module(self.module)
            except ValueError as err:
                raise ValueError(f"module: {err}") from None

    def build(self) -> HMM:
        self._import()  # a worker process rebuilding the config from its dict imports the module here too
        return get_process(self.name, **self.params)

    def checked(self) -> HMM:
        """The process, built once per (name, params, module) and shared: for checks of a config (sizes,
        kinds), never to be modified; :meth:`build` gives a fresh one to use."""
        key = (self.name, fingerprint(self.params), self.module)
        if key not in _CHECKED:
            if len(_CHECKED) >= 16:  # a few processes per config: keep the memory bounded
                _CHECKED.clear()
            _CHECKED[key] = self.build()
        return _CHECKED[key]

    def to_dict(self) -> dict:
        """Without ``module`` when it is None: a config that has none keeps the hash it had before the key
        existed."""
        out = to_dict(self)
        if self.module is None:
            del out["module"]
        return out


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
        for key in ("lr", "weight_decay", "momentum", "min_lr_ratio", "grad_clip"):
            if not math.isfinite(getattr(self, key)):  # the loader refuses these too; here for Python callers
                raise ValueError(f"{key} must be a finite number, got {getattr(self, key)!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        for key in ("weight_decay", "grad_clip", "warmup_steps"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.momentum < 1:  # 1 or more never forgets a gradient: SGD diverges
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")


# ----------------------------------------------------------------------------- memory
MC_SEQUENCES = 20_000  # the optimal loss's Monte Carlo sequences (interp.hmm.optimal_loss)
EVAL_CHUNK = 4096  # sequences per evaluation forward pass (the trainer's _EVAL_BATCH)


def _model_size(model: ModelConfig, length: int, n_tokens: int, n_states: int,
                blocked: tuple[int, int, int, int] | None = None) -> tuple[float, float, int, float]:
    """(parameters, activations per layer per sequence, layers, other activations per sequence), in numbers.
    ``blocked``: the data's (groups, states per group, tokens per group, successors) for block-sparse data."""
    L, V = length, n_tokens
    logits = 3.0 * L * V  # logits, their log-softmax and its gradient
    if model.family == "blocked_belief_net" and blocked is not None:
        G, k_data, m, d = blocked
        k = model.group_size or k_data
        if model.parameterisation == "neural":
            h = model.hidden
            params = G * k * h + V * h + h + 3.0 * (2 * h * h + 4 * h) + G * d
        else:
            params = G * k + G * d + G * d * k * k + G * k * m
        # a step keeps the belief on one group (k) and the mass over (move, state) (d k), with their gradients
        return params, 6.0 * L * (k + d * k), 1, logits
    if model.family == "transformer":
        L += model.bos
        hd = model.n_heads * model.d_head
        mlp = model.mlp_width
        params = (model.n_layers * (4.0 * model.d_model * hd + 2.0 * model.d_model * mlp)
                  + 2.0 * (V + 1) * model.d_model + L * model.d_model)
        # attention scores and pattern (heads x L x L), q, k, v, z, the residual stream and the MLP's pre and post
        layer = 2.0 * model.n_heads * L * L + L * (4.0 * model.d_model + 4.0 * hd + 2.0 * mlp)
        return params, layer, model.n_layers, 2.0 * L * model.d_model + 3.0 * L * V
    if model.family == "fixed_attention":
        params = 1.0 * L * L + 2.0 * model.d_model * model.d_head + 2.0 * V * model.d_model
        return params, L * L + L * (3.0 * model.d_model + 2.0 * model.d_head), 1, 2.0 * L * model.d_model + logits
    if model.family == "ssm":
        width = model.d_state * (2 if model.transition == "complex" else 1)
        a = model.d_state ** 2 if model.transition == "dense" else model.d_state
        params = model.n_layers * (a + 3.0 * model.d_model * width) + 2.0 * V * model.d_model
        return params, L * (4.0 * model.d_model + 2.0 * width), model.n_layers, 2.0 * L * model.d_model + logits
    s = model.n_states if model.family == "belief_net" else n_states  # blocked: the data's own states
    return s * s + s * V + s, 6.0 * L * s, 1, logits


_CHECKED: dict[tuple, HMM] = {}  # ProcessConfig.checked's processes, by (name, params' fingerprint, module)


def blocked_shape(hmm) -> tuple[int, int, int, int] | None:
    """(groups, states per group, tokens per group, successors) of block-sparse data, else None."""
    from interp.hmm.blocked import BlockedHMM

    if not isinstance(hmm, BlockedHMM):
        return None
    return hmm.n_groups, hmm.group_size, hmm.tokens_per_group, int(hmm.succ.shape[1])


def memory_estimate(model: ModelConfig, train: TrainConfig, n_tokens: int, n_states: int, *,
                    monte_carlo: bool = True, blocked: tuple[int, int, int, int] | None = None) -> dict[str, float]:
    """Bytes of a run's dominant allocations, from its config and the data's sizes alone: ``step`` (one training
    step: weights, gradients and optimiser state, the batch's activations and their gradients), ``eval`` (the
    held-out set, one evaluation pass and, with ``monte_carlo``, the optimal loss's Monte Carlo beliefs, which
    block-sparse data does without) and ``data`` (the fixed training set; 0 for fresh samples). The largest
    terms only, so it errs low: it refuses only what cannot fit."""
    item = 8 if train.dtype == "float64" else 4
    params, layer, layers, other = _model_size(model, train.context, n_tokens, n_states, blocked)
    per_sequence = layer * layers + other
    step = 4 * item * params + 2 * item * train.batch_size * per_sequence + 8 * train.batch_size * train.context
    held = train.eval_sequences * train.context * 16  # int64 tokens and float64 log-normalisers
    mc = MC_SEQUENCES * train.context * n_states * 16 if monte_carlo else 0  # float64 beliefs and entropies
    eval_ = 2 * item * params + held + item * min(train.eval_sequences, EVAL_CHUNK) * (layer + other) + mc
    data = 8 * train.dataset_size * train.context if train.data == "fixed" else 0
    return {"step": float(step), "eval": float(eval_), "data": float(data)}


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _largest_size_key(model: ModelConfig) -> str:
    sizes = {k: getattr(model, k) for k in ("n_layers", "n_heads", "d_model", "d_head", "d_state", "n_states")
             if hasattr(model, k)}
    return f"model.{max(sizes, key=sizes.get)}" if sizes else "process.params"


def check_memory(model: ModelConfig, train: TrainConfig, n_tokens: int, n_states: int, available: int | None, *,
                 monte_carlo: bool = True, blocked: tuple[int, int, int, int] | None = None) -> None:
    """Raise ValueError naming the key to lower when a training step, the held-out set or the fixed training set
    cannot fit in ``available`` bytes: the first of the keys whose smallest value would make it fit."""
    if available is None:
        return
    est = memory_estimate(model, train, n_tokens, n_states, monte_carlo=monte_carlo, blocked=blocked)

    def fits(part: str, **smaller) -> bool:
        est = memory_estimate(model, replace(train, **smaller), n_tokens, n_states, monte_carlo=monte_carlo,
                              blocked=blocked)
        return est[part] <= available

    for part, what, keys in (
            ("step", "per training step", (("batch_size", {"batch_size": 1}),
                                           ("context", {"batch_size": 1, "context": 2}))),
            ("eval", "for the held-out set", (("eval_sequences", {"eval_sequences": 1}),
                                              ("context", {"eval_sequences": 1, "context": 2}))),
            ("data", "for the fixed training set", (("dataset_size", {"dataset_size": 1}),
                                                    ("context", {"dataset_size": 1, "context": 2})))):
        if est[part] <= available:
            continue
        key = next((f"train.{k}" for k, smaller in keys if fits(part, **smaller)), None)
        value = getattr(train, key.removeprefix("train.")) if key else None
        if key is None:  # the model itself is too large
            key = _largest_size_key(model)
            value = getattr(model, key.removeprefix("model."), None) if key.startswith("model.") else None
        shown = f"{key} = {value}" if value is not None else key
        raise ValueError(f"{shown} needs ~{est[part]:.1e} bytes {what}; this machine has {available:.1e}")


@dataclass(frozen=True)
class RunConfig:
    """One training run: what it learns from, which model, how it is trained."""

    name: str  # the run's folder name; a TOML file's stem when left out
    process: ProcessConfig  # the data
    model: ModelConfig  # chosen by model.family (interp.models.configs)
    train: TrainConfig = TrainConfig()
    seed: int = 0  # the root of the model-init, training-data and held-out streams (see seeds())

    def __post_init__(self):
        check_folder_name(self.name)
        if self.seed < 0:  # SeedSequence refuses it, deep inside training
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        try:
            hmm = self.process.checked()
        except ValueError as err:
            raise ValueError(f"process.params: {err}") from err
        from interp.hmm.blocked import BlockedHMM

        if self.model.family == "blocked_belief_net" and not isinstance(hmm, BlockedHMM):
            raise ValueError(f"blocked_belief_net needs block-sparse data (process 'blocked'), not "
                             f"{self.process.name!r}")
        if (self.model.family == "blocked_belief_net" and self.model.init == "truth"
                and self.model.group_size not in (None, hmm.group_size)):
            raise ValueError(f"model.group_size = {self.model.group_size} with init = 'truth' needs the data's "
                             f"group size {hmm.group_size}")
        if getattr(self.model, "init", None) == "truth" and not isinstance(hmm, (HMM, BlockedHMM)):
            # a Belief Net starts from an emission form, which a generalised HMM's signed matrices lack
            raise ValueError(f"model.init: 'truth' needs an HMM's emission form; process {self.process.name!r} is "
                             "a generalised HMM (use 'random')")

    def check_fits(self, available: int | None = None) -> None:
        """Refuse, naming the key, a run whose training or evaluation cannot fit in ``available`` bytes (this
        machine's memory by default). Checked before training, not when a saved config is read back: a run
        trained on a larger machine can still be analysed here."""
        from interp.hmm.blocked import BlockedHMM

        hmm = self.process.checked()
        check_memory(self.model, self.train, hmm.n_tokens, hmm.n_states,
                     physical_memory() if available is None else available,
                     monte_carlo=not isinstance(hmm, BlockedHMM), blocked=blocked_shape(hmm))

    def to_dict(self) -> dict:
        out = {**to_dict(self), "process": self.process.to_dict()}
        if hasattr(self.model, "to_dict"):  # a family that leaves keys at their defaults out, to keep old hashes
            out["model"] = self.model.to_dict()
        return out

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
    """Read ``runs/<file>.toml`` to train it; errors name the file and the key."""
    cfg = load_config(path, RunConfig)
    check_fits(path, [cfg])
    return cfg


def check_fits(path: str | Path, runs) -> None:
    """Refuse, naming the config file, runs that cannot fit in this machine's memory (:meth:`RunConfig.check_fits`),
    when a TOML is loaded to train: a saved config read back for analysis is not checked."""
    from interp.config import ConfigError

    for run in runs:
        try:
            run.check_fits()
        except ValueError as err:
            raise ConfigError(f"{path}: {err}") from None
