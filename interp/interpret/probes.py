"""Linear probes from activations onto the belief simplex (a generalised HMM's beliefs: the plane eta @ w = 1).

A probe is closed-form weighted least squares in float64 with an intercept (never penalised) and an
optional ridge penalty ``ridge * ||W||^2`` on the same scale as scikit-learn's ``Ridge(alpha=ridge)``.
Data are split by sequence, never by token, and scored on held-out sequences with the pooled R^2 of
:mod:`interp.interpret.metrics`. A shuffled-belief control refits the probe with the belief rows permuted among
the training points: it measures what the probe finds by capacity alone (expect R^2 near 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import NotFittedError

from interp.interpret.metrics import pooled_r2, rmse, simplex_distance

_CHUNK = 16384  # rows per float64 block: a float32 X of many rows is never copied whole to float64


def _matrix(a, name: str) -> torch.Tensor:
    """``a`` as a 2-D floating tensor (numpy arrays are wrapped, not copied); the dtype is kept.

    Finiteness is checked later, chunk by chunk, so no n x d mask is allocated."""
    t = a if torch.is_tensor(a) else torch.as_tensor(np.asarray(a))
    if not t.is_floating_point():
        t = t.double()
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, features], got shape {tuple(t.shape)}")
    return t


def _check_finite(t: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} has non-finite entries")
    return t


def _sample_weight(w, n: int, device) -> torch.Tensor:
    if w is None:
        return torch.ones(n, dtype=torch.float64, device=device)
    w = (w if torch.is_tensor(w) else torch.as_tensor(np.asarray(w))).double().reshape(-1).to(device)
    if w.numel() != n or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"sample_weight must have {n} finite non-negative entries, not all zero")
    return w


class LinearProbe(BaseEstimator, RegressorMixin):
    """``Y ~ X @ coef_.T + intercept_`` by weighted (ridge) least squares; ``score`` is the pooled R^2.

    ``rcond``: singular values of the centred, sqrt-weighted X below ``rcond`` times the largest count
    as zero (minimum-norm solution). None means d times the machine epsilon of X's dtype, so that
    float32 rounding noise in rank-deficient activations is not fitted with huge coefficients.
    """

    def __init__(self, ridge: float = 0.0, fit_intercept: bool = True, rcond: float | None = None):
        self.ridge = ridge
        self.fit_intercept = fit_intercept
        self.rcond = rcond

    def fit(self, X, Y, sample_weight=None) -> LinearProbe:
        """X [n, d], Y [n, S], sample_weight [n] (unnormalised, as in scikit-learn).

        Minimises sum_i w_i ||y_i - W x_i - b||^2 + ridge ||W||^2. The centred, sqrt-weighted rows
        [X | Y] are reduced chunk by chunk to one triangular factor R (a tall-skinny QR: no Gram
        matrix, so the condition number is not squared); the ridge enters as d extra rows
        [sqrt(ridge) I | 0]; the small system R_x W^T = R_y is solved by SVD (gelsd)."""
        if not (np.isfinite(self.ridge) and self.ridge >= 0):
            raise ValueError(f"ridge must be finite and >= 0, got {self.ridge}")
        X = _matrix(X, "X")
        Y = _matrix(Y, "Y").double().to(X.device)
        (n, d), S = X.shape, Y.shape[1]
        if Y.shape[0] != n or n == 0 or d == 0:
            raise ValueError(f"X [n, d] and Y [n, S] need the same n > 0, got {tuple(X.shape)}, {tuple(Y.shape)}")
        w = _sample_weight(sample_weight, n, X.device)
        chunks = [slice(i, i + _CHUNK) for i in range(0, n, _CHUNK)]
        x_mean = torch.zeros(d, dtype=torch.float64, device=X.device)
        y_mean = torch.zeros(S, dtype=torch.float64, device=X.device)
        if self.fit_intercept:
            x_mean = sum(w[c] @ X[c].double() for c in chunks) / w.sum()
            y_mean = (w @ Y) / w.sum()
        R = torch.zeros(0, d + S, dtype=torch.float64, device=X.device)
        for c in chunks:
            block = _check_finite(torch.cat([X[c].double() - x_mean, Y[c] - y_mean], 1), "X or Y")
            R = torch.linalg.qr(torch.cat([R, block * w[c, None].sqrt()]), mode="r").R
        if self.ridge > 0:
            penalty = torch.zeros(d, d + S, dtype=torch.float64, device=X.device)
            penalty[:, :d] = float(self.ridge) ** 0.5 * torch.eye(d, dtype=torch.float64, device=X.device)
            R = torch.cat([R, penalty])
        rcond = d * torch.finfo(X.dtype).eps if self.rcond is None else self.rcond
        sol = torch.linalg.lstsq(R[:, :d].cpu(), R[:, d:].cpu(), rcond=rcond, driver="gelsd").solution  # [d, S]
        self.coef_ = sol.T.contiguous().to(X.device)  # [S, d]
        self.intercept_ = y_mean - self.coef_ @ x_mean  # [S]
        self.n_features_in_ = d
        return self

    def predict(self, X) -> torch.Tensor:
        """X [n, d] -> [n, S] float64."""
        if not hasattr(self, "coef_"):
            raise NotFittedError("this LinearProbe is not fitted yet; call fit first")
        X = _matrix(X, "X").to(self.coef_.device)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must be [n, {self.n_features_in_}], got {tuple(X.shape)}")
        # any non-finite entry of X makes its prediction non-finite (inf * 0 is nan), so checking the output suffices
        out = [_check_finite(torch.addmm(self.intercept_, X[i:i + _CHUNK].double(), self.coef_.T), "X")
               for i in range(0, len(X), _CHUNK)]
        return torch.cat(out) if out else torch.zeros(0, len(self.intercept_), dtype=torch.float64)

    def score(self, X, Y, sample_weight=None) -> float:
        """Pooled R^2 over all belief coordinates together (not scikit-learn's average of per-output R^2)."""
        pred = self.predict(X)
        Y = _check_finite(_matrix(Y, "Y").double().to(pred.device), "Y")
        w = None if sample_weight is None else _sample_weight(sample_weight, len(pred), pred.device)
        return pooled_r2(Y, pred, w)


def split_by_sequence(n_seq: int, test_fraction: float,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, test) sequence indices, disjoint and covering ``range(n_seq)``; round(test_fraction * n_seq)
    sequences are held out."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = int(round(test_fraction * n_seq))
    if not 1 <= n_test <= n_seq - 1:
        raise ValueError(f"{n_seq} sequences cannot be split into two non-empty parts "
                         f"with test_fraction={test_fraction}")
    perm = torch.randperm(n_seq, generator=generator)
    return perm[n_test:].sort().values, perm[:n_test].sort().values


@dataclass(frozen=True)
class ProbeScores:
    r2: float  # pooled, on held-out sequences
    rmse: float  # held-out, per coordinate
    # held-out: mean distance of the simplex-projected prediction to the belief; None for a generalised HMM's
    # beliefs, which are not in a simplex
    simplex_distance: float | None
    r2_train: float
    shuffled_r2: float  # held-out R^2 of the probe refitted to beliefs shuffled among training rows
    n_train: int  # sequences
    n_test: int  # sequences

    def to_dict(self) -> dict:
        return asdict(self)


def _rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The (sequence, position) rows of the sequences ``idx`` of x [n, L, k], as [len(idx) * L, k]."""
    return x[idx].reshape(-1, x.shape[-1])


def fit_probe(X: torch.Tensor, Y: torch.Tensor, weight: torch.Tensor | None = None, *, train: torch.Tensor,
              test: torch.Tensor, ridge: float = 0.0, generator: torch.Generator,
              simplex: bool = True) -> tuple[LinearProbe, ProbeScores]:
    """Fit on every position of the ``train`` sequences, score on the ``test`` sequences.

    X [n, L, d], Y [n, L, S], weight [n] (each position gets its sequence's weight) or None. The
    training weights are rescaled to mean 1 per row, so ``ridge`` means the same with or without
    weights (as ``Ridge(alpha=ridge)`` on unweighted rows). The control refits on the training rows
    with the belief rows permuted by ``generator`` and is scored on the untouched test rows. ``simplex=False``
    (beliefs of a generalised HMM) reports no simplex distance."""
    if X.ndim != 3 or Y.ndim != 3 or X.shape[:2] != Y.shape[:2]:
        raise ValueError(f"activations {tuple(X.shape)} and beliefs {tuple(Y.shape)} must be [n, L, d], [n, L, S]")
    n, L = Y.shape[:2]
    train, test = torch.as_tensor(train, dtype=torch.long), torch.as_tensor(test, dtype=torch.long)
    if len(train) == 0 or len(test) == 0 or torch.isin(train, test).any():
        raise ValueError("train and test must be non-empty, disjoint sets of sequences")
    Y = Y.double().to(X.device)
    w = torch.ones(n, dtype=torch.float64) if weight is None else weight.double().reshape(-1)
    if len(w) != n:
        raise ValueError(f"weight has {len(w)} entries for {n} sequences")
    row_w = w.to(X.device)[:, None, None].expand(n, L, 1)  # every position carries its sequence's weight
    x_tr, y_tr, w_tr = _rows(X, train), _rows(Y, train), _rows(row_w, train)[:, 0]
    x_te, y_te, w_te = _rows(X, test), _rows(Y, test), _rows(row_w, test)[:, 0]
    w_tr = w_tr / w_tr.mean()
    probe = LinearProbe(ridge=ridge).fit(x_tr, y_tr, w_tr)
    pred = probe.predict(x_te)
    perm = torch.randperm(len(y_tr), generator=generator).to(y_tr.device)
    control = LinearProbe(ridge=ridge).fit(x_tr, y_tr[perm], w_tr)
    return probe, ProbeScores(
        r2=pooled_r2(y_te, pred, w_te), rmse=rmse(y_te, pred, w_te),
        simplex_distance=simplex_distance(y_te, pred, w_te) if simplex else None,
        r2_train=probe.score(x_tr, y_tr, w_tr), shuffled_r2=control.score(x_te, y_te, w_te),
        n_train=len(train), n_test=len(test))


def probe_hooks(acts: dict[str, torch.Tensor], Y: torch.Tensor, weight: torch.Tensor | None = None, *,
                test_fraction: float = 0.2, ridge: float = 0.0, seed: int = 0, concat_name: str = "all_layers",
                concat_hooks: list[str] | None = None,
                simplex: bool = True) -> dict[str, tuple[LinearProbe, ProbeScores]]:
    """One probe per hook (acts[h] [n, L, d_h], Y [n, L, S]) on one shared sequence split, plus one on the
    hooks ``concat_hooks`` (default: all; [] for none) concatenated along features, under ``concat_name``.

    The split comes from ``seed``; every probe's shuffle control uses the same permutation (from
    ``seed + 1``), so a hook's scores do not depend on which other hooks are probed."""
    hooks = list(acts) if concat_hooks is None else list(concat_hooks)
    if not acts or concat_name in acts or any(h not in acts for h in hooks):
        raise ValueError(f"need at least one hook, none named {concat_name!r}, and concat_hooks among {list(acts)}")
    train, test = split_by_sequence(Y.shape[0], test_fraction, torch.Generator().manual_seed(seed))

    def fit(x: torch.Tensor) -> tuple[LinearProbe, ProbeScores]:
        shuffle = torch.Generator().manual_seed(seed + 1)
        return fit_probe(x, Y, weight, train=train, test=test, ridge=ridge, generator=shuffle, simplex=simplex)

    out = {name: fit(x) for name, x in acts.items()}
    if hooks:  # concatenated in the cached dtype: the float64 copy is made chunk by chunk inside fit
        out[concat_name] = fit(torch.cat([acts[h] for h in hooks], -1))
    return out


def best_hook(results: dict[str, tuple[LinearProbe, ProbeScores]], concat_name: str = "all_layers") -> str:
    """The single hook with the highest held-out R^2 (the concatenation ``concat_name`` excluded)."""
    hooks = [h for h in results if h != concat_name]
    if not hooks:
        raise ValueError("no single-hook results")
    return max(hooks, key=lambda h: results[h][1].r2)
