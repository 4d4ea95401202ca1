import itertools

import pytest
import torch

from interp import hmm as H
from interp.hmm.matching import match_states, parameter_errors, permute


def random_emission_form(S, V, seed):
    g = torch.Generator().manual_seed(seed)

    def rows(*shape):
        x = torch.rand(*shape, generator=g, dtype=torch.float64) + 0.05
        return x / x.sum(-1, keepdim=True)

    return H.EmissionForm(rows(S), rows(S, S), rows(S, V))


@pytest.mark.parametrize("seed", range(5))
def test_planted_permutation_is_found_and_errors_vanish(seed):
    true = random_emission_form(6, 8, seed)
    planted = torch.randperm(6, generator=torch.Generator().manual_seed(seed))
    # learned state k is true state inv[k]: then perm[i] (learned state matched to true i) = position of i
    learned = permute(true, planted)
    perm = match_states(true.C, learned.C)
    assert torch.equal(planted[perm], torch.arange(6))
    err = parameter_errors(true, learned)
    assert err["A_frobenius"] == pytest.approx(0.0, abs=1e-15)
    assert err["C_frobenius"] == pytest.approx(0.0, abs=1e-15)
    assert err["mu_l1"] == pytest.approx(0.0, abs=1e-15)


def test_matching_is_the_brute_force_optimum():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 4, generator=g, dtype=torch.float64)
    b = torch.rand(5, 4, generator=g, dtype=torch.float64)
    perm = match_states(a, b)
    cost = lambda p: float(((a - b[list(p)]) ** 2).sum())  # noqa: E731
    best = min(itertools.permutations(range(5)), key=cost)
    assert cost(perm.tolist()) == pytest.approx(cost(best), abs=1e-14)


def test_errors_after_matching_are_hand_computable():
    true = H.EmissionForm(torch.tensor([0.5, 0.5]), torch.tensor([[0.9, 0.1], [0.2, 0.8]]),
                          torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # learned: states swapped, and one transition entry off by 0.1
    learned = H.EmissionForm(torch.tensor([0.5, 0.5]), torch.tensor([[0.8, 0.2], [0.0, 1.0]]),
                             torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    err = parameter_errors(true, learned)
    assert err["perm"] == [1, 0]
    assert err["A_frobenius"] == pytest.approx((2 * 0.1**2) ** 0.5)
    assert err["C_frobenius"] == pytest.approx(0.0)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        match_states(torch.ones(3, 2), torch.ones(4, 2))
