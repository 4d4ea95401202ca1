"""The head-count rule on hand-derived cases: Mess3 on both sides of x = 1/3 and at it, a complex pair with a short
and a long context, a diagonal operator with one positive and one negative eigenvalue, and GHMMs."""

import math

import pytest
import torch

from interp.hmm import GHMM, HMM, get_process
from interp.hmm.heads import head_count, lag_terms

# the catalogue's complex-pair process: zero-sum eigenvalues -0.405 +- 0.721i, turning ~119.4 degrees a lag
COMPLEX = dict(n_states=3, n_tokens=3, shift_weight=0.8)


def diagonal_hmm(lam1: float, lam2: float) -> HMM:
    """3 states, Smat = 1 pi + lam1 e1 e1^T + lam2 e2 e2^T (pi uniform; e1, e2 orthonormal and zero-sum): its
    operator on zero-sum vectors is diag(lam1, lam2). Emissions near the identity, so the token vectors span."""
    one_pi = torch.full((3, 3), 1 / 3, dtype=torch.float64)
    e1 = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64) / math.sqrt(2)
    e2 = torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64) / math.sqrt(6)
    smat = one_pi + lam1 * torch.outer(e1, e1) + lam2 * torch.outer(e2, e2)
    assert bool((smat >= 0).all())
    emit = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]], dtype=torch.float64)
    return HMM(torch.einsum("ij,jk->kij", smat, emit))


def as_ghmm(hmm: HMM, seed: int = 0) -> GHMM:
    """The same process in another basis: T[x] -> B^-1 T[x] B, w = B^-1 1 (word probabilities unchanged)."""
    g = torch.Generator().manual_seed(seed)
    B = torch.eye(hmm.n_states, dtype=torch.float64) + 0.3 * torch.randn(hmm.n_states, hmm.n_states, generator=g,
                                                                           dtype=torch.float64)
    Binv = torch.linalg.inv(B)
    return GHMM(Binv @ hmm.T @ B, w=Binv @ torch.ones(hmm.n_states, dtype=torch.float64))


def assert_solves(hc, hmm, context):
    """The heads' non-negative weights reproduce every lag term v Smat^k, k >= 1, and leave lag 0 to the skip path."""
    terms = lag_terms(hmm, context)
    assert hc.matrices.shape == (hc.n_heads, hmm.n_tokens, hmm.n_states)
    assert hc.weights.shape == (hc.n_heads, context)
    assert bool((hc.weights >= 0).all()) and not hc.weights[:, 0].any()
    rebuilt = torch.einsum("jk,jxs->kxs", hc.weights, hc.matrices)
    torch.testing.assert_close(rebuilt[1:], terms[1:], atol=1e-12, rtol=0)


def test_mess3_positive_decay_needs_one_head_with_geometric_weights():
    hmm = get_process("mess3", x=0.15, a=0.6)
    hc = head_count(hmm, 10)
    assert (hc.n_heads, hc.rank, hc.pointed) == (1, 1, True)
    assert hc.reason.startswith("one head:") and "0.55 (twice)" in hc.reason
    assert [complex(z) for z in hc.eigenvalues] == pytest.approx([0.55, 0.55], abs=1e-12)
    a = hc.weights[0]
    torch.testing.assert_close(a[2:] / a[1:-1], torch.full((8,), 0.55, dtype=torch.float64), atol=1e-12, rtol=0)
    assert hc.heads_at(0) == [] and all(hc.heads_at(k) == [0] for k in range(1, 10))
    assert_solves(hc, hmm, 10)


def test_mess3_negative_decay_needs_two_heads_even_and_odd_lags():
    hmm = get_process("mess3", x=0.5, a=0.6)
    hc = head_count(hmm, 10)
    assert (hc.n_heads, hc.rank, hc.pointed) == (2, 1, False)
    assert hc.reason.startswith("two heads:") and "-0.5 (twice)" in hc.reason and "odd" in hc.reason
    odd, even = hc.heads_at(1), hc.heads_at(2)
    assert len(odd) == 1 and len(even) == 1 and odd != even
    assert all(hc.heads_at(k) == (odd if k % 2 else even) for k in range(1, 10))
    assert_solves(hc, hmm, 10)
    # any x in (1/3, 1/2] alternates: 1 - 3x < 0
    assert head_count(get_process("mess3", x=0.4, a=0.7), 10).n_heads == 2


def test_mess3_at_one_third_needs_no_head_even_off_by_rounding():
    for x in (1 / 3, 1 / 3 + 1e-14, 1 / 3 - 1e-14):  # 1 - 3x at rounding level: no memory to write
        hc = head_count(get_process("mess3", x=x, a=0.6), 10)
        assert hc.n_heads == 0 and hc.reason.startswith("no head:"), x
        assert hc.matrices.shape == (0, 3, 3) and hc.weights.shape == (0, 10)
    assert head_count(get_process("mess3", x=0.15, a=0.6), 1).n_heads == 0  # no earlier token at all


def test_complex_pair_needs_two_heads_within_a_half_turn_and_three_beyond():
    hmm = get_process("cyclic", **COMPLEX)
    eig = [complex(z) for z in head_count(hmm, 3).eigenvalues]
    assert len(eig) == 2 and abs(eig[0].imag) > 0.5 and eig[0] == pytest.approx(eig[1].conjugate(), abs=1e-12)
    turn = math.degrees(abs(math.atan2(eig[0].imag, eig[0].real)))
    assert 90 < turn < 180  # lags 1, 2 span less than a half-turn between them; lags 1..3 more
    assert head_count(hmm, 2).n_heads == 1  # a single lag is one ray
    short = head_count(hmm, 3)
    assert (short.n_heads, short.rank, short.pointed) == (2, 2, True) and short.margin > 0.1
    long = head_count(hmm, 10)
    assert (long.n_heads, long.rank, long.pointed) == (3, 2, False)
    assert long.reason.startswith("3 heads:") and "-0.4053 +- 0.7205i" in long.reason and "turns by 119.4" in long.reason
    assert_solves(short, hmm, 3)
    assert_solves(long, hmm, 10)


@pytest.mark.parametrize("lam1, lam2", [(0.5, -0.3), (0.2, -0.4)])
def test_diagonal_operator_with_positive_and_negative_eigenvalue_needs_two_heads(lam1, lam2):
    hmm = diagonal_hmm(lam1, lam2)
    assert sorted(complex(z).real for z in head_count(hmm, 2).eigenvalues) == pytest.approx(sorted([lam1, lam2]))
    assert head_count(hmm, 2).n_heads == 1  # one lag: one ray
    hc = head_count(hmm, 10)  # (lam1^k, lam2^k) stays in the half-plane of the positive one: pointed, 2-D
    assert (hc.n_heads, hc.rank, hc.pointed) == (2, 2, True)
    assert_solves(hc, hmm, 10)


def test_ghmm_uses_the_w_zero_sum_subspace_and_matches_its_hmm_in_any_basis():
    for x, n in ((0.15, 1), (0.5, 2)):
        ghmm = as_ghmm(get_process("mess3", x=x, a=0.6))
        hc = head_count(ghmm, 10)
        assert hc.n_heads == n, (x, hc.reason)
        assert_solves(hc, ghmm, 10)
    hc = head_count(as_ghmm(get_process("cyclic", **COMPLEX), seed=1), 10)
    assert (hc.n_heads, hc.rank, hc.pointed) == (3, 2, False)
    # the catalogue's post-quantum GHMM: a complex pair turning 11.1 degrees a lag stays in a half-turn at context 10
    pq = head_count(get_process("post_quantum"), 10)
    assert (pq.n_heads, pq.rank, pq.pointed) == (2, 2, True) and "turns by 11.1" in pq.reason


def test_bad_context_and_tolerance_are_value_errors():
    hmm = get_process("mess3")
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="context must be a positive integer"):
            head_count(hmm, bad)
    with pytest.raises(ValueError, match="tol must lie in"):
        head_count(hmm, 10, tol=0.1)


@pytest.mark.parametrize("argv, line", [
    (["--param", "x=0.5", "--length", "10"],
     "heads     first-order update at context 10: two heads: over lags 1..9 the lag terms alternate in sign along one "
     "matrix (zero-sum eigenvalues -0.5 (twice): a negative one), and non-negative weights need one head for the odd "
     "lags and one for the even"),
    (["--process", "cyclic", "--param", "n_states=3", "--param", "n_tokens=3", "--param", "shift_weight=0.8",
      "--length", "3"], "heads     first-order update at context 3: 2 heads: over lags 1..2 the lag terms span 2 "
     "dimensions"),
])
def test_describe_prints_the_prediction_and_its_reason(capsys, argv, line):
    from interp.cli import main

    assert main(["describe", "--samples", "200", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(line), lines[1]
