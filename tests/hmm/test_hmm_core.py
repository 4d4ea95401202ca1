"""The HMM object: validation, stationary distribution, spectra, emission-form conversion, registry."""

import inspect
import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from interp.hmm import HMM, EmissionForm, get_process, list_processes, log_likelihood, processes
from interp.hmm.ghmm import GHMM_PROCESSES
from interp.hmm.sampling import sample


def f64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def mess3_T() -> torch.Tensor:
    return get_process("mess3").T.clone()


def random_emission(s: int, v: int, seed: int):
    rng = np.random.default_rng(seed)
    mu = torch.as_tensor(rng.dirichlet(np.ones(s)))
    A = torch.as_tensor(rng.dirichlet(np.ones(s), size=s))
    C = torch.as_tensor(rng.dirichlet(np.ones(v), size=s))
    return mu, A, C


# ------------------------------------------------------------------ validation of T
@pytest.mark.parametrize(
    "T, match",
    [
        (torch.eye(3, dtype=torch.float64), r"T must have shape \(V, S, S\), got \(3, 3\)"),
        (torch.zeros(2, 2, 3, dtype=torch.float64), r"T must have shape \(V, S, S\), got \(2, 2, 3\)"),
        (torch.zeros(3, dtype=torch.float64), r"T must have shape \(V, S, S\)"),
        (torch.zeros(0, 2, 2, dtype=torch.float64), r"T must be non-empty, got shape \(0, 2, 2\)"),
        (torch.zeros(2, 0, 0, dtype=torch.float64), r"T must be non-empty, got shape \(2, 0, 0\)"),
    ],
    ids=["2d", "non-square", "1d", "no-tokens", "no-states"],
)
def test_T_bad_shape_raises(T, match):
    with pytest.raises(ValueError, match=match):
        HMM(T)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_T_non_finite_entry_raises_naming_entry(bad):
    T = mess3_T()
    T[1, 2, 0] = bad
    with pytest.raises(ValueError, match=r"T is not finite: entry \(1, 2, 0\)"):
        HMM(T)


def test_T_negative_entry_raises_naming_entry():
    T = mess3_T()
    T[1, 2, 0] = -T[1, 2, 0]
    with pytest.raises(ValueError, match=r"T is not non-negative: entry \(1, 2, 0\) is -0\.03"):
        HMM(T)


@pytest.mark.parametrize("row", [0, 1, 2])
def test_T_row_not_summing_to_one_names_row(row):
    T = mess3_T()
    T[:, row] *= 1.5
    with pytest.raises(ValueError, match=rf"T is not stochastic: state \(row\) {row} sums to 1\.(5|49999)"):
        HMM(T)


def test_T_row_sum_tolerance_is_1e_9():
    T = mess3_T()
    T[0, 1, 1] += 1e-11  # well within tolerance: accepted
    HMM(T)
    T[0, 1, 1] += 1e-8
    with pytest.raises(ValueError, match=r"state \(row\) 1"):
        HMM(T)


def test_T_complex_raises():
    with pytest.raises(ValueError, match="T must be a real array"):
        HMM(mess3_T().to(torch.complex128))


# ------------------------------------------------------------- validation of initial
@pytest.mark.parametrize(
    "initial, match",
    [
        ([0.5, 0.25, 0.5], r"initial is not stochastic: vector 0 sums to 1\.25"),
        ([0.5, 0.25, 0.0], r"initial is not stochastic: vector 0 sums to 0\.75"),
        ([1.5, -0.5, 0.0], r"initial is not non-negative: entry \(1,\) is -0\.5"),
        ([float("nan"), 0.5, 0.5], r"initial is not finite: entry \(0,\)"),
        ([0.5, 0.5], r"initial must have 3 entries, got 2"),
        ([[1.0, 0.0, 0.0]], r"initial must be 1-D, got shape \(1, 3\)"),
    ],
    ids=["sum>1", "sum<1", "negative", "nan", "wrong-size", "2d"],
)
def test_bad_initial_raises(initial, match):
    with pytest.raises(ValueError, match=match):
        HMM(mess3_T(), initial=initial)


def test_python_list_inputs_keep_float64_precision():
    """Plain Python floats are float64; a valid distribution given as a list must be accepted
    and stored without float32 rounding (0.1 + 0.2 + 0.7 == 1 to 1e-16 in float64)."""
    h = HMM(mess3_T(), initial=[0.1, 0.2, 0.7])
    assert_close(h.initial, torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64), rtol=0, atol=0)
    h2 = HMM(mess3_T().tolist())
    assert_close(h2.T, mess3_T(), rtol=0, atol=0)
    mu, A, C = [0.5, 0.5], [[0.1, 0.9], [0.3, 0.7]], [[0.1, 0.2, 0.7], [0.5, 0.5, 0.0]]
    e = HMM.from_emission(mu, A, C).to_emission()
    assert_close(e.C, torch.tensor(C, dtype=torch.float64), rtol=0, atol=1e-15)


# ------------------------------------------------------- validation of emission form
@pytest.mark.parametrize(
    "mu, A, C, match",
    [
        ([1, 0], [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]], [[1, 0], [0, 1]], r"A must be square, got shape \(2, 3\)"),
        ([1, 0], [[0.5, 0.5], [0.0, 1.0]], [[1, 0], [0, 1], [1, 0]], r"C must have 2 rows .* got shape \(3, 2\)"),
        ([1, 0], [[0.5, 0.5], [0.25, 0.5]], [[1, 0], [0, 1]], r"A is not stochastic: row 1 sums to 0\.75"),
        ([1, 0], [[0.5, 0.5], [0.25, 0.75]], [[1, 0], [0.5, 0.75]], r"C is not stochastic: row 1 sums to 1\.25"),
        ([1, 0.5], [[0.5, 0.5], [0.25, 0.75]], [[1, 0], [0.5, 0.5]], r"mu is not stochastic: vector 0 sums to 1\.5"),
        ([1, 0], [[0.5, 0.5], [-0.25, 1.25]], [[1, 0], [0.5, 0.5]], r"A is not non-negative: entry \(1, 0\)"),
        ([1, 0], [], [[1, 0], [0.5, 0.5]], r"A must be 2-D"),
        ([1, 0], [[0.5, 0.5], [0.25, 0.75]], np.zeros((2, 0)), r"C must be non-empty"),
        ([1, 0, 0], [[0.5, 0.5], [0.25, 0.75]], [[1, 0], [0.5, 0.5]], r"mu must have 2 entries, got 3"),
    ],
    ids=["A-non-square", "C-rows", "A-row-sum", "C-row-sum", "mu-sum", "A-negative", "A-empty", "C-empty",
         "mu-size"],
)
def test_from_emission_bad_input_raises(mu, A, C, match):
    with pytest.raises(ValueError, match=match):
        HMM.from_emission(mu, A, C)


# every registered process but the block-sparse one, which is never a dense tensor (tests/test_blocked.py), and
# the generalised HMMs, whose matrices may be negative (tests/hmm/test_ghmm.py)
DENSE_PROCESSES = [name for name in list_processes() if name != "blocked" and name not in GHMM_PROCESSES]


# ----------------------------------------------------------- stationary distribution
@pytest.mark.parametrize("name", DENSE_PROCESSES)
def test_pi_is_stationary_distribution(name):
    h = get_process(name)
    pi = h.pi
    assert pi.shape == (h.n_states,)
    assert pi.dtype == torch.float64
    assert bool((pi >= 0).all())
    assert_close(pi.sum(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-12)
    assert_close(pi @ h.transition_matrix, pi, rtol=0, atol=1e-12)


def test_pi_known_values():
    assert_close(get_process("mess3").pi, torch.full((3,), 1 / 3, dtype=torch.float64), rtol=0, atol=1e-14)
    assert_close(get_process("z1r").pi, torch.full((3,), 1 / 3, dtype=torch.float64), rtol=0, atol=1e-14)
    # RRXOR: start 1/3, saw-0 and saw-1 1/6 each, XOR-is-1 and XOR-is-0 1/6 each.
    assert_close(get_process("rrxor").pi, torch.tensor([2, 1, 1, 1, 1], dtype=torch.float64) / 6, rtol=0, atol=1e-14)
    # Golden mean (p = 1/2): pi_0 = 1/2 pi_0 + pi_1, pi_1 = 1/2 pi_0  ->  (2/3, 1/3).
    assert_close(get_process("golden_mean").pi, torch.tensor([2 / 3, 1 / 3], dtype=torch.float64), rtol=0, atol=1e-14)


def test_initial_defaults_to_pi_and_explicit_initial_is_kept():
    h = get_process("mess3")
    assert_close(h.initial, h.pi, rtol=0, atol=0)
    assert h.is_stationary
    h2 = HMM(h.T, initial=f64([0.7, 0.2, 0.1]))
    assert_close(h2.initial, torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64), rtol=0, atol=0)
    assert not h2.is_stationary


def test_reducible_chain_pi_raises():
    # Two closed classes: state 0 and state 1 each stay put forever.
    T = torch.zeros(2, 2, 2, dtype=torch.float64)
    T[0, 0, 0] = 1.0
    T[1, 1, 1] = 1.0
    h = HMM(T)
    with pytest.raises(ValueError, match=r"2 stationary distributions \(it is reducible\)"):
        h.pi
    # An explicit initial distribution still makes the HMM usable.
    assert_close(HMM(T, initial=[0.5, 0.5]).initial, torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_chain_with_transient_state_has_unique_pi():
    # State 0 is transient (leaves for 1 or 2), {1, 2} is one closed class.
    T = torch.zeros(1, 3, 3, dtype=torch.float64)
    T[0, 0, 1] = T[0, 0, 2] = 0.5
    T[0, 1, 2] = T[0, 2, 1] = 1.0
    assert_close(HMM(T).pi, torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64), rtol=0, atol=1e-14)


# ------------------------------------------------------------------------ spectra
@pytest.mark.parametrize("x", [0.05, 0.15, 0.3])
def test_mess3_transition_eigenvalues(x):
    smat = get_process("mess3", x=x, a=0.6).transition_matrix
    ev = torch.linalg.eigvals(smat)
    assert_close(ev.imag, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    got = torch.sort(ev.real).values
    want = torch.tensor(sorted([1.0, 1 - 3 * x, 1 - 3 * x]), dtype=torch.float64)
    assert_close(got, want, rtol=0, atol=1e-12)


def test_rrxor_transition_eigenvalues():
    ev = np.linalg.eigvals(get_process("rrxor").transition_matrix.numpy())
    want = np.array([1, 0, 0, complex(-0.5, math.sqrt(3) / 2), complex(-0.5, -math.sqrt(3) / 2)])
    key = lambda z: (round(z.real, 6), round(z.imag, 6))  # noqa: E731
    got, want = sorted(ev, key=key), sorted(want, key=key)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=0, atol=1e-8)
    # The characteristic polynomial is lambda^2 (lambda^3 - 1) = lambda^5 - lambda^2.
    np.testing.assert_allclose(np.poly(get_process("rrxor").transition_matrix.numpy()), [1, 0, 0, -1, 0, 0],
                               rtol=0, atol=1e-12)


# ------------------------------------------------------------ emission-form conversion
@pytest.mark.parametrize("s, v, seed", [(2, 3, 0), (5, 4, 1), (16, 7, 2)])
def test_emission_round_trip(s, v, seed):
    mu, A, C = random_emission(s, v, seed)
    h = HMM.from_emission(mu, A, C)
    # The defining formula T[x, i, j] = C[i, x] A[i, j] holds entry by entry.
    assert_close(h.T, torch.einsum("ix,ij->xij", C, A), rtol=0, atol=0)
    assert_close(h.initial, mu, rtol=0, atol=0)
    assert h.factorization is not None and h.factorization[0] == "source"
    e = h.to_emission()
    assert isinstance(e, EmissionForm)
    # Exact up to the rounding of recovering A = sum_x T[x] and C = sum_j T[., ., j]: a few ulps.
    assert_close(e.mu, mu, rtol=0, atol=0)
    assert_close(e.A, A, rtol=0, atol=1e-15)
    assert_close(e.C, C, rtol=0, atol=1e-15)
    h2 = e.to_hmm()
    assert_close(h2.T, h.T, rtol=0, atol=1e-15)


def _assert_same_token_process(h: HMM, e: EmissionForm, seed: int = 0):
    h2 = HMM.from_emission(e.mu, e.A, e.C)
    x = sample(h, 64, 40, seed=seed)
    ll, ll2 = log_likelihood(h, x), log_likelihood(h2, x)
    assert bool(torch.isfinite(ll).all())
    assert_close(ll2, ll, rtol=1e-12, atol=1e-12)
    # Also on every binary/ternary sequence of length 4, including impossible ones (-inf both sides).
    grid = torch.cartesian_prod(*[torch.arange(h.n_tokens)] * 4)
    ll, ll2 = log_likelihood(h, grid), log_likelihood(h2, grid)
    assert torch.equal(torch.isinf(ll), torch.isinf(ll2))
    fin = torch.isfinite(ll)
    assert_close(ll2[fin], ll[fin], rtol=1e-12, atol=1e-12)


def test_mess3_destination_form_to_emission():
    h = get_process("mess3")
    assert h.factorization[0] == "destination"
    e = h.to_emission()
    assert e.A.shape == (3, 3) and e.C.shape == (3, 3)
    _assert_same_token_process(h, e)


def test_destination_form_with_non_stationary_initial_to_emission():
    h = HMM(get_process("mess3", x=0.05, a=0.85).T, initial=f64([0.8, 0.15, 0.05]))
    e = h.to_emission()
    # The emitting state of token 0 is the state moved to: mu = initial @ A.
    assert_close(e.mu, h.initial @ h.transition_matrix, rtol=0, atol=1e-15)
    _assert_same_token_process(h, e)


@pytest.mark.parametrize(
    "h",
    [get_process("rrxor"), get_process("even"), get_process("random", n_states=3, n_tokens=2, emission=False, seed=4),
     HMM(get_process("rrxor").T, initial=f64([0.1, 0.2, 0.3, 0.4, 0.0]))],
    ids=["rrxor", "even", "random-general", "rrxor-nonstationary"],
)
def test_general_form_to_emission_uses_edge_states(h):
    assert h.factorization is None
    V, S = h.n_tokens, h.n_states
    e = h.to_emission()
    assert e.mu.shape == (V * S,) and e.A.shape == (V * S, V * S) and e.C.shape == (V * S, V)
    # Edge state x * S + j emits exactly its own token x.
    assert_close(e.C, torch.eye(V, dtype=torch.float64).repeat_interleave(S, 0), rtol=0, atol=0)
    _assert_same_token_process(h, e)


# --------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", DENSE_PROCESSES)
def test_every_registered_process_constructs_with_defaults(name):
    h = get_process(name)
    assert isinstance(h, HMM)
    # a default of None follows another parameter (rrxor's p1, p2 follow p) and is not part of the label
    defaults = {k: p.default for k, p in inspect.signature(processes._REGISTRY[name]).parameters.items()
                if p.default is not None}
    assert h.name == name and h.params == defaults
    assert h.T.dtype == torch.float64 and h.T.ndim == 3
    assert bool((h.T >= 0).all())
    row_sums = h.T.sum((0, 2))
    assert_close(row_sums, torch.ones(h.n_states, dtype=torch.float64), rtol=0, atol=1e-12)


def test_registered_processes_include_the_named_ones():
    assert {"mess3", "rrxor", "z1r", "golden_mean", "even", "random", "cyclic"} <= set(list_processes())


def test_get_process_records_params():
    h = get_process("mess3", x=0.05, a=0.85)
    assert h.params == {"x": 0.05, "a": 0.85}
    assert get_process("mess3", x=0.05).params == {"x": 0.05, "a": 0.6}
    assert_close(h.transition_matrix[0, 0], torch.tensor(0.9, dtype=torch.float64), rtol=0, atol=1e-15)


def test_get_process_unknown_name_raises():
    with pytest.raises(ValueError, match=r"unknown process 'nope'; known: .*mess3"):
        get_process("nope")


def test_get_process_unknown_parameter_raises():
    with pytest.raises(ValueError, match=r"process 'mess3' has no parameter 'y'; it takes: x, a"):
        get_process("mess3", y=0.1)


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("mess3", {"x": 0.6}, r"x must lie in \[0, 1/2\]"),
        ("mess3", {"x": -0.1}, r"x must lie in \[0, 1\], got -0\.1"),
        ("mess3", {"a": 1.5}, r"a must lie in \[0, 1\], got 1\.5"),
        ("rrxor", {"p": -0.1}, r"p must lie in \[0, 1\], got -0\.1"),
        ("z1r", {"p": 2}, r"p must lie in \[0, 1\]"),
        ("golden_mean", {"p": 1.01}, r"p must lie in \[0, 1\]"),
        ("random", {"n_states": 0}, r"n_states must be a positive integer, got 0"),
        ("random", {"n_tokens": 2.5}, r"n_tokens must be a positive integer, got 2\.5"),
        ("random", {"alpha": 0.0}, r"alpha must be positive"),
        ("cyclic", {"shift_weight": 1.5}, r"shift_weight must lie in \[0, 1\]"),
    ],
)
def test_get_process_out_of_range_parameter_raises(name, params, match):
    with pytest.raises(ValueError, match=match):
        get_process(name, **params)


def test_random_is_reproducible_from_seed():
    a = get_process("random", n_states=4, n_tokens=3, seed=7)
    b = get_process("random", n_states=4, n_tokens=3, seed=7)
    c = get_process("random", n_states=4, n_tokens=3, seed=8)
    assert torch.equal(a.T, b.T)
    assert not torch.equal(a.T, c.T)


def test_hmm_does_not_alias_caller_tensors():
    """The HMM is documented as immutable and validated at construction: changing the caller's
    arrays afterwards must not change it (or bypass validation)."""
    T = mess3_T()
    init = f64([0.5, 0.25, 0.25])
    h = HMM(T, initial=init)
    T[0] *= 2.0  # rows would now sum to more than 1
    init[0] = 7.0
    assert_close(h.T, get_process("mess3").T, rtol=0, atol=0)
    assert_close(h.initial, f64([0.5, 0.25, 0.25]), rtol=0, atol=0)


def test_float32_input_error_says_to_pass_float64():
    """A float32 matrix whose rows sum to 1 only to float32 precision gets an error that says why."""
    A = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float32)
    C = torch.tensor([[0.7, 0.3], [0.1, 0.9]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"A is not stochastic: row 0 .*given as torch.float32: pass float64"):
        HMM.from_emission([1.0, 0.0], A, C)
