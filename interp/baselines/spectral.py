"""Spectral (method-of-moments) learning of HMMs: the baseline of the parameter-recovery study.

Everything here works from the low-order moments of the token process (:class:`Moments`):

    P1[x]          = P(x_t = x)
    P21[j, i]      = P(x_{t+1} = j, x_t = i)
    P3x1[x, k, i]  = P(x_{t+2} = k, x_{t+1} = x, x_t = i)

Two estimators use them:

- :class:`SpectralHMM`, the observable-operator model of Hsu, Kakade & Zhang (2009, "A spectral
  algorithm for learning hidden Markov models"). With U the top-``rank`` left singular vectors of P21,

      b1 = U^T P1,   binf = (P21^T U)^+ P1,   B_x = U^T P3x1[x] (U^T P21)^+,
      P(x_1 .. x_t) = binf^T B_{x_t} ... B_{x_1} b1.

  For an HMM with ``T[x, i, j]`` this is exact when rank = S and P21 has rank S: with
  ``O[x, s] = (T[x] 1)[s]`` (next-token probabilities, [V, S]) and ``M[s, i] = (pi T[i])[s]`` ([S, V]),
  ``P21 = O M``, ``P3x1[x] = O T[x]^T M``, and ``B_x = (U^T O) T[x]^T (U^T O)^{-1}`` is similar to the
  true operator. Rank-S P21 needs S <= V: in the overcomplete case (V < S) the best one can fit is a
  rank-V model, which matches the moments up to order 3 but not the process.
  Its raw predictions ``binf^T B_x b_t`` can be negative on estimated moments; here every
  prediction is made a distribution (see :meth:`SpectralHMM.log_likelihood`).

- :func:`fit_emission_form`, an estimate of the emission-form parameters (mu, A, C) by the
  eigen-decomposition method of Anandkumar, Hsu & Kakade (2012, "A method of moments for mixture
  models and hidden Markov models"), e.g. to initialise a Belief Net or Baum-Welch.

Windows (``window = h > 1``): the past and the future of a position are taken as the h tokens before and
after it, each one index among V^h, so ``P21`` is [V^h, V^h] and ``P3x1`` [V, V^h, V^h] (``P1`` is then the
marginal of h-token windows). The same algebra holds with ``O`` the [V^h, S] probabilities of the next h
tokens, so the observable-operator model is exact at rank S as soon as S <= V^h and those windows tell the
states apart: this is how spectral learning reaches the overcomplete case (V < S) that single tokens cannot.
Moments pooled over positions (:func:`empirical_moments`) and :func:`exact_moments` both describe the
stationary process: both estimators assume the sequences start in the stationary distribution.
All numbers are float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from interp.hmm.core import HMM, EmissionForm

__all__ = ["Moments", "empirical_moments", "exact_moments", "SpectralHMM", "EmissionRecovery",
           "fit_emission_form"]


# ------------------------------------------------------------------------------------ validation
def _check_rank(rank, n_tokens: int, window: int = 1) -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ValueError(f"rank must be an integer, got {rank!r}")
    rank = int(rank)
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if rank > n_tokens ** window:
        if window == 1:
            raise ValueError(
                f"rank {rank} exceeds the number of tokens V = {n_tokens}: spectral learning needs rank <= V "
                f"(P21 is V x V); with fewer tokens than states only a rank-{n_tokens} model can be fitted, "
                f"or use windows of several tokens (window > 1)"
            )
        raise ValueError(f"rank {rank} exceeds V^window = {n_tokens}^{window} = {n_tokens ** window}, "
                         f"the size of P21 over {window}-token windows")
    return rank


def _check_window(window) -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    return int(window)


def _check_tokens(tokens, n_tokens: int, device=None, min_length: int = 1) -> torch.Tensor:
    """A [n, L] integer token array with entries in [0, n_tokens), as int64."""
    t = torch.as_tensor(tokens)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"tokens must be an integer tensor, got dtype {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"tokens must be 2-D [n, L], got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] < min_length:
        raise ValueError(f"tokens must hold at least one sequence of length >= {min_length}, "
                         f"got shape {tuple(t.shape)}")
    lo, hi = (int(v) for v in torch.aminmax(t))
    if lo < 0 or hi >= n_tokens:
        bad = lo if lo < 0 else hi
        where = tuple(torch.nonzero(t == bad)[0].tolist())
        raise ValueError(f"token {bad} at (sequence, position) {where} is out of range [0, {n_tokens})")
    return t.to(device=device, dtype=torch.int64)


def _as_float64(x, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must be a real array, got dtype {t.dtype}")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} has non-finite entries")
    return t


# --------------------------------------------------------------------------------------- moments
@dataclass(frozen=True)
class Moments:
    """Low-order moments of a stationary token process (float64), over windows of ``window = h`` tokens.

    With W = V^h windows: P1: [W] ``P(window)``; P21: [W, W] with ``P21[f, p]`` the probability of the past
    window p (the h tokens up to t) followed by the future window f (the h tokens after t);
    P3x1: [V, W, W] with ``P3x1[x, f, p]`` that of p, then token x, then f. A window's index reads its tokens
    in time order as a base-V number. For h = 1: ``P21[j, i] = P(x_{t+1} = j, x_t = i)`` and
    ``P3x1[x, k, i] = P(x_{t+2} = k, x_{t+1} = x, x_t = i)``.
    """

    P1: torch.Tensor
    P21: torch.Tensor
    P3x1: torch.Tensor
    window: int = 1

    def __post_init__(self):
        h = _check_window(self.window)
        p1 = _as_float64(self.P1, "P1")
        if p1.ndim != 1 or p1.shape[0] == 0:
            raise ValueError(f"P1 must be a non-empty vector [V^window], got shape {tuple(p1.shape)}")
        w = p1.shape[0]
        v = round(w ** (1 / h))
        v = next((c for c in (v - 1, v, v + 1) if c >= 1 and c ** h == w), None)
        if v is None:
            raise ValueError(f"P1 has {w} entries, which is not V^window for window {h}")
        p21 = _as_float64(self.P21, "P21").to(p1.device)
        if tuple(p21.shape) != (w, w):
            raise ValueError(f"P21 must have shape (V^window, V^window) = {(w, w)}, got {tuple(p21.shape)}")
        p3 = _as_float64(self.P3x1, "P3x1").to(p1.device)
        if tuple(p3.shape) != (v, w, w):
            raise ValueError(f"P3x1 must have shape (V, V^window, V^window) = {(v, w, w)}, got {tuple(p3.shape)}")
        object.__setattr__(self, "P1", p1)
        object.__setattr__(self, "P21", p21)
        object.__setattr__(self, "P3x1", p3)
        object.__setattr__(self, "window", h)

    @property
    def n_tokens(self) -> int:
        return self.P3x1.shape[0]

    @property
    def P31(self) -> torch.Tensor:
        """[W, W] ``P31[f, p] = sum_x P3x1[x, f, p]``: past and future with one token between."""
        return self.P3x1.sum(0)


def _window_codes(t: torch.Tensor, v: int, h: int) -> torch.Tensor:
    """[n, L - h + 1] index of the h-token window starting at each position (base v, oldest digit first)."""
    code = t[:, : t.shape[1] - h + 1]
    for i in range(1, h):
        code = code * v + t[:, i: t.shape[1] - h + 1 + i]
    return code


def empirical_moments(tokens, n_tokens: int, *, window: int = 1) -> Moments:
    """Moments counted over every position of every sequence in ``tokens`` [n, L] (L >= 2 window + 1).

    P1 counts all n (L - h + 1) windows, P21 all n (L - 2h + 1) (past, future) pairs, P3x1 all n (L - 2h)
    (past, token, future) triples, each normalised by its own count. Pooling positions assumes the process is
    stationary (the sequences start in the stationary distribution); otherwise these are position-averaged
    moments. One ``bincount`` per moment on flattened indices: O(n L) time, O(V^(2h+1)) memory.
    """
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive integer, got {n_tokens!r}")
    v, h = int(n_tokens), _check_window(window)
    t = _check_tokens(tokens, v, min_length=2 * h + 1)
    w = v ** h
    c = _window_codes(t, v, h)  # c[:, s]: the window starting at s
    past2, future2 = c[:, : c.shape[1] - h], c[:, h:]  # past starts at s, future right after it
    past3, x3, future3 = c[:, : c.shape[1] - h - 1], t[:, h: t.shape[1] - h], c[:, h + 1:]
    p1 = torch.bincount(c.reshape(-1), minlength=w).to(torch.float64)
    p21 = torch.bincount((future2 * w + past2).reshape(-1), minlength=w * w).to(torch.float64)
    p3 = torch.bincount(((x3 * w + future3) * w + past3).reshape(-1), minlength=v * w * w).to(torch.float64)
    return Moments(p1 / p1.sum(), (p21 / p21.sum()).view(w, w), (p3 / p3.sum()).view(v, w, w), h)


def exact_moments(hmm: HMM, *, window: int = 1) -> Moments:
    """Moments of ``hmm`` started in its stationary distribution ``pi`` (``hmm.initial`` is ignored).

    With ``F[f, s]`` the probability of the future window f from state s (``T[f_1] ... T[f_h] 1``) and
    ``G[p]`` the row vector ``pi T[p_1] ... T[p_h]``: ``P1[p] = G[p] 1``, ``P21[f, p] = G[p] F[f]``,
    ``P3x1[x, f, p] = G[p] T[x] F[f]``.
    """
    h = _check_window(window)
    T = hmm.T  # [V, S, S]
    S = hmm.n_states
    F = T.sum(2)  # [V, S]: F[k] = T[k] 1
    G = hmm.pi @ T  # [V, S]: G[i] = pi T[i]
    for _ in range(h - 1):
        F = torch.einsum("xst,ft->xfs", T, F).reshape(-1, S)  # a token before the window
        G = torch.einsum("ps,xst->pxt", G, T).reshape(-1, S)  # a token after it
    p1 = G.sum(1)
    p21 = F @ G.T  # [W(f), W(p)]
    p3 = torch.einsum("ps,xst,ft->xfp", G, T, F)
    return Moments(p1, p21, p3, h)


# ------------------------------------------------------------------------ observable operators
@dataclass(frozen=True)
class SpectralHMM:
    """The HKZ observable-operator model of rank r over V tokens.

    U: [W, r] basis of the top-r left singular vectors of P21 (W = V^window); b1: [r]; binf: [r];
    B: [V, r, r]. ``P(x_1 .. x_t) = binf^T B_{x_t} ... B_{x_1} b1`` (before the predictions are made valid).
    """

    U: torch.Tensor
    b1: torch.Tensor
    binf: torch.Tensor
    B: torch.Tensor

    def __post_init__(self):
        r = self.U.shape[1] if self.U.ndim == 2 else -1
        if (self.B.ndim != 3 or tuple(self.b1.shape) != (r,) or tuple(self.binf.shape) != (r,)
                or tuple(self.B.shape[1:]) != (r, r)):
            raise ValueError(
                f"inconsistent shapes: U {tuple(self.U.shape)}, b1 {tuple(self.b1.shape)}, "
                f"binf {tuple(self.binf.shape)}, B {tuple(self.B.shape)} (want [W, r], [r], [r], [V, r, r])"
            )

    @property
    def n_tokens(self) -> int:
        return self.B.shape[0]

    @property
    def rank(self) -> int:
        return self.U.shape[1]

    @classmethod
    def fit(cls, moments: Moments, rank: int) -> "SpectralHMM":
        """HKZ: ``b1 = U^T P1``, ``binf = (P21^T U)^+ P1``, ``B_x = U^T P3x1[x] (U^T P21)^+``.

        ``1 <= rank <= V^window``; a rank above the numerical rank of P21 gives a badly conditioned model.
        With windows, P1 serves as both the first window's and the past window's marginal (equal when
        stationary), so b1 and binf keep their form.
        """
        rank = _check_rank(rank, moments.n_tokens, moments.window)
        U = torch.linalg.svd(moments.P21)[0][:, :rank]  # [V, r]
        b1 = U.T @ moments.P1
        binf = torch.linalg.pinv(moments.P21.T @ U) @ moments.P1
        right = torch.linalg.pinv(U.T @ moments.P21)  # [V, r]
        B = (U.T @ moments.P3x1) @ right  # [V, r, V] @ [V, r] -> [V, r, r]
        return cls(U.contiguous(), b1, binf, B.contiguous())

    def _filter(self, tokens, floor: float, want_probs: bool):
        """log P(x_t | x_<t) [n, L] and, if asked, the valid predictions [n, L, V]."""
        if not (isinstance(floor, (int, float, np.floating)) and 0.0 < floor < 1.0):
            raise ValueError(f"floor must lie in (0, 1), got {floor!r}")
        V, r = self.n_tokens, self.rank
        dev = self.U.device
        tokens = _check_tokens(tokens, V, dev)
        n, L = tokens.shape
        W = torch.einsum("r,xrq->xq", self.binf, self.B)  # [V, r]: raw q = W b
        b = self.b1.expand(n, r).clone()  # [n, r]
        logp = torch.empty(n, L, dtype=torch.float64, device=dev)
        probs = torch.empty(n, L, V, dtype=torch.float64, device=dev) if want_probs else None
        ones = torch.ones(n, dtype=torch.float64, device=dev)
        for t in range(L):
            q = b @ W.T  # [n, V] raw predictions binf^T B_x b_t, up to the scale of b_t
            z = q.clamp_min(0).sum(1)  # positive mass: the scale that is 1 for a valid prediction
            z = torch.where(z > 0, z, q.abs().sum(1))
            z = torch.where(z > 0, z, ones)
            qc = torch.maximum(q, floor * z[:, None])  # clamped at floor relative to unit mass
            total = qc.sum(1)
            x = tokens[:, t]
            logp[:, t] = torch.log(qc.gather(1, x[:, None])[:, 0]) - torch.log(total)
            if want_probs:
                probs[:, t] = qc / total[:, None]
            qx = q.gather(1, x[:, None])[:, 0]  # HKZ's denominator binf^T B_x b_t: keep its sign
            d = torch.where(qx < 0, -1.0, 1.0) * torch.maximum(qx.abs(), floor * z)
            b = torch.bmm(self.B.index_select(0, x), b[:, :, None])[:, :, 0] / d[:, None]
        return logp, probs

    def log_likelihood(self, tokens, *, floor: float = 1e-6) -> torch.Tensor:
        """[n] ``sum_t log p_t(x_t)`` for ``tokens`` [n, L] under the made-valid model.

        Sequential filter, b_1 = b1. At each step the raw predictions ``q[x] = binf^T B_x b_t`` are
        scaled by their positive mass ``z = sum_x max(q_x, 0)`` (1 for an exact model; the sum of
        ``|q_x|`` if none is positive), clamped below at ``floor * z`` and renormalised over x:
        ``p_t(x) = max(q_x, floor z) / sum_y max(q_y, floor z)``, a distribution whatever the model.
        The state follows HKZ, ``b_{t+1} = B_{x_t} b_t / d`` with ``d = binf^T B_{x_t} b_t = q_{x_t}``,
        except that ``|d|`` is floored at ``floor * z`` (``d = sign(q_x) max(|q_x|, floor z)``); a
        negative d keeps its sign, so that ``binf^T b_{t+1} = 1`` as in HKZ. (Dividing by the clamped,
        positive prediction instead flips the state whenever q_x < 0, after which the filter predicts
        roughly the complement of HKZ's prediction: on the cyclic S = 64, V = 128 benchmark that made the
        held-out loss grow with position to 4.18 nats/token, against 1.68 with the sign kept.)
        Every step is invariant to the scale of b_t, so nothing drifts over long sequences.
        ``floor`` lies in (0, 1).
        """
        return self._filter(tokens, floor, False)[0].sum(1)

    def predict_proba(self, tokens, *, floor: float = 1e-6) -> torch.Tensor:
        """[n, L, V] valid next-token distributions: row t predicts token t from tokens < t (row 0 from
        b1). Made valid as in :meth:`log_likelihood`."""
        return self._filter(tokens, floor, True)[1]


# ------------------------------------------------------------------------ parameter recovery
# Columns of R whose directions are this close (condition number of the column-normalised R) are taken as
# collapsed onto one eigenvector: inverting R would lose more than half of float64's digits.
_COLLAPSED = 1e8

Refinement = Literal["converged", "iterations_exhausted", "kept_last_good", "unrefined"]


def _condition(R: torch.Tensor) -> float:
    """Condition number of R with unit columns (inf if R is singular or a column is zero)."""
    norms = R.norm(dim=0)
    if not bool((norms > 0).all()):
        return math.inf
    s = torch.linalg.svdvals(R / norms)
    return float(s[0] / s[-1]) if bool(s[-1] > 0) else math.inf


def _inverse(R: torch.Tensor) -> torch.Tensor:
    """R^{-1}, or the pseudo-inverse where R is (numerically) singular and ``inv`` would fail or explode."""
    return torch.linalg.inv(R) if _condition(R) <= _COLLAPSED else torch.linalg.pinv(R)


def _real_basis(vals: torch.Tensor, vecs: torch.Tensor) -> tuple[torch.Tensor, str]:
    """A real [r, r] basis from ``torch.linalg.eig``'s eigenvectors of a real matrix.

    Real eigenvalues keep their (real) eigenvectors. A complex pair ``v, conj(v)`` spans the same real plane as
    ``Re v, Im v``: the first column of the pair gets ``Re v`` and its partner ``Im v``. Taking ``Re`` of both
    (``vecs.real``) would give two equal columns, a singular R. LAPACK returns exact conjugate pairs with
    the positive imaginary part first; anything else keeps ``vecs.real``."""
    R = vecs.real.clone()
    im = vals.imag
    if not bool((im != 0).any()):
        return R, "eigenvectors"
    partners = [j for j in range(len(vals)) if im[j] < 0]
    firsts = [i for i in range(len(vals)) if im[i] > 0]
    if len(partners) != len(firsts):
        return R, "eigenvectors"
    for i in firsts:
        j = min(partners, key=lambda k: (float((vals[k] - vals[i].conj()).abs()), abs(k - i)))
        partners.remove(j)
        R[:, j] = vecs[:, i].imag
    return R, "real_basis"


def _joint_eigenvectors(Bt: torch.Tensor, R: torch.Tensor, iters: int,
                        tol: float = 1e-12) -> tuple[torch.Tensor, Refinement, int]:
    """Refine common eigenvectors R [r, r] of the operators Bt [V, r, r] by alternating least squares.

    With ``D[x, h] = (R^{-1} Bt_x R)[h, h]`` fixed, column h becomes the unit vector minimising
    ``sum_x ||(Bt_x - D[x, h] I) r_h||^2``: the smallest eigenvector of a Gram matrix that pools every
    token's operator. One random combination's eigenvectors are at the mercy of its smallest eigengap;
    the pooled fit averages the sampling noise of all V operators. Exact eigenvectors are a fixed point.

    Each column is updated on its own, so two columns can be drawn to the same eigenvector (seen on sampled
    moments; then R is singular). A sweep that leaves R with condition number above ``_COLLAPSED`` is
    discarded and the estimate before it kept. Returns (R with unit columns, what happened, sweeps kept):
    "converged" (a sweep moved no entry by ``tol``), "iterations_exhausted" or "kept_last_good"."""
    r = R.shape[0]
    eye = torch.eye(r, dtype=Bt.dtype, device=Bt.device)
    gram = torch.einsum("xij,xik->jk", Bt, Bt)  # sum_x Bt_x^T Bt_x
    bsym = Bt + Bt.transpose(1, 2)
    R = R / R.norm(dim=0)
    status: Refinement = "iterations_exhausted"
    sweeps = 0
    for _ in range(iters):
        D = torch.einsum("hr,xrq,qh->xh", _inverse(R), Bt, R)  # [V, r]
        G = gram - torch.einsum("xh,xij->hij", D, bsym) + (D * D).sum(0)[:, None, None] * eye  # [r, r, r]
        new = torch.linalg.eigh(G).eigenvectors[:, :, 0].T  # column h: smallest eigenvector of G[h]
        new = new * torch.where((new * R).sum(0) < 0, -1.0, 1.0)  # eigh's sign is arbitrary: keep each column's
        if not _condition(new) <= _COLLAPSED:
            status = "kept_last_good"
            break
        done = bool((new - R).abs().max() < tol)
        R = new
        sweeps += 1
        if done:
            status = "converged"
            break
    return R, status, sweeps


def _stochastic(M: torch.Tensor, eps: float) -> torch.Tensor:
    """Rows clipped below at ``eps`` and normalised; a non-finite entry (a degenerate estimate) counts as 0."""
    M = torch.nan_to_num(M, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(eps)
    return M / M.sum(-1, keepdim=True)


@dataclass(frozen=True)
class EmissionRecovery:
    """What :func:`fit_emission_form` returns: the parameters and how the eigenvectors behind them were found.

    start: "eigenvectors" (the random combination's eigenvectors were real), "real_basis" (it had complex
    pairs, replaced by their real and imaginary parts), "orthogonalised" (its eigenvectors were nearly
    parallel, a repeated eigenvalue: replaced by an orthonormal basis of their span, completed) or "complex"
    (``refine_iters = 0``: the plain method keeps the complex eigenvectors).
    refinement: "converged", "iterations_exhausted" (``refine_iters`` sweeps ran without converging),
    "kept_last_good" (a sweep collapsed two columns onto one eigenvector; the estimate before it was kept)
    or "unrefined" (``refine_iters = 0``). sweeps: refinement sweeps kept. condition: condition number of the
    final R with unit columns (above ``1e8`` its pseudo-inverse was used).
    """

    params: EmissionForm
    refinement: Refinement
    start: str
    sweeps: int
    condition: float


def fit_emission_form(moments: Moments, rank: int, *, generator: torch.Generator,
                      eps: float = 1e-8, refine_iters: int = 50) -> EmissionRecovery:
    """Estimate (mu, A, C) of a ``rank``-state emission-form HMM (``x_t ~ C[z_t]``, ``z_{t+1} ~ A[z_t]``).

    Given the middle state h of a triple, the three tokens are independent, so with
    ``M1[i, h] = P(x_t = i | h)``, ``M3[k, h] = P(x_{t+2} = k | h)`` and ``w = P(h)``:
    ``P3x1[x] = M3 diag(w) diag(C[:, x]) M1^T`` and ``P31 = M3 diag(w) M1^T``. With ``P31 = U S V^T``
    (top ``rank`` singular triples), ``Bt_x = U^T P3x1[x] V S^{-1} = R diag(C[:, x]) R^{-1}``,
    ``R = U^T M3``: every Bt_x is diagonalised by the same R. R is taken from the eigenvectors of a
    random combination ``sum_x eta_x Bt_x`` (eta ~ N(0, I) from ``generator``; a complex pair, which sampled
    moments can give, contributes its real and imaginary parts), refined jointly over all V operators
    (``refine_iters`` alternating least-squares sweeps, :func:`_joint_eigenvectors`), and
    ``C[h, x] = (R^{-1} Bt_x R)[h, h]``: the emissions of the middle state (AHK 2012).
    Transitions from pairs: ``P21^T = C^T diag(mu) A C``, so ``J = (C^T)^+ P21^T C^+ = diag(mu) A``.
    Projection to valid parameters: real parts, entries clipped below at ``eps``, rows of C and of J
    renormalised (A), ``mu`` = the clipped row sums of J, normalised (the stationary distribution
    the moments imply). Exact (up to a permutation of states) for exact moments of an emission-form
    HMM with rank = S <= V, C of rank S and A invertible.
    Over windows of h tokens (``moments.window > 1``) the past and future windows play the roles of x_t and
    x_{t+2}, so C comes out the same way for any S <= V^h, also overcomplete (V < S); there C^+ does not
    exist, and A comes from the observable operators instead (:func:`_transitions_from_operators`), mu as
    A's stationary distribution. With single tokens in the overcomplete case only a rank-V model can be
    returned, which is not the true one.
    Degenerate inputs (repeated eigenvalues, columns collapsing in the refinement, a singular R) do not raise:
    the result is always a valid HMM, and :class:`EmissionRecovery` says which fallback was taken.
    """
    V, h = moments.n_tokens, moments.window
    rank = _check_rank(rank, V, h)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if isinstance(refine_iters, bool) or not isinstance(refine_iters, int) or refine_iters < 0:
        raise ValueError(f"refine_iters must be a non-negative integer, got {refine_iters!r}")
    if not (isinstance(eps, (int, float, np.floating)) and 0.0 < eps < 1.0 / V):
        raise ValueError(f"eps must lie in (0, 1/V) = (0, {1.0 / V:g}), got {eps!r}")
    U, s, Vh = torch.linalg.svd(moments.P31)
    U, s, Vr = U[:, :rank], s[:rank], Vh[:rank].T  # [V, r], [r], [V, r]
    if not bool(s[-1] > 0):
        raise ValueError(f"P31 has rank below {rank}: the moments cannot identify {rank} states")
    Bt = (U.T @ moments.P3x1 @ Vr) / s  # [V, r, r]: U^T P3x1[x] V diag(1/s)
    eta = torch.randn(V, generator=generator, dtype=torch.float64).to(Bt.device)
    vals, R = torch.linalg.eig(torch.einsum("x,xrq->rq", eta, Bt))  # [r, r] complex eigenvectors
    if refine_iters:
        R, start = _real_basis(vals, R)  # the true ones are real
        if not _condition(R) <= _COLLAPSED:  # a repeated eigenvalue: no direction within its eigenspace is preferred
            R, start = torch.linalg.qr(R).Q, "orthogonalised"
        R, refinement, sweeps = _joint_eigenvectors(Bt, R, refine_iters)
        C = torch.einsum("hr,xrq,qh->hx", _inverse(R), Bt, R)  # [r, V]
    else:  # the plain method: one combination's (possibly complex) eigenvectors
        start, refinement, sweeps = "complex", "unrefined", 0
        C = torch.einsum("hr,xrq,qh->hx", _inverse(R), Bt.to(R.dtype), R).real
    condition = _condition(R)
    C = _stochastic(C, eps)
    if h == 1:
        J = torch.linalg.pinv(C.T) @ moments.P21.T @ torch.linalg.pinv(C)  # [r, r] ~ diag(mu) A
        J = torch.nan_to_num(J, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(eps)
        A = J / J.sum(1, keepdim=True)
        mu = J.sum(1) / J.sum()
        params = EmissionForm(mu, A, C)
    else:
        A = _transitions_from_operators(moments, U, R, eps)
        params = EmissionForm(_stationary(A, eps), A, C)
    return EmissionRecovery(params, refinement, start, sweeps, condition)


def _transitions_from_operators(moments: Moments, U: torch.Tensor, R: torch.Tensor, eps: float) -> torch.Tensor:
    """A from the HKZ operators when C cannot be inverted (V < S, windows).

    In the basis U, the HKZ operators are ``B_x = Q T[x]^T Q^{-1}`` with ``Q = U^T O`` and ``T[x] = diag(C[:, x]) A``,
    while the eigenvectors of AHK's operators are ``R = U^T O A^T D`` for an unknown positive diagonal D (the
    future window after the middle token is ``O A^T``). So ``R^{-1} (sum_x B_x) R = D^{-1} A^T D = X``, and as A's
    rows sum to 1, ``d = diag(D)`` is the eigenvector of ``X^T`` for the eigenvalue 1: ``A = D^{-1} X^T D``.
    Needs A invertible. Projected to a stochastic matrix as in :func:`fit_emission_form`."""
    B = (U.T @ moments.P31) @ torch.linalg.pinv(U.T @ moments.P21)  # sum_x B_x, [r, r]
    X = (_inverse(R) @ B.to(R.dtype) @ R).real
    d = _eigenvector_for_one(X.T)
    if not bool(torch.isfinite(d).all() and (d != 0).all()):
        d = torch.ones_like(d)  # no usable scaling: D = I
    return _stochastic(X.T * d[None, :] / d[:, None], eps)


def _eigenvector_for_one(M: torch.Tensor) -> torch.Tensor:
    """The real part of M's eigenvector for the eigenvalue nearest 1, signed to a non-negative sum.

    If 1 is (nearly) repeated, as for a reducible chain, eig's order would pick one of the tied eigenvectors
    by accident: the sum of the tied ones is taken instead, positive wherever they are."""
    vals, vecs = torch.linalg.eig(M)
    dist = (vals - 1).abs()
    tied = dist <= dist.min() + 1e-9
    v = vecs[:, tied].real
    v = v * torch.where(v.sum(0) < 0, -1.0, 1.0)
    return v.sum(1)


def _stationary(A: torch.Tensor, eps: float) -> torch.Tensor:
    return _stochastic(_eigenvector_for_one(A.T), eps)
