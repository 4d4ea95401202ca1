"""The multi-head construction (analytic and the hand-set TransformerLens model) against the first-order maths
computed by brute force, and against today's single-head construction where one head is enough."""

import pytest
import torch

from interp.hmm import get_process
from interp.hmm.heads import head_count
from interp.hmm.sampling import sample
from interp.interpret import construction as K

N_CTX = 10
CASES = [("mess3", dict(x=0.5, a=0.6), 2), ("cyclic", dict(n_states=3, n_tokens=3, shift_weight=0.8), 3)]


def brute_force(hmm, tokens):
    """eta_t = pi + sum_{k=0}^{t} v[x_{t-k}] Smat^k, with every power formed explicitly."""
    v, smat, pi = K.token_vectors(hmm), hmm.transition_matrix, hmm.pi
    n, L = tokens.shape
    out = torch.empty(n, L, hmm.n_states, dtype=torch.float64)
    for t in range(L):
        acc = pi.expand(n, -1).clone()
        for k in range(t + 1):
            acc = acc + v[tokens[:, t - k]] @ torch.linalg.matrix_power(smat, k)
        out[:, t] = acc
    return out


def run_model(model, tokens, n_tokens):
    logits, cache = model.run_with_cache(K.to_tokens_with_bos(tokens, n_tokens), names_filter=lambda n: n in (
        "blocks.0.hook_resid_post", "blocks.0.attn.hook_pattern"))
    return logits.detach().double(), cache["blocks.0.hook_resid_post"].double(), cache["blocks.0.attn.hook_pattern"].double()


@pytest.mark.parametrize("name, params, n_heads", CASES)
def test_multihead_construction_equals_first_order_maths(name, params, n_heads):
    hmm = get_process(name, **params)
    tokens = sample(hmm, 96, N_CTX, seed=3)
    expected = brute_force(hmm, tokens)
    heads = head_count(hmm, N_CTX)
    assert heads.n_heads == n_heads

    analytic = K.multihead_beliefs(hmm, tokens, heads)
    torch.testing.assert_close(analytic, expected, atol=1e-9, rtol=0)

    model = K.multihead_transformer_construction(hmm, N_CTX, heads)
    assert model.cfg.n_heads == n_heads and model.cfg.n_ctx == N_CTX + 1 and model.cfg.d_vocab == hmm.n_tokens + 1
    logits, resid, pattern = run_model(model, tokens, hmm.n_tokens)
    ch = K.multihead_channels(hmm.n_states, hmm.n_tokens, N_CTX + 1)
    torch.testing.assert_close(resid[:, 1:, ch["belief"]] + hmm.pi, expected, atol=1e-9, rtol=0)
    assert not resid[:, 0, ch["belief"]].any()  # BOS holds the prior
    # every head's pattern is input-independent, puts no weight on the current token, and leaves BOS >= 1/2
    assert float((pattern - pattern[:1]).abs().max()) == 0.0
    diag = torch.diagonal(pattern[0, :, 1:, 1:], dim1=-2, dim2=-1)
    assert float(diag.abs().max()) == 0.0
    assert float(pattern[0, :, 1:, 0].min()) >= 0.5 - 1e-12
    # the read-out is the first-order logits of the belief channels; BOS is never predicted
    W_U, b_U = K.readout_logits_params(hmm)
    torch.testing.assert_close(logits[:, 1:, :hmm.n_tokens], (expected - hmm.pi) @ W_U + b_U, atol=1e-9, rtol=0)
    assert float(logits[..., hmm.n_tokens].max()) <= K.NEVER_LOGIT + 1e-6


def test_one_head_reduces_to_todays_single_head_construction():
    hmm = get_process("mess3", x=0.15, a=0.6)
    lam = K.analytic_decay(hmm)
    tokens = sample(hmm, 96, N_CTX, seed=4)
    heads = head_count(hmm, N_CTX)
    assert heads.n_heads == 1
    torch.testing.assert_close(K.multihead_beliefs(hmm, tokens, heads),
                               K.construction_beliefs(hmm, tokens, decay=lam), atol=1e-12, rtol=0)
    logits, resid, _ = run_model(K.multihead_transformer_construction(hmm, N_CTX, heads), tokens, 3)
    old_logits, old_resid, _ = run_model(K.transformer_construction(hmm, N_CTX, lam), tokens, 3)
    belief = K.transformer_channels(3)["belief"]
    torch.testing.assert_close(resid[..., belief], old_resid[..., belief], atol=1e-12, rtol=0)
    torch.testing.assert_close(logits, old_logits, atol=1e-12, rtol=0)


def test_no_head_needed_leaves_the_current_token_alone():
    hmm = get_process("mess3", x=1 / 3, a=0.6)
    tokens = sample(hmm, 32, N_CTX, seed=5)
    heads = head_count(hmm, N_CTX)
    assert heads.n_heads == 0
    expected = hmm.pi + K.token_vectors(hmm)[tokens]
    torch.testing.assert_close(K.multihead_beliefs(hmm, tokens, heads), expected, atol=1e-12, rtol=0)
    _, resid, _ = run_model(K.multihead_transformer_construction(hmm, N_CTX, heads), tokens, 3)
    torch.testing.assert_close(resid[:, 1:, :3] + hmm.pi, expected, atol=1e-12, rtol=0)


def test_heads_solved_for_a_shorter_context_are_refused():
    hmm = get_process("mess3", x=0.5, a=0.6)
    heads = head_count(hmm, 4)
    with pytest.raises(ValueError, match="solved for context 4"):
        K.multihead_beliefs(hmm, sample(hmm, 4, N_CTX, seed=0), heads)
    with pytest.raises(ValueError, match="solved for context 4"):
        K.multihead_transformer_construction(hmm, N_CTX, heads)
