"""Vectorised sampling of token sequences from an HMM.

Each step draws the pair (token, next state) jointly from row ``i`` of the (S, V*S) table
``T[:, i, :]`` by inverse CDF on a 32-bit uniform integer ``u``: the row's probabilities are
rounded once to integer CDFs on the grid ``2^-32`` (every row ends exactly at ``2^32``, so no float
rounding can step past the last bin), and the outcome is the first one whose CDF exceeds ``u``.

Two exact ways of evaluating that inverse CDF, chosen per HMM; both give the same outcome for
every ``(state, u)``:

- guide table (small tables, the usual case): the top ``b`` bits of ``u`` pick one of ``2^b``
  equal bins of the state's row. The table stores, per bin, the outcome at the bin's start and
  the one CDF boundary inside the bin (if any), so a step is two gathers and one comparison.
  ``b`` is the smallest width at which no bin holds two boundaries.
- sorted search (fallback): all rows in one sorted int64 table, row i shifted by ``i * 2^32``,
  and one ``searchsorted`` for every sequence at once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from interp.hmm.buffers import empty_buffer
from interp.hmm.core import HMM
from interp.hmm.ghmm import GHMM, sample_ghmm

_BITS = 32
_ONE = 1 << _BITS
_HALF = 1 << (_BITS - 1)
# Largest guide table (bins over all states); beyond it the sorted search is used.
_GUIDE_MAX_BINS = 1 << 16


def _integer_cdf(probs: torch.Tensor) -> torch.Tensor:
    """(R, K) row-stochastic -> (R, K) int64 CDFs on the 2^-32 grid, each row ending at 2^32."""
    c = probs.cumsum(-1)
    c = c / c[:, -1:]
    q = torch.round(c * _ONE).to(torch.int64)
    q[:, -1] = _ONE  # draws in [0, 2^32) never pass the last bin
    return q


def _cdf_table(probs: torch.Tensor) -> torch.Tensor:
    """(R, K) row-stochastic -> (R*K,) sorted int64 table of integer CDFs, row i shifted by i * 2^32."""
    q = _integer_cdf(probs)
    offsets = torch.arange(probs.shape[0], device=probs.device, dtype=torch.int64)[:, None] * _ONE
    return (q + offsets).reshape(-1)


class _GuideTable(NamedTuple):
    """Inverse-CDF lookup for signed 32-bit draws ``u`` (the unsigned draw is ``u + 2^31``).

    With ``bin = base[state] + (u >> (32 - bits))``, the outcome (an index into the positive-
    probability (state, token, next state) triples) is ``lo[bin] + (u >= thr[bin])``."""

    bits: int
    thr: torch.Tensor  # (S * 2^bits,) int32
    lo: torch.Tensor  # (S * 2^bits,) int32
    outcome: torch.Tensor  # (R,) int64: flat index i * K + k of each positive-probability outcome


def _guide_table(q: torch.Tensor) -> _GuideTable | None:
    """Guide table for the integer CDF rows ``q`` (S, K), or None if none fits in _GUIDE_MAX_BINS."""
    S, K = q.shape
    device = q.device
    prev = torch.cat([torch.zeros(S, 1, dtype=torch.int64, device=device), q[:, :-1]], 1)
    outcome = torch.nonzero((q > prev).reshape(-1)).squeeze(1)  # row-major: sorted by (row, k)
    upper = q.reshape(-1)[outcome]  # strictly increasing within a row, last one 2^32
    row = outcome // K
    keys = row * _ONE + upper  # globally sorted
    for bits in range(1, _BITS - 7):
        n_bins = S << bits
        if n_bins > _GUIDE_MAX_BINS:
            return None
        width = 1 << (_BITS - bits)
        inside = upper % width != 0  # boundaries strictly inside a bin (2^32 never is)
        bins = row[inside] * (1 << bits) + upper[inside] // width
        if torch.unique(bins).numel() != bins.numel():
            continue  # some bin holds two boundaries: use narrower bins
        starts = (torch.arange(1 << bits, device=device, dtype=torch.int64) * width).repeat(S)
        start_keys = torch.arange(S, device=device, dtype=torch.int64).repeat_interleave(1 << bits) * _ONE + starts
        lo = torch.searchsorted(keys, start_keys, right=True)  # outcome at each bin's start
        # A bin without a boundary compares against its own start (always true), so store lo - 1.
        thr = starts - _HALF
        lo = lo - 1
        thr[bins] = upper[inside] - _HALF
        lo[bins] += 1
        return _GuideTable(bits, thr.to(torch.int32), lo.to(torch.int32), outcome)
    return None


def make_generator(seed: int | None, generator: torch.Generator | None, device) -> torch.Generator:
    """The explicit random source: exactly one of ``seed`` or ``generator``."""
    if (seed is None) == (generator is None):
        raise ValueError("pass exactly one of seed= or generator=")
    if generator is not None:
        if torch.device(generator.device).type != torch.device(device).type:
            raise ValueError(f"generator is on {generator.device} but the HMM is on {device}")
        return generator
    if isinstance(seed, bool) or int(seed) != seed:
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return torch.Generator(device=device).manual_seed(int(seed))


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _uniform_source(n: int, g: torch.Generator, device):
    """A function drawing ``n`` fresh uniform signed 32-bit integers into one reused buffer
    (one 64-bit draw gives two 32-bit uniforms)."""
    raw = torch.empty((n + 1) // 2, dtype=torch.int64, device=device)
    u = raw.view(torch.int32)[:n]

    def draw() -> torch.Tensor:
        raw.random_(-(1 << 63), None, generator=g)
        return u

    return draw


def _walk_guide(guide: _GuideTable, K: int, S: int, state: torch.Tensor, draw, tokens: torch.Tensor,
                states: torch.Tensor | None) -> None:
    """Fill the time-major ``tokens`` (and ``states``) rows step by step with the guide table."""
    n, bits = state.shape[0], guide.bits
    flat = guide.outcome % K
    token_of, state_of = (flat // S).to(torch.int32), (flat % S).to(torch.int32)
    offset = 1 << (bits - 1)  # u >> (32 - bits) lies in [-offset, offset)
    base_of = state_of * (1 << bits) + offset  # first bin of each outcome's next state
    base = (state * (1 << bits) + offset).to(torch.int32)
    bins, thr, idx = (torch.empty(n, dtype=torch.int32, device=state.device) for _ in range(3))
    past = torch.empty(n, dtype=torch.bool, device=state.device)
    for t in range(tokens.shape[0]):
        u = draw()
        torch.add(torch.bitwise_right_shift(u, _BITS - bits, out=bins), base, out=bins)
        torch.index_select(guide.thr, 0, bins, out=thr)
        torch.index_select(guide.lo, 0, bins, out=idx)
        idx.add_(torch.ge(u, thr, out=past))
        torch.index_select(token_of, 0, idx, out=tokens[t])
        torch.index_select(base_of, 0, idx, out=base)
        if states is not None and t + 1 < tokens.shape[0]:
            torch.index_select(state_of, 0, idx, out=states[t + 1])


def _walk_search(q: torch.Tensor, S: int, state: torch.Tensor, draw, tokens: torch.Tensor,
                 states: torch.Tensor | None) -> None:
    """Fill the time-major ``tokens`` (and ``states``) rows step by step with one sorted search."""
    K = q.shape[1]
    table = (q + torch.arange(S, device=q.device, dtype=torch.int64)[:, None] * _ONE).reshape(-1)
    flat = torch.arange(S * K, device=q.device) % K
    token_of, state_of = (flat // S).to(torch.int32), flat % S
    key, pos = torch.empty_like(state), torch.empty_like(state)
    for t in range(tokens.shape[0]):
        # Row offset of the state, plus 2^31 to make the signed draw unsigned.
        torch.add(torch.add(state * _ONE, _HALF, out=key), draw(), out=key)
        torch.searchsorted(table, key, right=True, out=pos)
        torch.index_select(token_of, 0, pos, out=tokens[t])
        state = torch.index_select(state_of, 0, pos)
        if states is not None and t + 1 < tokens.shape[0]:
            states[t + 1] = state


class SamplerTables(NamedTuple):
    """What sampling from one HMM needs, built once (the HMM caches it: it never changes)."""

    q: torch.Tensor  # (S, V*S) integer CDFs; row i: outcome (x, j) flattened as x*S + j
    guide: _GuideTable | None  # None: fall back to the sorted search
    initial: torch.Tensor  # sorted table for the first state


def build_sampler_tables(hmm: HMM) -> SamplerTables:
    V, S = hmm.n_tokens, hmm.n_states
    q = _integer_cdf(hmm.T.permute(1, 0, 2).reshape(S, V * S))
    return SamplerTables(q, _guide_table(q), _cdf_table(hmm.initial[None]))


def sampler_tables(hmm: HMM):
    """:func:`build_sampler_tables` of ``hmm``, built on first use and kept on the (immutable) HMM object."""
    tables = hmm.__dict__.get("_sampler_tables")
    if tables is None:
        tables = hmm.__dict__.setdefault("_sampler_tables", build_sampler_tables(hmm))
    return tables


def sample(hmm: HMM, n: int, length: int, *, seed: int | None = None,
           generator: torch.Generator | None = None, return_states: bool = False):
    """Draw ``n`` independent sequences of ``length`` tokens, starting from ``hmm.initial``.

    Returns tokens (n, length) int64 on ``hmm.device``; with ``return_states=True`` also
    states (n, length) int64, where ``states[:, t]`` is the hidden state that emitted token t
    (the state before the transition that token labels). A :class:`GHMM` is sampled through its beliefs and
    has no states to return.
    """
    from interp.hmm.blocked import BlockedHMM

    if isinstance(hmm, BlockedHMM):  # block-sparse HMMs sample themselves
        return hmm.sample(n, length, seed=seed, generator=generator, return_states=return_states)
    n, length = _positive_int(n, "n"), _positive_int(length, "length")
    if isinstance(hmm, GHMM):  # no hidden states to walk: tokens are drawn through the beliefs
        if return_states:
            raise ValueError("return_states=True: a generalised HMM has no hidden states to return")
        return sample_ghmm(hmm, n, length, make_generator(seed, generator, hmm.device))
    device = hmm.device
    g = make_generator(seed, generator, device)
    V, S = hmm.n_tokens, hmm.n_states
    q, guide, initial_table = sampler_tables(hmm)
    state = torch.searchsorted(initial_table, torch.randint(0, _ONE, (n,), generator=g, device=device), right=True)
    # Time-major int32 buffers: each step writes one contiguous row.
    tokens = torch.empty(length, n, dtype=torch.int32, device=device)
    states = torch.empty(length, n, dtype=torch.int32, device=device) if return_states else None
    if states is not None:
        states[0] = state
    draw = _uniform_source(n, g, device)
    if guide is not None:
        _walk_guide(guide, V * S, S, state, draw, tokens, states)
    else:
        _walk_search(q, S, state, draw, tokens, states)
    out = empty_buffer((n, length), torch.int64, device).copy_(tokens.T)
    if return_states:
        return out, empty_buffer((n, length), torch.int64, device).copy_(states.T)
    return out
