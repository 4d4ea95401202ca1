"""Causal check of a belief probe: steer the residual stream to another belief and see whether the
model's next-token distribution follows the HMM.

At a position with activation ``a`` the probe reads ``r = W a + b`` ([S, d] and [S]). To make it
read a target belief ``eta'`` instead, add the smallest move that does so, measured in the activations'
own spread (covariance ``Sigma``): ``delta = Sigma W^T pinv(W Sigma W^T) (eta' - r)``. (The plain
minimum-norm move ``pinv(W) (eta' - r)`` goes along whichever low-variance directions carry the probe's
largest coefficients, which a least-squares probe may weight heavily without the model using them.) If the model
uses the probed direction the way the HMM uses beliefs, its next-token distribution moves to
``eta' @ E`` (E: the next-token distribution of each current state; ``T[x] w`` for a generalised HMM). A move
of the same norm in a random direction is the control.
"""

from __future__ import annotations

import torch


def _kl(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, with 0 log 0 = 0."""
    return torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - log_q), 0.0).sum(-1)


@torch.no_grad()
def _logits_with_shift(model, tokens: torch.Tensor, hook: str, pos: torch.Tensor, shift: torch.Tensor | None,
                       n_tokens: int):
    """Next-token log-probabilities at ``pos`` of each sequence, with ``shift`` added to ``hook`` there."""
    rows = torch.arange(tokens.shape[0], device=tokens.device)

    def add(act, hook=None):
        # a recurrent model calls the hook once per position on the positions so far: shift the points present
        act = act.clone()
        here = pos < act.shape[1]
        act[rows[here], pos[here]] += shift[here].to(act.dtype)
        return act

    if shift is None:
        logits = model(tokens)
    else:
        logits = model.run_with_hooks(tokens, fwd_hooks=[(hook, add)])
    return torch.log_softmax(logits[rows, pos, :n_tokens].double(), -1)  # drops a BOS logit, if any


def causal_check(model: torch.nn.Module, tokens: torch.Tensor, beliefs: torch.Tensor, acts: torch.Tensor,
                 coef: torch.Tensor, intercept: torch.Tensor, emission: torch.Tensor, *, hook: str,
                 n_points: int = 2000, batch_size: int = 500, generator: torch.Generator,
                 bos_token: int | None = None) -> dict:
    """Steer ``n_points`` random (sequence, position) points to the belief of another random point.

    tokens [n, L], beliefs [n, L, S] (exact), acts [n, L, d] (the hook's cached activations),
    coef [S, d], intercept [S] (the probe), emission [S, V] (``eta @ emission`` is the next-token distribution of a
    belief: an HMM's per-state distributions, a generalised HMM's ``T[x] w``).
    Returns mean KLs from the HMM's prediction for the target belief to the model's distribution:
    before the move, after it, and after the random control move; the share of points that got closer;
    and the pooled R^2 of the model's change in probabilities against the HMM's predicted change.
    A model that reads a BOS token first (``bos_token``) gets it prepended; positions shift by one.
    """
    n, L = tokens.shape
    device = next(model.parameters()).device
    k = min(n_points, n * L)
    seq = torch.randint(n, (k,), generator=generator)
    pos = torch.randint(L, (k,), generator=generator)
    other = torch.randint(n * L, (k,), generator=generator)
    target = beliefs.reshape(n * L, -1)[other].double()
    W, b = coef.double(), intercept.double()
    flat = acts.reshape(n * L, -1)
    sample = flat[torch.randint(n * L, (min(n * L, 100_000),), generator=generator)].double()
    sigma = torch.cov(sample.T).reshape(W.shape[1], W.shape[1])
    scale = float(torch.linalg.matrix_norm(W, 2) ** 2 * torch.linalg.matrix_norm(sigma, 2))
    gain = sigma @ W.T @ torch.linalg.pinv(W @ sigma @ W.T, atol=1e-10 * scale, hermitian=True)  # [d, S]
    a = acts[seq, pos].double()
    delta = (target - (a @ W.T + b)) @ gain.T  # [k, d]
    rand = torch.randn(delta.shape, generator=generator, dtype=torch.float64)
    rand = rand * (delta.norm(dim=1, keepdim=True) / rand.norm(dim=1, keepdim=True))
    p_now, p_target = beliefs[seq, pos].double() @ emission.double(), target @ emission.double()

    V = emission.shape[1]
    out = {name: [] for name in ("before", "after", "random", "change")}
    for i in range(0, k, batch_size):
        sl = slice(i, i + batch_size)
        tok, ps = tokens[seq[sl]].to(device), pos[sl].to(device)
        if bos_token is not None:
            tok, ps = torch.cat([torch.full_like(tok[:, :1], bos_token), tok], 1), ps + 1
        before = _logits_with_shift(model, tok, hook, ps, None, V).cpu()
        after = _logits_with_shift(model, tok, hook, ps, delta[sl].to(device), V).cpu()
        random = _logits_with_shift(model, tok, hook, ps, rand[sl].to(device), V).cpu()
        out["before"].append(_kl(p_target[sl], before))
        out["after"].append(_kl(p_target[sl], after))
        out["random"].append(_kl(p_target[sl], random))
        out["change"].append(after.exp() - before.exp())
    # a move off the simplex can make a model that takes logs of beliefs (Belief Net) output NaN
    kl = {name: torch.cat(out[name]) for name in ("before", "after", "random")}
    invalid = {name: float(torch.isnan(v).double().mean()) for name, v in kl.items()}
    model_change, hmm_change = torch.cat(out["change"]), p_target - p_now
    ok = torch.isfinite(model_change).all(1)
    resid = ((model_change[ok] - hmm_change[ok]) ** 2).sum()
    total = ((hmm_change[ok] - hmm_change[ok].mean(0)) ** 2).sum()
    return {
        "hook": hook, "n_points": k,
        "kl_target_before": float(kl["before"].nanmean()), "kl_target_after": float(kl["after"].nanmean()),
        "kl_target_random": float(kl["random"].nanmean()),
        "invalid_share": invalid,
        "share_closer": float((kl["after"] < kl["before"]).double().mean()),
        "change_r2": float(1 - resid / total),
        "mean_shift_norm": float(delta.norm(dim=1).mean()),
    }
