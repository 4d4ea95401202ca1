"""The Belief Net: hooks in the recurrence (an edit at position t changes t.. and nothing before), caches equal to
the plain forward, the exact filter at any weights, its likelihood and gradient, and the shared initialisations."""

from __future__ import annotations

import re

import pytest
import torch
from torch.testing import assert_close

from interp.config import ConfigError, from_dict
from interp.hmm import EmissionForm, beliefs, get_process, log_likelihood, next_token_probs
from interp.hmm.sampling import sample
from interp.models import BeliefNetConfig, BlockedBeliefNetConfig, build_model
from interp.models.belief_net import BeliefNet, initial_logits
from interp.studies.recovery import recovery_config_from_dict

MESS3 = get_process("mess3")
PRE, POST = "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"


def random_net(n_states=4, seed=3, dtype=torch.float64) -> BeliefNet:
    return build_model(BeliefNetConfig(n_states=n_states, init="random", init_scale=1.5), MESS3.n_tokens, 12,
                       seed=seed, dtype=dtype)


def plain_filter(model: BeliefNet, tokens):
    """The recurrence written out with no hook points: (b_t, b_{t+1}, logits) per position."""
    mu, A, C = model.parameters_prob()
    b, pre, post = mu.expand(tokens.shape[0], -1), [], []
    for t in range(tokens.shape[1]):
        pre.append(b)
        w = b * C[:, tokens[:, t]].T
        b = (w / w.sum(-1, keepdim=True)) @ A
        post.append(b)
    post = torch.stack(post, 1)
    return torch.stack(pre, 1), post, torch.log(post @ C)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_hook_forward_and_cache_equal_the_plain_recurrence_bit_for_bit(dtype):
    model = random_net(dtype=dtype)
    tokens = sample(MESS3, 16, 12, seed=1)
    pre, post, logits = plain_filter(model, tokens)
    assert torch.equal(model(tokens), logits)
    cached_logits, cache = model.run_with_cache(tokens)
    assert torch.equal(cached_logits, logits)
    assert cache[PRE].shape == cache[POST].shape == (16, 12, 4)
    assert torch.equal(cache[PRE], pre) and torch.equal(cache[POST], post)
    assert not any(h._forward_hooks for h in model.hook_dict.values())  # nothing left attached


def test_at_any_weights_it_is_the_exact_filter_of_its_own_hmm():
    """exp(logits[:, t]) = P(x_{t+1} | x_0..x_t) under (mu, A, C), and its likelihood is the exact filter's."""
    model = random_net()
    hmm = model.get_hmm()
    tokens = sample(MESS3, 32, 12, seed=2)
    logits = model(tokens)
    assert_close(logits.exp(), next_token_probs(hmm, tokens), rtol=0, atol=1e-12)
    ll = model.log_likelihood(tokens)
    assert_close(ll, log_likelihood(hmm, tokens), rtol=0, atol=1e-12)
    # the forward's own chain rule: log P(x_0) + sum_t log P(x_{t+1} | x_0..x_t)
    mu, _, C = model.parameters_prob()
    first = torch.log(mu @ C[:, tokens[:, 0]])
    chain = first + logits[:, :-1].gather(2, tokens[:, 1:, None]).squeeze(-1).sum(1)
    assert_close(ll, chain.detach(), rtol=0, atol=1e-12)


def test_expected_count_gradient_equals_autograd_through_the_forward():
    model = random_net(n_states=5, seed=7)
    tokens = sample(MESS3, 20, 12, seed=3)
    mu, _, C = model.parameters_prob()
    logits = model(tokens)
    ll = torch.log(mu @ C[:, tokens[:, 0]]) + logits[:, :-1].gather(2, tokens[:, 1:, None]).squeeze(-1).sum(1)
    ll.sum().backward()
    got = model.log_likelihood_gradient(tokens)
    assert_close(got.log_likelihood, ll.detach(), rtol=0, atol=1e-12)
    for p, g in zip((model.mu_logits, model.A_logits, model.C_logits), (got.mu, got.A, got.C)):
        assert_close(g, p.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", [PRE, POST])
@pytest.mark.parametrize("t", [0, 4, 11])
def test_an_edit_at_position_t_changes_t_onwards_and_nothing_before(name, t):
    model = random_net()
    tokens = sample(MESS3, 8, 12, seed=4)
    clean_logits, clean = model.run_with_cache(tokens)
    target = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    calls = []

    def patch(x, hook):
        calls.append(x.shape[1])
        if x.shape[1] > t:
            x = x.clone()
            x[:, t] = target
        return x

    with model.hooks(fwd_hooks=[(name, patch)]):
        logits = model(tokens)
    assert calls == list(range(1, 13))  # once per position, on the positions so far
    _, cache = model.run_with_cache(tokens)  # hooks were removed: the clean numbers again
    assert torch.equal(cache[PRE], clean[PRE])
    assert torch.equal(logits[:, :t], clean_logits[:, :t])  # nothing before t moves
    # the edit reaches position t's prediction and every later one
    changed = (logits - clean_logits).abs().amax((0, 2))
    assert (changed[t:] > 1e-6).all(), changed
    # and it is what the recurrence continued from: b_{t+1} is the filter step from the edited belief
    with model.hooks(fwd_hooks=[(name, patch)]):
        _, edited = model.run_with_cache(tokens)
    mu, A, C = model.parameters_prob()
    if name == PRE:
        w = target * C[:, tokens[:, t]].T
        assert_close(edited[POST][:, t], (w / w.sum(-1, keepdim=True)) @ A, rtol=0, atol=1e-12)
    else:
        assert_close(logits[:, t], torch.log(target @ C).expand(8, -1), rtol=0, atol=1e-14)
        if t + 1 < 12:
            assert torch.equal(edited[PRE][:, t + 1], target.expand(8, -1))
    assert torch.equal(edited[PRE][:, :t], clean[PRE][:, :t])


def test_a_caching_hook_ends_with_every_position():
    model = random_net()
    tokens = sample(MESS3, 5, 12, seed=5)
    seen = {}
    model.run_with_hooks(tokens, fwd_hooks=[(POST, lambda x, hook: seen.setdefault("last", []).append(x) or x)])
    shapes = [tuple(x.shape) for x in seen["last"]]
    assert shapes == [(5, t + 1, 4) for t in range(12)]
    _, cache = model.run_with_cache(tokens)
    assert torch.equal(seen["last"][-1], cache[POST])


# ------------------------------------------------------------------ initialisations
def test_initialisations_keep_their_numbers_and_say_what_they_do():
    g = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    shapes = ((3,), (3, 3), (3, 5))
    random = initial_logits(3, 5, "random", 0.7, g())
    want = [0.7 * torch.randn(*s, generator=gen, dtype=torch.float64) for gen in [g()] for s in shapes]
    for a, b in zip(random, want):
        assert torch.equal(a, b)
    near = initial_logits(3, 5, "near_uniform", 0.7, g())
    for a, b in zip(near, random):
        assert_close(a, 0.01 * b, rtol=1e-12, atol=0)
        assert float(a.abs().max()) < 0.05
    em = MESS3.to_emission()
    sparse = EmissionForm(em.mu, em.A, torch.tensor([[1.0, 0, 0], [0, 0.5, 0.5], [0.2, 0.3, 0.5]], dtype=torch.float64))
    truth = initial_logits(3, 3, "truth", truth=sparse)
    for logits, p in zip(truth, (sparse.mu, sparse.A, sparse.C)):
        assert_close(torch.softmax(logits, -1), p, rtol=0, atol=1e-12)
        assert torch.isfinite(logits).all()
    spectral = initial_logits(3, 3, "spectral", spectral=sparse)
    assert float(spectral[2].min()) == pytest.approx(torch.log(torch.tensor(1e-6)).item(), rel=1e-6)
    with pytest.raises(ValueError, match="needs the true parameters"):
        initial_logits(3, 3, "truth")
    with pytest.raises(ValueError, match="shape"):
        initial_logits(4, 3, "truth", truth=sparse)


def test_the_model_family_draws_its_random_logits_in_float32():
    model = build_model(BeliefNetConfig(n_states=3, init="random", init_scale=2.0), 3, 10, seed=5,
                        dtype=torch.float64)
    want = initial_logits(3, 3, "random", 2.0, torch.Generator().manual_seed(5), dtype=torch.float32)
    for p, w in zip((model.mu_logits, model.A_logits, model.C_logits), want):
        assert torch.equal(p, w.double())
    truth = build_model(BeliefNetConfig(n_states=3, init="truth"), 3, 10, hmm=MESS3, dtype=torch.float64)
    em = MESS3.to_emission()
    for p, q in zip(truth.parameters_prob(), (em.mu, em.A, em.C)):
        assert_close(p, q, rtol=0, atol=1e-12)


def test_from_logits_owns_copies_in_their_dtype():
    logits = initial_logits(4, 6, "random", 1.0, torch.Generator().manual_seed(0))
    model = BeliefNet.from_logits(*(x.float() for x in logits))
    assert model.C_logits.dtype == torch.float32 and model.C_logits.shape == (4, 6)
    assert torch.equal(model.A_logits, logits[1].float())
    with torch.no_grad():
        model.A_logits.add_(1)
    assert not torch.equal(model.A_logits, logits[1].float())
    em = model.emission_form()
    assert em.A.dtype == torch.float64
    assert torch.equal(em.A, torch.softmax(model.A_logits.detach().double(), -1))  # the softmax taken in float64


@pytest.mark.parametrize("old, new", [("true", "'truth'"), ("uniform", "'near_uniform'")])
def test_old_init_names_are_refused_with_the_new_one(old, new):
    with pytest.raises(ConfigError, match=rf"init {old!r} was renamed: use {new}"):
        from_dict(BeliefNetConfig, {"init": old})
    with pytest.raises(ConfigError, match=rf"belief_net\.init {old!r} was renamed: use {new}"):
        recovery_config_from_dict({"name": "x", "belief_net": {"init": old}})
    if old == "true":
        with pytest.raises(ConfigError, match="use 'truth'"):
            from_dict(BlockedBeliefNetConfig, {"init": old})
    with pytest.raises(ConfigError, match=re.escape("init must be one of 'random' | 'near_uniform' | 'truth'")):
        from_dict(BeliefNetConfig, {"init": "spectral"})
    with pytest.raises(ConfigError, match="unknown key ablation.uniform"):
        recovery_config_from_dict({"name": "x", "ablation": {"uniform": True}})


def test_the_causal_check_steers_the_belief_net_through_its_recurrent_hook():
    """At the truth resid_post is eta_t @ A (eta_t the exact belief, Mess3 being in destination form), so the exact
    probe is eta = post A^-1 and a steer to another point's belief gives exactly that belief's prediction."""
    from interp.interpret.causal import causal_check

    model = build_model(BeliefNetConfig(n_states=3, init="truth"), 3, 8, hmm=MESS3, dtype=torch.float64)
    tokens = sample(MESS3, 100, 8, seed=6)
    _, cache = model.run_with_cache(tokens)
    A = MESS3.to_emission().A
    res = causal_check(model, tokens, beliefs(MESS3, tokens), cache[POST], torch.linalg.inv(A).T,
                       torch.zeros(3, dtype=torch.float64), MESS3.emission_matrix, hook=POST, n_points=300,
                       generator=torch.Generator().manual_seed(0))
    assert res["kl_target_before"] > 1e-3
    assert res["kl_target_after"] == pytest.approx(0, abs=1e-12)
    assert res["change_r2"] == pytest.approx(1, abs=1e-9)
