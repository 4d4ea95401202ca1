"""The heads study's agreement criterion on hand-made rows (no training)."""

import pytest
import torch

from interp.hmm import forward_filter, get_process, sample, unigram_loss
from interp.hmm.heads import head_count, keep_heads
from interp.interpret.construction import next_token_loss, token_vectors
from interp.studies.heads import UNTESTABLE, first_order_gaps, short_reason, verdicts


def rows(gaps: dict[int, float], predicted: int, process: str = "p") -> list[dict]:
    return [{"process": process, "predicted heads": predicted, "model heads": h, "gap fraction": g}
            for h, g in gaps.items()]


def test_fewer_heads_must_be_worse_by_the_margin_and_enough_heads_within_it():
    r = rows({1: 0.40, 2: 0.10, 4: 0.12}, predicted=2)
    verdicts(r, 0.05)
    assert [(x["enough heads"], x["agrees"]) for x in r] == [("no", "yes"), ("yes", "yes"), ("yes", "yes")]
    r = rows({1: 0.13, 2: 0.10, 4: 0.30}, predicted=2)  # the 1-head model is not measurably worse; 4 heads is
    verdicts(r, 0.05)
    assert [x["agrees"] for x in r] == ["no", "yes", "no"]


def test_processes_are_judged_apart_and_an_untested_prediction_is_none():
    r = rows({1: 0.5, 2: 0.5}, predicted=3, process="a") + rows({1: 0.1, 2: 0.5}, predicted=1, process="b")
    verdicts(r, 0.05)
    assert [x["agrees"] for x in r] == [None, None, "yes", "no"]


def test_a_shortfall_below_the_margin_is_not_testable_and_above_it_the_rule_holds():
    r = rows({1: 0.085, 2: 0.089, 4: 0.082}, predicted=2)  # the 1-head model is not worse ...
    r[0]["predicted shortfall"] = 0.013  # ... but the construction says it should not be, at this margin
    verdicts(r, 0.05)
    assert [x["agrees"] for x in r] == [UNTESTABLE, "yes", "yes"]
    r = rows({1: 0.085, 2: 0.089, 4: 0.082}, predicted=2)
    r[0]["predicted shortfall"] = 0.36  # a visible shortfall: the flat 1-head model misses
    verdicts(r, 0.05)
    assert [x["agrees"] for x in r] == ["no", "yes", "yes"]
    r = rows({1: 0.085, 2: 0.089, 4: 0.082}, predicted=2)
    r[0]["predicted shortfall"] = 0.05  # at the margin: testable
    verdicts(r, 0.05)
    assert r[0]["agrees"] == "no"


def test_first_order_gaps_are_the_odd_or_even_lags_with_one_head_and_the_full_sum_with_two():
    hmm = get_process("mess3", x=0.5, a=0.6)
    tokens = sample(hmm, 400, 8, seed=3)
    gaps = first_order_gaps(hmm, head_count(hmm, 8), tokens)
    optimal = float(-forward_filter(hmm, tokens, return_beliefs=False).log_normalizers[:, 1:].mean())
    unigram = unigram_loss(hmm)

    def gap(lags) -> float:  # pi + v[x_t] + sum over the given lags of lam^k v[x_{t-k}], lam = 1 - 3x
        v, n, L = token_vectors(hmm), *tokens.shape
        b = hmm.pi + v[tokens]
        for t in range(L):
            for k in lags:
                if k <= t:
                    b[:, t] += (-0.5) ** k * v[tokens[:, t - k]]
        return (next_token_loss(hmm, tokens, None, b) - optimal) / (unigram - optimal)

    assert set(gaps) == {0, 1, 2}
    assert abs(gaps[0] - gap([])) <= 1e-12
    assert abs(gaps[1] - min(gap([1, 3, 5, 7]), gap([2, 4, 6]))) <= 1e-9
    assert abs(gaps[2] - gap(range(1, 8))) <= 1e-9
    assert gaps[0] > gaps[1] > gaps[2]


def test_keep_heads_keeps_matrices_and_weights_and_rejects_bad_indices():
    hc = head_count(get_process("rotation", p=0.9, a=0.6), 10)
    two = keep_heads(hc, [2, 0])
    assert two.n_heads == 2 and two.reason == hc.reason
    assert torch.equal(two.matrices, hc.matrices[[2, 0]]) and torch.equal(two.weights, hc.weights[[2, 0]])
    for bad in ([0, 0], [3], [-1]):
        with pytest.raises(ValueError) as err:
            keep_heads(hc, bad)
        assert str(err.value) == f"keep must be distinct head indices in [0, 3), got {bad}"


def test_the_reason_column_is_the_first_clause():
    hc = head_count(get_process("mess3", x=0.5, a=0.6), 10)
    assert short_reason(hc.reason) == ("two heads: over lags 1..9 the lag terms alternate in sign along one "
                                       "matrix")
    assert short_reason("no head: nothing") == "no head: nothing"
