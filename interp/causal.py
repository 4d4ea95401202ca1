"""Causal check of a belief probe: steer the residual stream to another belief and see whether the
model's next-token distribution follows the HMM.

At a position with activation ``a`` the probe reads ``r = W a + b`` ([S, d] and [S]). To make it
read a target belief ``eta'`` instead, add ``delta = pinv(W) (eta' - r)`` to ``a`` (the smallest such
move; the probe's rows sum to a constant, so ``eta' - r`` lies in the span it can reach). If the model
uses the probed direction the way the HMM uses beliefs, its next-token distribution moves to
``eta' @ E`` (E: the next-token distribution of each current state). A move of the same norm in a
random direction is the control.
"""

from __future__ import annotations

import torch


def _kl(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, with 0 log 0 = 0."""
    return torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - log_q), 0.0).sum(-1)


@torch.no_grad()
def _logits_with_shift(model, tokens: torch.Tensor, hook: str, pos: torch.Tensor, shift: torch.Tensor | None):
    """Next-token log-probabilities at ``pos`` of each sequence, with ``shift`` added to ``hook`` there."""
    rows = torch.arange(tokens.shape[0], device=tokens.device)

    def add(act, hook=None):
        act = act.clone()
        act[rows, pos] += shift.to(act.dtype)
        return act

    if shift is None:
        logits = model(tokens)
    else:
        logits = model.run_with_hooks(tokens, fwd_hooks=[(hook, add)])
    return torch.log_softmax(logits[rows, pos].double(), -1)


def causal_check(model: torch.nn.Module, tokens: torch.Tensor, beliefs: torch.Tensor, acts: torch.Tensor,
                 coef: torch.Tensor, intercept: torch.Tensor, emission: torch.Tensor, *, hook: str,
                 n_points: int = 2000, batch_size: int = 500, generator: torch.Generator) -> dict:
    """Steer ``n_points`` random (sequence, position) points to the belief of another random point.

    tokens [n, L], beliefs [n, L, S] (exact), acts [n, L, d] (the hook's cached activations),
    coef [S, d], intercept [S] (the probe), emission [S, V] (next-token distribution per current state).
    Returns mean KLs from the HMM's prediction for the target belief to the model's distribution:
    before the move, after it, and after the random control move; the share of points that got closer;
    and the pooled R^2 of the model's change in probabilities against the HMM's predicted change.
    """
    n, L = tokens.shape
    device = next(model.parameters()).device
    k = min(n_points, n * L)
    seq = torch.randint(n, (k,), generator=generator)
    pos = torch.randint(L, (k,), generator=generator)
    other = torch.randint(n * L, (k,), generator=generator)
    target = beliefs.reshape(n * L, -1)[other].double()
    W, b = coef.double(), intercept.double()
    pinv = torch.linalg.pinv(W, rtol=1e-8)
    a = acts[seq, pos].double()
    delta = (target - (a @ W.T + b)) @ pinv.T  # [k, d]
    rand = torch.randn(delta.shape, generator=generator, dtype=torch.float64)
    rand = rand * (delta.norm(dim=1, keepdim=True) / rand.norm(dim=1, keepdim=True))
    p_now, p_target = beliefs[seq, pos].double() @ emission.double(), target @ emission.double()

    out = {name: [] for name in ("before", "after", "random", "change")}
    for i in range(0, k, batch_size):
        sl = slice(i, i + batch_size)
        tok, ps = tokens[seq[sl]].to(device), pos[sl].to(device)
        before = _logits_with_shift(model, tok, hook, ps, None).cpu()
        after = _logits_with_shift(model, tok, hook, ps, delta[sl].to(device)).cpu()
        random = _logits_with_shift(model, tok, hook, ps, rand[sl].to(device)).cpu()
        out["before"].append(_kl(p_target[sl], before))
        out["after"].append(_kl(p_target[sl], after))
        out["random"].append(_kl(p_target[sl], random))
        out["change"].append(after.exp() - before.exp())
    kl = {name: torch.cat(out[name]) for name in ("before", "after", "random")}
    model_change, hmm_change = torch.cat(out["change"]), p_target - p_now
    resid = ((model_change - hmm_change) ** 2).sum()
    total = ((hmm_change - hmm_change.mean(0)) ** 2).sum()
    return {
        "hook": hook, "n_points": k,
        "kl_target_before": float(kl["before"].mean()), "kl_target_after": float(kl["after"].mean()),
        "kl_target_random": float(kl["random"].mean()),
        "share_closer": float((kl["after"] < kl["before"]).double().mean()),
        "change_r2": float(1 - resid / total),
        "mean_shift_norm": float(delta.norm(dim=1).mean()),
    }
