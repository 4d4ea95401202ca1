"""The blocked Belief Net's neural parameterisation and state dropout: neural blocks are stochastic rows with
O(h^2 + h S + h V) parameters; under dropout the model is exactly the filter of the HMM restricted to the kept
states (renormalised as documented); with no dropout, or in eval mode, it is the filter of get_hmm(); the masks
replay from the seed; `interp train` runs and resumes bit-identically with each option."""

from __future__ import annotations

import pytest
import torch

from interp.cli import main
from interp.config import ConfigError
from interp.hmm import forward_filter, get_process, next_token_probs
from interp.hmm.blocked import BlockedHMM
from interp.hmm.sampling import sample
from interp.io import read_tensors
from interp.models import BlockedBeliefNetConfig, build_model
from interp.models.blocked_belief_net import neural_parameter_count
from interp.training.runconfig import run_config_from_dict

TINY = dict(n_groups=3, group_size=4, tokens_per_group=2, successors=2, seed=2)
OPTIONS = {
    "neural": dict(parameterisation="neural", hidden=8),
    "scalar_dropout": dict(state_dropout=0.5),
    "neural_dropout": dict(parameterisation="neural", hidden=8, state_dropout=0.5),
}


def model_of(hmm, context: int, seed: int = 1, **cfg):
    return build_model(BlockedBeliefNetConfig(**cfg), hmm.n_tokens, context, hmm=hmm, seed=seed,
                       dtype=torch.float64)


def restricted(full: BlockedHMM, keep: torch.Tensor) -> BlockedHMM:
    """The HMM on the states ``keep`` (G, k') of each group: mu renormalised over all kept states, every block row
    restricted to the successor group's kept states and renormalised, w and the emission rows unchanged."""
    G, d = full.succ.shape
    mu = torch.stack([full.mu[g, keep[g]] for g in range(G)])
    blocks = torch.stack([torch.stack([full.blocks[g, e][keep[g]][:, keep[full.succ[g, e]]] for e in range(d)])
                          for g in range(G)])
    emit = torch.stack([full.emit[g, keep[g]] for g in range(G)])
    return BlockedHMM(mu / mu.sum(), full.succ, full.w, blocks / blocks.sum(-1, keepdim=True), emit)


def test_neural_blocks_are_stochastic_rows_with_the_stated_parameter_count():
    hmm = get_process("blocked", n_groups=8, group_size=16, tokens_per_group=3, successors=2, seed=0)
    h = 8
    model = model_of(hmm, 6, parameterisation="neural", hidden=h)
    with torch.no_grad():
        mu, w, B, E = model.probabilities()
    assert (mu.shape, w.shape, B.shape, E.shape) == ((8, 16), (8, 2), (8, 2, 16, 16), (8, 16, 3))
    assert abs(float(mu.sum()) - 1) < 1e-12 and float(mu.min()) >= 0
    for rows in (w, B, E):
        assert float(rows.min()) >= 0
        torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:-1], dtype=torch.float64), rtol=0, atol=1e-12)
    assert float(B.std()) > 1e-3  # not the uniform blocks: the products shape them
    S, V, G, d = 128, 24, 8, 2
    count = sum(p.numel() for p in model.parameters())
    assert count == neural_parameter_count(S, V, G, d, h) == S * h + V * h + h + 3 * (2 * h * h + 4 * h) + G * d
    scalar = sum(p.numel() for p in model_of(hmm, 6).parameters())
    assert scalar == S + G * d + G * d * 16 * 16 + S * 3 and count < scalar / 2


@pytest.mark.parametrize("option", ["scalar_dropout", "neural_dropout"])
def test_dropout_filter_is_the_exact_filter_of_the_restricted_hmm(option):
    hmm = get_process("blocked", **TINY)
    tokens = sample(hmm, 256, 7, seed=4)
    model = model_of(hmm, 7, **OPTIONS[option])
    model.train()
    for _ in range(2):  # a later step's mask, not only the first
        step = int(model.dropout_step)
        logits, cache = model.run_with_cache(tokens)
        assert int(model.dropout_step) == step + 1
        keep = model.kept_states(step)
        assert keep.shape == (3, 2)
        small = restricted(model.get_hmm(), keep)
        dense = small.to_dense()
        torch.testing.assert_close(logits.exp(), next_token_probs(dense, tokens), rtol=0, atol=1e-10)
        log_p = logits[:, :-1].gather(2, tokens[:, 1:, None]).squeeze(-1)
        torch.testing.assert_close(log_p, forward_filter(dense, tokens).log_normalizers[:, 1:], rtol=0, atol=1e-10)
        torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], small.filter(tokens).beliefs, rtol=0, atol=1e-10)
        # and it is not the full model's filter (the check can fail)
        full = next_token_probs(model.get_hmm().to_dense(), tokens)
        assert float((logits.exp() - full).abs().max().detach()) > 1e-3


@pytest.mark.parametrize("option", ["neural", "scalar_dropout", "neural_dropout"])
def test_without_dropout_it_is_the_filter_of_its_hmm(option):
    """Dropout 0 (training mode) or eval mode: every state, the dense filter of get_hmm()."""
    hmm = get_process("blocked", **TINY)
    tokens = sample(hmm, 256, 7, seed=5)
    model = model_of(hmm, 7, **OPTIONS[option])
    if model.cfg.state_dropout > 0:
        model.eval()
    logits, cache = model.run_with_cache(tokens)
    dense = model.get_hmm().to_dense()
    torch.testing.assert_close(logits.exp(), next_token_probs(dense, tokens), rtol=0, atol=1e-10)
    log_p = logits[:, :-1].gather(2, tokens[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(log_p, forward_filter(dense, tokens).log_normalizers[:, 1:], rtol=0, atol=1e-10)
    assert cache["blocks.0.hook_resid_pre"].shape == (256, 7, 4)
    if model.cfg.state_dropout > 0:
        assert int(model.dropout_step) == 0  # evaluation draws no mask


def test_the_dropout_masks_replay_from_the_seed():
    hmm = get_process("blocked", n_groups=4, group_size=8, tokens_per_group=2, successors=2, seed=0)
    tokens = sample(hmm, 16, 5, seed=1)
    a, b, other = (model_of(hmm, 5, seed=s, state_dropout=0.5) for s in (3, 3, 4))
    masks = [a.kept_states(s) for s in range(4)]
    assert all(m.shape == (4, 4) and (m.diff(dim=1) > 0).all() for m in masks)  # 4 distinct states per group
    assert all(torch.equal(m, b.kept_states(s)) for s, m in enumerate(masks))
    assert len({tuple(m.flatten().tolist()) for m in masks}) == 4  # a new mask each step
    assert not torch.equal(masks[0], other.kept_states(0))  # and another seed's masks
    a.train(), b.train()
    outs = [a(tokens) for _ in range(3)]
    assert all(torch.equal(x, b(tokens)) for x in outs)
    assert not torch.equal(outs[0], outs[1])


def test_config_keys_and_their_errors():
    base = {"family": "blocked_belief_net", "init": "random", "init_scale": 1.0}
    assert BlockedBeliefNetConfig().to_dict() == base  # a scalar config keeps its hash
    assert BlockedBeliefNetConfig(state_dropout=0.25).to_dict() == {**base, "state_dropout": 0.25}

    def load(**model):
        return run_config_from_dict({"name": "x", "process": {"name": "blocked", "params": TINY},
                                     "model": {"family": "blocked_belief_net", **model}})

    assert load(parameterisation="neural", hidden=16).model.hidden == 16
    for model, message in [
        (dict(state_dropout=1.0), "state_dropout must be a number in [0, 1), got 1.0"),
        (dict(hidden=16), "hidden = 16 needs parameterisation = 'neural'"),
        (dict(parameterisation="neural", init="truth"), "init = 'truth' needs parameterisation = 'scalar'"),
        (dict(parameterisation="neural", hidden=0), "hidden must be >= 1, got 0"),
    ]:
        with pytest.raises(ConfigError) as err:
            load(**model)
        assert message in str(err.value) and "\n" not in str(err.value)


def write_config(path, model: dict) -> None:
    keys = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in model.items())
    path.write_text(
        'name = "tiny_blocked"\nseed = 3\n'
        '[process]\nname = "blocked"\n'
        '[process.params]\nn_groups = 4\ngroup_size = 6\ntokens_per_group = 2\nsuccessors = 2\nseed = 0\n'
        f'[model]\nfamily = "blocked_belief_net"\n{keys}'
        '[train]\ncontext = 8\nsteps = 8\nbatch_size = 16\nlr = 1e-2\neval_sequences = 64\neval_every = 4\n'
        'checkpoint_every = 2\n')


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_interp_train_runs_and_resumes_bit_identically(tmp_path, option, capsys):
    config = tmp_path / "tiny.toml"
    write_config(config, OPTIONS[option])
    assert main(["train", str(config), "--out", str(tmp_path / "full")]) == 0
    assert main(["train", str(config), "--out", str(tmp_path / "split"), "--steps", "4"]) == 0
    assert main(["train", str(config), "--out", str(tmp_path / "split"), "--resume"]) == 0
    full, split = (read_tensors(tmp_path / name / "model.safetensors") for name in ("full", "split"))
    assert full.keys() == split.keys()
    assert all(torch.equal(full[key], split[key]) for key in full)
    start = build_model(run_config_from_dict({"name": "x", "process": {"name": "blocked", "params": dict(
        n_groups=4, group_size=6, tokens_per_group=2, successors=2, seed=0)}, "model": {
        "family": "blocked_belief_net", **OPTIONS[option]}}).model, 8, 8,
        hmm=get_process("blocked", n_groups=4, group_size=6, tokens_per_group=2, successors=2, seed=0))
    assert any(not torch.equal(p, full[name]) for name, p in start.named_parameters())  # it trained
    if "state_dropout" in OPTIONS[option]:
        assert int(full["dropout_step"]) == 8  # one mask per training step; evaluations draw none
