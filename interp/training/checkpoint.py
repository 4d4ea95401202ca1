"""Checkpoints: safetensors for weights and optimiser moments, JSON for the rest.

A checkpoint is a folder ``checkpoints/step_NNNNNNN/`` written under a temporary name and renamed
into place when complete, so a crash never leaves a half-written one. ``model.json`` carries the
run config, so a checkpoint alone rebuilds its model (:func:`load_model`). ``checksums.json``, written
last, holds the SHA-256 of the other files: a resume takes the newest checkpoint that still matches
(:func:`latest_intact_checkpoint`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from interp.io import read_json, read_tensors, sha256_file, write_json, write_tensors
from interp.models import build_model
from interp.rundir import (CHECKPOINT_PREFIX, CHECKPOINTS, CONSTRUCTION, MODEL, MODEL_META, OPTIMIZER, STATE,
                           TRAINING, IntegrityError, Manifest, checkpoint_name, remove_stale_temporaries,
                           temporary_folder)
from interp.training.runconfig import RunConfig, run_config_from_dict

KEEP = 2  # the newest checkpoints kept; older ones are pruned
CHECKSUMS = "checksums.json"  # in a checkpoint: {file: SHA-256} of CHECKPOINT_FILES
CHECKPOINT_FILES = (MODEL, MODEL_META, OPTIMIZER, STATE)
_TMP = ".tmp_"  # a checkpoint being written, inside checkpoints/


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def model_meta(cfg: RunConfig, n_tokens: int) -> dict:
    bos = n_tokens if getattr(cfg.model, "bos", False) else None
    return {"config": cfg.to_dict(), "config_hash": cfg.hash(), "family": cfg.model.family,
            "n_tokens": n_tokens, "n_ctx": cfg.train.context, "dtype": cfg.train.dtype, "bos_token": bos}


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    meta: dict, state: dict) -> Path:
    """Write checkpoint ``step`` atomically (temp folder + rename) and prune old ones."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / checkpoint_name(step)
    remove_stale_temporaries(root, _TMP)  # left by a killed process
    with temporary_folder(root, _TMP) as tmp:
        write_tensors(tmp / MODEL, model.state_dict())
        write_json(tmp / MODEL_META, meta)
        opt_tensors, opt_meta = _optimizer_to_files(optimizer)
        write_tensors(tmp / OPTIMIZER, opt_tensors)
        write_json(tmp / STATE, {**state, "step": step, "optimizer": opt_meta})
        write_json(tmp / CHECKSUMS, {name: sha256_file(tmp / name) for name in CHECKPOINT_FILES})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are not listed)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why checkpoint ``ckpt`` cannot be resumed from (a file missing or not matching its recorded SHA-256);
    None when it is intact. One written before checksums were recorded is intact when its files load."""
    ckpt = Path(ckpt)
    try:
        if not (ckpt / CHECKSUMS).is_file():
            read_json(ckpt / MODEL_META)
            read_json(ckpt / STATE)["optimizer"]
            read_tensors(ckpt / MODEL)
            read_tensors(ckpt / OPTIMIZER)
            return None
        sums = read_json(ckpt / CHECKSUMS)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return str(err)
    if not isinstance(sums, dict) or set(sums) != set(CHECKPOINT_FILES):
        return f"{ckpt / CHECKSUMS} does not list {', '.join(CHECKPOINT_FILES)} (corrupt?)"
    for name, sha in sums.items():
        path = ckpt / name
        if not path.is_file():
            return f"{path} is missing"
        if sha256_file(path) != sha:
            return f"{path} does not match the SHA-256 recorded in {ckpt / CHECKSUMS} (corrupt or edited)"
    return None


def latest_intact_checkpoint(run_dir: Path, log: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint of ``run_dir`` that is intact (:func:`checkpoint_problem`), logging each newer one
    skipped; None when there is none."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        why = checkpoint_problem(ckpt)
        if why is None:
            return ckpt
        if log is not None:
            log(f"skipping checkpoint {ckpt}: {why}")
    return None


def load_state(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model and optimiser from ``ckpt``; return its state.json (step, RNG states, ...)."""
    state = read_json(ckpt / STATE)
    model.load_state_dict(read_tensors(ckpt / MODEL, device=next(model.parameters()).device))
    opt_tensors = read_tensors(ckpt / OPTIMIZER)
    optimizer.load_state_dict(_optimizer_from_files(opt_tensors, state["optimizer"]))
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, RunConfig]:
    """Rebuild a trained model from a run folder (its final weights) or a checkpoint folder.

    Returns (model in eval mode, its RunConfig). Missing or corrupt files raise a clear error, and so do files
    that load but differ from the SHA-256 the run's manifest (or the checkpoint's checksums) recorded. A run
    folder without final weights loads its newest intact checkpoint."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no run or checkpoint folder at {path}")
    folder = path
    if not (folder / MODEL).is_file():
        if not list_checkpoints(path):
            raise FileNotFoundError(f"{path} holds neither {MODEL} nor any checkpoint")
        folder = latest_intact_checkpoint(path)
        if folder is None:
            raise IntegrityError(f"{path} has no final weights and every checkpoint in {path / CHECKPOINTS} is "
                                 f"corrupt or incomplete; retrain with --force")
    meta = read_json(folder / MODEL_META)
    try:
        cfg = run_config_from_dict(meta["config"])
        n_tokens, dtype = int(meta["n_tokens"]), getattr(torch, meta["dtype"])
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{folder / MODEL_META} is incomplete or corrupt: {err}") from err
    hmm = cfg.process.build()
    model = build_model(cfg.model, n_tokens, cfg.train.context, hmm=hmm, device=device, dtype=dtype)
    try:
        model.load_state_dict(read_tensors(folder / MODEL, device=device))
    except RuntimeError as err:
        raise ValueError(f"{folder / MODEL} does not match its config: {err}") from err
    # checked after reading, so a file that does not even parse is reported as such
    if folder == path and (folder / CHECKSUMS).is_file():  # (a checkpoint picked above was just checked)
        why = checkpoint_problem(folder)
        if why is not None:
            raise IntegrityError(f"{why}; load an earlier checkpoint or resume the run")
    manifest = Manifest(folder)
    for output, remedy in ((TRAINING, "retrain with --force"), (CONSTRUCTION, "rebuild it with `interp construct`")):
        manifest.verify(output, folder / MODEL, folder / MODEL_META, remedy=remedy)
    return model.eval(), cfg
