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

from interp.hmm import native
from interp.hmm.buffers import empty_buffer
from interp.hmm.core import HMM
from interp.hmm.ghmm import GHMM, filter_ghmm

Method = Literal["auto", "sequential", "scan"]

# Above this many (token, state) pairs the general filter groups sequences by token
# instead of multiplying every belief by all V matrices.
_ALL_TOKENS_MAX = 256
# Emission-form filtering on CPU packs k sequences side by side into one row of width k*S (at most
# _PACK_WIDTH) and multiplies by the block-diagonal kron(I_k, A): BLAS is far faster on (n/k, k*S)
# rows than on (n, 3) ones. The k tokens of a row index one table of V^k emission rows.
_PACK_WIDTH = 12
_PACK_MAX_ROWS = 1024
# torch runs an elementwise op on one thread below this many elements (at::internal::GRAIN_SIZE).
# A packed step just below it is padded with copies of a sequence to run on all cores, when that
# adds at most a third more rows (the padded step is the faster one; docs/benchmarks.md).
_TORCH_GRAIN = 32768
# The compiled kernels (interp.hmm.native) run the whole filter in one call up to _NATIVE_SMALL_MAX_STATES
# states, or while a step's n S^2 is at most _NATIVE_ONE_CALL_MAX_WORK; otherwise a step is a BLAS product and
# the kernels' fused emission pass. The thresholds are where the one call stops winning (docs/benchmarks.md):
# below them the per-step calls dominate, above them BLAS does.
_NATIVE_SMALL_MAX_STATES = 6
_NATIVE_ONE_CALL_MAX_WORK = 2**17
_STREAM_MIN_STATES = 64  # shorter rows: the streamed copy's unaligned ends cost more than it saves


class FilterResult(NamedTuple):
    """beliefs (n, L, S): posterior over the current state after tokens 0..t;
    log_normalizers (n, L): ``log P(x_t | x_<t)``; log_likelihood (n,): their sum.
    A sequence with probability zero has log_likelihood -inf and undefined (NaN) beliefs
    from the impossible token on."""

    beliefs: torch.Tensor
    log_normalizers: torch.Tensor
    log_likelihood: torch.Tensor


_SUBNORMAL = 5e-324  # the smallest positive float64


def flushing_denormals() -> bool:
    """Whether this thread flushes subnormal floats to zero now (torch can set the flag but not read it: a
    subnormal read back through a tensor comes out 0 exactly when it does)."""
    return float(torch.tensor(_SUBNORMAL, dtype=torch.float64) * 1.0) == 0.0


@contextlib.contextmanager
def flush_denormals():
    """Flush subnormal floats to zero inside the block, then put back the previous setting (so it nests): tiny
    beliefs otherwise slow matmuls several-fold, and values below 1e-308 do not matter at float64 precision."""
    changed = not flushing_denormals() and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if changed:
            torch.set_flush_denormal(False)


def check_tokens(hmm: HMM, tokens) -> torch.Tensor:
    """Validate a (batch, length) integer token array for ``hmm``; return int64 on its device."""
    return check_token_array(tokens, hmm.n_tokens).to(device=hmm.device)


def check_token_array(tokens, n_tokens: int) -> torch.Tensor:
    """Validate a (batch, length) integer token array over ``n_tokens`` tokens; return it as int64."""
    t = torch.as_tensor(tokens)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"tokens must be an integer tensor, got dtype {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"tokens must be 2-D (batch, length), got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"tokens must be a non-empty batch, got shape {tuple(t.shape)}")
    lo, hi = (int(v) for v in torch.aminmax(t))
    if lo < 0 or hi >= n_tokens:
        bad = lo if lo < 0 else hi
        where = tuple(torch.nonzero(t == bad)[0].tolist())
        raise ValueError(f"token {bad} at (sequence, position) {where} is out of range [0, {n_tokens})")
    return t.to(dtype=torch.int64)


def _finish(beliefs_tm: torch.Tensor | None, log_z_tm: torch.Tensor, ll: torch.Tensor | None = None) -> FilterResult:
    """Time-major (L, n, ...) buffers -> FilterResult with impossible sequences marked -inf."""
    if ll is None:
        ll = log_z_tm.sum(0)
    ll = torch.where(torch.isnan(ll), torch.full_like(ll, -torch.inf), ll)
    b = beliefs_tm.transpose(0, 1) if beliefs_tm is not None else None
    return FilterResult(b, log_z_tm.T, ll)


def _pack_size(hmm: HMM) -> int:
    """How many sequences to pack into one row for the emission-form filter (1: no packing)."""
    if hmm.device.type != "cpu":
        return 1
    S, V = hmm.n_states, hmm.n_tokens
    k = 1
    while (k + 1) * S <= _PACK_WIDTH and V ** (k + 1) <= _PACK_MAX_ROWS:
        k += 1
    return k


def _step_buffers(L: int, n: int, S: int, return_beliefs: bool, device) -> tuple[torch.Tensor | None, list]:
    """The time-major (L, n, S) belief buffer (None when beliefs are not returned) and the (n, S)
    view each step writes (with no buffer, two scratch slots used alternately)."""
    if return_beliefs:
        out = empty_buffer((L, n, S), torch.float64, device)
        return out, list(out.unbind(0))
    ring = torch.empty(2, n, S, dtype=torch.float64, device=device)
    return None, [ring[t % 2] for t in range(L)]


# On CPU the first positions are filtered once per distinct prefix while the V^(t+1) prefixes of length t+1 number
# at most a quarter of the sequences; every sequence then gathers its prefix's belief. That pays only where the
# (n, S) @ (S, S) product dominates a step: from n S^2 = 2^24 (at S = 3 the small operations of the tables
# cost more than the steps they replace, and on a GPU they would be kernel launches).
_SHARED_PREFIX_FRACTION = 4
_SHARED_PREFIX_MIN_WORK = 2**24


def _shared_prefix_length(n: int, L: int, S: int, V: int, device: torch.device) -> int:
    """How many leading positions :func:`_prefix_tables` covers for n sequences over S states and V tokens."""
    if device.type != "cpu" or n * S * S < _SHARED_PREFIX_MIN_WORK:
        return 0
    t = 0
    while t < L and V ** (t + 1) * _SHARED_PREFIX_FRACTION <= n:
        t += 1
    return t


def _prefix_tables(hmm: HMM, first: torch.Tensor, side: str, A: torch.Tensor, C: torch.Tensor):
    """Beliefs after every one of the V^(t+1) prefixes of length t+1, for the positions of ``first``
    ((steps, n) time-major tokens): per position, ((V^(t+1), S) beliefs, (V^(t+1),) normalisers, (n,) the
    index of each sequence's prefix).

    A belief depends on its prefix only, so while the prefixes are fewer than the sequences this is the same
    filter at a fraction of the cost (prefix c*V + x extends prefix c by token x)."""
    V = hmm.n_tokens
    CT = C.T.contiguous()
    eta = hmm.initial[None]
    code = torch.zeros(first.shape[1], dtype=first.dtype, device=first.device)
    for t, x in enumerate(first):
        e = CT.repeat(V**t, 1)
        eta = eta.repeat_interleave(V, 0)
        u = (eta * e) @ A if side == "source" else (eta @ A).mul_(e)
        z = u.sum(1)
        eta = u.div_(z[:, None])
        code = code * V + x  # a new tensor: the caller may still hold the last one
        yield eta, z, code


def _filter_packed(hmm: HMM, tokens: torch.Tensor, side: str, A: torch.Tensor, C: torch.Tensor, k: int,
                   return_beliefs: bool):
    """Emission-form filter with k sequences per row; returns time-major (beliefs, normalisers).

    An impossible sequence gets NaN beliefs, which the block-diagonal product spreads to the other
    sequences of its row; the caller detects that from the normalisers and filters unpacked."""
    n, L = tokens.shape
    S, V, dev = hmm.n_states, hmm.n_tokens, hmm.device
    if n % k:  # complete the last row with copies of sequence 0 (dropped at the end)
        tokens = torch.cat([tokens, tokens[:1].expand(-n % k, L)])
    m = tokens.shape[0] // k  # packed rows
    rows = m
    if torch.get_num_threads() > 1 and 3 * _TORCH_GRAIN <= 4 * m * k * S <= 4 * _TORCH_GRAIN:
        rows = _TORCH_GRAIN // (k * S) + 1  # pad with copies of row 0, see _TORCH_GRAIN
    # Row r holds sequences r*k .. r*k+k-1; their tokens at a step form one base-V number (below
    # _PACK_MAX_ROWS, so int16 arithmetic, which is several times faster here than int64).
    tv = tokens.to(torch.int16).view(m, k, L)
    code = tv[:, 0].clone()
    for j in range(1, k):
        code.mul_(V).add_(tv[:, j])
    codes = torch.empty(L, rows, dtype=torch.int32, device=dev)  # time-major
    codes[:, :m] = code.T
    codes[:, m:] = codes[:, :1]
    digits = torch.arange(V ** k, device=dev)[:, None] // V ** torch.arange(k - 1, -1, -1, device=dev) % V
    emit = C.T[digits].reshape(V ** k, k * S)  # row c: the emission factors of the k tokens coded c
    eye = torch.eye(k, dtype=torch.float64, device=dev)
    block_a = torch.kron(eye, A)  # (kS, kS)
    sum_cols = torch.kron(eye, torch.ones(S, 1, dtype=torch.float64, device=dev))  # (kS, k): per-sequence sums
    spread = sum_cols.T.contiguous()  # (k, kS): copies each sequence's normaliser over its S slots

    out, steps = _step_buffers(L, rows * k, S, return_beliefs, dev)
    z = empty_buffer((L, rows, k), torch.float64, dev)
    e, u = (torch.empty(rows, k * S, dtype=torch.float64, device=dev) for _ in range(2))
    eta = hmm.initial.repeat(k).expand(rows, k * S)
    for c, z_t, out_t in zip(codes.unbind(0), z.unbind(0), steps):
        torch.index_select(emit, 0, c, out=e)
        if side == "source":
            torch.mm(e.mul_(eta), block_a, out=u)
        else:
            torch.mm(eta, block_a, out=u).mul_(e)
        torch.mm(u, sum_cols, out=z_t)
        torch.mm(z_t, spread, out=e)
        eta = torch.div(u, e, out=out_t.view(rows, k * S))
    z = z.view(L, rows * k)[:, :n]
    return (out[:, :n] if out is not None else None), z


def _filter_emission(hmm: HMM, tokens: torch.Tensor, side: str, A: torch.Tensor, C: torch.Tensor,
                     return_beliefs: bool, lib=None):
    """Emission-form filter, one (n, S) @ (S, S) product per step; with ``lib`` (the compiled kernels) the
    emission factor and normaliser are one fused pass instead of four torch operations."""
    n, L = tokens.shape
    S, V, dev = hmm.n_states, hmm.n_tokens, hmm.device
    tok = tokens.T.contiguous()  # (L, n): each step reads a contiguous row
    CT = C.T.contiguous()  # (V, S): row x is P(x | state)
    out, steps = _step_buffers(L, n, S, return_beliefs, dev)
    z = empty_buffer((L, n), torch.float64, dev)
    e = torch.empty(n, S, dtype=torch.float64, device=dev)
    r = torch.empty(n, dtype=torch.float64, device=dev)
    eta = hmm.initial.expand(n, S)
    shared = _shared_prefix_length(n, L, S, V, dev)
    for t, (table, z_table, prefix) in enumerate(_prefix_tables(hmm, tok[:shared], side, A, C)):
        torch.index_select(z_table, 0, prefix, out=z[t])
        eta = torch.index_select(table, 0, prefix, out=steps[t])
    w = A.sum(1) if side == "source" else torch.ones(S, dtype=torch.float64, device=dev)
    if lib is not None:
        # Long belief rows are computed in two cache-resident buffers and streamed into the result by the
        # fused pass (source side: the previous position's, which the pass reads anyway; destination: its own
        # output), which spares the cache a read of every result line before it is written.
        stream = out is not None and S >= _STREAM_MIN_STATES
        hot = [torch.empty(n, S, dtype=torch.float64, device=dev) for _ in range(2)] if stream else None
        eta = eta.contiguous()
        pending = None  # source side: the result slot of the belief in eta, still to be written
        for t in range(shared, L):
            dst = hot[t % 2] if hot is not None else steps[t]
            if side == "source":  # normalise the small operand: the product writes the belief
                # A belief in a hot buffer is not needed after the pass: work in place (not on a result slot).
                a = eta if hot is not None and any(eta is h for h in hot) else e
                native.emit_normalise(lib, eta, CT, tok[t], w, a, z[t], copy=pending, copy_input=True)
                eta = torch.mm(a, A, out=dst)
                pending = steps[t] if hot is not None else None
            else:
                eta = native.emit_normalise(lib, torch.mm(eta, A, out=e), CT, tok[t], w, dst, z[t],
                                            copy=steps[t] if hot is not None else None)
        if pending is not None:
            native.stream_copy(lib, eta, pending)
        return out, z
    if side == "source":
        # The normaliser is (eta * e) @ A @ 1: scale the small operand before the product so
        # the product itself writes the normalised belief.
        for t in range(shared, L):
            torch.index_select(CT, 0, tok[t], out=e)
            torch.mv(e.mul_(eta), w, out=z[t])
            torch.reciprocal(z[t], out=r)
            eta = torch.mm(e.mul_(r[:, None]), A, out=steps[t])
    else:
        u = torch.empty(n, S, dtype=torch.float64, device=dev)
        for t in range(shared, L):
            torch.index_select(CT, 0, tok[t], out=e)
            torch.mm(eta, A, out=u).mul_(e)
            torch.mv(u, w, out=z[t])
            torch.reciprocal(z[t], out=r)
            eta = torch.mul(u, r[:, None], out=steps[t])
    return out, z


def _filter_general(hmm: HMM, tokens: torch.Tensor, return_beliefs: bool):
    """No emission form: multiply by all V matrices at once (small V*S) and pick each sequence's
    token, or multiply each token's group of sequences by its own matrix."""
    n, L = tokens.shape
    S, V, dev = hmm.n_states, hmm.n_tokens, hmm.device
    tok = tokens.T.contiguous()
    out, steps = _step_buffers(L, n, S, return_beliefs, dev)
    z = empty_buffer((L, n), torch.float64, dev)
    ones = torch.ones(S, dtype=torch.float64, device=dev)
    r = torch.empty(n, dtype=torch.float64, device=dev)
    eta = hmm.initial.expand(n, S)
    if V * S <= _ALL_TOKENS_MAX:
        t_flat = hmm.T.permute(1, 0, 2).reshape(S, V * S)  # (S, V*S)
        rows = tok + torch.arange(n, device=dev) * V  # (L, n): row of (eta @ t_flat).view(n*V, S) to keep
        big = torch.empty(n, V * S, dtype=torch.float64, device=dev)
        u = torch.empty(n, S, dtype=torch.float64, device=dev)
        for t in range(L):
            torch.mm(eta, t_flat, out=big)
            torch.index_select(big.view(n * V, S), 0, rows[t], out=u)
            torch.mv(u, ones, out=z[t])
            torch.reciprocal(z[t], out=r)
            eta = torch.mul(u, r[:, None], out=steps[t])
    else:
        for t in range(L):
            u = torch.empty_like(eta)
            for x in torch.unique(tok[t]).tolist():
                idx = torch.nonzero(tok[t] == x).squeeze(1)
                u.index_copy_(0, idx, torch.index_select(eta, 0, idx) @ hmm.T[x])
            torch.mv(u, ones, out=z[t])
            torch.reciprocal(z[t], out=r)
            eta = torch.mul(u, r[:, None], out=steps[t])
    return out, z


def filter_sequential(hmm: HMM, tokens, *, return_beliefs: bool = True) -> FilterResult:
    """Batched forward filter, one step per position.

    When T factorises into an emission form (``hmm.factorization``), a step is one
    (n, S) @ (S, S) product and an elementwise emission factor (on CPU with small S, several
    sequences share a row and the product is block-diagonal); otherwise the step multiplies
    by all V matrices at once (small V*S) or by each token's matrix for its group of sequences.
    """
    tokens = check_tokens(hmm, tokens)
    if isinstance(hmm, GHMM):  # signed matrices: the torch reference path, normalised by w
        with flush_denormals():
            out, z = filter_ghmm(hmm, tokens, return_beliefs)
        return _finish(out, z.log_())
    f = hmm.factorization
    with flush_denormals():
        if f is None:
            out, z = _filter_general(hmm, tokens, return_beliefs)
        else:
            side, A, C = f
            lib = native.library() if hmm.device.type == "cpu" else None
            S = hmm.n_states
            if lib is not None and (S <= _NATIVE_SMALL_MAX_STATES
                                    or tokens.shape[0] * S * S <= _NATIVE_ONE_CALL_MAX_WORK):
                n, L = tokens.shape
                out = empty_buffer((L, n, hmm.n_states), torch.float64, hmm.device) if return_beliefs else None
                z = empty_buffer((L, n), torch.float64, hmm.device)
                native.filter_small(lib, tokens.contiguous(), hmm.initial.contiguous(), A.contiguous(),
                                    C.contiguous(), side, out, z)
                return _finish(out, z.log_())
            k = _pack_size(hmm) if lib is None else 1
            if k > 1:
                out, z = _filter_packed(hmm, tokens, side, A, C, k, return_beliefs)
                ll = z.log_().sum(0)
                if not bool(torch.isnan(ll).any()):
                    return _finish(out, z, ll)
                # An impossible sequence spread NaNs through its packed row: filter unpacked.
            out, z = _filter_emission(hmm, tokens, side, A, C, return_beliefs, lib)
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
    if isinstance(hmm, GHMM):
        raise ValueError("filter_scan: a generalised HMM's signed matrices have no positive scale to carry through "
                         "the scan; use method='sequential'")
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
# Cost model of the two filters, fitted to `interp bench --suite filter` on CPU (docs/benchmarks.md). With
# the compiled kernels the sequential filter wins in every cell: a few long sequences of a small HMM, where the
# scan used to win, are one compiled call.
# In torch alone (no compiler; on a GPU, where the CPU model is used unmeasured) the sequential filter pays a
# fixed ~10 us of torch calls per step plus its (n, S) @ (S, S) product; the scan does about n L S^2 x 35 ns of
# small batched products in 2 log2(L) rounds, so it wins only where n S^2 is small, and holds O(n L S^2) memory.
_SEQ_STEP_S, _SEQ_PER_ENTRY_S = 15e-6, 0.06e-9
_SCAN_FIXED_S, _SCAN_PER_ENTRY_S = 3e-4, 35e-9
_SCAN_MAX_BYTES = 2**30


def choose_method(n: int, length: int, n_states: int, *, compiled: bool = False) -> str:
    """The faster filter for ``n`` sequences of ``length`` tokens over ``n_states`` states (by the cost model
    above), ``compiled`` when the sequential filter has the compiled kernels (on CPU, :func:`native.library`);
    the scan only where its (n, L, S, S) working set stays under 1 GiB."""
    if compiled:
        return "sequential"
    entries = n * length * n_states**2
    if 4 * 8 * entries > _SCAN_MAX_BYTES:
        return "sequential"
    sequential = length * (_SEQ_STEP_S + _SEQ_PER_ENTRY_S * n * n_states**2)
    scan = _SCAN_FIXED_S + _SCAN_PER_ENTRY_S * entries
    return "scan" if scan < sequential else "sequential"


def _compiled(hmm: HMM) -> bool:
    """Whether filter_sequential runs the compiled kernels for ``hmm``."""
    return hmm.device.type == "cpu" and hmm.factorization is not None and native.library() is not None


def forward_filter(hmm: HMM, tokens, *, method: Method = "auto", return_beliefs: bool = True) -> FilterResult:
    """Filter ``tokens`` (n, L) under ``hmm``. ``method="auto"`` picks the faster of the two
    (:func:`choose_method`): the sequential filter, except for a few long sequences of a small HMM where there
    are no compiled kernels (on a GPU, or without a C++ compiler)."""
    if method == "auto" and isinstance(hmm, GHMM):
        method = "sequential"
    if method == "auto":
        shape = tokens.shape if torch.is_tensor(tokens) and tokens.ndim == 2 else None
        method = "sequential" if shape is None else choose_method(shape[0], shape[1], hmm.n_states,
                                                                  compiled=_compiled(hmm))
    if method == "sequential":
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
