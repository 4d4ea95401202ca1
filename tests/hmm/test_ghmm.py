"""Generalised HMMs: an HMM in disguise, simplexity's word probabilities, validation, sampling, belief oracle."""

import inspect
import itertools
import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from interp.cli import main
from interp.hmm import (
    GHMM,
    HMM,
    beliefs,
    entropy_rate,
    forward_filter,
    get_process,
    log_likelihood,
    mixed_state_presentation,
    next_token_probs,
    optimal_loss,
    processes,
    sample,
    unigram_loss,
    word_probabilities,
)
from interp.hmm.ghmm import GHMM_PROCESSES


def all_words(V: int, L: int) -> torch.Tensor:
    """(V**L, L) every word in lexicographic order (the order of word_probabilities)."""
    return torch.tensor(list(itertools.product(range(V), repeat=L)), dtype=torch.int64)


def disguised(hmm: HMM, seed: int) -> tuple[GHMM, torch.Tensor]:
    """The HMM under a random change of basis M: T' = M^-1 T M, w' = M^-1 1 (beliefs map as eta' = eta M)."""
    S = hmm.n_states
    g = torch.Generator().manual_seed(seed)
    M = torch.eye(S, dtype=torch.float64) + 0.3 * torch.randn(S, S, generator=g, dtype=torch.float64)
    T = torch.linalg.solve(M, hmm.T @ M)
    w = torch.linalg.solve(M, torch.ones(S, dtype=torch.float64))
    return GHMM(T, w=w), M


HMMS = {"mess3": lambda: get_process("mess3"),
        "random": lambda: get_process("random", n_states=4, n_tokens=3, seed=3, emission=False)}


# ----------------------------------------------------------------- an HMM in disguise
@pytest.mark.parametrize("name", sorted(HMMS))
def test_hmm_under_change_of_basis_is_the_same_process(name):
    hmm = HMMS[name]()
    ghmm, M = disguised(hmm, seed=1)
    assert torch.linalg.cond(M) < 10  # a well-conditioned basis: 1e-12 is then a fair bar
    assert (ghmm.T < 0).any()  # a genuinely signed presentation
    assert_close(ghmm.pi, hmm.pi @ M, rtol=0, atol=1e-12)
    V = hmm.n_tokens
    for L in range(1, 6):
        assert_close(word_probabilities(ghmm, L), word_probabilities(hmm, L), rtol=0, atol=1e-12)
    words = all_words(V, 4)
    assert_close(log_likelihood(ghmm, words), log_likelihood(hmm, words), rtol=0, atol=1e-12)

    tokens = sample(hmm, 256, 40, seed=0)
    assert_close(log_likelihood(ghmm, tokens), log_likelihood(hmm, tokens), rtol=0, atol=1e-12)
    assert_close(next_token_probs(ghmm, tokens, include_initial=True),
                 next_token_probs(hmm, tokens, include_initial=True), rtol=0, atol=1e-12)
    assert_close(beliefs(ghmm, tokens), beliefs(hmm, tokens) @ M, rtol=0, atol=1e-12)

    assert_close(optimal_loss(ghmm, 6, method="exact").per_position,
                 optimal_loss(hmm, 6, method="exact").per_position, rtol=0, atol=1e-12)
    assert abs(unigram_loss(ghmm) - unigram_loss(hmm)) <= 1e-12
    m_g, m_h = mixed_state_presentation(ghmm, 4), mixed_state_presentation(hmm, 4)
    for d in range(5):
        (_, p_g), (_, p_h) = m_g.at_depth(d), m_h.at_depth(d)
        assert_close(p_g.sort().values, p_h.sort().values, rtol=0, atol=1e-12)
    # Sampled through beliefs vs through hidden states: the same rate within the estimates' errors.
    r_g = entropy_rate(ghmm, n=4000, length=40, burn_in=20, seed=0)
    r_h = entropy_rate(hmm, n=4000, length=40, burn_in=20, seed=0)
    assert abs(r_g.value - r_h.value) <= 5 * math.hypot(r_g.stderr, r_h.stderr)


def test_default_w_of_an_hmm_is_ones():
    hmm = get_process("mess3")
    g = GHMM(hmm.T)
    assert_close(g.w, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-14)
    assert_close(g.pi, hmm.pi, rtol=0, atol=1e-14)
    tokens = sample(hmm, 64, 20, seed=1)
    assert_close(log_likelihood(g, tokens), log_likelihood(hmm, tokens), rtol=0, atol=1e-12)


# ------------------------------------------------------------------ the processes
@pytest.mark.parametrize("name", GHMM_PROCESSES)
def test_process_word_probabilities_sum_to_one_and_are_non_negative(name):
    h = get_process(name)
    assert isinstance(h, GHMM)
    defaults = {k: p.default for k, p in inspect.signature(processes._REGISTRY[name]).parameters.items()}
    assert h.name == name and h.params == defaults
    assert h.checked_depth == 6
    smat = h.transition_matrix
    assert_close(smat @ h.w, h.w, rtol=0, atol=1e-12)
    assert_close(h.pi @ smat, h.pi, rtol=0, atol=1e-12)
    assert abs(float(h.pi @ h.w) - 1) <= 1e-12
    for L in range(1, 7):
        p = word_probabilities(h, L)
        assert abs(float(p.sum()) - 1) <= 1e-12, (L, float(p.sum()))
        assert float(p.min()) >= -1e-12, (L, float(p.min()))


# Computed by a throwaway script that transcribes simplexity's transition_matrices.py (post_quantum, tom_quantum,
# fanizza) into numpy and evaluates its GeneralizedHiddenMarkovModel.probability: pi T[x_1]..T[x_n] w / (pi w),
# with w its principal right eigenvector and pi the stationary state of the summed matrix.
SIMPLEXITY = [
    ("post_quantum", {"log_alpha": 1.0, "beta": 0.5}, [
        ((1,), 0.7542639583206947),
        ((1, 2), 0.09426823132208097),
        ((2, 0, 0), -1.9407504381853888e-20),
        ((2, 2, 0, 0), 8.454525898442551e-20),
        ((2, 1, 0, 2, 0, 1), 0.00012461008510764195),
    ]),
    ("post_quantum", {"log_alpha": 0.9932517730102834, "beta": 0.5}, [  # log 2.7: simplexity's golden MSP
        ((1,), 0.7534828967704391),
        ((1, 0), 0.09743136996940627),
        ((0, 2, 2), 0.004200733710641717),
        ((2, 1, 2, 0), 0.0014129608689430525),
        ((1, 2, 0, 0, 0, 1), 4.331463307489926e-37),
    ]),
    ("tom_quantum", {"alpha": 1.0, "beta": 1.0}, [
        ((3,), 0.25),
        ((0, 1), 0.0),
        ((1, 3, 0), 0.015625),
        ((2, 1, 0, 3), 0.0),
        ((0, 1, 1, 1, 0, 3), 0.0),
    ]),
    ("tom_quantum", {"alpha": 1.0, "beta": 4.3}, [
        ((2,), 0.25),
        ((3, 0), 0.0625),
        ((2, 1, 2), 0.012894946105400642),
        ((3, 1, 2, 0), 0.005271276947299679),
        ((1, 3, 1, 2, 1, 0), 0.00019660564929447052),
    ]),
    ("fanizza", {"alpha": 2000.0, "lamb": 0.49}, [
        ((0,), 0.4809290063234904),
        ((1, 0), 0.2941714757785145),
        ((1, 0, 1), 0.17993686391105576),
        ((1, 1, 0, 0), 0.051665686582455496),
        ((1, 1, 1, 0, 0, 0), 0.005001591549992701),
    ]),
]


@pytest.mark.parametrize(("name", "params", "cases"), SIMPLEXITY, ids=lambda v: v if isinstance(v, str) else "")
def test_word_probabilities_equal_simplexity(name, params, cases):
    h = get_process(name, **params)
    V = h.n_tokens
    for word, want in cases:
        index = sum(x * V ** (len(word) - 1 - t) for t, x in enumerate(word))
        got = float(word_probabilities(h, len(word))[index])
        assert abs(got - want) <= 1e-12, (word, got, want)
        if want > 1e-9:  # through the filter too
            ll = float(log_likelihood(h, torch.tensor([word])))
            assert abs(math.exp(ll) - want) <= 1e-12, (word, math.exp(ll), want)


# -------------------------------------------------------------------- validation
def test_no_eigenvalue_one_is_refused():
    T = get_process("mess3").T * 0.9
    with pytest.raises(ValueError) as err:
        GHMM(T)
    assert str(err.value) == ("T: Smat = sum_x T[x] has no eigenvalue 1 (the nearest is 0.9, 0.1 away in norm; "
                              "tolerance 1e-09): rescale T so that its largest one is 1")


def test_repeated_eigenvalue_one_is_refused():
    with pytest.raises(ValueError) as err:
        get_process("tom_quantum", beta=0.0)  # every matrix diagonal: Smat = I
    assert str(err.value) == ("T: eigenvalue 1 of Smat = sum_x T[x] is repeated (3 independent eigenvectors): "
                              "w and pi are not unique (the matrices hold several separate processes)")
    jordan = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^T: eigenvalue 1 of Smat = sum_x T\[x\] is repeated or nearly so "
                                         r"\(its left and right eigenvectors are orthogonal: overlap 0 < 1e-06\)"):
        GHMM(jordan)


def _mess3_with_negative_pair(c: float) -> torch.Tensor:
    """Mess3 with c * (1, -1, 0)^T (1, 0, 0) moved from token 1 to token 0: Smat, w and pi are unchanged and
    so are the one-token probabilities (pi is uniform, so pi (1, -1, 0) = 0), but pairs change."""
    T = get_process("mess3").T.clone()
    D = c * torch.outer(torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64),
                        torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    T[0] += D
    T[1] -= D
    return T


def test_negative_word_probability_is_refused_naming_the_word():
    T = _mess3_with_negative_pair(5.0)
    # Brute force: one-token words are fine, (0, 1) is the first negative two-token word.
    pi, ones = torch.full((3,), 1 / 3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    assert all(float(pi @ T[x] @ ones) >= 0 for x in range(3))
    pairs = {(x, y): float(pi @ T[x] @ T[y] @ ones) for x in range(3) for y in range(3)}
    assert pairs[(0, 0)] >= 0 and pairs[(0, 1)] < 0
    with pytest.raises(ValueError) as err:
        GHMM(T)
    msg = str(err.value)
    assert msg.startswith(f"T: word (0, 1) has negative probability {pairs[(0, 1)]:.6g} (P(token 1 | the tokens "
                          "before) = ") and msg.endswith("): not a valid process"), msg
    # With the check off the matrices are accepted; a mild shift keeps every word non-negative.
    assert GHMM(T, check_depth=0).checked_depth == 0
    GHMM(_mess3_with_negative_pair(0.01))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"w": [1.0, 2.0, 3.0]}, r"^w is not a right eigenvector of Smat = sum_x T\[x\] for eigenvalue 1: "),
     ({"w": [1.0, 1.0]}, r"^w must have shape \(3,\), got \(2,\)$"),
     ({"initial": [0.5, 0.5, 0.5]}, r"^initial @ w is 1.5, not 1 \(tolerance 1e-09\): a GHMM's beliefs are "
                                    r"normalised by w$"),
     ({"check_depth": -1}, r"^check_depth must be a non-negative integer, got -1$")],
    ids=["w-not-eigenvector", "w-shape", "initial-not-normalised", "check-depth"],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GHMM(get_process("mess3").T, **kwargs)


def test_bad_process_parameters_are_refused():
    with pytest.raises(ValueError, match=r"^need alpha = exp\(log_alpha\) > 1 > beta > 0, got log_alpha=-1.0"):
        get_process("post_quantum", log_alpha=-1.0)
    with pytest.raises(ValueError, match=r"^need ln\(alpha\) / ln\(beta\) not an integer, got -2.0$"):
        get_process("post_quantum", log_alpha=2 * math.log(2), beta=0.5)
    with pytest.raises(ValueError, match=r"^lamb must lie in \(0, 1\), got 1.0$"):
        get_process("fanizza", lamb=1.0)


def test_scan_and_hidden_states_are_refused():
    h = get_process("post_quantum")
    tokens = sample(h, 4, 5, seed=0)
    with pytest.raises(ValueError, match=r"^filter_scan: a generalised HMM's signed matrices have no positive scale"):
        forward_filter(h, tokens, method="scan")
    with pytest.raises(ValueError, match=r"^return_states=True: a generalised HMM has no hidden states to return$"):
        sample(h, 4, 5, seed=0, return_states=True)


# ---------------------------------------------------------------------- sampling
@pytest.mark.parametrize("name", GHMM_PROCESSES)
def test_sampled_token_and_pair_frequencies_match_word_probabilities(name):
    h = get_process(name)
    n = 40_000
    tokens = sample(h, n, 8, seed=0)
    assert tokens.shape == (n, 8) and tokens.dtype == torch.int64
    V = h.n_tokens
    for L, start in ((1, 0), (2, 0), (2, 6)):  # the process starts stationary: any position has these marginals
        p = word_probabilities(h, L)
        code = sum(tokens[:, start + t] * V ** (L - 1 - t) for t in range(L))
        freq = torch.bincount(code, minlength=V**L).double() / n
        se = torch.sqrt(p.clamp_min(0) * (1 - p.clamp_min(0)) / n)
        assert bool(((freq - p).abs() <= 4.5 * se + 1e-12).all()), (L, start, freq, p)


def test_sampling_is_reproducible_from_the_seed_or_generator():
    h = get_process("fanizza")
    a = sample(h, 50, 12, seed=7)
    assert torch.equal(a, sample(h, 50, 12, seed=7))
    assert torch.equal(a, sample(h, 50, 12, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(a, sample(h, 50, 12, seed=8))


# ------------------------------------------------------------------ belief oracle
@pytest.mark.parametrize("name", GHMM_PROCESSES)
def test_belief_update_equals_word_probability_ratios(name):
    h = get_process(name)
    tokens = sample(h, 6, 9, seed=2)
    T, w = h.T.numpy(), h.w.numpy()
    b, nxt = beliefs(h, tokens), next_token_probs(h, tokens, include_initial=True)
    ll = log_likelihood(h, tokens)
    for k, seq in enumerate(tokens.tolist()):
        v = h.initial.numpy().copy()  # unnormalised: v @ w is the probability of the prefix read so far
        for t, x in enumerate(seq):
            prefix = float(v @ w)
            ratios = np.array([float(v @ T[y] @ w) / prefix for y in range(h.n_tokens)])  # P(prefix y) / P(prefix)
            assert np.allclose(nxt[k, t].numpy(), ratios, rtol=0, atol=1e-12)
            v = v @ T[x]
            assert np.allclose(b[k, t].numpy(), v / float(v @ w), rtol=0, atol=1e-12)
        assert abs(float(ll[k]) - math.log(float(v @ w))) <= 1e-12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ghmm_on_gpu_matches_cpu():
    h = get_process("post_quantum")
    tokens = sample(h, 64, 16, seed=0)
    g = h.to("cuda")
    assert g.device.type == "cuda" and g.w.device.type == "cuda"
    assert_close(log_likelihood(g, tokens.cuda()).cpu(), log_likelihood(h, tokens), rtol=0, atol=1e-12)
    assert_close(beliefs(g, tokens.cuda()).cpu(), beliefs(h, tokens), rtol=0, atol=1e-12)
    drawn = sample(g, 128, 6, seed=0)
    assert drawn.device.type == "cuda" and bool(torch.isfinite(log_likelihood(g, drawn)).all())
    assert_close(optimal_loss(g, 5, method="exact").per_position, optimal_loss(h, 5, method="exact").per_position,
                 rtol=0, atol=1e-12)


# ---------------------------------------------------------------------- command line
def test_describe_post_quantum(capsys):
    assert main(["describe", "--process", "post_quantum", "--samples", "2000", "--length", "6"]) == 0
    out = capsys.readouterr().out
    assert "process   post_quantum(log_alpha=1.0, beta=0.5): 3 states, 3 tokens" in out
    assert "MSP       distinct beliefs per depth 0..5: [1, " in out
    assert "entropy rate" in out
