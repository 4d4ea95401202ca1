"""A blocked Belief Net with another number of states per group than the data (``group_size``)."""

from __future__ import annotations

import pytest
import torch

from interp.config import ConfigError
from interp.models import BlockedBeliefNetConfig, build_model
from interp.models.blocked_belief_net import parameter_count
from interp.training.runconfig import RunConfig, run_config_from_dict
from interp.training.trainer import Trainer

DATA = dict(n_groups=4, group_size=6, tokens_per_group=2, successors=2, seed=1)


def run_config(**model) -> RunConfig:
    return run_config_from_dict({
        "name": "gs", "seed": 0, "process": {"name": "blocked", "params": DATA},
        "model": {"family": "blocked_belief_net", **model},
        "train": {"context": 8, "steps": 1, "batch_size": 16, "eval_sequences": 32, "eval_every": 1,
                  "checkpoint_every": 1}})


@pytest.mark.parametrize("model", [dict(group_size=3), dict(group_size=9, state_dropout=0.5),
                                   dict(group_size=2, parameterisation="neural", hidden=8)])
def test_a_model_with_another_group_size_trains_and_gives_its_hmm(tmp_path, model):
    cfg = run_config(**model)
    result = Trainer(cfg, tmp_path / "run", log=lambda msg: None).run()
    assert result.steps == 1 and result.eval_loss > result.optimal_loss > 0
    from interp.training.checkpoint import load_model

    net, _ = load_model(tmp_path / "run")
    hmm = net.get_hmm()
    k = model["group_size"]
    assert (hmm.n_groups, hmm.group_size, hmm.tokens_per_group) == (4, k, 2)
    assert hmm.blocks.shape == (4, 2, k, k) and hmm.emit.shape == (4, k, 2)
    assert torch.equal(hmm.succ, cfg.process.build().succ)  # the data's structure
    for rows in (hmm.w, hmm.blocks, hmm.emit):
        assert torch.allclose(rows.sum(-1), torch.ones(()).double(), atol=1e-12) and (rows >= 0).all()
    assert abs(float(hmm.mu.sum()) - 1) < 1e-12
    assert sum(p.numel() for p in net.parameters()) == parameter_count(cfg.model, cfg.process.build())


def test_group_size_left_out_keeps_the_hash_and_the_data_size():
    assert "group_size" not in BlockedBeliefNetConfig().to_dict()
    assert run_config().hash() == run_config(group_size=None).hash()
    hmm = run_config().process.build()
    assert build_model(BlockedBeliefNetConfig(), hmm.n_tokens, 8, hmm=hmm).shape == (4, 6, 2, 2)


def test_bad_group_sizes_are_refused():
    with pytest.raises(ConfigError, match="group_size must be a positive integer"):
        run_config(group_size=0)
    hmm = run_config().process.build()
    with pytest.raises(ValueError, match="model.group_size = 3 with init = 'truth' needs the data's group size 6"):
        build_model(BlockedBeliefNetConfig(init="truth", group_size=3), hmm.n_tokens, 8, hmm=hmm)
    with pytest.raises(ConfigError, match="model.group_size = 3 with init = 'truth' needs the data's group size 6"):
        run_config(group_size=3, init="truth")  # when the config loads, before anything is built
    assert run_config(group_size=6, init="truth").model.group_size == 6
