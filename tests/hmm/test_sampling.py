"""Sampling: shapes, determinism, consistency with T, and statistics within computed error bars."""

import numpy as np
import pytest
import torch

from interp.hmm import HMM, get_process, log_likelihood, sample

N_SIGMA = 5.0  # every statistical check below allows 5 standard errors, computed from the counts


def f64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def assert_frequencies(counts: torch.Tensor, probs: torch.Tensor, n: int):
    """Counts of a multinomial(n, probs): each category within N_SIGMA binomial standard errors,
    and categories with probability zero never seen."""
    counts, probs = counts.double(), probs.double()
    assert float(counts.sum()) == n
    se = torch.sqrt(probs * (1 - probs) / n)
    err = (counts / n - probs).abs()
    assert bool((err <= N_SIGMA * se).all()), f"freq {counts / n} vs {probs}, {err / se} standard errors"
    assert bool((counts[probs == 0] == 0).all())


PROCESSES = {
    "mess3": get_process("mess3"),
    "rrxor": get_process("rrxor"),
    "even": get_process("even"),
    "golden_mean": get_process("golden_mean", p=0.3),
    "random-general": get_process("random", n_states=4, n_tokens=3, emission=False, seed=1),
    "random-emission": get_process("random", n_states=5, n_tokens=4, seed=2),
}


# ---------------------------------------------------------------------- shapes, seeds
@pytest.mark.parametrize("name", list(PROCESSES))
def test_shapes_dtypes_and_ranges(name):
    h = PROCESSES[name]
    x = sample(h, 7, 13, seed=0)
    assert x.shape == (7, 13) and x.dtype == torch.int64 and x.device == h.device
    assert int(x.min()) >= 0 and int(x.max()) < h.n_tokens
    x2, s = sample(h, 7, 13, seed=0, return_states=True)
    assert torch.equal(x, x2)
    assert s.shape == (7, 13) and s.dtype == torch.int64
    assert int(s.min()) >= 0 and int(s.max()) < h.n_states
    assert torch.equal(sample(h, 7, 13, seed=0), x)  # the same seed, the same draws
    one = sample(h, 1, 1, seed=3)
    assert one.shape == (1, 1)


def test_same_seed_same_tokens_different_seed_different():
    h = get_process("mess3")
    a, b, c = sample(h, 50, 40, seed=1), sample(h, 50, 40, seed=1), sample(h, 50, 40, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Not just a shifted copy: the two seeds disagree at a large fraction of positions
    # (independent Mess3 tokens agree with probability sum_k P(k)^2 = 1/3).
    assert float((a != c).double().mean()) == pytest.approx(2 / 3, abs=0.05)


def test_generator_argument():
    h = get_process("rrxor")
    g = torch.Generator().manual_seed(5)
    a = sample(h, 20, 30, generator=g)
    assert torch.equal(a, sample(h, 20, 30, seed=5))  # seed=k is a fresh generator seeded with k
    b = sample(h, 20, 30, generator=g)  # the generator advances between calls
    assert not torch.equal(a, b)
    g2 = torch.Generator().manual_seed(5)
    assert torch.equal(torch.cat([sample(h, 20, 30, generator=g2), sample(h, 20, 30, generator=g2)]),
                       torch.cat([a, b]))


def test_sampling_does_not_touch_global_rng():
    h = get_process("mess3")
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    sample(h, 10, 10, seed=0)
    assert torch.equal(torch.rand(3), want)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, r"pass exactly one of seed= or generator="),
        ({"seed": 0, "generator": torch.Generator()}, r"pass exactly one of seed= or generator="),
        ({"seed": 1.5}, r"seed must be an integer, got 1\.5"),
        ({"seed": True}, r"seed must be an integer, got True"),
    ],
    ids=["neither", "both", "float-seed", "bool-seed"],
)
def test_seed_generator_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample(get_process("mess3"), 2, 3, **kwargs)


@pytest.mark.parametrize(
    "n, length, match",
    [
        (0, 3, r"n must be a positive integer, got 0"),
        (-1, 3, r"n must be a positive integer, got -1"),
        (2.0, 3, r"n must be a positive integer, got 2\.0"),
        (True, 3, r"n must be a positive integer, got True"),
        (2, 0, r"length must be a positive integer, got 0"),
        (2, -4, r"length must be a positive integer, got -4"),
        (2, 3.5, r"length must be a positive integer, got 3\.5"),
        (2, "3", r"length must be a positive integer, got '3'"),
    ],
)
def test_n_and_length_validation(n, length, match):
    with pytest.raises(ValueError, match=match):
        sample(get_process("mess3"), n, length, seed=0)


# ------------------------------------------------------------- consistency with T
@pytest.mark.parametrize("name", list(PROCESSES))
def test_states_consistent_with_tokens(name):
    """Every (state_t, token_t, state_{t+1}) step of a sampled path has T > 0, and every sampled
    sequence has finite log-likelihood."""
    h = PROCESSES[name]
    x, s = sample(h, 200, 60, seed=4, return_states=True)
    p = h.T[x[:, :-1], s[:, :-1], s[:, 1:]]
    assert bool((p > 0).all())
    # The last token must be emittable from the last state.
    assert bool((h.emission_matrix[s[:, -1], x[:, -1]] > 0).all())
    assert bool(torch.isfinite(log_likelihood(h, x)).all())


# ---------------------------------------------------------------------- statistics
@pytest.mark.parametrize("name", list(PROCESSES))
def test_state_and_token_frequencies_match_stationary(name):
    h = PROCESSES[name]
    n, L = 40_000, 25
    x, s = sample(h, n, L, seed=7, return_states=True)
    for t in (0, L - 1):  # a stationary start stays stationary at every position
        assert_frequencies(torch.bincount(s[:, t], minlength=h.n_states), h.pi, n)
        assert_frequencies(torch.bincount(x[:, t], minlength=h.n_tokens), h.pi @ h.emission_matrix, n)


@pytest.mark.parametrize(
    "h",
    [HMM(get_process("mess3").T, initial=f64([1.0, 0.0, 0.0])),
     HMM(get_process("rrxor").T, initial=f64([1.0, 0.0, 0.0, 0.0, 0.0])),
     HMM(get_process("random", n_states=4, n_tokens=3, emission=False, seed=6).T, initial=f64([0.1, 0.0, 0.6, 0.3]))],
    ids=["mess3-from-state-0", "rrxor-from-start", "random-general"],
)
def test_non_stationary_start_state_distribution_evolves_by_smat(h):
    n, L = 40_000, 6
    x, s = sample(h, n, L, seed=8, return_states=True)
    dist = h.initial
    for t in range(L):  # P(state_t) = initial @ Smat^t; P(token_t) = P(state_t) @ E
        assert_frequencies(torch.bincount(s[:, t], minlength=h.n_states), dist, n)
        assert_frequencies(torch.bincount(x[:, t], minlength=h.n_tokens), dist @ h.emission_matrix, n)
        dist = dist @ h.transition_matrix


@pytest.mark.parametrize("name", list(PROCESSES))
def test_transition_counts_match_T(name):
    """Given a visit to state i, the pair (token, next state) is a fresh draw from T[:, i, :]
    (strong Markov property), so counts N[i, x, j] / N[i] estimate T[x, i, j] with binomial error."""
    h = PROCESSES[name]
    V, S = h.n_tokens, h.n_states
    x, s = sample(h, 2_000, 101, seed=9, return_states=True)
    i, tok, j = s[:, :-1].reshape(-1), x[:, :-1].reshape(-1), s[:, 1:].reshape(-1)
    counts = torch.bincount((i * V + tok) * S + j, minlength=S * V * S).view(S, V, S).double()
    visits = counts.sum((1, 2))
    assert bool((visits > 1000).all())
    for st in range(S):
        probs = h.T[:, st, :].reshape(-1)
        assert_frequencies(counts[st].reshape(-1), probs, int(visits[st]))


def test_non_uniform_probabilities_are_resolved():
    """An HMM with one state and skewed token probabilities: frequencies match within error."""
    probs = f64([0.001, 0.009, 0.09, 0.9, 0.0])
    h = HMM(probs[:, None, None])
    n = 200_000
    x = sample(h, 1000, n // 1000, seed=10)
    assert_frequencies(torch.bincount(x.reshape(-1), minlength=5), probs, n)


# ------------------------------------------------------------- forbidden patterns
def test_golden_mean_never_emits_two_zeros():
    for p in (0.5, 0.1):
        x = sample(get_process("golden_mean", p=p), 500, 200, seed=11)
        assert not bool(((x[:, :-1] == 0) & (x[:, 1:] == 0)).any())
        assert bool((x == 0).any())  # the check is not vacuous


def test_even_process_blocks_of_ones_between_zeros_have_even_length():
    x = sample(get_process("even"), 300, 200, seed=12).numpy()
    n_blocks, lengths = 0, set()
    for row in x:
        zeros = np.flatnonzero(row == 0)
        gaps = np.diff(zeros) - 1  # number of 1s strictly between consecutive zeros
        assert bool((gaps % 2 == 0).all()), row
        n_blocks += len(gaps)
        lengths |= set(gaps.tolist())
    assert n_blocks > 1000 and {0, 2, 4} <= lengths  # non-vacuous: many blocks of several lengths


def test_z1r_and_rrxor_follow_their_period_3_rules():
    x = sample(get_process("z1r"), 200, 30, seed=13).numpy()
    for row in x:
        # Some phase ph has a 0 at every t = ph (mod 3) and a 1 at every t = ph + 1 (mod 3).
        assert any((row[ph % 3::3] == 0).all() and (row[(ph + 1) % 3::3] == 1).all() for ph in range(3)), row
    h = HMM(get_process("rrxor").T, initial=f64([1.0, 0, 0, 0, 0]))
    x = sample(h, 200, 30, seed=14)
    assert torch.equal(x[:, 2::3], x[:, 0::3] ^ x[:, 1::3])
