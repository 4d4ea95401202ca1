"""The ``rotation`` process: its matrices, word probabilities derived by hand, its spectrum and head count, and its
parameter checks (tests/hmm/test_catalogue.py's style; the catalogue's sum-to-1 test covers its defaults too)."""

import itertools
import math

import pytest
import torch

from interp.hmm import get_process, log_likelihood
from interp.hmm.heads import head_count
from interp.interpret.construction import zero_sum_operator_eigenvalues


def prob(hmm, word) -> float:
    return float(log_likelihood(hmm, torch.tensor([word], dtype=torch.long)).exp()[0])


def test_matrices():
    h = get_process("rotation", p=0.9, a=0.6)
    smat = torch.tensor([[0.1, 0.9, 0.0], [0.0, 0.1, 0.9], [0.9, 0.0, 0.1]], dtype=torch.float64)
    emit = torch.tensor([[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]], dtype=torch.float64)
    assert (h.n_states, h.n_tokens) == (3, 3)
    for k in range(3):  # T[k, i, j] = Smat[i, j] E[j, k]
        assert torch.allclose(h.T[k], smat * emit[:, k][None, :], rtol=0, atol=1e-15)
    assert torch.allclose(h.pi, torch.full((3,), 1 / 3, dtype=torch.float64), rtol=0, atol=1e-15)
    assert h.params == {"p": 0.9, "a": 0.6}


@pytest.mark.parametrize("p, a", [(0.9, 0.6), (0.3, 0.8), (1.0, 1.0 / 3)])
def test_word_probabilities_sum_to_one(p, a):
    h = get_process("rotation", p=p, a=a)
    for n in range(1, 7):
        words = torch.tensor(list(itertools.product(range(3), repeat=n)), dtype=torch.long)
        total = float(log_likelihood(h, words).exp().sum())
        assert abs(total - 1) <= 1e-12, f"p={p}, a={a}: depth {n} sums to {total!r}"


def test_word_probabilities_by_hand():
    # pi uniform, so each token has probability 1/3. The state that emitted 0 is 0 with a, else 1 or 2 with b each;
    # from 0 the next state emits 1 with (1 - p) b + p a, from 1 with (1 - p) a + p b, from 2 with b:
    # P(01) = (a (0.1 b + 0.9 a) + b (0.1 a + 0.9 b) + b b) / 3 = (0.336 + 0.048 + 0.04) / 3 for p = 0.9, a = 0.6.
    h = get_process("rotation", p=0.9, a=0.6)
    assert abs(prob(h, [0]) - 1 / 3) <= 1e-15
    assert abs(prob(h, [0, 1]) - 0.424 / 3) <= 1e-15
    assert abs(prob(h, [0, 0]) - 0.296 / 3) <= 1e-15
    # p = 1, a = 1: a deterministic cycle 0 -> 1 -> 2 from a uniform start
    det = get_process("rotation", p=1.0, a=1.0)
    assert abs(prob(det, [0, 1, 2, 0]) - 1 / 3) <= 1e-15
    assert prob(det, [0, 0]) == 0.0 and prob(det, [0, 2]) == 0.0


def test_spectrum_is_the_turning_pair_and_three_heads_at_context_10():
    p = 0.9
    eig = sorted(zero_sum_operator_eigenvalues(get_process("rotation", p=p)).tolist(), key=lambda z: z.imag)
    want = [complex(1 - 1.5 * p, -p * math.sqrt(3) / 2), complex(1 - 1.5 * p, p * math.sqrt(3) / 2)]
    assert all(abs(complex(z) - w) <= 1e-12 for z, w in zip(eig, want))
    assert head_count(get_process("rotation", p=p), 10).n_heads == 3


@pytest.mark.parametrize("params, message", [
    ({"p": 0.0}, "p must lie in (0, 1], got 0.0"),
    ({"p": 1.2}, "p must lie in (0, 1], got 1.2"),
    ({"a": -0.1}, "a must lie in [0, 1], got -0.1"),
])
def test_bad_parameters_raise_naming_them(params, message):
    with pytest.raises(ValueError) as err:
        get_process("rotation", **params)
    assert str(err.value) == message
