"""Shared fixtures: tiny trained runs of every family (seconds to train), made once per test session."""

from pathlib import Path

import pytest

from interp.training.runconfig import run_config_from_dict
from interp.training.trainer import Trainer

TINY = {
    "transformer": {"family": "transformer", "n_layers": 2, "n_heads": 1, "d_model": 8, "d_head": 8},
    "fixed_attention": {"family": "fixed_attention", "d_model": 8, "d_head": 8},
    "ssm": {"family": "ssm", "n_layers": 2, "d_model": 8, "d_state": 4, "transition": "complex"},
    "belief_net": {"family": "belief_net", "n_states": 3, "init": "random"},
}


def train_tiny(root: Path, family: str, context: int = 5) -> Path:
    cfg = run_config_from_dict({"name": f"tiny_{family}", "process": {"name": "mess3"}, "model": TINY[family],
                                "train": {"context": context, "steps": 3, "batch_size": 8, "eval_sequences": 16,
                                          "eval_every": 3, "checkpoint_every": 3}})
    run_dir = root / cfg.name
    Trainer(cfg, run_dir).run()
    return run_dir


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {family: train_tiny(root, family) for family in TINY}


