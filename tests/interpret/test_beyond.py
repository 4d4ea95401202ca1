"""Beyond the next token: grouping against brute force, separations known exactly, Mess3 without groups, RRXOR with."""

import itertools

import pytest
import torch

from interp import hmm as H
from interp.interpret.beyond import PRED_TOL, TOL, belief_groups, beyond_separation, group_rows
from interp.interpret.cache import evaluation_set


def exact(name: str, L: int, **params):
    hmm = H.get_process(name, **params)
    data = evaluation_set(hmm, L)
    return hmm, data, H.beliefs(hmm, data.tokens)


# ------------------------------------------------------------------ grouping
def test_group_rows_joins_rows_within_tol_and_numbers_by_first_appearance():
    x = torch.tensor([[0.5, 0.1], [0.2, 0.3], [0.5 + 1e-12, 0.1], [0.2, 0.3 - 1e-12], [0.5, 0.4]],
                     dtype=torch.float64)
    assert group_rows(x, 1e-9).tolist() == [0, 1, 0, 1, 2]


def test_group_rows_refuses_values_chained_within_tol():
    x = torch.tensor([[0.0], [0.6e-9], [1.2e-9], [1.8e-9]], dtype=torch.float64)
    with pytest.raises(ValueError, match="too close together to group"):
        group_rows(x, 1e-9)


def test_grouping_matches_brute_force_on_rrxor():
    hmm = H.get_process("rrxor")
    L = 4
    tokens = [list(t) for t in itertools.product(range(2), repeat=L)]
    # beliefs by the product formula pi T[x_0] ... T[x_t], normalised: independent of the library's filter
    points = []
    for seq in tokens:
        v = hmm.pi.clone()
        for t, x in enumerate(seq):
            v = v @ hmm.T[x]
            if v.sum() == 0:
                break
            points.append((tuple(seq), t, v / v.sum()))
    data = evaluation_set(hmm, L)
    beliefs = H.beliefs(hmm, data.tokens)
    cls, grp, pred = belief_groups(beliefs, hmm.emission_matrix)
    index = {tuple(s): i for i, s in enumerate(data.tokens.tolist())}
    possible = [(s, t, b) for s, t, b in points if s in index]
    assert len(possible) == data.tokens.shape[0] * L
    label = {(s, t): int(cls[index[s], t]) for s, t, _ in possible}
    for (s1, t1, b1), (s2, t2, b2) in itertools.combinations(possible, 2):
        same_belief = float((b1 - b2).abs().max()) <= TOL
        assert (label[s1, t1] == label[s2, t2]) == same_belief, (s1, t1, s2, t2)
        p1, p2 = b1 @ hmm.emission_matrix, b2 @ hmm.emission_matrix
        same_prediction = float((p1 - p2).abs().max()) <= PRED_TOL
        assert (int(grp[label[s1, t1]]) == int(grp[label[s2, t2]])) == same_prediction, (s1, t1, s2, t2)
    for c in range(len(grp)):  # each class's next-token distribution is that of its beliefs
        s, t, b = next(p for p in possible if label[p[0], p[1]] == c)
        torch.testing.assert_close(pred[c], b @ hmm.emission_matrix, rtol=0, atol=1e-14)


# ------------------------------------------------------------------ separations known exactly
def test_activations_equal_to_beliefs_keep_the_whole_separation():
    hmm, data, beliefs = exact("rrxor", 8)
    out = beyond_separation(beliefs, beliefs, data.weight, hmm.emission_matrix)
    assert out.kernel_dim == 3 and len(out.groups) > 0
    assert out.residual_r2 == pytest.approx(1.0, abs=1e-9)
    assert out.residual_share == pytest.approx(1.0, abs=1e-9)
    for g in out.groups:
        if g.exact is not None:
            assert g.exact > 0.1 and g.residual == pytest.approx(g.exact, abs=1e-9)
    # the control sees equal inputs within each group: nothing beyond rounding
    assert out.next_token_share < 1e-5
    assert out.mass == pytest.approx(sum(g.mass for g in out.groups), abs=1e-12) and 0 < out.mass <= 1


def test_activations_equal_to_next_token_distributions_keep_none():
    hmm, data, beliefs = exact("rrxor", 8)
    out = beyond_separation(beliefs @ hmm.emission_matrix, beliefs, data.weight, hmm.emission_matrix)
    assert out.residual_share < 1e-5 and out.next_token_share < 1e-5
    assert out.residual_r2 == pytest.approx(out.next_token_r2, abs=1e-9)


def test_rrxor_groups_share_predictions_and_every_distribution_is_listed_once():
    hmm, data, beliefs = exact("rrxor", 8)
    out = beyond_separation(beliefs, beliefs, data.weight, hmm.emission_matrix)
    keys = [g.next_token for g in out.groups]
    assert len(set(keys)) == len(keys)
    assert all(g.n_beliefs >= 2 and abs(sum(g.next_token) - 1) < 1e-12 for g in out.groups)
    assert (0.5, 0.5) in [tuple(round(p, 12) for p in k) for k in keys]  # the random-bit states predict alike
    assert [g.mass for g in out.groups] == sorted((g.mass for g in out.groups), reverse=True)


def test_mess3_has_no_such_group():
    """Mess3's emission matrix Smat @ E is invertible: equal predictions mean equal beliefs."""
    hmm, data, beliefs = exact("mess3", 6, x=0.05, a=0.85)
    out = beyond_separation(beliefs, beliefs, data.weight, hmm.emission_matrix)
    assert out.kernel_dim == 0 and out.groups == () and out.mass == 0.0
    assert out.residual_share is None and out.residual_r2 is None
    assert out.n_beliefs == out.n_predictions > 1000


def test_to_dict_is_plain_json():
    import json

    hmm, data, beliefs = exact("rrxor", 6)
    d = beyond_separation(beliefs, beliefs, data.weight, hmm.emission_matrix).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert {"next_token", "n_beliefs", "exact", "residual", "residual_share"} <= set(d["groups"][0])


def test_mismatched_shapes_are_refused():
    hmm, data, beliefs = exact("rrxor", 4)
    with pytest.raises(ValueError, match="must be"):
        beyond_separation(beliefs[:, :-1], beliefs, data.weight, hmm.emission_matrix)
    with pytest.raises(ValueError, match="emission_matrix must be"):
        beyond_separation(beliefs, beliefs, data.weight, hmm.emission_matrix[:3])
