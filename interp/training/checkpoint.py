"""Checkpoints: safetensors for weights and optimiser moments, JSON for the rest.

A checkpoint is a folder ``checkpoints/step_NNNNNNN/`` written under a temporary name and renamed
into place when complete, so a crash never leaves a half-written one. ``model.json`` carries the
run config, so a checkpoint alone rebuilds its model (:func:`load_model`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from interp.io import read_json, read_tensors, write_json, write_tensors
from interp.models import build_model
from interp.rundir import CHECKPOINT_PREFIX, CHECKPOINTS, MODEL, MODEL_META, OPTIMIZER, STATE, checkpoint_name
from interp.training.runconfig import RunConfig, run_config_from_dict

KEEP = 2  # the newest checkpoints kept; older ones are pruned


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
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp_"))
    try:
        write_tensors(tmp / MODEL, model.state_dict())
        write_json(tmp / MODEL_META, meta)
        opt_tensors, opt_meta = _optimizer_to_files(optimizer)
        write_tensors(tmp / OPTIMIZER, opt_tensors)
        write_json(tmp / STATE, {**state, "step": step, "optimizer": opt_meta})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are not listed)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def load_state(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model and optimiser from ``ckpt``; return its state.json (step, RNG states, ...)."""
    state = read_json(ckpt / STATE)
    model.load_state_dict(read_tensors(ckpt / MODEL, device=next(model.parameters()).device))
    opt_tensors = read_tensors(ckpt / OPTIMIZER)
    optimizer.load_state_dict(_optimizer_from_files(opt_tensors, state["optimizer"]))
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, RunConfig]:
    """Rebuild a trained model from a run folder (its final weights) or a checkpoint folder.

    Returns (model in eval mode, its RunConfig). Missing or corrupt files raise a clear error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no run or checkpoint folder at {path}")
    folder = path
    if not (folder / MODEL).is_file():
        ckpts = list_checkpoints(path)
        if not ckpts:
            raise FileNotFoundError(f"{path} holds neither {MODEL} nor any checkpoint")
        folder = ckpts[-1]
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
    return model.eval(), cfg
