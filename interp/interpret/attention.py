"""Attention patterns: the mean pattern, how fixed it is across inputs, and geometric-decay fits.

Patterns are [n, heads, L, L] (query t, key s, zero above the diagonal) with optional per-sequence
weights [n]. Row 0 has a single allowed entry (always 1 for softmax attention), so the fixedness
statistics use rows t >= 1 only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _check(P: torch.Tensor, weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if P.ndim != 4 or P.shape[-1] != P.shape[-2]:
        raise ValueError(f"patterns must be [n, heads, L, L], got shape {tuple(P.shape)}")
    n = P.shape[0]
    w = torch.ones(n, dtype=torch.float64) if weight is None else weight.double().reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"weight has {w.shape[0]} entries for {n} patterns")
    if (w < 0).any() or not torch.isfinite(w).all() or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    return P, w / w.sum()


def _allowed(L: int) -> torch.Tensor:
    """[L, L] mask of the entries s <= t of rows t >= 1."""
    m = torch.tril(torch.ones(L, L, dtype=torch.bool))
    m[0] = False
    return m


def mean_pattern(P: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """[heads, L, L] weighted mean over inputs."""
    P, w = _check(P, weight)
    return torch.einsum("n,nhts->hts", w, P.double())


def fixedness(P: torch.Tensor, weight: torch.Tensor | None = None) -> list[dict]:
    """Per head: ``mean_std`` and ``max_std`` of each allowed entry across inputs (rows t >= 1), and
    ``position_share``, the share of the entries' variance (over inputs and (t, s)) that the per-position
    mean explains: var of the means around the grand mean / total variance (1 when there is no variance)."""
    P, w = _check(P, weight)
    mask = _allowed(P.shape[-1])
    mean = mean_pattern(P, w)
    var = torch.einsum("n,nhts->hts", w, (P.double() - mean) ** 2)[:, mask]  # [heads, entries]
    m = mean[:, mask]
    grand = m.mean(1, keepdim=True)
    between = ((m - grand) ** 2).mean(1)
    within = var.mean(1)
    total = between + within
    share = torch.where(total > 0, between / torch.where(total > 0, total, 1.0), torch.ones_like(total))
    return [{"mean_std": float(var[h].sqrt().mean()), "max_std": float(var[h].sqrt().max()),
             "position_share": float(share[h])} for h in range(P.shape[1])]


@dataclass(frozen=True)
class DecayFit:
    """Geometric fit ``log P[t, s] = c_t + (t - s) log(decay)`` over keys s <= t - exclude."""

    exclude: int
    decay: float  # pooled: one slope, free row intercepts
    r2: float  # pooled, in log space, after removing row means
    n_points: int
    row_decay: list[float]  # per query row (NaN where not fitted)
    row_r2: list[float]

    def to_dict(self) -> dict:
        clean = lambda x: None if isinstance(x, float) and not math.isfinite(x) else x  # noqa: E731
        return {"exclude": self.exclude, "decay": clean(self.decay), "r2": clean(self.r2), "n_points": self.n_points,
                "row_decay": [clean(x) for x in self.row_decay], "row_r2": [clean(x) for x in self.row_r2]}


def fit_decay(pattern: torch.Tensor, *, exclude: int = 0, min_points: int = 3) -> DecayFit:
    """Fit the geometric decay of one head's [L, L] pattern (see :class:`DecayFit`)."""
    if pattern.ndim != 2 or pattern.shape[0] != pattern.shape[1]:
        raise ValueError(f"pattern must be [L, L], got shape {tuple(pattern.shape)}")
    if exclude < 0:
        raise ValueError(f"exclude must be >= 0, got {exclude}")
    P = pattern.double()
    L = P.shape[0]
    rows_lag, rows_log = [], []
    row_decay, row_r2 = [float("nan")] * L, [float("nan")] * L
    for t in range(L):
        s = torch.arange(0, max(t - exclude + 1, 0))
        vals = P[t, s] if len(s) else P.new_zeros(0)
        ok = vals > 0
        if int(ok.sum()) < min_points:
            continue
        lag, y = (t - s[ok]).double(), torch.log(vals[ok])
        lc, yc = lag - lag.mean(), y - y.mean()
        slope = float((lc @ yc) / (lc @ lc))
        ss = float(yc @ yc)
        row_decay[t] = math.exp(slope)
        row_r2[t] = 1.0 - float(((yc - slope * lc) ** 2).sum()) / ss if ss > 0 else 1.0
        rows_lag.append(lc)
        rows_log.append(yc)
    if not rows_lag:
        return DecayFit(exclude, float("nan"), float("nan"), 0, row_decay, row_r2)
    lc, yc = torch.cat(rows_lag), torch.cat(rows_log)
    slope = float((lc @ yc) / (lc @ lc))
    ss = float(yc @ yc)
    r2 = 1.0 - float(((yc - slope * lc) ** 2).sum()) / ss if ss > 0 else 1.0
    return DecayFit(exclude, math.exp(slope), r2, int(lc.numel()), row_decay, row_r2)


def describe_head(pattern: torch.Tensor) -> dict:
    """Weights on the current and previous token (mean over rows t >= 1) and decay fits leaving out
    0, 1 or 2 of the most recent keys; ``best_exclude`` is the smallest whose r2 is within 0.01 of the best."""
    P = pattern.double()
    L = P.shape[0]
    t = torch.arange(1, L)
    fits = {k: fit_decay(P, exclude=k) for k in (0, 1, 2)}
    r2 = {k: f.r2 for k, f in fits.items() if math.isfinite(f.r2)}
    best = min((k for k in r2 if r2[k] >= max(r2.values()) - 0.01), default=0)
    return {"current_weight": float(P[t, t].mean()) if L > 1 else float("nan"),
            "previous_weight": float(P[t, t - 1].mean()) if L > 1 else float("nan"),
            **{f"exclude_{k}": f.to_dict() for k, f in fits.items()}, "best_exclude": best}


def _normalise_rows(p: torch.Tensor) -> torch.Tensor:
    p = torch.tril(p.double().clamp_min(0))
    return p / p.sum(-1, keepdim=True).clamp_min(1e-300)


def pattern_distance(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mean total-variation distance per query row (t >= 1) and the Frobenius norm of the difference,
    after renormalising every row to sum 1 (so raw, unnormalised patterns compare fairly)."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"patterns must both be [L, L], got {tuple(a.shape)} and {tuple(b.shape)}")
    d = _normalise_rows(a) - _normalise_rows(b)
    return {"tv": float(0.5 * d[1:].abs().sum(-1).mean()), "frobenius": float(torch.linalg.matrix_norm(d))}


def decay_pattern(lam: float, L: int, *, normalise: bool = True) -> torch.Tensor:
    """[L, L] the construction's pattern ``lam^(t - s)`` for s <= t (rows normalised if asked)."""
    t = torch.arange(L)
    lag = (t[:, None] - t[None, :]).double()
    p = torch.where(lag >= 0, float(lam) ** lag.clamp_min(0), torch.zeros_like(lag))
    return p / p.sum(-1, keepdim=True) if normalise else p
