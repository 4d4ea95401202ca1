"""How many softmax heads the first-order (constrained) belief update needs, from the process alone.

To first order the belief after tokens x_0..x_t is ``pi + sum_{k=0}^{t} v[x_{t-k}] @ Smat^k``
(:mod:`interp.interpret.construction`). Lag 0 is the current token (the residual skip path); lag k >= 1 must be
written by attention. A softmax head j gives the key at lag k a weight ``a_j(k) >= 0`` (a BOS sink takes the rest
of the row) and writes the fixed matrix ``M_j`` [V, S] (row x: what token x contributes), so the heads write the
lag terms ``G_k = v @ Smat^k`` exactly when ``G_k = sum_j a_j(k) M_j`` for k = 1..L-1. The fewest heads that can
do that is the fewest generators of a convex cone containing every ``G_k``: with r the dimension the ``G_k``
span, r when they lie strictly inside a half-space (a pointed cone), r + 1 when they do not. docs/construction.md
("How many heads") derives it and the hand cases: a positive real spectrum (1 head), a negative eigenvalue
(2: even and odd lags), a complex pair (2 while the lags turn less than a half-turn, 3 beyond), nilpotent (0).

:func:`head_count` returns the count with its reason, the eigenvalues, and one solution: the heads' matrices
``M_j`` and their non-negative per-lag weights ``a_j(k)``, from which the multi-head construction is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.optimize import linprog

from interp.hmm.core import HMM
from interp.hmm.first_order import token_vectors, zero_sum_operator_eigenvalues
from interp.hmm.ghmm import GHMM

# Relative tolerance of every decision (a lag term too small to count, a direction too close to another, a cone
# too close to containing a line). Far above float64 rounding of the matrix powers (a few hundred ulps at the
# context lengths used here) and far below what a float32 model can resolve (1e-7), so no outcome rests on the
# last bit.
TOL = 1e-9

_SHOWN = 6  # eigenvalues (conjugate pairs once) named in a reason; a large process's list is cut there


@dataclass(frozen=True)
class HeadCount:
    """The head-count prediction for a process at a context length.

    n_heads: the fewest softmax heads that write the first-order update exactly; reason: one sentence naming the
    eigenvalues and why; eigenvalues: Smat's spectrum on zero-sum vectors (w-zero-sum for a GHMM); context: L;
    rank: the dimension spanned by the lag terms ``G_k``, k = 1..L-1; pointed: whether they lie strictly inside a
    half-space; margin: the largest ``min_k f . G_k / |G_k|`` over ``f`` in the unit box of their span (> 0 iff
    pointed); matrices [n_heads, V, S]: each head's write ``M_j``; weights [n_heads, L] float64: ``a_j(k) >= 0``
    (column 0, the current token, is 0: the skip path writes it), with ``sum_j a_j(k) M_j = v @ Smat^k`` for every
    lag whose term is above ``TOL`` of lag 0's (smaller ones get weight 0)."""

    n_heads: int
    reason: str
    eigenvalues: tuple[complex, ...]
    context: int
    rank: int
    pointed: bool
    margin: float
    matrices: torch.Tensor
    weights: torch.Tensor

    def heads_at(self, lag: int) -> list[int]:
        """The heads with a positive weight at ``lag`` (the generators that lag uses)."""
        return [j for j in range(self.n_heads) if float(self.weights[j, lag]) > 0.0]

    def to_dict(self) -> dict:
        """JSON-friendly: the count, reason, eigenvalues as [re, im] pairs, and the heads used per lag."""
        return {"n_heads": self.n_heads, "reason": self.reason, "context": self.context, "rank": self.rank,
                "pointed": self.pointed, "margin": self.margin,
                "eigenvalues": [[z.real, z.imag] for z in self.eigenvalues],
                "heads_per_lag": [self.heads_at(k) for k in range(self.context)]}


def lag_terms(hmm: HMM | GHMM, context: int) -> torch.Tensor:
    """[L, V, S] float64 ``G_k = v @ Smat^k`` for k = 0..L-1 (v: the token vectors), by repeated products."""
    g = token_vectors(hmm).cpu()
    smat = hmm.transition_matrix.cpu()
    out = [g]
    for _ in range(1, context):
        out.append(out[-1] @ smat)
    return torch.stack(out)


def _fmt_eigenvalues(eig: list[complex]) -> str:
    """'0.55 (twice)', '-0.4053 +- 0.7205i', ... (conjugate pairs once, repeats counted)."""
    parts: list[tuple[str, int]] = []
    floor = TOL * max([abs(z) for z in eig] + [1.0])  # rounding-level parts print as 0
    for z in eig:
        z = complex(z.real if abs(z.real) > floor else 0.0, z.imag if abs(z.imag) > floor else 0.0)
        if z.imag < 0:
            continue  # shown with its conjugate
        text = f"{z.real + 0.0:.4g}" if z.imag == 0 else f"{z.real + 0.0:.4g} +- {z.imag:.4g}i"
        if parts and parts[-1][0] == text:
            parts[-1] = (text, parts[-1][1] + 1)
        else:
            parts.append((text, 1))
    words = {2: " (twice)", 3: " (three times)"}
    shown = [t + (words.get(n, f" ({n} times)") if n > 1 else "") for t, n in parts[:_SHOWN]]
    more = f", ... ({len(parts) - _SHOWN} more, by decreasing modulus)" if len(parts) > _SHOWN else ""
    return ", ".join(shown) + more if shown else "none"


def _box_margin(c: np.ndarray) -> tuple[float, np.ndarray]:
    """max over f in [-1, 1]^r of min_k c_k . f (rows c_k unit vectors) and the maximiser: a small LP."""
    m, r = c.shape
    res = linprog(np.r_[np.zeros(r), -1.0], A_ub=np.c_[-c, np.ones(m)], b_ub=np.zeros(m),
                  bounds=[(-1.0, 1.0)] * r + [(None, 1.0)], method="highs")
    if res.status != 0:
        raise RuntimeError(f"the half-space LP failed: {res.message}")
    return float(-res.fun), np.asarray(res.x[:r])


def _regular_simplex(n: int) -> np.ndarray:
    """[n, n-1] unit vectors summing to 0, pairwise at equal angles (n >= 2)."""
    centred = np.eye(n) - 1.0 / n
    q, _ = np.linalg.qr(centred[:, : n - 1])  # an orthonormal basis of the sum-zero plane
    u = centred @ q
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def _generators(c: np.ndarray, pointed: bool, f: np.ndarray) -> np.ndarray:
    """[n_heads, r] generators of a cone containing the rows of ``c`` [m, r] (unit vectors spanning R^r)."""
    m, r = c.shape
    if not pointed:  # r + 1 directions that positively span R^r
        if r == 1:
            return np.array([c[0], -c[0]])
        return _regular_simplex(r + 1)
    f = f / np.linalg.norm(f)
    if r == 1:
        return f[None]
    if r == 2:  # the cone's own two extreme rays: the lags turned furthest either way from f
        perp = np.array([-f[1], f[0]])
        angle = np.arctan2(c @ perp, c @ f)
        return np.stack([c[int(np.argmin(angle))], c[int(np.argmax(angle))]])
    # a simplicial cone around f: its cross-section at f . x = 1 a regular simplex twice as wide as needed
    section = c / (c @ f)[:, None] - f
    radius = 2.0 * (r - 1) * max(float(np.linalg.norm(section, axis=1).max()), 1.0)
    basis = np.linalg.qr(np.c_[f, np.eye(r)])[0][:, 1:r]  # [r, r-1] orthonormal, orthogonal to f
    return f + radius * _regular_simplex(r) @ basis.T


def _weights(c: np.ndarray, gens: np.ndarray, pointed: bool) -> np.ndarray:
    """[m, n_heads] non-negative a with a @ gens = c (rows of c not normalised)."""
    a = np.linalg.lstsq(gens.T, c.T, rcond=None)[0].T  # exact: gens span R^r
    if not pointed:  # the generators sum to 0 (or are +-c_0): shifting every weight equally changes nothing
        a = a - np.minimum(a.min(axis=1, keepdims=True), 0.0)
    return np.where(a > 0.0, a, 0.0)  # rounding-level negatives of a weight that is 0 in exact arithmetic


def head_count(hmm: HMM | GHMM, context: int, tol: float = TOL) -> HeadCount:
    """The fewest softmax heads that write the first-order update of ``hmm`` over ``context`` positions, with its
    reason and one solution (module docstring). ``tol``: relative tolerance of every decision (:data:`TOL`)."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ValueError(f"context must be a positive integer, got {context!r}")
    if not 0.0 < tol < 1e-3:
        raise ValueError(f"tol must lie in (0, 1e-3), got {tol}")
    eig = [complex(z) for z in zero_sum_operator_eigenvalues(hmm).tolist()]
    terms = lag_terms(hmm, context)
    L, V, S = terms.shape
    spectrum = f"zero-sum eigenvalues {_fmt_eigenvalues(eig)}"
    lags = f"lags 1..{L - 1}" if L > 2 else "lag 1"

    def result(n: int, reason: str, rank: int = 0, pointed: bool = True, margin: float = 1.0,
               matrices=None, weights=None) -> HeadCount:
        return HeadCount(n, reason, tuple(eig), L, rank, pointed, margin,
                         torch.zeros(0, V, S, dtype=torch.float64) if matrices is None else matrices,
                         torch.zeros(0, L, dtype=torch.float64) if weights is None else weights)

    scale = float(terms[0].norm())
    if L == 1:
        return result(0, f"no head: a context of 1 has no earlier token to attend to ({spectrum})")
    norms = terms.reshape(L, -1).norm(dim=1)
    kept = [k for k in range(1, L) if scale > 0 and float(norms[k]) > tol * scale]
    if not kept:
        return result(0, f"no head: every lag term v[x] Smat^k over {lags} is below {tol:g} of the current token's "
                         f"({spectrum}), so first order keeps no memory of earlier tokens and the skip path alone "
                         "writes it")
    raw = terms[kept].reshape(len(kept), -1).numpy()
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    _, sing, vh = np.linalg.svd(unit, full_matrices=False)
    r = int((sing > tol * sing[0]).sum())
    basis = vh[:r]  # [r, V*S] orthonormal rows spanning the lag terms
    c_unit = unit @ basis.T
    margin, f = _box_margin(c_unit)
    pointed = margin > tol
    gens = _generators(c_unit / np.linalg.norm(c_unit, axis=1, keepdims=True), pointed, f)
    a = _weights(raw @ basis.T, gens, pointed)
    n = gens.shape[0]
    matrices = torch.as_tensor(gens @ basis).reshape(n, V, S)
    weights = torch.zeros(n, L, dtype=torch.float64)
    weights[:, kept] = torch.as_tensor(a.T)
    error = float((torch.einsum("jk,jxs->kxs", weights, matrices)[kept] - terms[kept]).abs().max())
    if error > 1e3 * tol * scale:
        raise RuntimeError(f"head_count: the heads reproduce the lag terms only to {error:.2e} (scale {scale:.2e})")

    if r == 1 and pointed:
        why = (f"one head: over {lags} the lag terms v[x] Smat^k are positive multiples of one matrix ({spectrum}), "
               "so one head with non-negative decaying weights writes them")
    elif r == 1:
        why = (f"two heads: over {lags} the lag terms alternate in sign along one matrix ({spectrum}: a negative "
               "one), and non-negative weights need one head for the odd lags and one for the even")
    else:
        turn = ""
        pairs = [z for z in eig if z.imag > tol and abs(z) > tol]
        if pairs:
            z = max(pairs, key=abs)
            step = math.degrees(abs(math.atan2(z.imag, z.real)))
            turn = f"; the pair of modulus {abs(z):.4g} turns by {step:.1f} degrees a lag, {step * (L - 2):.0f} over {lags}"
        how = ("lie strictly inside a half-space, so that many heads whose matrices span a cone around them suffice"
               if pointed else
               "lie in no half-space (their non-negative combinations contain a line), so one head more is needed")
        why = f"{n} heads: over {lags} the lag terms span {r} dimensions and {how} ({spectrum}{turn})"
    return result(n, why, r, pointed, margin, matrices, weights)


def keep_heads(heads: HeadCount, keep) -> HeadCount:
    """``heads`` with only the heads ``keep`` (distinct indices), their matrices and weights unchanged: what that
    subset of the solution writes (lags whose term needs a dropped head are written short or not at all). The
    reason, eigenvalues and cone numbers stay those of the full count."""
    keep = list(keep)
    if len(set(keep)) != len(keep) or any(isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < heads.n_heads
                                          for j in keep):
        raise ValueError(f"keep must be distinct head indices in [0, {heads.n_heads}), got {keep}")
    return replace(heads, n_heads=len(keep), matrices=heads.matrices[keep], weights=heads.weights[keep])
