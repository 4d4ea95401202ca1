"""Vectorised sampling of token sequences from an HMM.

Each step draws the pair (token, next state) jointly from row ``i`` of the (S, V*S) table
``T[:, i, :]`` by inverse CDF. All rows live in one sorted int64 table, row i shifted by
``i * 2^32``, so a single 1-D ``searchsorted`` serves every sequence at once with exact integer
arithmetic (no float rounding past the last bin). Probabilities are resolved to 2^-32.
"""

from __future__ import annotations

import torch

from interp.hmm.core import HMM

_BITS = 32
_ONE = 1 << _BITS


def _cdf_table(probs: torch.Tensor) -> torch.Tensor:
    """(R, K) row-stochastic -> (R*K,) sorted int64 table of shifted integer CDFs."""
    c = probs.cumsum(-1)
    c = c / c[:, -1:]
    q = torch.round(c * _ONE).to(torch.int64)
    q[:, -1] = _ONE  # every row ends exactly at 2^32: draws in [0, 2^32) never pass it
    offsets = torch.arange(probs.shape[0], device=probs.device, dtype=torch.int64)[:, None] * _ONE
    return (q + offsets).reshape(-1)


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


def sample(hmm: HMM, n: int, length: int, *, seed: int | None = None,
           generator: torch.Generator | None = None, return_states: bool = False):
    """Draw ``n`` independent sequences of ``length`` tokens, starting from ``hmm.initial``.

    Returns tokens (n, length) int64 on ``hmm.device``; with ``return_states=True`` also
    states (n, length) int64, where ``states[:, t]`` is the hidden state that emitted token t
    (the state before the transition that token labels).
    """
    n, length = _positive_int(n, "n"), _positive_int(length, "length")
    device = hmm.device
    g = make_generator(seed, generator, device)
    V, S = hmm.n_tokens, hmm.n_states
    K = V * S
    table = _cdf_table(hmm.T.permute(1, 0, 2).reshape(S, K))  # row i: (x, j) flattened as x*S + j
    flat = torch.arange(S * K, device=device) % K
    token_of, state_of = flat // S, flat % S

    state = torch.searchsorted(_cdf_table(hmm.initial[None]),
                               torch.randint(0, _ONE, (n,), generator=g, device=device), right=True)
    draws = torch.randint(0, _ONE, (length, n), generator=g, device=device)
    tokens = torch.empty(length, n, dtype=torch.int64, device=device)
    states = torch.empty(length, n, dtype=torch.int64, device=device) if return_states else None
    for t in range(length):
        if states is not None:
            states[t] = state
        idx = torch.searchsorted(table, torch.add(draws[t], state, alpha=_ONE), right=True)
        torch.index_select(token_of, 0, idx, out=tokens[t])
        state = torch.index_select(state_of, 0, idx)
    tokens = tokens.T.contiguous()
    if return_states:
        return tokens, states.T.contiguous()
    return tokens
