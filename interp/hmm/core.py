"""The HMM object: a validated token-labelled transition tensor.

An HMM with S hidden states and V tokens is ``T[x, i, j] = P(emit x, move to j | in i)``.
Every number is float64; the object is immutable (``to`` returns a copy on another device).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import torch

ROW_SUM_TOL = 1e-9
# Relative tolerance for detecting that T factorises into an emission form.
_FACTOR_RTOL = 1e-12

EmissionSide = Literal["source", "destination"]


def _as_float64(x, name: str, device=None) -> torch.Tensor:
    # Lists of Python floats would become float32 under as_tensor: go through numpy (float64).
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), device=device)
    t = t.to(device) if device is not None else t
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must be a real array, got dtype {t.dtype}")
    return t.to(torch.float64)


def _check_finite_nonneg(t: torch.Tensor, name: str) -> None:
    if not torch.isfinite(t).all():
        bad = torch.nonzero(~torch.isfinite(t))[0].tolist()
        raise ValueError(f"{name} is not finite: entry {tuple(bad)} is {t[tuple(bad)].item()}")
    if (t < 0).any():
        bad = torch.nonzero(t < 0)[0].tolist()
        raise ValueError(f"{name} is not non-negative: entry {tuple(bad)} is {t[tuple(bad)].item()}")


def _check_stochastic_rows(rows: torch.Tensor, name: str, what: str = "row", source=None) -> None:
    """``rows`` is (S, K): each row must sum to 1 within ROW_SUM_TOL. ``source`` is the caller's
    original input, used to point out low-precision tensors."""
    sums = rows.sum(-1)
    err = (sums - 1).abs()
    if (err > ROW_SUM_TOL).any():
        i = int(torch.argmax(err))
        low = isinstance(source, torch.Tensor) and source.is_floating_point() and source.dtype != torch.float64
        raise ValueError(
            f"{name} is not stochastic: {what} {i} sums to {sums[i].item():.17g}, not 1 "
            f"(tolerance {ROW_SUM_TOL:g})" + (f"; it was given as {source.dtype}: pass float64" if low else "")
        )


def check_distribution(p, name: str, size: int | None = None, device=None) -> torch.Tensor:
    """Validate a probability vector; return it as float64."""
    t = _as_float64(p, name, device)
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if size is not None and t.shape[0] != size:
        raise ValueError(f"{name} must have {size} entries, got {t.shape[0]}")
    _check_finite_nonneg(t, name)
    _check_stochastic_rows(t[None], name, what="vector", source=p)
    return t


def check_stochastic_matrix(m, name: str, shape: tuple[int, int] | None = None, device=None) -> torch.Tensor:
    """Validate a row-stochastic matrix; return it as float64."""
    t = _as_float64(m, name, device)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(t.shape)}")
    _check_finite_nonneg(t, name)
    _check_stochastic_rows(t, name, source=m)
    return t


def stationary_distribution(smat: torch.Tensor) -> torch.Tensor:
    """Left eigenvector of the row-stochastic ``smat`` (S, S) for eigenvalue 1, normalised.

    Raises ValueError when the chain has more than one stationary distribution.
    """
    s = smat.shape[0]
    m = (smat - torch.eye(s, dtype=smat.dtype, device=smat.device)).T.cpu().numpy()
    # Null space of (Smat - I)^T via SVD: its dimension is the number of closed classes.
    _, sv, vh = np.linalg.svd(m)
    null = vh[sv < 1e-10 * max(1.0, sv[0])] if s > 1 else vh
    if null.shape[0] != 1:
        raise ValueError(
            f"the transition matrix has {null.shape[0]} stationary distributions (it is reducible); "
            "pass an explicit initial distribution"
        )
    v = null[0]
    v = v / v.sum()
    # Polish with a few power steps to remove SVD round-off, keeping exact zeros non-negative.
    pi = torch.as_tensor(np.clip(v, 0.0, None), dtype=torch.float64, device=smat.device)
    for _ in range(3):
        pi = pi @ smat
        pi = pi / pi.sum()
    return pi


@dataclass(frozen=True)
class EmissionForm:
    """The emission (Moore) form used by hmmlearn and Belief Nets.

    ``z_1 ~ mu``, ``x_t ~ C[z_t, :]``, ``z_{t+1} ~ A[z_t, :]``.
    mu: (S,), A: (S, S), C: (S, V).
    """

    mu: torch.Tensor
    A: torch.Tensor
    C: torch.Tensor

    def to_hmm(self) -> "HMM":
        return HMM.from_emission(self.mu, self.A, self.C)


class TokenMatrices:
    """What an HMM and a generalised HMM share: (V, S, S) token matrices ``T`` and their sizes."""

    _T: torch.Tensor
    name: str

    @property
    def T(self) -> torch.Tensor:
        """(V, S, S) token matrices (a read-only view)."""
        return self._T

    @property
    def n_tokens(self) -> int:
        return self._T.shape[0]

    @property
    def n_states(self) -> int:
        return self._T.shape[1]

    @property
    def device(self) -> torch.device:
        return self._T.device

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, n_states={self.n_states}, n_tokens={self.n_tokens}, "
                f"device={self.device})")


class HMM(TokenMatrices):
    """A hidden Markov model in token-labelled form.

    Args:
        T: (V, S, S) array, ``T[x, i, j] = P(x, j | i)``; validated (finite, non-negative,
            ``sum_x sum_j T[x, i, j] = 1`` within 1e-9 for every i).
        initial: (S,) distribution of the state before the first token; default the
            stationary distribution ``pi``.
        name: a label used in configs and reports.
    """

    def __init__(self, T, initial=None, *, name: str = "hmm", device=None):
        source, T = T, _as_float64(T, "T", device)
        if T.ndim != 3 or T.shape[1] != T.shape[2]:
            raise ValueError(f"T must have shape (V, S, S), got {tuple(T.shape)}")
        if T.shape[0] == 0 or T.shape[1] == 0:
            raise ValueError(f"T must be non-empty, got shape {tuple(T.shape)}")
        _check_finite_nonneg(T, "T")
        # Row i of the flattened (S, V*S) view is the joint distribution of (x, j) given i.
        _check_stochastic_rows(T.permute(1, 0, 2).reshape(T.shape[1], -1), "T", what="state (row)", source=source)
        self._T = T.clone()  # the object owns its numbers: later edits by the caller cannot reach them
        self._initial = (None if initial is None
                         else check_distribution(initial, "initial", T.shape[1], T.device).clone())
        self.name = name
        self.params: dict = {}  # the parameters get_process built it from

    # ----------------------------------------------------------------- basics

    def to(self, device) -> "HMM":
        """This HMM on ``device``: itself when already there (it is immutable, and keeps its caches)."""
        if torch.device(device) == self.device or (torch.device(device).type == self.device.type == "cpu"):
            return self
        init = None if self._initial is None else self._initial.to(device)
        out = HMM.__new__(HMM)
        out._T, out._initial, out.name, out.params = self._T.to(device), init, self.name, dict(self.params)
        return out

    @cached_property
    def transition_matrix(self) -> torch.Tensor:
        """(S, S) net transition matrix ``Smat = sum_x T[x]``."""
        return self._T.sum(0)

    @cached_property
    def emission_matrix(self) -> torch.Tensor:
        """(S, V) ``P(next token = x | state i) = sum_j T[x, i, j]``."""
        return self._T.sum(2).T.contiguous()

    @cached_property
    def pi(self) -> torch.Tensor:
        """(S,) stationary distribution of ``Smat``."""
        return stationary_distribution(self.transition_matrix)

    @property
    def initial(self) -> torch.Tensor:
        """(S,) distribution of the hidden state before the first token."""
        return self.pi if self._initial is None else self._initial

    @property
    def is_stationary(self) -> bool:
        """True when the process starts in its stationary distribution."""
        return self._initial is None or bool(torch.allclose(self._initial, self.pi, atol=1e-12, rtol=0))

    # ----------------------------------------------------- emission structure
    @cached_property
    def factorization(self) -> tuple[EmissionSide, torch.Tensor, torch.Tensor] | None:
        """``("source", A, C)`` if ``T[x, i, j] = C[i, x] A[i, j]``, ``("destination", A, C)`` if
        ``T[x, i, j] = A[i, j] C[j, x]``, else None. Filtering uses it to do one (S, S) product per step."""
        T = self._T
        smat = self.transition_matrix
        scale = T.abs().max()
        # Source: emission depends on the current state only.
        c_src = self.emission_matrix  # (S, V)
        if torch.allclose(T, c_src.T[:, :, None] * smat[None], rtol=0, atol=_FACTOR_RTOL * scale):
            return "source", smat, c_src
        # Destination: emission depends on the state moved to: C[j, x] = T[x, i, j] / Smat[i, j].
        col = smat.sum(0)  # any positive column weights give the same C when the form holds
        with torch.no_grad():
            c_dst = (T.sum(1) / torch.where(col > 0, col, 1.0)).T  # (S, V)
        rows = c_dst.sum(1)
        c_dst = torch.where((rows > 0)[:, None], c_dst / torch.where(rows > 0, rows, 1.0)[:, None],
                            torch.full_like(c_dst, 1.0 / self.n_tokens))
        if torch.allclose(T, smat[None] * c_dst.T[:, None, :], rtol=0, atol=_FACTOR_RTOL * scale):
            return "destination", smat, c_dst
        return None

    # -------------------------------------------------------- emission form
    @classmethod
    def from_emission(cls, mu, A, C, *, name: str = "hmm", device=None) -> "HMM":
        """Exact conversion from (mu, A, C): ``T[x, i, j] = C[i, x] A[i, j]``, ``initial = mu``."""
        A = check_stochastic_matrix(A, "A", device=device)
        s = A.shape[0]
        if A.shape[1] != s:
            raise ValueError(f"A must be square, got shape {tuple(A.shape)}")
        C = check_stochastic_matrix(C, "C", device=A.device)
        if C.shape[0] != s:
            raise ValueError(f"C must have {s} rows (one per state), got shape {tuple(C.shape)}")
        mu = check_distribution(mu, "mu", s, A.device)
        T = C.T[:, :, None] * A[None, :, :]
        return cls(T, initial=mu, name=name)

    def to_emission(self) -> EmissionForm:
        """Exact conversion to an emission form (mu, A, C) generating the same token process.

        - ``T = C[i, x] A[i, j]`` (source form): the same S states, ``mu = initial``.
        - ``T = A[i, j] C[j, x]`` (destination form, e.g. Mess3): the same S states with
          ``mu = initial @ A`` (the emitting state is the one moved to).
        - otherwise: V*S edge states ``(x, j)`` (a token and the state it led to), flattened as
          ``x * S + j``; each emits its own ``x`` and moves to ``(x', j')`` with ``T[x', j, j']``.
        """
        f = self.factorization
        if f is not None:
            side, A, C = f
            mu = self.initial if side == "source" else self.initial @ A
            return EmissionForm(mu.clone(), A.clone(), C.clone())
        V, S = self.n_tokens, self.n_states
        nxt = self._T.permute(1, 0, 2).reshape(S, V * S)  # (S, V*S): row j -> edge (x', j')
        A = nxt.repeat(V, 1)  # (V*S, V*S): row (x, j) -> nxt[j]
        C = torch.zeros(V * S, V, dtype=torch.float64, device=self.device)
        C[torch.arange(V * S, device=self.device), torch.arange(V, device=self.device).repeat_interleave(S)] = 1.0
        mu = (self.initial @ self._T.permute(1, 0, 2).reshape(S, V * S))  # first edge
        return EmissionForm(mu, A, C)
