"""Forward-backward smoothing: expected counts against every hidden path of a tiny HMM and against hmmlearn's
E-step, log-likelihoods against the filter, and the logit gradient against autograd through the filter."""

import itertools

import numpy as np
import pytest
import torch
from hmmlearn.hmm import CategoricalHMM
from torch.testing import assert_close

from interp.hmm import (
    EmissionForm,
    expected_counts,
    filter_scan,
    get_process,
    log_likelihood,
    log_likelihood_gradient,
)
from interp.hmm.sampling import sample
from interp.hmm.smoothing import softmax_gradient


def random_form(S: int, V: int, seed: int, dtype=torch.float64) -> EmissionForm:
    g = torch.Generator().manual_seed(seed)
    return EmissionForm(*(torch.softmax(2 * torch.randn(*s, generator=g, dtype=dtype), -1)
                          for s in ((S,), (S, S), (S, V))))


def brute_force_counts(p: EmissionForm, x: list[int]):
    """Straight from the definitions, over every hidden path z_0..z_{L-1}:
    P(x, z) = mu[z_0] C[z_0, x_0] prod_t A[z_{t-1}, z_t] C[z_t, x_t], and each count is its posterior mean."""
    mu, A, C = (t.numpy() for t in (p.mu, p.A, p.C))
    S, V = C.shape
    L = len(x)
    total = 0.0
    n_mu, n_A, n_C = np.zeros(S), np.zeros((S, S)), np.zeros((S, V))
    for z in itertools.product(range(S), repeat=L):
        w = mu[z[0]] * C[z[0], x[0]]
        for t in range(1, L):
            w *= A[z[t - 1], z[t]] * C[z[t], x[t]]
        total += w
        n_mu[z[0]] += w
        for t in range(L):
            n_C[z[t], x[t]] += w
            if t + 1 < L:
                n_A[z[t], z[t + 1]] += w
    return np.log(total), n_mu / total, n_A / total, n_C / total


@pytest.mark.parametrize("S, V, L", [(2, 2, 1), (3, 2, 4), (2, 4, 5), (3, 3, 3)])
def test_expected_counts_match_every_hidden_path(S, V, L):
    p = random_form(S, V, seed=S * 10 + L)
    tokens = torch.randint(V, (6, L), generator=torch.Generator().manual_seed(L))
    got = expected_counts(p, tokens)
    want = [brute_force_counts(p, row.tolist()) for row in tokens]
    assert_close(got.log_likelihood, torch.tensor([w[0] for w in want], dtype=torch.float64), rtol=0, atol=1e-12)
    for field, i in (("initial", 1), ("transitions", 2), ("emissions", 3)):
        expected = torch.as_tensor(sum(w[i] for w in want))
        assert_close(getattr(got, field), expected, rtol=0, atol=1e-12)


def test_expected_counts_match_hmmlearns_e_step_and_posteriors():
    S, V, n, L = 4, 5, 7, 30
    p = random_form(S, V, seed=3)
    tokens = torch.randint(V, (n, L), generator=torch.Generator().manual_seed(4))
    m = CategoricalHMM(S, n_features=V, init_params="", implementation="scaling")
    m.startprob_, m.transmat_, m.emissionprob_ = (t.numpy() for t in (p.mu, p.A, p.C))
    X, lengths = tokens.reshape(-1, 1).numpy(), [L] * n
    stats, logprob = m._do_estep(X, lengths)
    got = expected_counts(p, tokens)
    assert float(got.log_likelihood.sum()) == pytest.approx(logprob, abs=1e-10)
    assert_close(got.initial, torch.as_tensor(stats["start"]), rtol=0, atol=1e-10)
    assert_close(got.transitions, torch.as_tensor(stats["trans"]), rtol=0, atol=1e-10)
    assert_close(got.emissions, torch.as_tensor(stats["obs"]), rtol=0, atol=1e-10)
    # the same emission counts from hmmlearn's public per-position posteriors
    _, post = m.score_samples(X, lengths)
    by_token = np.stack([post[X[:, 0] == v].sum(0) for v in range(V)], 1)
    assert_close(got.emissions, torch.as_tensor(by_token), rtol=0, atol=1e-10)
    assert_close(got.initial, torch.as_tensor(post.reshape(n, L, S)[:, 0].sum(0)), rtol=0, atol=1e-10)


def test_counts_add_up_and_log_likelihood_is_the_filters():
    hmm = get_process("cyclic", n_states=5, n_tokens=6, seed=2)
    em = hmm.to_emission()
    tokens = sample(hmm, 40, 25, seed=0)
    got = expected_counts(em, tokens)
    assert_close(got.log_likelihood, log_likelihood(hmm, tokens), rtol=0, atol=1e-10)
    n, L = tokens.shape
    for counts, total in ((got.initial, n), (got.transitions, n * (L - 1)), (got.emissions, n * L)):
        assert float(counts.sum()) == pytest.approx(total, rel=1e-12)
        assert (counts >= 0).all()
    # every token's column holds its number of occurrences
    assert_close(got.emissions.sum(0), torch.bincount(tokens.reshape(-1), minlength=6).double(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("S, V, L", [(4, 6, 11), (3, 2, 1), (6, 3, 40)])
def test_gradient_equals_autograd_through_the_filter(S, V, L):
    g = torch.Generator().manual_seed(S + L)
    logits = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in ((S,), (S, S), (S, V))]
    tokens = torch.randint(V, (5, L), generator=g)
    ll = filter_scan(EmissionForm(*(torch.softmax(x, -1) for x in logits)).to_hmm(), tokens).log_likelihood
    ll.sum().backward()
    got = log_likelihood_gradient(*(x.detach() for x in logits), tokens)
    assert_close(got.log_likelihood, ll.detach(), rtol=0, atol=1e-12)
    for x, gr in zip(logits, (got.mu, got.A, got.C)):
        assert_close(gr, x.grad, rtol=0, atol=1e-12)


def test_expected_gradient_at_the_truth_is_exactly_zero():
    # sum_x p(x) grad log p(x) = grad sum_x p(x) = 0, over every sequence of the length
    from interp.interpret.cache import all_sequences

    hmm = get_process("cyclic", n_states=3, n_tokens=3, seed=1, transition_nnz=2, emission_nnz=2)
    em = hmm.to_emission()
    logits = [torch.log(x) for x in (em.mu, em.A, em.C)]
    tokens = all_sequences(3, 5)
    p = torch.exp(log_likelihood(hmm, tokens))
    assert float(p.sum()) == pytest.approx(1, abs=1e-12)

    def expected(at):
        total = [torch.zeros_like(x) for x in at]
        for k in range(tokens.shape[0]):
            grads = log_likelihood_gradient(*at, tokens[k:k + 1])
            for t, gr in zip(total, (grads.mu, grads.A, grads.C)):
                t += p[k] * gr
        return total

    for t in expected(logits):
        assert_close(t, torch.zeros_like(t), atol=1e-12, rtol=0)
    # away from the truth it is not zero (the check can fail)
    assert max(float(t.abs().max()) for t in expected([torch.zeros_like(x) for x in logits])) > 1e-2


def test_float32_stays_float32_and_matches_float64():
    p64 = random_form(5, 7, seed=9)
    p32 = EmissionForm(*(x.float() for x in (p64.mu, p64.A, p64.C)))
    tokens = torch.randint(7, (50, 20), generator=torch.Generator().manual_seed(1))
    c32, c64 = expected_counts(p32, tokens), expected_counts(p64, tokens)
    for a, b in zip(c32, c64):
        assert a.dtype == torch.float32
        assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
    grads = softmax_gradient(c64, p64)
    # the gradient of a row-softmax parameter sums to zero over each row
    for gr in grads:
        assert_close(gr.sum(-1), torch.zeros_like(gr.sum(-1)), rtol=0, atol=1e-10)


@pytest.mark.parametrize("tokens, match", [
    (torch.tensor([[0, 7]]), "out of range"),
    (torch.tensor([0, 1]), "2-D"),
    (torch.tensor([[0.0, 1.0]]), "integer"),
])
def test_bad_tokens_raise(tokens, match):
    with pytest.raises(ValueError, match=match):
        expected_counts(random_form(2, 3, seed=0), tokens)
