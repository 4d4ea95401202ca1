"""The Belief Net with blocked emissions: at the truth it is the exact blocked filter (and the dense one), its
expected gradient there is exactly zero, it trains on block-sparse data through the usual trainer, and it
refuses data without the block structure."""

from __future__ import annotations

import pytest
import torch

from interp.config import ConfigError
from interp.hmm import get_process, next_token_probs
from interp.hmm.losses import unigram_loss
from interp.hmm.sampling import sample
from interp.interpret.cache import all_sequences
from interp.models import BlockedBeliefNetConfig, build_model
from interp.training.runconfig import run_config_from_dict
from interp.training.trainer import EvalSet, Trainer, evaluate

SMALL = dict(n_groups=4, group_size=3, tokens_per_group=2, successors=2, seed=1)


def small():
    return get_process("blocked", **SMALL)


def true_model(hmm, context: int):
    return build_model(BlockedBeliefNetConfig(init="truth"), hmm.n_tokens, context, hmm=hmm, dtype=torch.float64)


def test_at_the_truth_it_is_the_exact_filter():
    hmm = small()
    tokens = sample(hmm, 64, 9, seed=3)
    model = true_model(hmm, 9)
    logits, cache = model.run_with_cache(tokens)
    exact = hmm.filter(tokens)
    log_p = torch.log_softmax(logits, -1)[:, :-1].gather(2, tokens[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(log_p, exact.log_normalizers[:, 1:], rtol=0, atol=1e-12)
    torch.testing.assert_close(logits.exp(), next_token_probs(hmm.to_dense(), tokens), rtol=0, atol=1e-12)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], exact.beliefs, rtol=0, atol=1e-12)
    post = cache["blocks.0.hook_resid_post"]
    assert post.shape == (64, 9, 2 * 3) and torch.allclose(post.sum(-1), torch.ones(64, 9, dtype=torch.float64))
    got = model.get_hmm()
    for name in ("mu", "w", "blocks", "emit"):
        torch.testing.assert_close(getattr(got, name), getattr(hmm, name), rtol=0, atol=1e-12)


def test_the_expected_gradient_at_the_truth_is_zero():
    """sum_x P(x) grad log P_theta(x_1.. | x_0) = grad sum_x P_theta(...) = 0 at theta = truth, exactly."""
    hmm = small()
    tokens = all_sequences(hmm.n_tokens, 4)
    log_p = hmm.log_likelihood(tokens)
    keep = torch.isfinite(log_p)
    tokens, weight = tokens[keep], log_p[keep].exp()
    assert abs(float(weight.sum()) - 1) < 1e-12
    model = true_model(hmm, 4)
    logits = model(tokens)
    nll = -torch.log_softmax(logits, -1)[:, :-1].gather(2, tokens[:, 1:, None]).squeeze(-1).sum(1)
    (weight * nll).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad.abs().max() < 1e-12, name
    # and away from the truth it is not (the check can fail)
    model = build_model(BlockedBeliefNetConfig(init="random"), hmm.n_tokens, 4, hmm=hmm, dtype=torch.float64)
    logits = model(tokens)
    nll = -torch.log_softmax(logits, -1)[:, :-1].gather(2, tokens[:, 1:, None]).squeeze(-1).sum(1)
    (weight * nll).sum().backward()
    assert max(float(p.grad.abs().max()) for p in model.parameters()) > 1e-3


@pytest.mark.parametrize("parameterisation", ["scalar", "neural"])
def test_its_gradient_is_the_finite_difference_gradient(parameterisation):
    """The per-group views the recurrence multiplies by (one gradient slot per group) against central differences
    of the loss, on random logits where every group is visited by several rows at several positions."""
    hmm = small()
    cfg = BlockedBeliefNetConfig(parameterisation=parameterisation, hidden=4) if parameterisation == "neural" \
        else BlockedBeliefNetConfig()
    model = build_model(cfg, hmm.n_tokens, 7, hmm=hmm, dtype=torch.float64, seed=2)
    tokens = sample(hmm, 12, 7, seed=4)
    names, params = zip(*model.named_parameters())
    g = torch.Generator().manual_seed(5)
    # the MLP biases start at 0, where a state with a = 0 sits exactly on relu's kink: move them off it
    params = tuple(p + 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype) if "_b" in n else p
                   for n, p in zip(names, params))

    def loss(*values):
        logits = torch.func.functional_call(model, dict(zip(names, values)), (tokens,))
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, hmm.n_tokens), tokens[:, 1:].reshape(-1))

    assert torch.autograd.gradcheck(loss, tuple(p.detach().clone().requires_grad_() for p in params),
                                    eps=1e-6, atol=1e-7, rtol=1e-5)


def test_stationary_distribution_and_unigram_loss_match_the_dense_hmm():
    hmm = small()
    dense = hmm.to_dense()
    torch.testing.assert_close(hmm.stationary().reshape(-1), dense.pi, rtol=0, atol=1e-12)
    assert abs(hmm.unigram_loss() - unigram_loss(dense)) < 1e-10


def run_config(**model):
    return run_config_from_dict({
        "name": "blocked_bn", "seed": 0,
        "process": {"name": "blocked", "params": dict(n_groups=8, group_size=4, tokens_per_group=3, successors=2,
                                                       seed=0)},
        "model": {"family": "blocked_belief_net", **model},
        "train": {"context": 16, "steps": 150, "batch_size": 128, "lr": 5e-2, "eval_sequences": 2000,
                  "eval_every": 50, "checkpoint_every": 150}})


def test_it_trains_on_block_sparse_data(tmp_path):
    cfg = run_config(init="random", init_scale=1.0)
    result = Trainer(cfg, tmp_path / "bn", log=lambda msg: None).run()
    from interp.io import read_jsonl

    first = read_jsonl(tmp_path / "bn" / "metrics.jsonl")[0]
    assert first["step"] == 0 and first["relative_loss"] > 1.1  # random logits: far from the exact filter
    assert result.relative_loss < 1.005  # 150 steps take it most of the way there (1.0013 measured)
    assert result.unigram_loss > result.optimal_loss > 0
    # started at the truth, its loss is the exact optimum on the same held-out sequences (float32 weights)
    cfg = run_config(init="truth")
    hmm = cfg.process.build()
    truth = build_model(cfg.model, hmm.n_tokens, cfg.train.context, hmm=hmm)
    assert abs(evaluate(truth, EvalSet.build(hmm, cfg, "cpu"))["relative_loss"] - 1) < 1e-5


def test_it_refuses_data_without_blocks():
    with pytest.raises(ConfigError, match="blocked_belief_net needs block-sparse data"):
        run_config_from_dict({"name": "x", "process": {"name": "mess3"}, "model": {"family": "blocked_belief_net"}})


@pytest.mark.parametrize("name", ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"])
def test_hooks_sit_in_the_recurrence(name):
    """Called once per position on the positions so far; an edit at position t changes the predictions from t on
    and nothing before, and with no edit the numbers are the plain forward's."""
    hmm = small()
    tokens = sample(hmm, 32, 9, seed=5)
    model = build_model(BlockedBeliefNetConfig(init="random"), hmm.n_tokens, 9, hmm=hmm, seed=1, dtype=torch.float64)
    clean = model(tokens)
    logits, cache = model.run_with_cache(tokens)
    assert torch.equal(logits, clean)
    assert cache[name].shape[:2] == (32, 9)
    t, calls = 4, []

    def patch(x, hook):
        calls.append(x.shape[1])
        if x.shape[1] > t:
            x = x.clone()
            x[:, t] = torch.softmax(torch.arange(x.shape[-1], dtype=x.dtype), 0)  # another distribution
        return x

    with model.hooks(fwd_hooks=[(name, patch)]):
        edited = model(tokens)
    assert calls == list(range(1, 10))
    assert torch.equal(edited[:, :t], clean[:, :t])
    assert ((edited - clean).abs().amax((0, 2))[t:] > 1e-6).all()
    assert torch.equal(model(tokens), clean)  # nothing left attached
