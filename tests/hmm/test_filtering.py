"""Exact filtering: a brute-force oracle, hmmlearn, sequential vs scan, golden values, bad input."""

import contextlib
import functools
import itertools
import math

import numpy as np
import pytest
import torch
from hmmlearn import _hmmc
from hmmlearn.hmm import CategoricalHMM
from torch.testing import assert_close

from interp.hmm import (
    HMM,
    beliefs,
    filter_scan,
    filter_sequential,
    filtering,
    forward_filter,
    get_process,
    log_likelihood,
    native,
    next_token_probs,
)
from interp.hmm.sampling import sample


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def filter_sequential_fused(h, x, **kw):
    """The sequential filter with BLAS products and the compiled fused step at every size (no one-call kernel)."""
    with _patched(filtering, "_NATIVE_SMALL_MAX_STATES", 0), _patched(filtering, "_NATIVE_ONE_CALL_MAX_WORK", 0):
        return filter_sequential(h, x, **kw)


def filter_sequential_torch(h, x, **kw):
    """The sequential filter without compiled kernels: torch operations only (packed rows for small S)."""
    with _patched(native, "enabled", lambda: False):
        return filter_sequential(h, x, **kw)


# filter_sequential itself runs the one-call compiled filter for small S on CPU (interp.hmm.native).
FILTERS = [filter_sequential, filter_sequential_fused, filter_sequential_torch, filter_scan]
FILTER_IDS = ["sequential", "sequential-fused", "sequential-torch", "scan"]


def f64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# ------------------------------------------------------------------ brute-force oracle
@functools.lru_cache(maxsize=None)
def _all_paths(n_states: int, n_steps: int) -> np.ndarray:
    """Every hidden path z_0..z_{n_steps}, one per row: (S^(n_steps+1), n_steps+1)."""
    return np.array(list(itertools.product(range(n_states), repeat=n_steps + 1)), dtype=np.int64)


def brute_force(T: np.ndarray, init: np.ndarray, x: list[int], *, next_tokens: bool = True):
    """Straight from the definitions, by enumerating every hidden path z_0..z_k:

    P(x_0..x_{k-1}, z_0..z_k) = init[z_0] * prod_t T[x_t, z_t, z_{t+1}].

    Returns (beliefs (L, S): P(z_k | x_0..x_{k-1}) for k = 1..L, log P(x_0..x_{k-1}) for k = 1..L,
    next-token distributions (L, V): P(x_k = v | x_0..x_{k-1}) = P(x_0..x_{k-1}, v) / P(x_0..x_{k-1})).
    """
    V, S, _ = T.shape
    L = len(x)

    def joint(prefix):
        k = len(prefix)
        paths = _all_paths(S, k)
        w = init[paths[:, 0]].copy()
        for t in range(k):
            w *= T[prefix[t], paths[:, t], paths[:, t + 1]]
        return paths[:, -1], w

    bel, logp, nxt = np.zeros((L, S)), np.zeros(L), np.full((L, V), np.nan)
    for k in range(1, L + 1):
        last, w = joint(x[:k])
        p = w.sum()
        bel[k - 1] = np.bincount(last, weights=w, minlength=S) / p
        logp[k - 1] = math.log(p)
        if next_tokens:
            nxt[k - 1] = [joint(list(x[:k]) + [v])[1].sum() / p for v in range(V)]
    return bel, logp, nxt


ORACLE_CASES = {
    "mess3": get_process("mess3"),  # destination form
    "mess3-sharp": get_process("mess3", x=0.05, a=0.85),
    "golden_mean": get_process("golden_mean"),  # destination form
    "z1r": get_process("z1r"),  # source form
    "random-emission": get_process("random", n_states=4, n_tokens=3, seed=1),  # source form
    "rrxor": get_process("rrxor"),  # general, all tokens at once
    "even": get_process("even"),  # general
    "random-general-S3V2": get_process("random", n_states=3, n_tokens=2, emission=False, seed=2),
    "random-general-S2V5": get_process("random", n_states=2, n_tokens=5, emission=False, seed=3),
    # Non-stationary starts on each code path.
    "mess3-nonstationary": HMM(get_process("mess3").T, initial=f64([0.7, 0.2, 0.1])),
    "z1r-nonstationary": HMM(get_process("z1r").T, initial=f64([0.6, 0.0, 0.4])),
    "rrxor-from-start": HMM(get_process("rrxor").T, initial=f64([1.0, 0.0, 0.0, 0.0, 0.0])),
    "random-general-nonstationary": HMM(get_process("random", n_states=3, n_tokens=2, emission=False, seed=5).T,
                                        initial=f64([0.5, 0.3, 0.2])),
}
EXPECTED_PATH = {
    "mess3": "destination", "mess3-sharp": "destination", "golden_mean": "destination", "z1r": "source",
    "random-emission": "source", "rrxor": None, "even": None, "random-general-S3V2": None,
    "random-general-S2V5": None, "mess3-nonstationary": "destination", "z1r-nonstationary": "source",
    "rrxor-from-start": None, "random-general-nonstationary": None,
}


def test_oracle_cases_cover_all_three_filter_paths():
    for name, h in ORACLE_CASES.items():
        f = h.factorization
        assert (f[0] if f is not None else None) == EXPECTED_PATH[name], name
    assert set(EXPECTED_PATH.values()) == {"source", "destination", None}


@pytest.mark.parametrize("name", list(ORACLE_CASES))
@pytest.mark.parametrize("filt", FILTERS, ids=FILTER_IDS)
def test_filter_matches_brute_force(name, filt):
    h = ORACLE_CASES[name]
    T, init = h.T.numpy(), h.initial.numpy()
    x = sample(h, 6, 6, seed=11)
    res = filt(h, x)
    nxt_lib = next_token_probs(h, x)
    assert res.beliefs.shape == (6, 6, h.n_states)
    for k in range(x.shape[0]):
        bel, logp, nxt = brute_force(T, init, x[k].tolist())
        assert_close(res.beliefs[k], torch.as_tensor(bel), rtol=0, atol=1e-12)
        assert_close(res.log_normalizers[k], torch.as_tensor(np.diff(logp, prepend=0.0)), rtol=0, atol=1e-12)
        assert_close(res.log_likelihood[k], torch.tensor(logp[-1], dtype=torch.float64), rtol=0, atol=1e-12)
        assert_close(nxt_lib[k], torch.as_tensor(nxt), rtol=0, atol=1e-12)


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize("filt", FILTERS, ids=FILTER_IDS)
def test_filter_matches_brute_force_at_every_length(length, filt):
    """Short lengths exercise the odd/even branches of the scan recursion."""
    h = ORACLE_CASES["rrxor-from-start"] if length % 2 else ORACLE_CASES["mess3-nonstationary"]
    x = sample(h, 3, length, seed=length)
    res = filt(h, x)
    for k in range(3):
        bel, logp, _ = brute_force(h.T.numpy(), h.initial.numpy(), x[k].tolist(), next_tokens=False)
        assert_close(res.beliefs[k], torch.as_tensor(bel), rtol=0, atol=1e-12)
        assert_close(res.log_likelihood[k], torch.tensor(logp[-1], dtype=torch.float64), rtol=0, atol=1e-12)


def test_general_grouped_path_matches_brute_force_and_scan():
    """V * S > 256 and no factorisation: the filter multiplies each token group by its own matrix."""
    h = get_process("random", n_states=20, n_tokens=15, emission=False, seed=0)
    assert h.factorization is None and h.n_states * h.n_tokens > filtering._ALL_TOKENS_MAX
    x = sample(h, 4, 3, seed=1)
    res = filter_sequential(h, x)
    for k in range(x.shape[0]):
        bel, logp, _ = brute_force(h.T.numpy(), h.initial.numpy(), x[k].tolist(), next_tokens=False)
        assert_close(res.beliefs[k], torch.as_tensor(bel), rtol=0, atol=1e-12)
        assert_close(res.log_likelihood[k], torch.tensor(logp[-1], dtype=torch.float64), rtol=0, atol=1e-12)
    x = sample(h, 200, 30, seed=2)
    a, b = filter_sequential(h, x), filter_scan(h, x)
    assert_close(a.beliefs, b.beliefs, rtol=0, atol=1e-10)
    assert_close(a.log_likelihood, b.log_likelihood, rtol=1e-10, atol=0)


# ------------------------------------------------------------------------- hmmlearn
def _one_product_per_step(monkeypatch, compiled: bool) -> None:
    """Route small HMMs through the (n, S) @ (S, S) filter, with the compiled fused step or torch operations."""
    monkeypatch.setattr(filtering, "_NATIVE_SMALL_MAX_STATES", 0)
    monkeypatch.setattr(filtering, "_NATIVE_ONE_CALL_MAX_WORK", 0)
    monkeypatch.setattr(filtering, "_pack_size", lambda hmm: 1)
    if not compiled:
        monkeypatch.setattr(native, "enabled", lambda: False)


@pytest.mark.parametrize("compiled", [True, False], ids=["fused", "torch"])
@pytest.mark.parametrize("name", ["z1r", "z1r-nonstationary", "random-emission", "mess3", "mess3-nonstationary"])
def test_shared_prefix_tables_match_brute_force(name, compiled, monkeypatch):
    """The first positions filtered once per distinct prefix (forced on for small HMMs, unpacked) give every
    sequence the beliefs and normalisers of the definition, on both emission sides."""
    _one_product_per_step(monkeypatch, compiled)
    monkeypatch.setattr(filtering, "_SHARED_PREFIX_MIN_WORK", 0)
    h = ORACLE_CASES[name]
    x = sample(h, 64, 6, seed=3)
    shared = filtering._shared_prefix_length(64, 6, h.n_states, h.n_tokens, h.device)
    assert shared == (4 if h.n_tokens == 2 else 2)
    res = filter_sequential(h, x)
    T, init = h.T.numpy(), h.initial.numpy()
    for k in range(x.shape[0]):
        bel, logp, _ = brute_force(T, init, x[k].tolist(), next_tokens=False)
        assert_close(res.beliefs[k], torch.as_tensor(bel), rtol=0, atol=1e-12)
        assert_close(res.log_normalizers[k], torch.as_tensor(np.diff(logp, prepend=0.0)), rtol=0, atol=1e-12)
    monkeypatch.setattr(filtering, "_SHARED_PREFIX_MIN_WORK", math.inf)
    assert filtering._shared_prefix_length(64, 6, h.n_states, h.n_tokens, h.device) == 0
    plain = filter_sequential(h, x)
    assert_close(res.log_likelihood, plain.log_likelihood, rtol=1e-14, atol=0)


@pytest.mark.parametrize("compiled", [True, False], ids=["fused", "torch"])
def test_shared_prefix_tables_mark_impossible_prefixes(compiled, monkeypatch):
    """Every position from the prefix tables (L = 3 <= shared), impossible prefixes among them."""
    _one_product_per_step(monkeypatch, compiled)
    monkeypatch.setattr(filtering, "_SHARED_PREFIX_MIN_WORK", 0)
    h = get_process("z1r")
    x = torch.tensor([[0, 0, 0], [0, 1, 0], [1, 1, 1], [1, 1, 0]]).repeat(8, 1)
    assert filtering._shared_prefix_length(32, 3, 3, 2, h.device) == 3
    res = filter_sequential(h, x)
    ll = res.log_likelihood.view(8, 4)
    assert (ll[:, [0, 2]] == -math.inf).all()
    assert_close(ll[:, 1], torch.full((8,), math.log(1 / 6), dtype=torch.float64), rtol=1e-15, atol=0)
    assert_close(ll[:, 3], torch.full((8,), math.log(1 / 6), dtype=torch.float64), rtol=1e-15, atol=0)
    assert_close(res.beliefs[1], f64([[1 / 3, 2 / 3, 0], [0, 0, 1], [1, 0, 0]]), rtol=0, atol=1e-15)
    assert_close(res.beliefs[0, :2], f64([[1 / 3, 2 / 3, 0], [0, 1, 0]]), rtol=0, atol=1e-15)


def _hmmlearn_model(mu, A, C) -> CategoricalHMM:
    m = CategoricalHMM(n_components=A.shape[0], n_features=C.shape[1])
    m.startprob_, m.transmat_, m.emissionprob_ = mu, A, C
    return m


@pytest.mark.parametrize("s, v, seed", [(2, 3, 0), (2, 2, 1), (5, 4, 2), (5, 9, 3), (16, 8, 4), (16, 30, 5)])
def test_log_likelihood_matches_hmmlearn(s, v, seed):
    rng = np.random.default_rng(seed)
    mu = rng.dirichlet(np.ones(s))
    A = rng.dirichlet(np.ones(s), size=s)
    C = rng.dirichlet(np.full(v, 0.5), size=s)
    h = HMM.from_emission(mu, A, C)
    n, L = 12, 47
    x = sample(h, n, L, seed=seed)
    m = _hmmlearn_model(mu, A, C)
    ours = log_likelihood(h, x)
    assert m.score(x.reshape(-1, 1).numpy(), [L] * n) == pytest.approx(float(ours.sum()), rel=1e-9, abs=0)
    for k in range(3):
        assert m.score(x[k].reshape(-1, 1).numpy()) == pytest.approx(float(ours[k]), rel=1e-9, abs=0)
    # hmmlearn's scaled forward lattice is P(z_t | x_0..x_t) for the emitting state; our belief
    # after token t is over the next state: P(z_{t+1} | x_0..x_t) = fwd[t] @ A.
    scan = filter_scan(h, x)
    for k in range(3):
        log_prob, fwd, _ = _hmmc.forward_scaling(mu, A, np.ascontiguousarray(C[:, x[k].numpy()].T))
        assert log_prob == pytest.approx(float(ours[k]), rel=1e-9, abs=0)
        assert_close(torch.as_tensor(fwd @ A), beliefs(h, x[k:k + 1])[0], rtol=0, atol=1e-12)
        assert_close(torch.as_tensor(fwd @ A), scan.beliefs[k], rtol=0, atol=1e-12)


def test_grouped_general_path_matches_hmmlearn_on_edge_states():
    """The general form against hmmlearn run on its exact V*S-state emission form."""
    h = get_process("random", n_states=20, n_tokens=15, emission=False, seed=0)
    e = h.to_emission()
    m = _hmmlearn_model(e.mu.numpy(), e.A.numpy(), e.C.numpy())
    n, L = 8, 25
    x = sample(h, n, L, seed=3)
    ours = filter_sequential(h, x).log_likelihood
    assert m.score(x.reshape(-1, 1).numpy(), [L] * n) == pytest.approx(float(ours.sum()), rel=1e-9, abs=0)


# ----------------------------------------------------------------- sequential vs scan
@pytest.mark.parametrize(
    "h",
    [get_process("mess3"), get_process("mess3", x=0.05, a=0.85), get_process("rrxor"), get_process("z1r"),
     get_process("even"), get_process("golden_mean"), get_process("random", n_states=8, n_tokens=5, seed=1),
     get_process("random", n_states=6, n_tokens=4, emission=False, seed=2),
     get_process("cyclic", n_states=16, n_tokens=32, seed=0)],
    ids=["mess3", "mess3-sharp", "rrxor", "z1r", "even", "golden", "random-emission", "random-general", "cyclic"],
)
@pytest.mark.parametrize("length", [1, 2, 37, 64])
def test_sequential_equals_scan(h, length):
    x = sample(h, 50, length, seed=length)
    a, b = filter_sequential(h, x), filter_scan(h, x)
    assert a.beliefs.shape == b.beliefs.shape == (50, length, h.n_states)
    assert_close(a.beliefs, b.beliefs, rtol=0, atol=1e-10)
    assert_close(a.log_likelihood, b.log_likelihood, rtol=1e-10, atol=0)
    assert_close(a.log_normalizers, b.log_normalizers, rtol=0, atol=1e-10)


def test_forward_filter_dispatch_and_return_beliefs_false():
    h = get_process("mess3")
    x = sample(h, 5, 20, seed=0)
    for method in ("auto", "sequential", "scan"):
        full = forward_filter(h, x, method=method)
        light = forward_filter(h, x, method=method, return_beliefs=False)
        assert light.beliefs is None
        assert_close(light.log_likelihood, full.log_likelihood, rtol=0, atol=0)
    assert_close(forward_filter(h, x, method="scan").beliefs, filter_sequential(h, x).beliefs, rtol=0, atol=1e-12)
    assert_close(log_likelihood(h, x, method="scan"), log_likelihood(h, x), rtol=1e-12, atol=0)


def test_auto_takes_the_scan_only_for_a_few_long_sequences_of_a_small_hmm_in_torch(monkeypatch):
    from interp.hmm.filtering import choose_method

    assert choose_method(1, 4096, 3) == choose_method(1, 1024, 16) == choose_method(16, 1024, 3) == "scan"
    assert choose_method(256, 1024, 3) == choose_method(1, 1024, 64) == choose_method(16, 64, 16) == "sequential"
    assert choose_method(1, 10**7, 3) == "sequential"  # the scan's (n, L, S, S) working set would pass 1 GiB
    monkeypatch.setattr(native, "enabled", lambda: False)  # no compiled kernels: the torch cost model
    h = get_process("z1r")
    x = sample(h, 2, 3000, seed=0)
    auto, scan, seq = forward_filter(h, x), filter_scan(h, x), filter_sequential(h, x)
    assert torch.equal(auto.log_normalizers, scan.log_normalizers)  # it took the scan ...
    assert_close(auto.beliefs, seq.beliefs, rtol=0, atol=1e-10)  # ... which agrees with the sequential filter
    assert_close(auto.log_likelihood, seq.log_likelihood, rtol=1e-10, atol=0)


def test_auto_takes_the_sequential_filter_with_compiled_kernels():
    from interp.hmm.filtering import _compiled, choose_method

    assert {choose_method(n, L, S, compiled=True) for n, L, S in [(1, 4096, 3), (1, 1024, 16), (256, 64, 64)]} == {
        "sequential"}
    h = get_process("z1r")
    assert _compiled(h) == (native.library() is not None)
    assert not _compiled(get_process("rrxor"))  # no emission form: the torch filter
    x = sample(h, 2, 3000, seed=0)
    if _compiled(h):
        assert torch.equal(forward_filter(h, x).log_normalizers, filter_sequential(h, x).log_normalizers)


def _check_simplex(b: torch.Tensor):
    assert bool(torch.isfinite(b).all())
    assert bool((b >= 0).all())
    assert_close(b.sum(-1), torch.ones(b.shape[:-1], dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(
    "h",
    [get_process("mess3"), get_process("random", n_states=8, n_tokens=4, emission=False, seed=2)],
    ids=["mess3", "random-S8"],
)
def test_long_sequences_are_stable(h):
    x = sample(h, 2, 100_000, seed=0)
    a, b = filter_sequential(h, x), filter_scan(h, x)
    for r in (a, b):
        _check_simplex(r.beliefs)
        assert bool(torch.isfinite(r.log_normalizers).all())
        assert bool(torch.isfinite(r.log_likelihood).all())
        assert bool((r.log_likelihood < 0).all())
    assert_close(a.beliefs, b.beliefs, rtol=0, atol=1e-10)
    assert_close(a.log_likelihood, b.log_likelihood, rtol=1e-10, atol=0)
    assert_close(a.log_likelihood, a.log_normalizers.sum(1), rtol=1e-12, atol=0)
    # The scan's per-step normalisers are differences of prefix log-probabilities of size ~1e5,
    # so their absolute error is about L * eps; still far below anything that matters.
    assert_close(a.log_normalizers, b.log_normalizers, rtol=0, atol=1e-8)


@pytest.mark.parametrize("filt", FILTERS, ids=FILTER_IDS)
def test_beliefs_on_simplex_random_batches(filt):
    for h in [get_process("rrxor"), get_process("random", n_states=5, n_tokens=3, seed=9),
              get_process("random", n_states=20, n_tokens=15, emission=False, seed=1)]:
        _check_simplex(filt(h, sample(h, 40, 33, seed=4)).beliefs)


# ------------------------------------------------------------------- next-token probs
@pytest.mark.parametrize(
    "h", [get_process("mess3"), get_process("rrxor"), HMM(get_process("z1r").T, initial=f64([0.6, 0.0, 0.4])),
          get_process("random", n_states=4, n_tokens=6, emission=False, seed=3)],
    ids=["mess3", "rrxor", "z1r-nonstationary", "random-general"],
)
def test_next_token_probs(h):
    x = sample(h, 10, 15, seed=0)
    p = next_token_probs(h, x)
    assert p.shape == (10, 15, h.n_tokens)
    assert_close(p, beliefs(h, x) @ h.emission_matrix, rtol=0, atol=1e-15)
    assert_close(p.sum(-1), torch.ones(10, 15, dtype=torch.float64), rtol=0, atol=1e-12)
    assert bool((p >= 0).all())
    q = next_token_probs(h, x, include_initial=True)
    assert q.shape == (10, 16, h.n_tokens)
    assert_close(q[:, 0], (h.initial @ h.emission_matrix).expand(10, -1), rtol=0, atol=1e-15)
    assert_close(q[:, 1:], p, rtol=0, atol=0)
    assert_close(next_token_probs(h, x, method="scan"), p, rtol=0, atol=1e-12)


def test_next_token_probs_are_chain_rule_ratios():
    """P(x_{t+1} = k | x_<=t) equals exp(log P(x_<=t, k) - log P(x_<=t))."""
    h = get_process("random", n_states=3, n_tokens=3, emission=False, seed=8)
    x = sample(h, 4, 9, seed=1)
    p = next_token_probs(h, x)
    for k in range(h.n_tokens):
        ext = torch.cat([x, torch.full((4, 1), k)], 1)
        ratio = torch.exp(log_likelihood(h, ext) - log_likelihood(h, x))
        assert_close(p[:, -1, k], ratio, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------- golden values: z1r
# z1r (processes.py): state 0 emits 0 -> 1; state 1 emits 1 -> 2; state 2 emits 0 or 1
# (1/2 each) -> 0. pi = (1/3, 1/3, 1/3); beliefs are over the state moved to.
#  "0":     pi @ T[0] = (from 2: 1/6 -> state 0, from 0: 1/3 -> state 1) = (1/6, 1/3, 0);
#           P = 1/2, belief (1/3, 2/3, 0).
#  "0,1":   (1/3, 2/3, 0) @ T[1] = (0, 0, 2/3) (only state 1 can emit 1 here); P(1 | "0") = 2/3,
#           belief (0, 0, 1).
#  "0,1,0": state 2 emits 0 w.p. 1/2 -> state 0; belief (1, 0, 0); P = 1/2 * 2/3 * 1/2 = 1/6.
#  "1":     pi @ T[1] = (from 2: 1/6 -> state 0, from 1: 1/3 -> state 2) = (1/6, 0, 1/3);
#           P = 1/2, belief (1/3, 0, 2/3).
#  "1,0":   (1/3, 0, 2/3) @ T[0] = (1/3 [2->0], 1/3 [0->1], 0); P(0 | "1") = 2/3, belief (1/2, 1/2, 0).
#  "1,1":   (1/3, 0, 2/3) @ T[1] = (1/3 [2->0], 0, 0); P(1 | "1") = 1/3, belief (1, 0, 0).
#  "0,0":   (1/3, 2/3, 0) @ T[0] = (0, 1/3 [0->1], 0); P(0 | "0") = 1/3, belief (0, 1, 0).
Z1R_GOLDEN = [
    ([0], [[1 / 3, 2 / 3, 0]], [1 / 2]),
    ([0, 1], [[1 / 3, 2 / 3, 0], [0, 0, 1]], [1 / 2, 2 / 3]),
    ([0, 1, 0], [[1 / 3, 2 / 3, 0], [0, 0, 1], [1, 0, 0]], [1 / 2, 2 / 3, 1 / 2]),
    ([1], [[1 / 3, 0, 2 / 3]], [1 / 2]),
    ([1, 0], [[1 / 3, 0, 2 / 3], [1 / 2, 1 / 2, 0]], [1 / 2, 2 / 3]),
    ([1, 1], [[1 / 3, 0, 2 / 3], [1, 0, 0]], [1 / 2, 1 / 3]),
    ([0, 0], [[1 / 3, 2 / 3, 0], [0, 1, 0]], [1 / 2, 1 / 3]),
    ([0, 0, 1, 1, 0, 1], [[1 / 3, 2 / 3, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]],
     [1 / 2, 1 / 3, 1, 1 / 2, 1, 1]),
]


@pytest.mark.parametrize("seq, want_beliefs, want_cond", Z1R_GOLDEN, ids=lambda v: str(v))
@pytest.mark.parametrize("filt", FILTERS, ids=FILTER_IDS)
def test_z1r_golden_values(seq, want_beliefs, want_cond, filt):
    h = get_process("z1r")
    res = filt(h, torch.tensor([seq]))
    assert_close(res.beliefs[0], f64(want_beliefs), rtol=0, atol=1e-15)
    assert_close(res.log_normalizers[0], torch.log(f64(want_cond)), rtol=0, atol=1e-15)
    assert res.log_likelihood[0].item() == pytest.approx(sum(math.log(c) for c in want_cond), rel=1e-15, abs=1e-15)


def test_z1r_log_likelihood_of_010_is_log_one_sixth():
    ll = log_likelihood(get_process("z1r"), torch.tensor([[0, 1, 0]]))
    assert ll.item() == pytest.approx(math.log(1 / 6), rel=1e-15, abs=0)


def test_z1r_golden_next_token_probs():
    # P(first token = 0) = 1/2; after "0": P(1) = 2/3; after "0,1": the random bit, 1/2 each.
    p = next_token_probs(get_process("z1r"), torch.tensor([[0, 1]]), include_initial=True)
    assert_close(p[0], f64([[1 / 2, 1 / 2], [1 / 3, 2 / 3], [1 / 2, 1 / 2]]), rtol=0, atol=1e-15)


# ------------------------------------------------------------------ impossible sequences
@pytest.mark.parametrize("filt", FILTERS, ids=FILTER_IDS)
def test_impossible_sequences_have_minus_inf_log_likelihood(filt):
    h = get_process("z1r")
    # "0 0 0" and "1 1 1" are impossible (the period-3 pattern has at most two equal tokens in a row
    # before a forced change); "0 1 0" is possible; each row is filtered independently.
    x = torch.tensor([[0, 0, 0], [0, 1, 0], [1, 1, 1], [1, 1, 0]])
    res = filt(h, x)
    assert res.log_likelihood[0].item() == -math.inf
    assert res.log_likelihood[2].item() == -math.inf
    assert res.log_likelihood[1].item() == pytest.approx(math.log(1 / 6), rel=1e-15, abs=0)
    assert res.log_likelihood[3].item() == pytest.approx(math.log(1 / 2 * 1 / 3 * 1), rel=1e-15, abs=0)
    assert_close(res.beliefs[1], f64([[1 / 3, 2 / 3, 0], [0, 0, 1], [1, 0, 0]]), rtol=0, atol=1e-15)
    # The possible prefix of an impossible sequence is still filtered exactly.
    assert_close(res.beliefs[0, :2], f64([[1 / 3, 2 / 3, 0], [0, 1, 0]]), rtol=0, atol=1e-15)


def test_impossible_sequence_log_likelihood_minus_inf_general_paths():
    # rrxor: the third bit must be the XOR of the first two; from the start state "1 1 1" is impossible.
    h = HMM(get_process("rrxor").T, initial=f64([1.0, 0, 0, 0, 0]))
    x = torch.tensor([[1, 1, 1], [1, 1, 0]])
    for method in ("sequential", "scan"):
        ll = log_likelihood(h, x, method=method)
        assert ll[0].item() == -math.inf
        assert ll[1].item() == pytest.approx(math.log(1 / 4), rel=1e-15, abs=0)
    # golden mean (destination form): "0 0" is impossible.
    ll = log_likelihood(get_process("golden_mean"), torch.tensor([[1, 0, 0, 1], [1, 0, 1, 0]]))
    assert ll[0].item() == -math.inf and math.isfinite(ll[1].item())


@pytest.mark.parametrize("method", ["auto", "sequential", "scan"])
def test_beliefs_of_impossible_sequence_raise_naming_it(method):
    h = get_process("z1r")
    with pytest.raises(ValueError, match=r"sequence 1 has probability zero .*position 2"):
        beliefs(h, torch.tensor([[0, 1, 0], [0, 0, 0]]), method=method)
    with pytest.raises(ValueError, match=r"sequence 0 has probability zero"):
        next_token_probs(h, torch.tensor([[1, 1, 1]]), method=method)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "tokens, match",
    [
        (torch.tensor([[0.0, 1.0]]), r"tokens must be an integer tensor, got dtype torch.float32"),
        (np.array([[0.0, 1.0]]), r"tokens must be an integer tensor, got dtype torch.float64"),
        (torch.tensor([[True, False]]), r"tokens must be an integer tensor, got dtype torch.bool"),
        (torch.tensor([0, 1]), r"tokens must be 2-D \(batch, length\), got shape \(2,\)"),
        (torch.tensor([[[0, 1]]]), r"tokens must be 2-D \(batch, length\), got shape \(1, 1, 2\)"),
        (torch.zeros(0, 3, dtype=torch.long), r"tokens must be a non-empty batch, got shape \(0, 3\)"),
        (torch.zeros(3, 0, dtype=torch.long), r"tokens must be a non-empty batch, got shape \(3, 0\)"),
        (torch.tensor([[0, 1], [1, -1]]), r"token -1 at \(sequence, position\) \(1, 1\) is out of range \[0, 2\)"),
        (torch.tensor([[0, 2], [1, 0]]), r"token 2 at \(sequence, position\) \(0, 1\) is out of range \[0, 2\)"),
    ],
    ids=["float", "numpy-float", "bool", "1d", "3d", "empty-batch", "empty-length", "negative", "too-large"],
)
@pytest.mark.parametrize(
    "fn", [filter_sequential, filter_scan, log_likelihood, beliefs, next_token_probs],
    ids=["sequential", "scan", "log_likelihood", "beliefs", "next_token_probs"],
)
def test_bad_tokens_raise(tokens, match, fn):
    with pytest.raises(ValueError, match=match):
        fn(get_process("z1r"), tokens)


def test_integer_token_containers_are_accepted():
    h = get_process("z1r")
    want = log_likelihood(h, torch.tensor([[0, 1, 0]]))
    for x in ([[0, 1, 0]], np.array([[0, 1, 0]], dtype=np.int32), torch.tensor([[0, 1, 0]], dtype=torch.uint8)):
        assert_close(log_likelihood(h, x), want, rtol=0, atol=0)


@pytest.mark.parametrize("fn", [forward_filter, beliefs, log_likelihood, next_token_probs])
def test_bogus_method_raises(fn):
    with pytest.raises(ValueError, match=r"method must be 'auto', 'sequential' or 'scan', got 'bogus'"):
        fn(get_process("mess3"), torch.tensor([[0, 1]]), method="bogus")


# ------------------------------------------------------------------ flush_denormals
@pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU cannot flush subnormals")
def test_flush_denormals_nests_and_restores_the_previous_setting():
    tiny = torch.tensor(5e-324, dtype=torch.float64)
    flushed = lambda: float(tiny * 1.0) == 0.0  # noqa: E731
    assert not flushed() and not filtering.flushing_denormals()
    with filtering.flush_denormals():
        assert flushed() and filtering.flushing_denormals()
        with filtering.flush_denormals():
            assert flushed()
        assert flushed()  # the inner block left the outer caller's setting alone
        log_likelihood(get_process("mess3"), sample(get_process("mess3"), 4, 8, seed=0))  # filters use it too
        assert flushed()
    assert not flushed()
    # a setting made outside is kept, and an exception inside still restores
    torch.set_flush_denormal(True)
    try:
        with filtering.flush_denormals():
            assert flushed()
        assert flushed()
    finally:
        torch.set_flush_denormal(False)
    with pytest.raises(RuntimeError), filtering.flush_denormals():
        raise RuntimeError
    assert not flushed()
