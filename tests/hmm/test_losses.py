"""Optimal loss (myopic entropy), entropy rate and unigram loss against brute force and golden values."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from interp.hmm import HMM, entropy_rate, get_process, optimal_loss, predictive_entropy, unigram_loss

LOG2, LOG3 = math.log(2), math.log(3)


def f64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def h2(p: float) -> float:
    """Binary entropy in nats."""
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


def brute_force_myopic_entropy(h: HMM, max_t: int) -> list[float]:
    """H(X_t | X_0..X_{t-1}) for t = 0..max_t by enumerating all V^t prefixes:
    sum over prefixes of P(prefix) * H(P(next token | prefix)), where
    P(prefix, z) = initial @ T[x_0] @ ... @ T[x_{t-1}] and P(next = v | prefix) = P(prefix, v) / P(prefix)."""
    T, init = h.T.numpy(), h.initial.numpy()
    V = T.shape[0]
    out = []
    for t in range(max_t + 1):
        total = 0.0
        for prefix in itertools.product(range(V), repeat=t):
            alpha = init
            for x in prefix:
                alpha = alpha @ T[x]
            p = alpha.sum()
            if p == 0:
                continue
            nxt = np.array([(alpha @ T[v]).sum() for v in range(V)]) / p
            nz = nxt[nxt > 0]
            total += p * float(-(nz * np.log(nz)).sum())
        out.append(total)
    return out


BRUTE_CASES = {
    "mess3": get_process("mess3"),
    "mess3-sharp": get_process("mess3", x=0.05, a=0.85),
    "rrxor": get_process("rrxor"),
    "z1r": get_process("z1r"),
    "even": get_process("even"),
    "random-emission": get_process("random", n_states=3, n_tokens=3, seed=4),
    "random-general": get_process("random", n_states=4, n_tokens=2, emission=False, seed=5),
    "mess3-nonstationary": HMM(get_process("mess3").T, initial=f64([0.7, 0.2, 0.1])),
}


@pytest.mark.parametrize("name", list(BRUTE_CASES))
def test_optimal_loss_matches_brute_force(name):
    h = BRUTE_CASES[name]
    want = brute_force_myopic_entropy(h, 6)
    res = optimal_loss(h, 7, method="exact")
    assert res.exact and res.n_exact == 7
    assert res.per_position.shape == (7,) and res.per_position.dtype == torch.float64
    assert_close(res.per_position, f64(want), rtol=0, atol=1e-12)
    assert_close(res.stderr, torch.zeros(7, dtype=torch.float64), rtol=0, atol=0)
    # 'auto' is exact when the MSP is small enough.
    assert_close(optimal_loss(h, 7).per_position, res.per_position, rtol=0, atol=0)


def test_z1r_golden_optimal_loss():
    """z1r (see test_filtering for the belief derivations), H_t = H(X_t | X_<t):
    t = 0: pi @ E = (1/2, 1/2)                                        -> log 2.
    t = 1: after "0" predict (1/3, 2/3), after "1" predict (2/3, 1/3)  -> h(1/3) = log 3 - (2/3) log 2.
    t = 2: "00" (1/6) and "11" (1/6) synchronise (entropy 0); "01" (1/3) is at the random state and
           "10" (1/3) is at (1/2, 1/2, 0), which predicts (1/2, 1/2)  -> (2/3) log 2.
    t >= 3: every belief is a vertex, the random state with probability 1/3 -> (1/3) log 2."""
    res = optimal_loss(get_process("z1r"), 8)
    want = [LOG2, LOG3 - 2 / 3 * LOG2, 2 / 3 * LOG2] + [LOG2 / 3] * 5
    assert h2(1 / 3) == pytest.approx(LOG3 - 2 / 3 * LOG2, rel=1e-15)
    assert_close(res.per_position, f64(want), rtol=0, atol=1e-15)


def test_rrxor_golden_optimal_loss():
    """RRXOR: in any phase the next token is a fair bit given at most one earlier token (a random
    bit, or an XOR whose other input is unseen), so H_0 = H_1 = log 2. The myopic entropy then falls
    to the entropy rate (2/3) log 2 (two random bits per three tokens); its excess roughly halves
    every period, about 1e-6 left at t = 59, and it never goes below the rate."""
    res = optimal_loss(get_process("rrxor"), 60)
    assert_close(res.per_position[:2], f64([LOG2, LOG2]), rtol=0, atol=1e-15)
    assert res.per_position[59].item() == pytest.approx(2 / 3 * LOG2, abs=2e-6)
    assert bool((res.per_position >= 2 / 3 * LOG2 - 1e-12).all())


@pytest.mark.parametrize(
    "h, length",
    [(get_process("mess3"), 10), (get_process("mess3", x=0.05, a=0.85), 10), (get_process("rrxor"), 20),
     (get_process("z1r"), 10), (get_process("even"), 20), (get_process("golden_mean", p=0.3), 20),
     (get_process("random", n_states=5, n_tokens=3, seed=1), 8),
     (get_process("random", n_states=3, n_tokens=2, emission=False, seed=2), 12)],
    ids=["mess3", "mess3-sharp", "rrxor", "z1r", "even", "golden", "random-emission", "random-general"],
)
def test_optimal_loss_non_increasing_for_stationary_processes(h, length):
    """Stationarity + conditioning reduces entropy: H(X_{t+1} | X_0..X_t) <= H(X_t | X_0..X_{t-1})."""
    assert h.is_stationary
    v = optimal_loss(h, length, method="exact").per_position
    assert bool((v[1:] <= v[:-1] + 1e-12).all()), v
    assert bool((v >= 0).all())


@pytest.mark.parametrize("name", ["mess3", "rrxor", "z1r", "even", "golden_mean", "random", "cyclic"])
def test_position_zero_is_unigram_entropy(name):
    h = get_process(name)
    p = h.pi @ h.emission_matrix
    want = float(-(p[p > 0] * p[p > 0].log()).sum())
    assert unigram_loss(h) == pytest.approx(want, rel=1e-14, abs=0)
    assert optimal_loss(h, 1).per_position[0].item() == pytest.approx(want, rel=1e-14, abs=0)


def test_unigram_loss_known_values():
    assert unigram_loss(get_process("mess3")) == pytest.approx(LOG3, rel=1e-14)
    assert unigram_loss(get_process("z1r")) == pytest.approx(LOG2, rel=1e-14)
    # golden mean (p = 1/2): pi = (2/3, 1/3), P(0) = 2/3 * 1/2 = 1/3.
    assert unigram_loss(get_process("golden_mean")) == pytest.approx(h2(1 / 3), rel=1e-14)


def test_non_stationary_start_position_zero_uses_initial():
    h = HMM(get_process("z1r").T, initial=f64([1.0, 0.0, 0.0]))  # deterministic: 0, 1, random, ...
    res = optimal_loss(h, 6)
    assert_close(res.per_position, f64([0, 0, LOG2, 0, 0, LOG2]), rtol=0, atol=1e-15)


def test_predictive_entropy_values():
    h = get_process("z1r")
    b = f64([[1, 0, 0], [0, 0, 1], [1 / 3, 2 / 3, 0]])
    assert_close(predictive_entropy(b, h), f64([0, LOG2, h2(1 / 3)]), rtol=0, atol=1e-15)
    assert predictive_entropy(b[None].expand(4, 3, 3), h).shape == (4, 3)


# ------------------------------------------------------------------------- Monte Carlo
def test_auto_switches_to_monte_carlo_past_max_beliefs():
    h = get_process("mess3")
    exact = optimal_loss(h, 9, method="exact")
    # Depth d holds 3^d beliefs; the walk stops after the first depth whose 3^d * 3 > 100: d = 4.
    res = optimal_loss(h, 9, max_beliefs=100, n_samples=20_000, seed=1)
    assert res.n_exact == 5 and not res.exact
    assert_close(res.per_position[:5], exact.per_position[:5], rtol=0, atol=0)
    assert_close(res.stderr[:5], torch.zeros(5, dtype=torch.float64), rtol=0, atol=0)
    se = res.stderr[5:]
    assert bool((se > 0).all()) and bool((se < 1e-3).all())
    z = (res.per_position[5:] - exact.per_position[5:]).abs() / se
    assert bool((z <= 4).all()), z


@pytest.mark.parametrize("h", [get_process("rrxor"), get_process("random", n_states=4, n_tokens=3, seed=3)],
                         ids=["rrxor", "random"])
def test_monte_carlo_method_agrees_with_exact(h):
    exact = optimal_loss(h, 8, method="exact")
    mc = optimal_loss(h, 8, method="monte_carlo", n_samples=20_000, seed=2)
    assert mc.n_exact == 0
    # Position 0 has no randomness: every sample starts from the same belief.
    assert mc.per_position[0].item() == pytest.approx(exact.per_position[0].item(), rel=1e-14, abs=0)
    assert mc.stderr[0].item() == pytest.approx(0.0, abs=1e-15)
    # Within 4 standard errors (plus round-off, for positions whose entropy is the same on every sample).
    err = (mc.per_position[1:] - exact.per_position[1:]).abs()
    assert bool((err <= 4 * mc.stderr[1:] + 1e-12).all()), err / mc.stderr[1:]
    # Reproducible from its seed.
    again = optimal_loss(h, 8, method="monte_carlo", n_samples=20_000, seed=2)
    assert_close(again.per_position, mc.per_position, rtol=0, atol=0)


def test_exact_raises_when_infeasible():
    with pytest.raises(ValueError, match=r"exact optimal loss needs the MSP to depth 9, but it exceeds max_beliefs=100"):
        optimal_loss(get_process("mess3"), 10, method="exact", max_beliefs=100)


# ------------------------------------------------------------------------ entropy rate
@pytest.fixture(scope="module")
def mess3_rate():
    return entropy_rate(get_process("mess3", x=0.15, a=0.6))


def test_mess3_entropy_rate_value(mess3_rate):
    """SCIENCE.md: Mess3(0.15, 0.6) has entropy rate about 1.0889 nats/token."""
    assert mess3_rate.value == pytest.approx(1.0889, abs=1e-3)
    assert 0 < mess3_rate.stderr < 3e-5  # precise enough for the 1e-4 comparisons below


def test_mess3_long_context_optimal_loss_reaches_entropy_rate(mess3_rate):
    h = get_process("mess3", x=0.15, a=0.6)
    exact = optimal_loss(h, 11, method="exact")
    assert exact.per_position[10].item() == pytest.approx(mess3_rate.value, abs=1e-4)
    mc = optimal_loss(h, 41, max_beliefs=10_000, n_samples=100_000, seed=3)
    assert mc.n_exact < 41 and mc.stderr[40].item() < 2.5e-5
    assert mc.per_position[40].item() == pytest.approx(mess3_rate.value, abs=1e-4)
    # The gap to the unigram loss (log 3) is the ~0.01 nats SCIENCE.md quotes.
    assert unigram_loss(h) - mess3_rate.value == pytest.approx(0.0097, abs=1e-3)


def test_z1r_entropy_rate_is_exact():
    """After synchronising, z1r's predictive entropy cycles log 2, 0, 0: over positions 64..255
    (192 = 64 full periods) the mean is exactly log(2) / 3 for every sequence."""
    est = entropy_rate(get_process("z1r"), n=256, length=256, burn_in=64, seed=0)
    assert est.value == pytest.approx(LOG2 / 3, rel=1e-14)
    assert est.stderr == pytest.approx(0.0, abs=1e-15)


def test_entropy_rate_burn_in_zero_includes_position_zero():
    """burn_in=0 averages positions 0..length-1. For z1r with length 2 both terms are
    deterministic: H_0 = log 2 (no context) and H_1 = h(1/3), so the mean is (log 2 + h(1/3)) / 2."""
    est = entropy_rate(get_process("z1r"), n=64, length=2, burn_in=0, seed=0)
    assert est.value == pytest.approx((LOG2 + h2(1 / 3)) / 2, rel=1e-12)


def test_entropy_rate_burn_in_one_uses_positions_one_on():
    """burn_in=1, length=3 averages H_1 = h(1/3) and the position-2 entropy, which is log 2 on
    "01" and "10" and 0 on "00" and "11": its mean over sequences is (2/3) log 2."""
    est = entropy_rate(get_process("z1r"), n=40_000, length=3, burn_in=1, seed=0)
    assert est.value == pytest.approx((h2(1 / 3) + 2 / 3 * LOG2) / 2, abs=4 * est.stderr)


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("length", [0, -1, 2.5, True, "3"])
def test_bad_length_raises(length):
    with pytest.raises(ValueError, match=r"length must be a positive integer"):
        optimal_loss(get_process("mess3"), length)


def test_bad_method_raises():
    with pytest.raises(ValueError, match=r"method must be 'auto', 'exact' or 'monte_carlo', got 'bogus'"):
        optimal_loss(get_process("mess3"), 3, method="bogus")


@pytest.mark.parametrize("burn_in, length", [(10, 10), (11, 10), (-1, 10)])
def test_entropy_rate_bad_burn_in_raises(burn_in, length):
    with pytest.raises(ValueError, match=r"burn_in must lie in \[0, length\)"):
        entropy_rate(get_process("mess3"), n=8, length=length, burn_in=burn_in)
