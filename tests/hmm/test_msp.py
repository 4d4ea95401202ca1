"""Mixed-state presentation: counts checked against exact rational arithmetic, probabilities, edges."""

from fractions import Fraction

import pytest
import torch
from torch.testing import assert_close

from interp.hmm import HMM, get_process, mixed_state_presentation


def f64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def exact_beliefs_by_depth(T: list, init: tuple, max_depth: int) -> list[set]:
    """Independent oracle in exact rationals: the set of distinct beliefs at each depth 0..max_depth,
    eta' = eta @ T[x] / (eta @ T[x] @ 1) for every token x with non-zero probability."""
    V, S = len(T), len(init)
    levels = [{tuple(init)}]
    for _ in range(max_depth):
        nxt = set()
        for b in levels[-1]:
            for x in range(V):
                u = [sum(b[i] * T[x][i][j] for i in range(S)) for j in range(S)]
                z = sum(u)
                if z:
                    nxt.add(tuple(v / z for v in u))
        levels.append(nxt)
    return levels


def rrxor_fractions():
    half = Fraction(1, 2)
    T = [[[Fraction(0)] * 5 for _ in range(5)] for _ in range(2)]
    T[0][0][1] = T[1][0][2] = half  # start: first random bit
    T[0][1][4] = T[1][1][3] = half  # saw 0: second bit; XOR = that bit
    T[0][2][3] = T[1][2][4] = half  # saw 1: second bit; XOR = its complement
    T[1][3][0] = Fraction(1)  # XOR is 1
    T[0][4][0] = Fraction(1)  # XOR is 0
    pi = (Fraction(1, 3),) + (Fraction(1, 6),) * 4
    return T, pi


def mess3_fractions(x: Fraction, a: Fraction):
    y, b = 1 - 2 * x, (1 - a) / 2
    smat = [[y if i == j else x for j in range(3)] for i in range(3)]
    emit = [[a if j == k else b for k in range(3)] for j in range(3)]
    T = [[[smat[i][j] * emit[j][k] for j in range(3)] for i in range(3)] for k in range(3)]
    return T, (Fraction(1, 3),) * 3


def test_rrxor_fraction_oracle_matches_library_T():
    T, pi = rrxor_fractions()
    h = get_process("rrxor")
    assert_close(h.T, torch.tensor([[[float(v) for v in r] for r in m] for m in T], dtype=torch.float64),
                 rtol=0, atol=0)
    assert_close(h.pi, torch.tensor([float(v) for v in pi], dtype=torch.float64), rtol=0, atol=1e-15)


def test_rrxor_has_36_distinct_beliefs():
    """SCIENCE.md: RRXOR's MSP has 36 distinct beliefs. Exact rational enumeration gives cumulative
    counts 1, 3, 7, 15, 27, 34, 36 at depths 0..6 and nothing new afterwards (checked to depth 12)."""
    T, pi = rrxor_fractions()
    levels = exact_beliefs_by_depth(T, pi, 12)
    cumulative, seen = [], set()
    for lev in levels:
        seen |= lev
        cumulative.append(len(seen))
    assert cumulative[:7] == [1, 3, 7, 15, 27, 34, 36]
    assert cumulative[6:] == [36] * 7

    h = get_process("rrxor")
    for d in range(13):
        msp = mixed_state_presentation(h, d)
        assert msp.distinct()[0].shape[0] == cumulative[d], d
        assert msp.at_depth(d)[0].shape[0] == len(levels[d]), d
    # The library's distinct beliefs are exactly the rational ones: a one-to-one match within 1e-12.
    got = mixed_state_presentation(h, 12).distinct()[0]
    want = torch.tensor([[float(v) for v in b] for b in seen], dtype=torch.float64)
    dist = (got[:, None, :] - want[None, :, :]).abs().amax(-1)  # (36, 36) max-norm distances
    nearest = dist.argmin(1)
    assert_close(dist.min(1).values, torch.zeros(36, dtype=torch.float64), rtol=0, atol=1e-12)
    assert sorted(nearest.tolist()) == list(range(36))


@pytest.mark.parametrize("x, a", [(Fraction(3, 20), Fraction(3, 5)), (Fraction(1, 20), Fraction(17, 20))])
def test_mess3_depth_d_has_3_to_the_d_distinct_beliefs(x, a):
    """No two token strings of equal length reach the same Mess3 belief (checked exactly for d <= 5),
    so the MSP must not merge any of them: 3^d beliefs at depth d."""
    T, pi = mess3_fractions(x, a)
    levels = exact_beliefs_by_depth(T, pi, 5)
    assert [len(lev) for lev in levels] == [3 ** d for d in range(6)]
    msp = mixed_state_presentation(get_process("mess3", x=float(x), a=float(a)), 7)
    for d in range(8):
        assert msp.at_depth(d)[0].shape[0] == 3 ** d
    # And no belief repeats across depths either.
    assert msp.distinct()[0].shape[0] == sum(3 ** d for d in range(8))


def test_z1r_msp_golden():
    """z1r: depth 0 pi; depth 1 (1/3, 2/3, 0) and (1/3, 0, 2/3); depth 2 (0, 1, 0), (0, 0, 1),
    (1/2, 1/2, 0), (1, 0, 0) with probabilities 1/6, 1/3, 1/3, 1/6; from depth 3 on the three
    vertices with 1/3 each (synchronised). 7 distinct beliefs in all."""
    msp = mixed_state_presentation(get_process("z1r"), 6)
    assert msp.distinct()[0].shape[0] == 7
    want = {
        1: {(1 / 3, 2 / 3, 0.0): 1 / 2, (1 / 3, 0.0, 2 / 3): 1 / 2},
        2: {(0.0, 1.0, 0.0): 1 / 6, (0.0, 0.0, 1.0): 1 / 3, (0.5, 0.5, 0.0): 1 / 3, (1.0, 0.0, 0.0): 1 / 6},
        4: {(0.0, 1.0, 0.0): 1 / 3, (0.0, 0.0, 1.0): 1 / 3, (1.0, 0.0, 0.0): 1 / 3},
    }
    for d, table in want.items():
        b, p = msp.at_depth(d)
        assert b.shape[0] == len(table)
        for row, prob in zip(b.tolist(), p.tolist()):
            key = min(table, key=lambda k: max(abs(u - v) for u, v in zip(k, row)))
            assert_close(f64(row), f64(key), rtol=0, atol=1e-15)
            assert prob == pytest.approx(table[key], rel=0, abs=1e-15)


MSP_CASES = {
    "mess3": (get_process("mess3"), 6),
    "rrxor": (get_process("rrxor"), 10),
    "even": (get_process("even"), 10),
    "golden_mean": (get_process("golden_mean"), 10),
    "random-general": (get_process("random", n_states=3, n_tokens=2, emission=False, seed=3), 8),
    "z1r-nonstationary": (HMM(get_process("z1r").T, initial=f64([0.5, 0.25, 0.25])), 6),
}


@pytest.mark.parametrize("name", list(MSP_CASES))
def test_msp_probabilities_and_beliefs(name):
    h, depth = MSP_CASES[name]
    msp = mixed_state_presentation(h, depth)
    assert msp.max_depth == depth
    assert msp.beliefs.shape == (msp.probs.shape[0], h.n_states) and msp.depth.shape == msp.probs.shape
    # Depth 0 is the initial distribution with probability 1.
    b0, p0 = msp.at_depth(0)
    assert_close(b0, h.initial[None], rtol=0, atol=0)
    assert_close(p0, f64([1.0]), rtol=0, atol=0)
    for d in range(depth + 1):
        b, p = msp.at_depth(d)
        assert_close(p.sum(), f64(1.0), rtol=0, atol=1e-12)
        assert bool((p > 0).all())
        # Every belief on the simplex.
        assert bool((b >= 0).all())
        assert_close(b.sum(1), torch.ones(b.shape[0], dtype=torch.float64), rtol=0, atol=1e-12)
        # The mean belief at every depth is the state distribution initial @ Smat^d.
        want = h.initial @ torch.linalg.matrix_power(h.transition_matrix, d)
        assert_close(p @ b, want, rtol=0, atol=1e-12)
    _, w = msp.distinct()
    assert_close(w.sum(), f64(1.0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(MSP_CASES))
def test_msp_edges_are_consistent(name):
    h, depth = MSP_CASES[name]
    msp = mixed_state_presentation(h, depth)
    src, dst, tok, ep = msp.edge_src, msp.edge_dst, msp.edge_token, msp.edge_prob
    assert src.shape == dst.shape == tok.shape == ep.shape
    # Edges go from depth d to depth d + 1.
    assert torch.equal(msp.depth[dst], msp.depth[src] + 1)
    # edge_prob is P(token | src belief) and sums to 1 over tokens for every belief below max depth.
    below = int((msp.depth < depth).sum())
    out = torch.zeros(msp.probs.shape[0], dtype=torch.float64).index_add_(0, src, ep)
    assert_close(out[:below], torch.ones(below, dtype=torch.float64), rtol=0, atol=1e-12)
    assert_close(out[below:], torch.zeros(out.shape[0] - below, dtype=torch.float64), rtol=0, atol=0)
    u = torch.einsum("es,esj->ej", msp.beliefs[src], h.T[tok])
    assert_close(ep, u.sum(1), rtol=0, atol=1e-15)
    # The child is the normalised parent @ T[token] (up to the 1e-12 merge grid).
    assert_close(msp.beliefs[dst], u / u.sum(1, keepdim=True), rtol=0, atol=2e-12)
    # Reach probabilities flow along edges.
    inflow = torch.zeros_like(msp.probs).index_add_(0, dst, msp.probs[src] * ep)
    assert_close(inflow[msp.depth > 0], msp.probs[msp.depth > 0], rtol=0, atol=1e-12)
    # At most one edge per (source, token).
    keys = src * h.n_tokens + tok
    assert torch.unique(keys).shape[0] == keys.shape[0]


def test_msp_depth_zero_has_no_edges():
    msp = mixed_state_presentation(get_process("mess3"), 0)
    assert msp.beliefs.shape == (1, 3) and msp.edge_src.numel() == 0 and msp.max_depth == 0


def test_max_beliefs_limit_raises():
    h = get_process("mess3")
    mixed_state_presentation(h, 4, max_beliefs=243)  # depth 4 needs 81 parents * 3 tokens = 243
    with pytest.raises(ValueError, match=r"MSP at depth 5 would hold up to 243 beliefs, over max_beliefs=100"):
        mixed_state_presentation(h, 5, max_beliefs=100)


@pytest.mark.parametrize("depth", [-1, 1.5, True, "3"])
def test_bad_depth_raises(depth):
    with pytest.raises(ValueError, match=r"max_depth must be a non-negative integer"):
        mixed_state_presentation(get_process("mess3"), depth)
