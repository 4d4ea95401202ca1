"""Constrained belief updates in detail: hand-derived comparisons, the hand-set constructions (which must agree
with their own maths to ~1e-9) and the per-layer table of a tiny 2-layer model."""

import math

import pytest
import torch

from interp.hmm import get_process
from interp.interpret import construction as K
from interp.interpret.analyse import build_construction_run, probe_run
from interp.interpret.attention import decay_pattern, mean_pattern
from interp.interpret.constrained import (analyse_constrained, compare_attention, compare_vectors, hook_layer,
                                          learned_token_vectors, map_vectors, token_probabilities)

MESS3 = {"name": "mess3", "params": {"x": 0.15, "a": 0.6}}


def mess3():
    return get_process("mess3", x=0.15, a=0.6)


def test_mess3_token_vectors_by_hand():
    # pi is uniform and pi @ Smat = pi, so pi @ T[x] = E[:, x] / 3 and P(x) = (a + 2b) / 3 = 1/3:
    # pi @ Tn[x] is a at state x and b = (1 - a) / 2 elsewhere, and v[x] = that minus 1/3.
    a, b = 0.6, 0.2
    want = torch.full((3, 3), b - 1 / 3, dtype=torch.float64)
    want.fill_diagonal_(a - 1 / 3)
    assert torch.allclose(K.token_vectors(mess3()), want, atol=1e-12)
    assert torch.allclose(token_probabilities(mess3()), torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-12)


def test_compare_vectors_gain_shift_and_rotation():
    v = K.token_vectors(mess3())
    p = token_probabilities(mess3())
    # a gain and a shift shared by every token: the same direction, gain 2, nothing left over
    same = compare_vectors(2.0 * v + torch.tensor([0.3, -1.0, 5.0], dtype=torch.float64), v, p, what="ov", hook="h")
    assert same.cosine == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    assert same.gain == pytest.approx(2.0, abs=1e-12)
    assert same.r2 == pytest.approx(1.0, abs=1e-12)
    assert same.norm_ratio == pytest.approx(2.0, abs=1e-12)
    # a quarter turn inside the zero-sum plane: every vector perpendicular to its prediction
    q = K._zero_sum_basis(3)
    turn = q @ torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64) @ q.T
    perpendicular = compare_vectors(v @ turn, v, p, what="ov", hook="h")
    assert perpendicular.cosine == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
    assert perpendicular.gain == pytest.approx(0.0, abs=1e-12)
    assert perpendicular.r2 == pytest.approx(0.0, abs=1e-12)
    # learned vectors that vanish have no direction
    zero = compare_vectors(torch.zeros(3, 3), v, p, what="embedding", hook="h")
    assert zero.cosine == [None, None, None] and zero.mean_cosine is None and zero.r2 is None


def test_compare_vectors_refuses_bad_input():
    v = K.token_vectors(mess3())
    with pytest.raises(ValueError, match=r"must be \[V, S\]"):
        compare_vectors(v[:2], v, torch.ones(3), what="ov", hook="h")
    with pytest.raises(ValueError, match="predicted vectors are all ~0"):
        compare_vectors(v, torch.zeros(3, 3), torch.ones(3), what="ov", hook="h")


def test_compare_attention_on_the_decay_pattern():
    lam = 0.55
    raw = decay_pattern(lam, 8, normalise=False)
    (cmp,) = compare_attention(raw[None], lam, hook="blocks.0.attn.hook_pattern", decay_source="analytic")
    assert cmp.tv < 1e-12 and cmp.frobenius < 1e-12
    assert cmp.learned_decay == pytest.approx(lam, abs=1e-12)
    # uniform attention over the prefix is far from lambda^k and has no decay
    uniform = torch.tril(torch.ones(8, 8, dtype=torch.float64))
    (flat,) = compare_attention(uniform[None], lam, hook="x", decay_source="analytic")
    assert flat.tv > 0.1 and flat.learned_decay == pytest.approx(1.0, abs=1e-12)


def test_a_negative_decay_has_no_distance():
    uniform = torch.tril(torch.ones(6, 6, dtype=torch.float64))
    (cmp,) = compare_attention(uniform[None], -0.5, hook="x", decay_source="analytic")
    assert cmp.tv is None and cmp.frobenius is None and cmp.decay == -0.5
    assert cmp.learned_decay == pytest.approx(1.0, abs=1e-12)


def test_fixed_attention_construction_agrees_with_its_maths():
    hmm = mess3()
    lam = K.analytic_decay(hmm)
    model = K.fixed_attention_construction(hmm, 6, lam)
    emb, ov = learned_token_vectors(model, hmm.n_tokens)
    v, p = K.token_vectors(hmm), token_probabilities(hmm)
    eye = torch.eye(3, dtype=torch.float64)  # the construction's residual stream is belief space itself
    for vectors in (emb, ov[0]):
        cmp = compare_vectors(map_vectors(vectors, eye), v, p, what="ov", hook="blocks.0.hook_resid_post")
        assert max(abs(c - 1.0) for c in cmp.cosine) < 1e-9
        assert abs(cmp.gain - 1.0) < 1e-9 and abs(cmp.r2 - 1.0) < 1e-9
    pattern = model.blocks[0].attn.pattern().detach()[None]
    (att,) = compare_attention(pattern, lam, hook="blocks.0.attn.hook_pattern", decay_source="analytic")
    assert att.tv < 1e-9 and abs(att.learned_decay - lam) < 1e-9


@pytest.mark.parametrize("bos", [False, True])
def test_learned_token_vectors_leave_the_untrained_last_position_out(bos):
    from interp.models import build_model
    from interp.models.configs import TransformerConfig

    model = build_model(TransformerConfig(n_layers=1, d_model=8, d_head=4, normalization="LN", bos=bos), 3, 5,
                        dtype=torch.float64)
    first = 1 if bos else 0
    assert model.W_pos.shape[0] == 5 + first
    before = learned_token_vectors(model, 3)
    with torch.no_grad():
        model.W_pos[-1] += torch.arange(8.0)  # the last position: moving it changes nothing
    after = learned_token_vectors(model, 3)
    assert torch.equal(before[1], after[1])
    with torch.no_grad():
        model.W_pos[-2] += torch.arange(8.0)  # the last trained position counts
    assert not torch.allclose(after[1], learned_token_vectors(model, 3)[1])


def test_transformer_construction_run_agrees_with_its_maths(tmp_path):
    build_construction_run(MESS3, 6, tmp_path / "construction")
    res = analyse_constrained(tmp_path / "construction", map_target="constrained")
    lam = 1 - 3 * 0.15
    assert res.decay == pytest.approx(lam, abs=1e-12) and res.decay_source == "analytic"
    assert res.map_hook == "blocks.0.hook_resid_post"
    (ov,) = res.ov
    # the head writes v[x] times its gain 1 / (1 - lambda) (the BOS sink takes the rest of the weight)
    assert max(abs(c - 1.0) for c in ov.cosine) < 1e-9
    assert abs(ov.gain - 1.0 / (1.0 - lam)) < 1e-9 and abs(ov.r2 - 1.0) < 1e-9
    # the embedding stays in its own channels, which the read-out never reads: it maps to 0
    assert res.embedding.norm_ratio < 1e-9 and res.embedding.mean_cosine is None
    (att,) = res.attention
    assert att.tv < 1e-9 and abs(att.learned_decay - lam) < 1e-9
    (layer,) = res.layers
    assert layer.layer == 0 and abs(layer.r2_constrained - 1.0) < 1e-9
    assert 0.9 < layer.r2_exact < 1.0 and 0.9 < res.r2_constrained_vs_exact < 1.0


def test_layer_table_of_a_two_layer_model(runs):
    run_dir = runs["transformer"]  # 2 layers, 1 head each, context 5
    fresh = analyse_constrained(run_dir)
    assert [r.hook for r in fresh.layers] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert [r.layer for r in fresh.layers] == [0, 1]
    for r in fresh.layers:
        assert math.isfinite(r.r2_exact) and r.r2_exact <= 1.0
        assert math.isfinite(r.r2_constrained) and r.r2_constrained <= 1.0
        assert r.towards_exact == pytest.approx(r.r2_exact - r.r2_constrained)
    assert [(a.hook, a.head) for a in fresh.attention] == [("blocks.0.attn.hook_pattern", 0),
                                                           ("blocks.1.attn.hook_pattern", 0)]
    assert all(0.0 <= a.tv <= 1.0 for a in fresh.attention)
    assert len(fresh.ov) == 1 and len(fresh.ov[0].cosine) == 3
    assert all(c is None or -1.0 - 1e-12 <= c <= 1.0 + 1e-12 for c in fresh.ov[0].cosine)
    # with probe.json present its exact R^2 is reused: the same split, so the same numbers
    probe = probe_run(run_dir)
    reused = analyse_constrained(run_dir)
    for r in reused.layers:
        assert r.r2_exact == probe.hooks[r.hook]["r2"]
    assert [r.r2_exact for r in reused.layers] == pytest.approx([r.r2_exact for r in fresh.layers], abs=1e-9)
    d = reused.to_dict()
    assert d["layers"][0]["hook"] == "blocks.0.hook_resid_post" and d["map_target"] == "exact"


def test_map_target_is_checked(runs):
    with pytest.raises(ValueError, match="map_target must be 'exact' or 'constrained', got 'both'"):
        analyse_constrained(runs["transformer"], map_target="both")


def test_hook_layer():
    assert hook_layer("blocks.3.hook_resid_post") == 3 and hook_layer("hook_embed") == -1


def test_mean_pattern_of_the_construction_is_the_decay(tmp_path):
    # the cache drops BOS: the real-token rows sum to 1 - lambda^(t+1), and renormalised they are lambda^(t-s)
    from interp.interpret.cache import load_cache

    build_construction_run(MESS3, 5, tmp_path / "c")
    analyse_constrained(tmp_path / "c", map_target="constrained")  # builds the cache
    cache = load_cache(tmp_path / "c")
    mean = mean_pattern(cache["blocks.0.attn.hook_pattern"], cache.weight)[0]
    lam = 0.55
    t = torch.arange(4, dtype=torch.float64)  # context 5: the cache holds the four trained positions
    assert torch.allclose(mean.sum(-1), 1 - lam ** (t + 1), atol=1e-12)


def test_probes_here_use_the_run_probe_split_seed_and_ridge(tmp_path):
    from conftest import train_tiny

    from interp.interpret.analyse import ensure_cache, load_probe_result, probe_settings
    from interp.interpret.beyond import beyond_next_token
    from interp.interpret.probes import probe_hooks

    run_dir = train_tiny(tmp_path, "transformer")
    assert probe_settings(None) == {"test_fraction": 0.2, "seed": 0, "ridge": 0.0}
    probe_run(run_dir, test_fraction=0.3, seed=2, ridge=0.5)
    settings = probe_settings(load_probe_result(run_dir))
    assert settings == {"test_fraction": 0.3, "seed": 2, "ridge": 0.5}
    res = analyse_constrained(run_dir)
    cache = ensure_cache(run_dir)
    constrained = K.construction_beliefs(mess3(), cache.tokens)
    for layer in res.layers:
        x = cache[layer.hook].reshape(*cache[layer.hook].shape[:2], -1)
        fit = lambda **kw: probe_hooks({layer.hook: x}, constrained, cache.weight, concat_name="",  # noqa: E731
                                       concat_hooks=[], **kw)[layer.hook][1].r2
        assert layer.r2_constrained == pytest.approx(fit(**settings), abs=1e-12)
        assert layer.r2_constrained != pytest.approx(fit(**probe_settings(None)), abs=1e-9)
    assert beyond_next_token(run_dir).split == {"by": "sequence", "test_fraction": 0.3, "seed": 2}
