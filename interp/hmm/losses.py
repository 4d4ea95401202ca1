"""The best loss any next-token predictor can reach on an HMM's data.

At position t (0-based) the optimal cross-entropy is the myopic entropy
``H(X_t | X_0..X_{t-1}) = E[ H(eta_t @ E) ]``, the expected entropy of the exact predictive
distribution; it falls towards the entropy rate. A model whose logits at position t predict
token t+1 has optimal per-position loss ``optimal_loss(hmm, L).per_position[1:]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from interp.hmm.core import HMM
from interp.hmm.filtering import beliefs as exact_beliefs
from interp.hmm.ghmm import GHMM, clean_probabilities
from interp.hmm.msp import DEFAULT_MAX_BELIEFS, _merge_keys, expand
from interp.hmm.sampling import sample


def predictive_entropy(beliefs: torch.Tensor, hmm: HMM) -> torch.Tensor:
    """(...,) entropy in nats of the next-token distribution ``beliefs @ E`` for beliefs (..., S)."""
    p = beliefs @ hmm.emission_matrix
    if isinstance(hmm, GHMM):  # signed products leave round-off around impossible tokens' zeros
        p = clean_probabilities(p)
    return torch.special.entr(p).sum(-1)


@dataclass(frozen=True)
class OptimalLoss:
    """per_position (L,): optimal cross-entropy (nats) of token t given tokens < t;
    stderr (L,): Monte Carlo standard error (0 where exact); n_exact: leading positions
    computed exactly by enumerating the MSP."""

    per_position: torch.Tensor
    stderr: torch.Tensor
    n_exact: int

    @property
    def exact(self) -> bool:
        return self.n_exact == self.per_position.shape[0]


@dataclass(frozen=True)
class Estimate:
    value: float
    stderr: float


def _exact_prefix(hmm: HMM, length: int, max_beliefs: int) -> list[float]:
    """Myopic entropies at depths 0, 1, ... by walking the MSP until ``length`` or the size limit."""
    b = hmm.initial[None].clone()
    p = torch.ones(1, dtype=torch.float64, device=hmm.device)
    out = []
    for d in range(length):
        out.append(float((p * predictive_entropy(b, hmm)).sum()))
        if d + 1 == length or b.shape[0] * hmm.n_tokens > max_beliefs:
            break
        child, reach, *_ = expand(hmm, b, p)
        first, inverse = _merge_keys(child)
        p = torch.zeros(first.shape[0], dtype=torch.float64, device=hmm.device).index_add_(0, inverse, reach)
        b = child[first]
    return out


def _monte_carlo(hmm: HMM, length: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-depth mean and standard error of the predictive entropy at depths 0..length-1.

    Uses exact beliefs of sampled prefixes (a Rao-Blackwellised estimate: far lower variance
    than averaging sampled log-losses)."""
    ent = torch.empty(n, length, dtype=torch.float64, device=hmm.device)
    ent[:, 0] = predictive_entropy(hmm.initial, hmm)
    if length > 1:
        tokens = sample(hmm, n, length - 1, seed=seed)
        ent[:, 1:] = predictive_entropy(exact_beliefs(hmm, tokens), hmm)
    return ent.mean(0), ent.std(0) / math.sqrt(n) if n > 1 else torch.zeros(length, dtype=torch.float64)


def optimal_loss(hmm: HMM, length: int, *, method: Literal["auto", "exact", "monte_carlo"] = "auto",
                 max_beliefs: int = DEFAULT_MAX_BELIEFS, n_samples: int = 20_000, seed: int = 0) -> OptimalLoss:
    """Optimal per-position cross-entropy for sequences of ``length`` tokens.

    ``auto``: exact (MSP enumeration) while a depth holds at most ``max_beliefs`` beliefs,
    Monte Carlo over exact beliefs of ``n_samples`` sampled sequences for the rest.
    ``exact`` raises if enumeration is infeasible; ``monte_carlo`` samples every position.
    """
    if isinstance(length, bool) or int(length) != length or length < 1:
        raise ValueError(f"length must be a positive integer, got {length!r}")
    if method not in ("auto", "exact", "monte_carlo"):
        raise ValueError(f"method must be 'auto', 'exact' or 'monte_carlo', got {method!r}")
    length = int(length)
    exact = [] if method == "monte_carlo" else _exact_prefix(hmm, length, max_beliefs)
    if method == "exact" and len(exact) < length:
        raise ValueError(
            f"exact optimal loss needs the MSP to depth {length - 1}, but it exceeds max_beliefs="
            f"{max_beliefs} after depth {len(exact) - 1}; use method='auto' or raise max_beliefs"
        )
    values = torch.zeros(length, dtype=torch.float64, device=hmm.device)
    stderr = torch.zeros(length, dtype=torch.float64, device=hmm.device)
    values[: len(exact)] = torch.tensor(exact, dtype=torch.float64)
    if len(exact) < length:
        mean, se = _monte_carlo(hmm, length, n_samples, seed)
        values[len(exact):], stderr[len(exact):] = mean[len(exact):], se[len(exact):]
    return OptimalLoss(values.cpu(), stderr.cpu(), len(exact))


def entropy_rate(hmm: HMM, *, n: int = 32768, length: int = 256, burn_in: int = 64, seed: int = 0) -> Estimate:
    """Entropy rate (nats/token) estimated as the mean predictive entropy at positions
    ``burn_in..length-1`` of ``n`` sampled sequences, with its standard error across sequences.

    Assumes the myopic entropy has converged by ``burn_in`` (it converges geometrically for
    processes whose beliefs synchronise or contract, such as Mess3)."""
    if not 0 <= burn_in < length:
        raise ValueError(f"burn_in must lie in [0, length), got burn_in={burn_in}, length={length}")
    tokens = sample(hmm, n, length - 1, seed=seed) if length > 1 else None
    # Position t is predicted from the belief after t tokens; position 0 from the initial belief.
    eta = hmm.initial.expand(n, 1, -1)
    if tokens is not None:
        eta = torch.cat([eta, exact_beliefs(hmm, tokens)], 1)
    ent = predictive_entropy(eta[:, burn_in:length], hmm)
    per_seq = ent.mean(1)
    return Estimate(float(per_seq.mean()), float(per_seq.std() / math.sqrt(n)) if n > 1 else float("nan"))


def unigram_loss(hmm: HMM) -> float:
    """Loss (nats) of the best context-free predictor at stationarity: entropy of ``pi @ E``."""
    return float(predictive_entropy(hmm.pi, hmm))
