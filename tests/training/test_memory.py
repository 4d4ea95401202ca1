"""The training-step memory measurement: at least what Adam must hold (parameters, gradients, two moments), at
most a few more copies of the parameters (the step's activations here are softmaxes of them), and blind to what
the calling process holds."""

from __future__ import annotations

import sys

import pytest
import torch

from interp.training.memory import step_memory
from interp.training.runconfig import run_config_from_dict


def blocked_run(n_groups: int):
    return run_config_from_dict({
        "process": {"name": "blocked", "params": {"n_groups": n_groups, "group_size": 256, "tokens_per_group": 2,
                                                  "successors": 4}},
        "model": {"family": "blocked_belief_net"}, "train": {"context": 8, "batch_size": 8, "steps": 1}},
        default_name="memory")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU peak is read from Linux's /proc")
def test_step_memory_counts_the_optimiser_state_and_not_the_caller():
    params = 16 * 4 * 256 * 256 * 4  # bytes of the float32 blocks (the other logits are < 0.1% of them)
    ballast = torch.ones(64 * 2**20, dtype=torch.float64)  # 512 MB held by the caller only
    measured = step_memory(blocked_run(16))
    assert ballast.sum() > 0
    assert 4 * params <= measured <= 10 * params, measured / params
