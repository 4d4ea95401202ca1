"""The mixed-state presentation (MSP): every distinct belief reachable within a given depth.

Depth d holds the beliefs after d tokens with the probability of reaching each one; paths
that reach the same belief are merged (beliefs are compared on a 1e-12 grid). Edges record
which token moves which belief to which, with that token's probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.hmm.core import HMM
from interp.hmm.ghmm import GHMM, clean_probabilities

MERGE_GRID = 1e-12
DEFAULT_MAX_BELIEFS = 2_000_000


@dataclass(frozen=True)
class MixedStatePresentation:
    """All beliefs within ``max_depth`` tokens, depth by depth.

    beliefs: (m, S) distinct beliefs per depth (depth 0 is the initial distribution).
    probs: (m,) probability of reaching the belief at its depth; sums to 1 within each depth.
    depth: (m,) int64 depth of each belief.
    edge_src, edge_dst, edge_token: (e,) int64, ``edge_prob``: (e,) ``P(token | src)``; an edge
    goes from a belief at depth d to one at depth d + 1.
    """

    beliefs: torch.Tensor
    probs: torch.Tensor
    depth: torch.Tensor
    edge_src: torch.Tensor
    edge_dst: torch.Tensor
    edge_token: torch.Tensor
    edge_prob: torch.Tensor

    @property
    def max_depth(self) -> int:
        return int(self.depth.max())

    def at_depth(self, d: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(beliefs (m_d, S), probs (m_d,)) at depth ``d``."""
        mask = self.depth == d
        return self.beliefs[mask], self.probs[mask]

    def distinct(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Beliefs merged across all depths, with weight = mean over depths of the reach probability."""
        uniq, inverse = _merge_keys(self.beliefs)
        w = torch.zeros(uniq.shape[0], dtype=torch.float64, device=self.beliefs.device)
        w.index_add_(0, inverse, self.probs / (self.max_depth + 1))
        return self.beliefs[uniq], w


def _merge_keys(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Group rows of ``b`` equal on the MERGE_GRID: (index of the first row of each group, group of each row)."""
    keys = torch.round(b / MERGE_GRID).to(torch.int64)
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    n_groups = int(inverse.max()) + 1
    first = torch.full((n_groups,), b.shape[0], dtype=torch.int64, device=b.device)
    first.scatter_reduce_(0, inverse, torch.arange(b.shape[0], device=b.device), reduce="amin")
    return first, inverse


def expand(hmm: HMM, beliefs: torch.Tensor, probs: torch.Tensor):
    """One MSP step: (children beliefs (k, S), reach probs (k,), parent (k,), token (k,), P(token | parent) (k,)).

    Children with probability zero are dropped; duplicates are not merged here."""
    u = torch.einsum("ks,xsj->kxj", beliefs, hmm.T)  # (m, V, S) unnormalised children
    px = clean_probabilities(u @ hmm.w) if isinstance(hmm, GHMM) else u.sum(-1)  # (m, V)
    parent, token = torch.nonzero(px > 0, as_tuple=True)
    p_tok = px[parent, token]
    child = u[parent, token] / p_tok[:, None]
    return child, probs[parent] * p_tok, parent, token, p_tok


def mixed_state_presentation(hmm: HMM, max_depth: int, *, max_beliefs: int = DEFAULT_MAX_BELIEFS) -> MixedStatePresentation:
    """Enumerate the MSP of ``hmm`` to ``max_depth`` tokens, merging duplicate beliefs per depth.

    Raises ValueError when one depth would hold more than ``max_beliefs`` candidate beliefs.
    """
    if isinstance(max_depth, bool) or int(max_depth) != max_depth or max_depth < 0:
        raise ValueError(f"max_depth must be a non-negative integer, got {max_depth!r}")
    dev = hmm.device
    b = hmm.initial[None].clone()
    p = torch.ones(1, dtype=torch.float64, device=dev)
    out_b, out_p, out_d = [b], [p], [torch.zeros(1, dtype=torch.int64, device=dev)]
    e_src, e_dst, e_tok, e_prob = [], [], [], []
    offset = 0
    for d in range(1, int(max_depth) + 1):
        if b.shape[0] * hmm.n_tokens > max_beliefs:
            raise ValueError(
                f"the MSP at depth {d} would hold up to {b.shape[0] * hmm.n_tokens} beliefs, over "
                f"max_beliefs={max_beliefs}; lower the depth or raise the limit"
            )
        child, reach, parent, token, p_tok = expand(hmm, b, p)
        first, inverse = _merge_keys(child)
        merged_p = torch.zeros(first.shape[0], dtype=torch.float64, device=dev).index_add_(0, inverse, reach)
        nxt_offset = offset + b.shape[0]
        e_src.append(parent + offset)
        e_dst.append(inverse + nxt_offset)
        e_tok.append(token)
        e_prob.append(p_tok)
        b, p, offset = child[first], merged_p, nxt_offset
        out_b.append(b)
        out_p.append(p)
        out_d.append(torch.full((b.shape[0],), d, dtype=torch.int64, device=dev))
    empty = torch.zeros(0, dtype=torch.int64, device=dev)
    cat = lambda xs, default: torch.cat(xs) if xs else default  # noqa: E731
    return MixedStatePresentation(
        beliefs=torch.cat(out_b), probs=torch.cat(out_p), depth=torch.cat(out_d),
        edge_src=cat(e_src, empty), edge_dst=cat(e_dst, empty), edge_token=cat(e_tok, empty),
        edge_prob=cat(e_prob, empty.to(torch.float64)),
    )
