"""Weighted regression metrics for beliefs, shared by probes, the construction and comparisons.

Points are (sequence, position) pairs flattened to rows; a weight per row (e.g. the probability of
its sequence when the evaluation set enumerates every sequence) makes every average a weighted one.
R^2 here is *pooled*: one number over all belief coordinates together,

    R^2 = 1 - sum_i w_i ||y_i - yhat_i||^2 / sum_i w_i ||y_i - ybar||^2,   ybar = weighted mean of y,

not scikit-learn's default average of one R^2 per coordinate.
"""

from __future__ import annotations

import torch


def _flat(y: torch.Tensor) -> torch.Tensor:
    return y.reshape(-1, y.shape[-1]).double()


def _weights(weight: torch.Tensor | None, n: int, device) -> torch.Tensor:
    if weight is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64, device=device)
    w = weight.reshape(-1).double().to(device)
    if w.numel() != n:
        raise ValueError(f"weight has {w.numel()} entries for {n} points")
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    return w / w.sum()


def pooled_r2(y: torch.Tensor, y_hat: torch.Tensor, weight: torch.Tensor | None = None) -> float:
    """Pooled R^2 of ``y_hat`` against ``y`` (both [..., d]); ``weight`` has shape ``y.shape[:-1]``."""
    y, y_hat = _flat(y), _flat(y_hat)
    if y.shape != y_hat.shape:
        raise ValueError(f"shapes differ: {tuple(y.shape)} vs {tuple(y_hat.shape)}")
    w = _weights(weight, y.shape[0], y.device)
    mean = w @ y
    resid = (w * ((y - y_hat) ** 2).sum(-1)).sum()
    total = (w * ((y - mean) ** 2).sum(-1)).sum()
    return float(1.0 - resid / total)


def rmse(y: torch.Tensor, y_hat: torch.Tensor, weight: torch.Tensor | None = None) -> float:
    """Root of the weighted mean squared error per coordinate."""
    y, y_hat = _flat(y), _flat(y_hat)
    w = _weights(weight, y.shape[0], y.device)
    return float(((w * ((y - y_hat) ** 2).mean(-1)).sum()).sqrt())


def project_to_simplex(y: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``y`` [..., d] onto the probability simplex (sort-based)."""
    shape, y = y.shape, _flat(y)
    d = y.shape[1]
    u, _ = torch.sort(y, dim=1, descending=True)
    css = u.cumsum(1) - 1.0
    k = torch.arange(1, d + 1, dtype=y.dtype, device=y.device)
    rho = ((u - css / k) > 0).sum(1, keepdim=True)  # >= 1 always
    theta = css.gather(1, rho - 1) / rho.to(y.dtype)
    return (y - theta).clamp_min(0.0).reshape(shape)


def simplex_distance(y: torch.Tensor, y_hat: torch.Tensor, weight: torch.Tensor | None = None) -> float:
    """Weighted mean Euclidean distance between ``y`` and ``y_hat`` projected onto the simplex."""
    y, p = _flat(y), _flat(project_to_simplex(y_hat))
    w = _weights(weight, y.shape[0], y.device)
    return float((w * (y - p).norm(dim=1)).sum())
