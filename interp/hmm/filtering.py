"""Exact Bayesian filtering: belief states, predictive distributions and log-likelihoods.

With ``eta_0 = hmm.initial``, each token updates the belief over the current hidden state:

    eta_t = eta_{t-1} @ T[x_t] / (eta_{t-1} @ T[x_t] @ 1),   log P(x_t | x_<t) = log(eta_{t-1} @ T[x_t] @ 1).

Two implementations with one signature and one result type:
- :func:`filter_sequential`: a batched loop over time, normalising at every step.
- :func:`filter_scan`: an associative (log-depth) scan over the per-token matrices; each partial
  product is kept as (matrix normalised to unit sum, log-scale), so nothing underflows.
"""

from __future__ import annotations

import contextlib
from typing import Literal, NamedTuple

import torch

from interp.hmm.core import HMM

Method = Literal["auto", "sequential", "scan"]

# Above this many (token, state) pairs the general filter groups sequences by token
# instead of multiplying every belief by all V matrices.
_ALL_TOKENS_MAX = 256


class FilterResult(NamedTuple):
    """beliefs (n, L, S): posterior over the current state after tokens 0..t;
    log_normalizers (n, L): ``log P(x_t | x_<t)``; log_likelihood (n,): their sum.
    A sequence with probability zero has log_likelihood -inf and undefined (NaN) beliefs
    from the impossible token on."""

    beliefs: torch.Tensor
    log_normalizers: torch.Tensor
    log_likelihood: torch.Tensor


@contextlib.contextmanager
def flush_denormals():
    """Flush subnormal floats to zero while filtering: tiny beliefs otherwise slow matmuls
    several-fold, and values below 1e-308 do not matter at float64 precision."""
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


def check_tokens(hmm: HMM, tokens) -> torch.Tensor:
    """Validate a (batch, length) integer token array for ``hmm``; return int64 on its device."""
    t = torch.as_tensor(tokens)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"tokens must be an integer tensor, got dtype {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"tokens must be 2-D (batch, length), got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"tokens must be a non-empty batch, got shape {tuple(t.shape)}")
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= hmm.n_tokens:
        bad = lo if lo < 0 else hi
        where = tuple(torch.nonzero(t == bad)[0].tolist())
        raise ValueError(f"token {bad} at (sequence, position) {where} is out of range [0, {hmm.n_tokens})")
    return t.to(device=hmm.device, dtype=torch.int64)


def _finish(beliefs_tm: torch.Tensor | None, log_z_tm: torch.Tensor) -> FilterResult:
    """Time-major (L, n, ...) buffers -> FilterResult with impossible sequences marked -inf."""
    log_z = log_z_tm.T
    ll = log_z.sum(1)
    ll = torch.where(torch.isnan(ll), torch.full_like(ll, -torch.inf), ll)
    b = beliefs_tm.transpose(0, 1) if beliefs_tm is not None else None
    return FilterResult(b, log_z, ll)


def filter_sequential(hmm: HMM, tokens, *, return_beliefs: bool = True) -> FilterResult:
    """Batched forward filter, one step per position.

    When T factorises into an emission form (``hmm.factorization``), a step is one
    (n, S) @ (S, S) product and an elementwise emission factor; otherwise the step multiplies
    by all V matrices at once (small V*S) or by each token's matrix for its group of sequences.
    """
    tokens = check_tokens(hmm, tokens)
    n, L = tokens.shape
    S, V = hmm.n_states, hmm.n_tokens
    tok = tokens.T.contiguous()  # (L, n): each step reads a contiguous row
    eta = hmm.initial.expand(n, S).contiguous()
    out = torch.empty(L, n, S, dtype=torch.float64, device=hmm.device) if return_beliefs else None
    z = torch.empty(L, n, dtype=torch.float64, device=hmm.device)
    f = hmm.factorization
    with flush_denormals():
        if f is not None:
            side, A, C = f
            CT = C.T.contiguous()  # (V, S): row x is P(x | state)
            for t in range(L):
                e = torch.index_select(CT, 0, tok[t])
                u = e.mul_(eta) @ A if side == "source" else (eta @ A).mul_(e)
                torch.sum(u, 1, out=z[t])
                eta = u.div_(z[t, :, None])
                if out is not None:
                    out[t] = eta
        elif V * S <= _ALL_TOKENS_MAX:
            t_flat = hmm.T.permute(1, 0, 2).reshape(S, V * S)  # (S, V*S)
            rows = torch.arange(n, device=hmm.device) * V
            for t in range(L):
                u = torch.index_select((eta @ t_flat).view(n * V, S), 0, rows + tok[t])
                torch.sum(u, 1, out=z[t])
                eta = u.div_(z[t, :, None])
                if out is not None:
                    out[t] = eta
        else:
            for t in range(L):
                u = torch.empty_like(eta)
                for x in torch.unique(tok[t]).tolist():
                    idx = torch.nonzero(tok[t] == x).squeeze(1)
                    u.index_copy_(0, idx, torch.index_select(eta, 0, idx) @ hmm.T[x])
                torch.sum(u, 1, out=z[t])
                eta = u.div_(z[t, :, None])
                if out is not None:
                    out[t] = eta
    return _finish(out, z.log_())


# ---------------------------------------------------------------- parallel scan
def associative_scan(fn, elems: tuple[torch.Tensor, ...], dim: int = 1) -> tuple[torch.Tensor, ...]:
    """Inclusive scan of an associative ``fn`` over ``dim`` of every tensor in ``elems``.

    Log-depth, work-efficient odd/even recursion (the same scheme as ``jax.lax.associative_scan``):
    combine neighbouring pairs, scan the half-length result, then fill in the even positions.
    """
    n = elems[0].shape[dim]
    if n < 2:
        return elems

    def sl(x, start, stop=None, step=1):
        idx = [slice(None)] * x.ndim
        idx[dim] = slice(start, stop, step)
        return x[tuple(idx)]

    reduced = fn(tuple(sl(e, 0, -1, 2) for e in elems), tuple(sl(e, 1, None, 2) for e in elems))
    odd = associative_scan(fn, reduced, dim)
    if n % 2 == 0:
        even = fn(tuple(sl(e, 0, -1) for e in odd), tuple(sl(e, 2, None, 2) for e in elems))
    else:
        even = fn(odd, tuple(sl(e, 2, None, 2) for e in elems))
    even = tuple(torch.cat([sl(e, 0, 1), r], dim) for e, r in zip(elems, even))
    return tuple(_interleave(a, b, dim) for a, b in zip(even, odd))


def _interleave(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """[a0, b0, a1, b1, ...] along ``dim``; ``a`` may be one longer than ``b``."""
    na, nb = a.shape[dim], b.shape[dim]
    shape = list(a.shape)
    shape[dim] = na + nb
    out = a.new_empty(shape)
    idx = [slice(None)] * a.ndim
    idx[dim] = slice(0, None, 2)
    out[tuple(idx)] = a
    idx[dim] = slice(1, None, 2)
    out[tuple(idx)] = b
    return out


def _combine_scaled(left, right):
    """(A, a) o (B, b) for matrices with log-scales: A @ B renormalised to unit sum."""
    (a_mat, a_log), (b_mat, b_log) = left, right
    prod = a_mat @ b_mat
    s = prod.sum((-2, -1))
    return prod / s[..., None, None], a_log + b_log + torch.log(s)


def filter_scan(hmm: HMM, tokens, *, return_beliefs: bool = True) -> FilterResult:
    """Forward filter by an associative scan over time: O(log L) depth, O(n L S^2) memory.

    The first element is the row vector ``eta_0 @ T[x_0]`` placed in row 0 of an S x S matrix,
    so every prefix product has that single non-zero row: the unnormalised belief. Each element
    carries a log-scale, making the prefix's log-probability the accumulated scale.
    """
    tokens = check_tokens(hmm, tokens)
    n, L = tokens.shape
    S = hmm.n_states
    mats = torch.index_select(hmm.T, 0, tokens.reshape(-1)).view(n, L, S, S).clone()
    first = hmm.initial @ mats[:, 0]  # (n, S)
    mats[:, 0].zero_()
    mats[:, 0, 0] = first
    with flush_denormals():
        s = mats.sum((-2, -1))
        mats /= s[..., None, None]
        prod, log_scale = associative_scan(_combine_scaled, (mats, torch.log(s)), dim=1)
    log_prefix = log_scale  # (n, L): log P(x_0..t)
    log_z = torch.diff(log_prefix, dim=1, prepend=torch.zeros(n, 1, dtype=torch.float64, device=hmm.device))
    beliefs = prod[:, :, 0, :] if return_beliefs else None
    ll = log_prefix[:, -1]
    ll = torch.where(torch.isnan(ll), torch.full_like(ll, -torch.inf), ll)
    return FilterResult(beliefs, log_z, ll)


# ------------------------------------------------------------------- front door
def forward_filter(hmm: HMM, tokens, *, method: Method = "auto", return_beliefs: bool = True) -> FilterResult:
    """Filter ``tokens`` (n, L) under ``hmm``. ``method="auto"`` uses the sequential filter,
    the faster one on CPU."""
    if method in ("auto", "sequential"):
        return filter_sequential(hmm, tokens, return_beliefs=return_beliefs)
    if method == "scan":
        return filter_scan(hmm, tokens, return_beliefs=return_beliefs)
    raise ValueError(f"method must be 'auto', 'sequential' or 'scan', got {method!r}")


def _require_possible(result: FilterResult) -> None:
    bad = torch.nonzero(torch.isinf(result.log_likelihood))
    if bad.numel():
        k = int(bad[0])
        t = int(torch.nonzero(~torch.isfinite(result.log_normalizers[k]))[0])
        raise ValueError(f"sequence {k} has probability zero under the HMM (token at position {t} is impossible)")


def beliefs(hmm: HMM, tokens, *, method: Method = "auto") -> torch.Tensor:
    """(n, L, S) exact posterior over the current hidden state after each token.

    Raises ValueError if a sequence is impossible under ``hmm``."""
    result = forward_filter(hmm, tokens, method=method)
    _require_possible(result)
    return result.beliefs


def log_likelihood(hmm: HMM, tokens, *, method: Method = "auto") -> torch.Tensor:
    """(n,) ``log P(x_0..x_{L-1})`` per sequence (-inf for impossible ones)."""
    return forward_filter(hmm, tokens, method=method, return_beliefs=False).log_likelihood


def next_token_probs(hmm: HMM, tokens, *, include_initial: bool = False, method: Method = "auto") -> torch.Tensor:
    """(n, L, V) ``P(x_{t+1} = k | x_0..x_t)``: the optimal prediction after each prefix.

    With ``include_initial=True`` the result is (n, L+1, V) and row 0 is the prediction of
    the first token with no context."""
    b = beliefs(hmm, tokens, method=method)
    probs = b @ hmm.emission_matrix
    if include_initial:
        first = (hmm.initial @ hmm.emission_matrix).expand(b.shape[0], 1, -1)
        probs = torch.cat([first, probs], 1)
    return probs
