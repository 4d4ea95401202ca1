"""Attention extraction: planted decays recovered, fixedness measured exactly on hand-built inputs."""

import math

import pytest
import torch

from interp.interpret.attention import (decay_pattern, describe_head, fit_decay, fixedness, mean_pattern,
                                        pattern_distance)


@pytest.mark.parametrize("exclude", [0, 1, 2])
def test_planted_decay_is_recovered(exclude):
    fit = fit_decay(decay_pattern(0.55, 10), exclude=exclude)
    assert fit.decay == pytest.approx(0.55, abs=1e-10)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    fitted_rows = [d for d in fit.row_decay if not math.isnan(d)]
    assert len(fitted_rows) == 10 - 2 - exclude  # rows with >= 3 keys
    assert fitted_rows == pytest.approx([0.55] * len(fitted_rows), abs=1e-10)


def test_inflated_current_token_is_set_apart():
    p = decay_pattern(0.5, 10, normalise=False)
    p.diagonal().mul_(6.0)  # much more weight on the current token than the tail implies
    p = p / p.sum(-1, keepdim=True)
    assert fit_decay(p, exclude=0).decay != pytest.approx(0.5, abs=1e-3)
    assert fit_decay(p, exclude=1).decay == pytest.approx(0.5, abs=1e-10)
    d = describe_head(p)
    assert d["best_exclude"] == 1
    expect_current = float(torch.stack([p[t, t] for t in range(1, 10)]).mean())
    assert d["current_weight"] == pytest.approx(expect_current)


def test_fixedness_of_identical_patterns():
    P = decay_pattern(0.6, 6).expand(5, 2, 6, 6)
    for head in fixedness(P):
        assert head["mean_std"] == pytest.approx(0.0, abs=1e-15)
        assert head["position_share"] == pytest.approx(1.0)


def test_fixedness_by_hand():
    # L = 2: the only free row is t = 1 with entries (a, 1 - a). Inputs: a = 0.2 and a = 0.6.
    P = torch.tensor([[[[1.0, 0.0], [0.2, 0.8]]], [[[1.0, 0.0], [0.6, 0.4]]]])
    (h,) = fixedness(P)
    # each entry has std 0.2 across the two inputs
    assert h["mean_std"] == pytest.approx(0.2) and h["max_std"] == pytest.approx(0.2)
    # per-entry means 0.4 and 0.6 around the grand mean 0.5: between = 0.01; within = 0.04
    assert h["position_share"] == pytest.approx(0.01 / 0.05)
    (fixed,) = fixedness(P, torch.tensor([1.0, 0.0]))  # weights matter
    assert fixed["mean_std"] == pytest.approx(0.0) and fixed["position_share"] == pytest.approx(1.0)


def test_mean_pattern_weighted():
    P = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    w = torch.tensor([1.0, 2.0, 1.0])
    torch.testing.assert_close(mean_pattern(P, w)[0], ((P[0, 0] + 2 * P[1, 0] + P[2, 0]) / 4).double())


def test_pattern_distance():
    a = decay_pattern(0.5, 4)
    assert pattern_distance(a, a) == {"tv": 0.0, "frobenius": 0.0}
    b = torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.0, 0.0, 1.0, 0], [0.25, 0.25, 0.25, 0.25]])
    c = torch.tensor([[1.0, 0, 0, 0], [1.0, 0.0, 0, 0], [0.0, 0.5, 0.5, 0], [0.25, 0.25, 0.25, 0.25]])
    assert pattern_distance(b, c)["tv"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert pattern_distance(3 * b, c)["tv"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)  # renormalised
    assert pattern_distance(decay_pattern(0.5, 4, normalise=False), a)["tv"] == pytest.approx(0.0, abs=1e-15)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"\[n, heads, L, L\]"):
        mean_pattern(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r"\[n, heads, L, L\]"):
        fixedness(torch.zeros(2, 1, 3, 4))
    with pytest.raises(ValueError, match="non-negative"):
        mean_pattern(torch.zeros(2, 1, 3, 3), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"\[L, L\]"):
        fit_decay(torch.zeros(3, 4))
