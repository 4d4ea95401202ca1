"""Belief probes: exact recovery of planted maps, scikit-learn as the outside reference, honest splits."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.metrics import r2_score

from interp.interpret.metrics import pooled_r2
from interp.interpret.probes import LinearProbe, ProbeScores, best_hook, fit_probe, probe_hooks, split_by_sequence


def data(n=400, d=6, S=3, seed=0, noise=0.0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) + 2.0  # off-centre: the intercept matters
    W = torch.randn(S, d, generator=g, dtype=torch.float64)
    b = torch.randn(S, generator=g, dtype=torch.float64)
    Y = X @ W.T + b + noise * torch.randn(n, S, generator=g, dtype=torch.float64)
    w = torch.rand(n, generator=g, dtype=torch.float64)
    return X, Y, W, b, w


@pytest.mark.parametrize("weighted", [False, True])
def test_planted_affine_map_is_recovered_exactly(weighted):
    X, Y, W, b, w = data()
    p = LinearProbe().fit(X, Y, w if weighted else None)
    torch.testing.assert_close(p.coef_, W, atol=1e-10, rtol=0)
    torch.testing.assert_close(p.intercept_, b, atol=1e-10, rtol=0)
    assert p.coef_.dtype == p.intercept_.dtype == torch.float64 and p.n_features_in_ == 6
    assert p.score(X, Y) == pytest.approx(1.0, abs=1e-12)
    through_origin = LinearProbe(fit_intercept=False).fit(X, Y - b, w if weighted else None)
    torch.testing.assert_close(through_origin.coef_, W, atol=1e-10, rtol=0)
    torch.testing.assert_close(through_origin.intercept_, torch.zeros(3, dtype=torch.float64))


def test_rank_deficient_activations_get_the_minimum_norm_solution():
    X, Y, W, b, w = data()
    X2 = torch.cat([X, X[:, :2], X[:, :1] * 3], 1)  # duplicated columns: rank 6 of 9
    p = LinearProbe().fit(X2, Y, w)
    torch.testing.assert_close(p.predict(X2), Y, atol=1e-9, rtol=0)
    ref = LinearRegression().fit(X2.numpy(), Y.numpy(), sample_weight=w.numpy())  # scipy lstsq: minimum norm
    np.testing.assert_allclose(p.coef_.numpy(), ref.coef_, atol=1e-9)
    # float32 activations: the rounding noise that makes the copies independent is not fitted
    p32 = LinearProbe().fit(X2.float(), Y, w)
    torch.testing.assert_close(p32.predict(X2.float()), Y, atol=1e-5, rtol=0)
    torch.testing.assert_close(p32.coef_, p.coef_, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ridge", [0.0, 0.5, 10.0])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_matches_scikit_learn(ridge, fit_intercept):
    X, Y, _, _, w = data(noise=0.3, seed=1)
    Ref = Ridge(alpha=ridge, fit_intercept=fit_intercept) if ridge else LinearRegression(fit_intercept=fit_intercept)
    ref = Ref.fit(X.numpy(), Y.numpy(), sample_weight=w.numpy())
    p = LinearProbe(ridge=ridge, fit_intercept=fit_intercept).fit(X.numpy(), Y.numpy(), w.numpy())  # numpy in
    np.testing.assert_allclose(p.coef_.numpy(), ref.coef_, atol=1e-8, rtol=0)
    np.testing.assert_allclose(p.intercept_.numpy(), ref.intercept_, atol=1e-8, rtol=0)
    np.testing.assert_allclose(p.predict(X).numpy(), ref.predict(X.numpy()), atol=1e-8, rtol=0)


def test_many_rows_in_chunks_match_scikit_learn():
    X, Y, _, _, w = data(n=40_000, d=5, noise=0.5, seed=2)  # more rows than one float64 chunk
    ref = Ridge(alpha=3.0).fit(X.numpy(), Y.numpy(), sample_weight=w.numpy())
    p = LinearProbe(ridge=3.0).fit(X.float(), Y, w)
    ref32 = Ridge(alpha=3.0).fit(X.float().double().numpy(), Y.numpy(), sample_weight=w.numpy())
    np.testing.assert_allclose(p.coef_.numpy(), ref32.coef_, atol=1e-8, rtol=0)
    np.testing.assert_allclose(p.intercept_.numpy(), ref32.intercept_, atol=1e-8, rtol=0)
    np.testing.assert_allclose(p.coef_.numpy(), ref.coef_, atol=1e-4, rtol=0)


def test_score_is_the_pooled_variance_weighted_r2():
    X, Y, _, _, w = data(noise=0.5, seed=3)
    p = LinearProbe().fit(X[:300], Y[:300])
    for sw in (None, w[300:]):
        expect = r2_score(Y[300:].numpy(), p.predict(X[300:]).numpy(), multioutput="variance_weighted",
                          sample_weight=None if sw is None else sw.numpy())
        assert p.score(X[300:], Y[300:], sw) == pytest.approx(expect, abs=1e-12)


def test_scikit_learn_protocol_and_errors():
    p = LinearProbe(ridge=0.1)
    params = p.get_params()
    assert (params["ridge"], params["fit_intercept"]) == (0.1, True)
    assert clone(p).get_params() == params and clone(p) is not p
    with pytest.raises(NotFittedError):
        p.predict(torch.zeros(2, 3))
    X, Y, _, _, w = data()
    with pytest.raises(ValueError, match="same n"):
        LinearProbe().fit(X, Y[:-1])
    with pytest.raises(ValueError, match="2-D"):
        LinearProbe().fit(X[:, 0], Y)
    with pytest.raises(ValueError, match="non-finite"):
        LinearProbe().fit(X, Y * float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        LinearProbe().fit(torch.where(X > 3, float("inf"), X), Y)
    with pytest.raises(ValueError, match="sample_weight"):
        LinearProbe().fit(X, Y, -w)
    with pytest.raises(ValueError, match="ridge"):
        LinearProbe(ridge=-1.0).fit(X, Y)
    fitted = LinearProbe().fit(torch.cat([X, torch.ones(400, 1)], 1), Y)  # constant column: its coefficient is 0
    assert fitted.coef_[:, -1].abs().max() == pytest.approx(0.0, abs=1e-12)
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="non-finite"):  # even where the coefficient is exactly 0
            fitted.predict(torch.cat([X, torch.full((400, 1), bad)], 1))
    with pytest.raises(ValueError, match=r"\[n, 7\]"):
        fitted.predict(X[:, :3])


def test_split_by_sequence():
    train, test = split_by_sequence(100, 0.2, torch.Generator().manual_seed(0))
    assert (len(train), len(test)) == (80, 20)
    assert torch.equal(torch.cat([train, test]).sort().values, torch.arange(100))  # disjoint and covering
    assert torch.equal(train, train.sort().values) and torch.equal(test, test.sort().values)
    again = split_by_sequence(100, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    other = split_by_sequence(100, 0.2, torch.Generator().manual_seed(1))
    assert not torch.equal(test, other[1])
    assert len(split_by_sequence(10, 0.25, torch.Generator())[1]) == 2  # round(2.5) = 2
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="test_fraction"):
            split_by_sequence(100, bad, torch.Generator())
    with pytest.raises(ValueError, match="non-empty"):
        split_by_sequence(2, 0.1, torch.Generator())


def sequences(n=300, L=5, d=8, S=3, seed=0, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, L, d, generator=g, dtype=torch.float64)
    W = torch.randn(S, d, generator=g, dtype=torch.float64)
    Y = X @ W.T + 0.5 + noise * torch.randn(n, L, S, generator=g, dtype=torch.float64)
    return X, Y


def test_shuffle_control_is_near_zero_and_real_probe_near_one():
    X, Y = sequences(n=4000)
    train, test = split_by_sequence(4000, 0.25, torch.Generator().manual_seed(1))
    _, sc = fit_probe(X.float(), Y, train=train, test=test, generator=torch.Generator().manual_seed(2))
    var = float(((Y - Y.mean((0, 1))) ** 2).sum(-1).mean())
    assert sc.r2 == pytest.approx(1 - 3 * 0.05**2 / var, abs=2e-3)
    assert sc.r2_train == pytest.approx(sc.r2, abs=2e-3)
    assert sc.shuffled_r2 == pytest.approx(0.0, abs=0.05)  # its spread is about 2 / sqrt(training rows)
    assert (sc.n_train, sc.n_test) == (3000, 1000)
    assert ProbeScores(**sc.to_dict()) == sc


def test_held_out_sequences_do_not_influence_the_fit():
    X, Y = sequences()
    w = torch.rand(300, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    train, test = split_by_sequence(300, 0.3, torch.Generator().manual_seed(0))
    p1, s1 = fit_probe(X, Y, w, train=train, test=test, generator=torch.Generator().manual_seed(0))
    X2, Y2, w2 = X.clone(), Y.clone(), w.clone()
    X2[test], Y2[test], w2[test] = 7.0, Y2[test] + 5.0, 1.0
    p2, s2 = fit_probe(X2, Y2, w2, train=train, test=test, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(p1.coef_, p2.coef_, atol=0, rtol=0)
    assert s1.r2_train == s2.r2_train and s1.shuffled_r2 != s2.shuffled_r2
    # the test score is the probe's pooled R^2 on exactly the test rows, each weighted by its sequence
    rows = lambda t: t[test].reshape(-1, t.shape[-1])  # noqa: E731
    assert s2.r2 == pytest.approx(pooled_r2(rows(Y2), p2.predict(rows(X2)), w2[test].repeat_interleave(5)), abs=1e-12)
    with pytest.raises(ValueError, match="disjoint"):
        fit_probe(X, Y, train=train, test=torch.cat([test, train[:1]]), generator=torch.Generator())


def test_fit_probe_weights_and_ridge_scale():
    X, Y = sequences(noise=0.5)
    w = torch.rand(300, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    train, test = split_by_sequence(300, 0.2, torch.Generator().manual_seed(0))
    p, _ = fit_probe(X, Y, w, train=train, test=test, ridge=20.0, generator=torch.Generator())
    row_w = w[train].repeat_interleave(5)
    ref = Ridge(alpha=20.0).fit(X[train].reshape(-1, 8).numpy(), Y[train].reshape(-1, 3).numpy(),
                                sample_weight=(row_w / row_w.mean()).numpy())
    np.testing.assert_allclose(p.coef_.numpy(), ref.coef_, atol=1e-8, rtol=0)
    # probabilities summing to 1 and no weights at all mean the same ridge
    p_uniform, s_uniform = fit_probe(X, Y, torch.full((300,), 1 / 300), train=train, test=test, ridge=20.0,
                                     generator=torch.Generator().manual_seed(0))
    p_none, s_none = fit_probe(X, Y, train=train, test=test, ridge=20.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(p_uniform.coef_, p_none.coef_, atol=1e-12, rtol=0)
    assert s_uniform.r2 == pytest.approx(s_none.r2, abs=1e-12)


def test_probe_hooks_share_a_split_and_concatenate():
    X, Y = sequences(n=400, noise=0.2)
    acts = {"a": X[..., :3].float(), "b": X[..., 3:6].float(), "c": X[..., 6:].float()}
    res = probe_hooks(acts, Y, test_fraction=0.25, seed=0)
    assert set(res) == {"a", "b", "c", "all_layers"}
    assert all((r[1].n_train, r[1].n_test) == (300, 100) for r in res.values())
    concat = res["all_layers"][1]
    assert concat.r2_train >= max(res[h][1].r2_train for h in "abc") - 1e-12
    var = float(((Y - Y.mean((0, 1))) ** 2).sum(-1).mean())
    assert concat.r2 == pytest.approx(1 - 3 * 0.2**2 / var, abs=0.01)  # together the hooks hold all of X
    assert concat.r2 > max(res[h][1].r2 for h in "abc") + 0.1
    assert best_hook(res) == max("abc", key=lambda h: res[h][1].r2)  # the concatenation never wins
    # one hook's result does not depend on which others are probed; a chosen subset is concatenated
    sub = probe_hooks(acts, Y, test_fraction=0.25, seed=0, concat_name="ab", concat_hooks=["a", "b"])
    assert sub["c"][1] == res["c"][1] and set(sub) == {"a", "b", "c", "ab"}
    ab = probe_hooks({"ab": torch.cat([acts["a"], acts["b"]], -1)}, Y, test_fraction=0.25, seed=0, concat_hooks=[])
    assert sub["ab"][1] == ab["ab"][1] and set(ab) == {"ab"}
    assert best_hook(sub, concat_name="ab") == best_hook(res)
    with pytest.raises(ValueError, match="concat_hooks"):
        probe_hooks(acts, Y, concat_hooks=["a", "z"])
