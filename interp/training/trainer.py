"""One trainer for every model family: next-token cross-entropy on HMM samples.

A run lives in ``runs/<name>/`` (file names: interp.rundir):
    config.json        the resolved RunConfig (and its hash)
    metrics.jsonl      one line per evaluation: step, tokens, seconds (training steps only, without
                       evaluation and checkpointing), losses against the optimum
    checkpoints/       the latest checkpoints (see interp.training.checkpoint); ``--resume`` continues from one
    model.safetensors, model.json, result.json   written when the run completes, then recorded in
                       manifest.json as the output ``train`` of this config's hash

Evaluation is on a held-out set sampled once from its own seed. Its exact optimal loss is computed
by the filter on the same sequences, so ``relative_loss = loss / optimal`` compares like with like.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from interp.hmm import HMM, forward_filter, optimal_loss, unigram_loss
from interp.hmm.blocked import BlockedHMM
from interp.hmm.sampling import sample
from interp.io import append_jsonl, read_json, read_jsonl, write_json, write_jsonl, write_tensors
from interp.models import build_model, next_token_logits
from interp.progress import watched
from interp.rundir import (CHECKPOINT_PREFIX, CONFIG, LOCK, MARKER, METRICS, MODEL, MODEL_META, RESULT, TRAINING,
                           Manifest, adopt, clear, read_config, training_inputs, write_config, writer)
from interp.training.checkpoint import (latest_intact_checkpoint, list_checkpoints, load_state, model_meta,
                                        save_checkpoint)
from interp.training.runconfig import RunConfig, TrainConfig, run_config_from_dict

_EVAL_BATCH = 4096


class RunExistsError(ValueError):
    pass


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for ``step`` (0-based): linear warm-up, then constant / cosine / linear decay."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(cfg.steps - cfg.warmup_steps, 1)
    frac = min((step - cfg.warmup_steps) / span, 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * frac)) if cfg.schedule == "cosine" else 1 - frac
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


def check_resumable_steps(old: TrainConfig, new: TrainConfig, checkpoints: list[Path]) -> None:
    """``--resume`` with another ``train.steps`` continues the run only where that changes nothing already done:
    the learning rate must not depend on the total (a constant schedule), and no checkpoint may lie past it."""
    if new.steps == old.steps:
        return
    if old.schedule != "constant":
        raise ValueError(f"--resume with --steps {new.steps}: the run was started with train.steps = {old.steps} and "
                         f"a {old.schedule} learning-rate schedule, which depends on the total, so it cannot continue "
                         f"the same schedule; resume with --steps {old.steps} or start again with --force")
    done = max((int(p.name.removeprefix(CHECKPOINT_PREFIX)) for p in checkpoints), default=0)
    if done > new.steps:
        raise ValueError(f"--resume with --steps {new.steps}: the run already has a checkpoint at step {done}")


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits at positions 0..L-2 against tokens 1..L-1."""
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, v), tokens[:, 1:].reshape(-1), reduction=reduction)


@dataclass(frozen=True)
class EvalSet:
    """Held-out tokens with the exact optimal loss on them."""

    tokens: torch.Tensor  # (n, L)
    optimal: float  # mean optimal loss over positions 1..L-1 of these very sequences
    optimal_per_position: list[float]  # (L-1,) same, per predicted position
    optimal_expected: float  # the expectation over all sequences (MSP / Monte Carlo)
    unigram: float

    @classmethod
    def build(cls, hmm: HMM, cfg: RunConfig, device) -> "EvalSet":
        dev_hmm = hmm.to(device)
        tokens = sample(dev_hmm, cfg.train.eval_sequences, cfg.train.context, seed=cfg.seeds()["eval"])
        if isinstance(hmm, BlockedHMM):  # too large for the mixed-state enumeration: the estimate is these sequences
            log_z = dev_hmm.filter(tokens, return_beliefs=False).log_normalizers[:, 1:]
            per_pos = (-log_z.mean(0)).cpu()
            return cls(tokens, float(per_pos.mean()), per_pos.tolist(), float(per_pos.mean()), hmm.unigram_loss())
        log_z = forward_filter(dev_hmm, tokens, return_beliefs=False).log_normalizers[:, 1:]
        per_pos = (-log_z.mean(0)).cpu()
        expected = optimal_loss(hmm, cfg.train.context).per_position[1:].mean()
        return cls(tokens, float(per_pos.mean()), per_pos.tolist(), float(expected), unigram_loss(hmm))


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: EvalSet) -> dict:
    was_training = model.training
    model.eval()
    total = torch.zeros(data.tokens.shape[1] - 1, dtype=torch.float64, device=data.tokens.device)
    for chunk in data.tokens.split(_EVAL_BATCH):
        losses = next_token_loss(next_token_logits(model, chunk), chunk, reduction="none").view(chunk.shape[0], -1)
        total += losses.double().sum(0)
    model.train(was_training)
    per_pos = (total / data.tokens.shape[0]).cpu()
    loss = float(per_pos.mean())
    return {
        "eval_loss": loss,
        "relative_loss": loss / data.optimal,
        "gap_fraction": (loss - data.optimal) / (data.unigram - data.optimal),
        "eval_loss_per_position": per_pos.tolist(),
    }


@dataclass(frozen=True)
class TrainResult:
    """A finished run's numbers, as ``result.json`` holds them (losses in nats/token; positions 1..L-1)."""

    name: str
    family: str
    config_hash: str  # of the run config it was trained from
    steps: int
    tokens: int  # training tokens seen
    train_seconds: float  # in training steps only (evaluation and checkpoints excluded)
    train_loss: float  # the last batch's
    eval_loss: float  # on the held-out set
    relative_loss: float  # eval_loss / optimal_loss
    gap_fraction: float  # (eval_loss - optimal) / (unigram - optimal)
    eval_loss_per_position: list[float]
    optimal_loss: float  # the exact Bayesian predictor's, on the same held-out set
    optimal_loss_per_position: list[float]
    optimal_loss_expected: float  # its expectation over the process
    unigram_loss: float

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainResult":
        return cls(**data)

    @classmethod
    def read(cls, run_dir: str | Path) -> "TrainResult":
        return cls.from_dict(read_json(Path(run_dir) / RESULT))


class Trainer:
    """Train ``cfg`` into ``run_dir``. ``run()`` returns its TrainResult (also written to result.json)."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, device: str | torch.device = "cpu",
                 resume: bool = False, force: bool = False, log: Callable[[str], None] | None = None):
        self.cfg, self.run_dir, self.device = cfg, Path(run_dir), torch.device(device)
        self.resume, self.force = resume, force
        self.log = log or (lambda msg: None)

    # ------------------------------------------------------------ run folder
    def _prepare_folder(self) -> Path | None:
        """Create or reuse the run folder; return the checkpoint to resume from, if any."""
        d = self.run_dir
        exists = any(p.name not in (LOCK, MARKER) for p in d.iterdir())
        if exists and self.force:
            clear(d)
            exists = False
        if exists and not self.resume:
            raise RunExistsError(f"run folder {d} already exists; pass --resume to continue it or --force to overwrite it")
        if exists:
            if (d / CONFIG).is_file():
                old = run_config_from_dict(read_config(d))
                if old.with_steps(1) != self.cfg.with_steps(1):
                    raise ValueError(f"--resume: the config differs from the one {d} was started with "
                                     "(only train.steps may change)")
                check_resumable_steps(old.train, self.cfg.train, list_checkpoints(d))
            Manifest(d).forget(TRAINING)  # the final files are about to be rewritten
        adopt(d, "run", CONFIG)
        write_config(d, self.cfg.to_dict())
        ckpts = list_checkpoints(d) if exists else []
        return latest_intact_checkpoint(d, self.log) if ckpts else None  # a corrupt newest one is skipped

    # ------------------------------------------------------------------ data
    def _batches(self, hmm: HMM, gen: torch.Generator, start_step: int):
        """Training batches from ``start_step`` on. Fresh data draws from ``gen`` (its state is
        checkpointed); a fixed set is shuffled per epoch by a seed derived from the epoch number."""
        t = self.cfg.train
        if t.data == "fresh":
            while True:
                yield sample(hmm, t.batch_size, t.context, generator=gen)
        data = sample(hmm, t.dataset_size, t.context, seed=self.cfg.seeds()["data"])
        per_epoch = max(t.dataset_size // t.batch_size, 1)
        step = start_step
        while True:
            epoch, b = divmod(step, per_epoch)
            shuffle = torch.Generator(device=data.device).manual_seed(self.cfg.seeds()["data"] + 1 + epoch)
            perm = torch.randperm(t.dataset_size, generator=shuffle, device=data.device)
            for b in range(b, per_epoch):
                yield data[perm[b * t.batch_size:(b + 1) * t.batch_size]]
                step += 1

    # ------------------------------------------------------------------- run
    def run(self) -> TrainResult:
        self.cfg.check_fits()
        with writer(self.run_dir):  # one process trains (or --force empties) a folder at a time
            return self._train(self._prepare_folder())

    def _train(self, ckpt: Path | None) -> TrainResult:
        cfg, t = self.cfg, self.cfg.train
        dtype = getattr(torch, t.dtype)
        hmm = cfg.process.build()
        dev_hmm = hmm.to(self.device)
        eval_set = EvalSet.build(hmm, cfg, self.device)
        seeds = cfg.seeds()
        model = build_model(cfg.model, hmm.n_tokens, t.context, seed=seeds["model"], hmm=hmm,
                            device=self.device, dtype=dtype)
        optimizer = make_optimizer(t, model.parameters())
        gen = torch.Generator(device=self.device).manual_seed(seeds["data"])
        meta = model_meta(cfg, hmm.n_tokens)
        step, elapsed, tokens_seen = 0, 0.0, 0
        metrics_path = self.run_dir / METRICS
        if ckpt is not None:
            state = load_state(ckpt, model, optimizer)
            step, elapsed, tokens_seen = state["step"], state["elapsed"], state["tokens"]
            gen.set_state(torch.tensor(state["data_rng"], dtype=torch.uint8))
            # Drop metric lines written after that checkpoint: they will be written again.
            rows = [r for r in read_jsonl(metrics_path) if r["step"] <= step] if metrics_path.exists() else []
            write_jsonl(metrics_path, rows)
            self.log(f"resuming {cfg.name} from step {step}")
        elif metrics_path.exists():
            metrics_path.unlink()
        if step == 0:
            self._record(metrics_path, 0, 0, 0.0, float("nan"), 0.0, evaluate(model, eval_set), eval_set)
        batches = self._batches(dev_hmm, gen, step)
        model.train()
        bar = tqdm(total=t.steps, initial=step, desc=cfg.name, disable=not watched(),
                   dynamic_ncols=True, leave=False)
        train_loss, ev = float("nan"), None
        while step < t.steps:
            t_step = time.perf_counter()
            lr = lr_at(t, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            tokens = next(batches)
            loss = next_token_loss(next_token_logits(model, tokens), tokens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            step += 1
            tokens_seen += tokens.numel()
            train_loss = loss.item()
            elapsed += time.perf_counter() - t_step
            bar.update(1)
            done = step == t.steps
            if step % t.eval_every == 0 or done:
                ev = evaluate(model, eval_set)
                row = self._record(metrics_path, step, tokens_seen, elapsed, train_loss, lr, ev, eval_set)
                bar.set_postfix(rel=f"{row['relative_loss']:.5f}")
            if step % t.checkpoint_every == 0 or done:
                save_checkpoint(self.run_dir, step, model, optimizer, meta, {
                    "elapsed": elapsed, "tokens": tokens_seen,
                    "data_rng": gen.get_state().tolist(),
                })
        bar.close()
        final = ev if ev is not None else evaluate(model, eval_set)  # the last step is always evaluated
        result = TrainResult(
            name=cfg.name, family=cfg.model.family, config_hash=cfg.hash(), steps=step, tokens=tokens_seen,
            train_seconds=elapsed, train_loss=train_loss, **final, optimal_loss=eval_set.optimal,
            optimal_loss_per_position=eval_set.optimal_per_position,
            optimal_loss_expected=eval_set.optimal_expected, unigram_loss=eval_set.unigram)
        write_tensors(self.run_dir / MODEL, model.state_dict())
        write_json(self.run_dir / MODEL_META, meta)
        write_json(self.run_dir / RESULT, result.to_dict())
        Manifest(self.run_dir).record(TRAINING, training_inputs(cfg),
                                      [self.run_dir / name for name in (MODEL, MODEL_META, RESULT)])
        self.log(f"{cfg.name}: relative loss {result.relative_loss:.6f} after {step} steps "
                 f"({result.train_seconds:.1f} s)")
        return result

    def _record(self, path: Path, step: int, tokens: int, seconds: float, train_loss: float, lr: float,
                ev: dict, data: EvalSet) -> dict:
        row = {"step": step, "tokens": tokens, "seconds": seconds, "train_loss": train_loss, "lr": lr,
               "eval_loss": ev["eval_loss"], "relative_loss": ev["relative_loss"],
               "gap_fraction": ev["gap_fraction"], "optimal_loss": data.optimal}
        append_jsonl(path, row)
        return row
