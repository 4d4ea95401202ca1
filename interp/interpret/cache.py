"""Activation caches: a trained model's hooks over an evaluation set, stored beside its run.

``runs/<name>/cache/`` holds

- ``cache.json``: the run's config hash and a SHA-256 of its weights, the process, the evaluation set's
  kind, hook names, shapes and dtypes, and the shard list;
- ``data.safetensors``: ``tokens`` [n, L], ``weight`` [n] (sums to 1), ``log_prob`` [n] and the exact
  ``beliefs`` [n, L, S] (float64; position t is the posterior over the current state after token t; for a
  generalised HMM the belief ``eta`` with ``eta @ w = 1``, entries of any sign);
- ``shard_NNNNN.safetensors``: every cached hook for a block of sequences, so that writing never
  holds more than one shard of activations and reading loads one hook at a time.

The run's ``manifest.json`` records the cache as the output ``cache`` of :func:`cache_inputs` (the run's
config hash and weights) with the SHA-256 of every file: a cache whose run changed, or whose files changed,
went missing or are not all recorded, is refused and rebuilt, and each file is checked again when it is read.

Row i of every tensor is the same sequence, and position t of an activation is the model's state
after reading tokens 0..t: activations, tokens and beliefs are aligned by (sequence, position).
The evaluation set is every sequence of the context length with its exact probability when there
are at most ``max_exhaustive`` of them (impossible ones dropped), otherwise sampled sequences with
equal weights.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open

from interp import hmm as H
from interp.io import read_json, read_tensors, sha256_file, write_json, write_tensors
from interp.rundir import (ACTIVATIONS, CACHE, CACHE_DATA, CACHE_META, MODEL, MODEL_META, Manifest,
                           remove_stale_temporaries, shard_name, temporary_folder)

CACHE_FORMAT = 2  # 2: sequences of context - 1 tokens (evaluation_length)
# The hooks a cache keeps: the residual stream at every layer (with MLPs also between attention and MLP), the
# MLPs' outputs, attention patterns and SSM states. (hook_pos_embed is left out: it is the same W_pos for every input.)
_HOOK_PATTERN = re.compile(r"^(hook_embed|blocks\.(\d+)\.(hook_resid_pre|hook_state|attn\.hook_pattern|hook_resid_mid"
                           r"|hook_mlp_out|hook_resid_post))$")
_HOOK_ORDER = ["hook_resid_pre", "hook_state", "attn.hook_pattern", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"]
_TMP, _OLD = ".cache.tmp_", ".cache.old_"  # a cache being built, and the one it replaces, inside the run folder


class StaleCacheError(ValueError):
    """The cache was made from other weights or another config than its run has now."""


@dataclass(frozen=True)
class EvaluationSet:
    tokens: torch.Tensor  # [n, L] int64
    weight: torch.Tensor  # [n] float64, sums to 1
    log_prob: torch.Tensor  # [n] float64, log P(sequence)
    exhaustive: bool  # every possible sequence (weights = probabilities) or a sample (equal weights)


def all_sequences(n_tokens: int, length: int) -> torch.Tensor:
    """[V^L, L] every sequence in lexicographic order."""
    idx = torch.arange(n_tokens**length, dtype=torch.int64)
    powers = n_tokens ** torch.arange(length - 1, -1, -1, dtype=torch.int64)
    return (idx[:, None] // powers) % n_tokens


def evaluation_length(context: int) -> int:
    """Tokens per cached sequence for a model trained on sequences of ``context`` tokens: ``context - 1``. Position
    t's output predicts token t + 1, so the last position of a training sequence is never trained (a transformer's
    positional embedding there keeps its initial value, a fixed-attention matrix its initial last row); caches,
    probes and everything read from them cover the positions the model was trained on."""
    return context - 1


def evaluation_set(hmm: H.HMM, length: int, *, max_exhaustive: int = 10**5, n_samples: int = 20_000,
                   seed: int = 0) -> EvaluationSet:
    """Every sequence of ``length`` with its probability if there are <= ``max_exhaustive``, else a sample."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if hmm.n_tokens**length <= max_exhaustive:
        tokens = all_sequences(hmm.n_tokens, length)
        log_prob = H.log_likelihood(hmm, tokens)
        keep = torch.isfinite(log_prob)
        tokens, log_prob = tokens[keep], log_prob[keep]
        weight = torch.exp(log_prob)
        return EvaluationSet(tokens, weight / weight.sum(), log_prob, True)
    tokens = H.sample(hmm, n_samples, length, seed=seed).cpu()
    log_prob = H.log_likelihood(hmm, tokens)
    weight = torch.full((n_samples,), 1.0 / n_samples, dtype=torch.float64)
    return EvaluationSet(tokens, weight, log_prob, False)


def cached_hook_names(model: torch.nn.Module) -> list[str]:
    """The model's hooks that a cache keeps, in forward order (embedding, then layer by layer)."""
    def key(name: str) -> tuple[int, int]:
        m = _HOOK_PATTERN.match(name)
        return (-1, 0) if m.group(2) is None else (int(m.group(2)), _HOOK_ORDER.index(m.group(3)))

    return sorted((name for name in model.hook_dict if _HOOK_PATTERN.match(name)), key=key)


def _aliases(names: list[str]) -> dict[str, str]:
    """resid_pre of layer l + 1 is resid_post of layer l in every family: stored once."""
    out = {}
    for name in names:
        m = _HOOK_PATTERN.match(name)
        if m.group(3) == "hook_resid_pre" and int(m.group(2)) > 0:
            prev = f"blocks.{int(m.group(2)) - 1}.hook_resid_post"
            if prev in names:
                out[name] = prev
    return out


def run_fingerprint(run_dir: Path) -> dict:
    """What outputs derived from a trained model depend on: its config hash and the SHA-256 of its final weights."""
    run_dir = Path(run_dir)
    if not (run_dir / MODEL).is_file():
        raise FileNotFoundError(f"{run_dir} has no final weights ({MODEL}): is the run finished? "
                                f"(`interp train <config> --resume` completes it)")
    meta = read_json(run_dir / MODEL_META)
    if "config_hash" not in meta:
        raise ValueError(f"{run_dir / MODEL_META} has no config_hash (corrupt?)")
    return {"config_hash": meta["config_hash"], "weights_sha256": sha256_file(run_dir / MODEL)}


def cache_inputs(run_dir: Path, fingerprint: dict | None = None) -> dict:
    """What a cache is made from (its fingerprint in the run's manifest; ``fingerprint``: the run's, if already
    read). For a transformer with MLPs it also says that the cache keeps hook_resid_mid and hook_mlp_out, so that
    caches made before they were kept are stale; models without MLPs have no such hooks and keep the fingerprint
    (and the caches) they had."""
    out = {"format": CACHE_FORMAT, **(run_fingerprint(run_dir) if fingerprint is None else fingerprint)}
    if _has_mlps(run_dir):
        out["mlp_hooks"] = True
    return out


def _has_mlps(run_dir: Path) -> bool:
    model = read_json(Path(run_dir) / MODEL_META).get("config", {}).get("model", {})
    return model.get("family") == "transformer" and model.get("attn_only", True) is False


@torch.no_grad()
def build_cache(run_dir: str | Path, *, device: str | torch.device = "cpu", batch_size: int = 4096,
                shard_size: int = 8192, max_exhaustive: int = 10**5, n_samples: int = 20_000,
                log: Callable[[str], None] = lambda msg: None) -> Path:
    """Run the trained model of ``run_dir`` over its evaluation set and write ``run_dir/cache/``.

    The cache is written into a temporary folder and renamed into place when complete."""
    from interp.training.checkpoint import load_model

    run_dir = Path(run_dir)
    fingerprint = run_fingerprint(run_dir)
    model, cfg = load_model(run_dir, device=device)
    hmm = cfg.process.build()
    if not isinstance(hmm, (H.HMM, H.GHMM)):
        raise ValueError(f"{run_dir}: caching and probing need the exact beliefs of a dense HMM or GHMM; process "
                         f"{cfg.process.name!r} is block-sparse (its filter is interp.hmm.blocked.BlockedHMM.filter)")
    length = evaluation_length(cfg.train.context)
    data = evaluation_set(hmm, length, max_exhaustive=max_exhaustive, n_samples=n_samples,
                          seed=cfg.seeds()["eval"])
    beliefs = H.beliefs(hmm, data.tokens)
    names = cached_hook_names(model)
    n = data.tokens.shape[0]
    bos = read_json(run_dir / MODEL_META).get("bos_token")  # models that read a BOS token first
    for stale in remove_stale_temporaries(run_dir, _TMP, _OLD):  # left by a killed build
        log(f"cache: removed {stale}, left by an interrupted build")
    with temporary_folder(run_dir, _TMP) as tmp:
        write_tensors(tmp / CACHE_DATA, {"tokens": data.tokens, "weight": data.weight, "log_prob": data.log_prob,
                                         "beliefs": beliefs})
        aliases = _aliases(names)
        stored = [name for name in names if name not in aliases]
        shards, shapes, dtypes = [], {}, {}
        for k, start in enumerate(range(0, n, shard_size)):
            chunks: dict[str, list[torch.Tensor]] = {name: [] for name in stored}
            for tok in data.tokens[start:start + shard_size].split(batch_size):
                tok = tok.to(device)
                if bos is not None:  # feed [BOS, x_0..x_{L-1}] and keep positions aligned with the tokens
                    tok = torch.cat([torch.full_like(tok[:, :1], bos), tok], 1)
                _, cache = model.run_with_cache(tok, names_filter=lambda name: name in names)
                if bos is not None:
                    cache = {name: _drop_bos(name, cache[name]) for name in names}
                for name, same in aliases.items():
                    if not torch.equal(cache[name], cache[same]):
                        raise RuntimeError(f"{name} differs from {same} in this model; the cache cannot alias them")
                for name in stored:
                    chunks[name].append(cache[name].detach().cpu())
                del cache
            block = {name: torch.cat(parts) for name, parts in chunks.items()}
            del chunks
            shapes = {name: [n, *block[aliases.get(name, name)].shape[1:]] for name in names}
            dtypes = {name: str(block[aliases.get(name, name)].dtype).removeprefix("torch.") for name in names}
            shard = shard_name(k)
            write_tensors(tmp / shard, block)
            shards.append({"file": shard, "start": start, "stop": min(start + shard_size, n)})
            del block
            log(f"cache: {shards[-1]['stop']}/{n} sequences")
        write_json(tmp / CACHE_META, {
            "format": CACHE_FORMAT, "run": cfg.name, **fingerprint, "family": cfg.model.family,
            "process": {"name": cfg.process.name, "params": dict(cfg.process.params)},
            "n_sequences": n, "length": length, "n_tokens": hmm.n_tokens, "n_states": hmm.n_states,
            "exhaustive": data.exhaustive, "bos_token": bos, "hooks": names, "aliases": aliases, "shapes": shapes, "dtypes": dtypes, "shards": shards,
        })
        final = run_dir / CACHE
        manifest = Manifest(run_dir)
        manifest.forget(ACTIVATIONS)
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=run_dir, prefix=_OLD))
            os.replace(final, old / CACHE)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    files = [final / name for name in (CACHE_META, CACHE_DATA, *(s["file"] for s in shards))]
    manifest.record(ACTIVATIONS, cache_inputs(run_dir, fingerprint), files)
    return final


def _drop_bos(name: str, act: torch.Tensor) -> torch.Tensor:
    """Remove the BOS position; patterns also lose the BOS key (their rows then sum to less than 1)."""
    return act[..., 1:, 1:] if "hook_pattern" in name else act[:, 1:]


class ActivationCache:
    """A run's cache, checked against the run; hooks are loaded lazily, one at a time."""

    def __init__(self, run_dir: str | Path, *, check: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / CACHE
        if not (self.path / CACHE_META).is_file():
            raise FileNotFoundError(f"no activation cache at {self.path} (make one with `interp cache {self.run_dir}`)")
        self._manifest = Manifest(self.run_dir)
        self._verified: set[Path] = set()  # files this object has checked against the manifest
        self.meta = read_json(self._checked(self.path / CACHE_META))
        if self.meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"{self.path / CACHE_META}: unknown cache format {self.meta.get('format')!r}")
        if check:
            why = _stale_reason(self.run_dir)
            if why is not None:
                raise StaleCacheError(f"the cache at {self.path} is stale: {why}; rebuild it with "
                                      f"`interp cache {self.run_dir} --force`")
            # every recorded file was just hashed
            self._verified.update(self.run_dir / rel for rel in self._manifest.entry(ACTIVATIONS)["files"])
        data = read_tensors(self._checked(self.path / CACHE_DATA))
        try:
            self.tokens, self.weight = data["tokens"], data["weight"]
            self.log_prob, self.beliefs = data["log_prob"], data["beliefs"]
        except KeyError as err:
            raise ValueError(f"{self.path / CACHE_DATA} lacks {err} (corrupt?)") from None
        self._loaded: dict[str, torch.Tensor] = {}

    def _checked(self, path: Path) -> Path:
        """``path``, once checked against the SHA-256 the run's manifest recorded for it."""
        if path not in self._verified:
            self._manifest.verify(ACTIVATIONS, path, remedy=f"rebuild it with `interp cache {self.run_dir} --force`")
            self._verified.add(path)
        return path

    @property
    def hooks(self) -> list[str]:
        return list(self.meta["hooks"])

    @property
    def exhaustive(self) -> bool:
        return bool(self.meta["exhaustive"])

    def __contains__(self, name: str) -> bool:
        return name in self.meta["hooks"]

    def __getitem__(self, name: str) -> torch.Tensor:
        """[n, L, ...] the hook's activations for every sequence, in the order of ``tokens``."""
        if name not in self.meta["hooks"]:
            raise KeyError(f"hook {name!r} is not in the cache (it has {', '.join(self.hooks)})")
        name = self.meta.get("aliases", {}).get(name, name)
        if name not in self._loaded:
            parts = []
            for shard in self.meta["shards"]:
                path = self._checked(self.path / shard["file"])
                try:
                    with safe_open(str(path), framework="pt") as f:
                        parts.append(f.get_tensor(name))
                except (SafetensorError, OSError) as err:
                    raise ValueError(f"cannot read {name!r} from {path} (corrupt or missing?): {err}") from err
            out = torch.cat(parts)
            if list(out.shape) != self.meta["shapes"][name]:
                raise ValueError(f"{self.path}: hook {name!r} has shape {list(out.shape)}, "
                                 f"metadata says {self.meta['shapes'][name]} (corrupt?)")
            self._loaded[name] = out
        return self._loaded[name]

    def release(self, name: str | None = None) -> None:
        """Forget loaded activations (all, or one hook) to free memory."""
        if name is None:
            self._loaded.clear()
        else:
            self._loaded.pop(name, None)


def load_cache(run_dir: str | Path, *, check: bool = True) -> ActivationCache:
    return ActivationCache(run_dir, check=check)


def cache_is_fresh(run_dir: str | Path) -> bool:
    """The run's manifest records a cache made from its current weights and config, with every file (each shard
    included) intact."""
    try:
        return _stale_reason(Path(run_dir)) is None
    except (FileNotFoundError, ValueError):  # no finished run
        return False


def _stale_reason(run_dir: Path) -> str | None:
    """Why the run's cache is not up to date; None when it is. Beyond the manifest's own check, every file that
    cache.json names must be among the files recorded (a shard the record does not list is never checked)."""
    manifest = Manifest(run_dir)
    why = manifest.stale_reason(ACTIVATIONS, cache_inputs(run_dir))
    if why is not None:
        return why
    meta = read_json(run_dir / CACHE / CACHE_META)
    try:
        names = [CACHE_META, CACHE_DATA, *(shard["file"] for shard in meta["shards"])]
    except (KeyError, TypeError):
        return f"{run_dir / CACHE / CACHE_META} has no valid shard list (corrupt?)"
    recorded = manifest.entry(ACTIVATIONS)["files"]
    for name in names:
        if not isinstance(name, str) or f"{CACHE}/{name}" not in recorded:
            return f"{run_dir / CACHE / str(name)} is not among the files {manifest.path} records"
    return None
