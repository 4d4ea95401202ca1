"""The first-order (constrained) belief update's pieces, from the HMM alone: the token vectors ``v[x]`` and
``Smat`` on zero-sum vectors (its spectrum). ``interp.interpret.construction`` builds the construction from them and
``interp.hmm.heads`` counts the softmax heads it needs."""

from __future__ import annotations

import math

import torch

from interp.hmm.core import HMM
from interp.hmm.ghmm import GHMM


def zero_sum_basis(n_states: int, w: torch.Tensor | None = None) -> torch.Tensor:
    """[S, S-1] orthonormal columns spanning {u : u @ 1 = 0}, or {u : u @ w = 0} given a GHMM's ``w``."""
    if w is not None:  # the first column of Q spans w, the others its orthogonal complement
        eye = torch.eye(n_states, dtype=torch.float64)
        return torch.linalg.qr(torch.cat([w.cpu().double()[:, None], eye], 1)).Q[:, 1:n_states]
    d = torch.eye(n_states, dtype=torch.float64)[:, : n_states - 1] - torch.eye(n_states, dtype=torch.float64)[:, -1:]
    q, _ = torch.linalg.qr(d)
    return q


def normaliser(hmm: HMM | GHMM) -> torch.Tensor | None:
    """A GHMM's ``w`` (beliefs and probabilities are normalised by it); None for an HMM (ones)."""
    return hmm.w if isinstance(hmm, GHMM) else None


def token_vectors(hmm: HMM | GHMM) -> torch.Tensor:
    """[V, S] ``v[x] = pi @ Tn[x] - pi`` with ``Tn[x] = T[x] / (pi @ T[x] @ 1)`` (``@ w`` for a GHMM).

    ``pi + v[x]`` is the exact belief after one token ``x`` from the stationary distribution, so every
    row sums to zero (``v[x] @ w = 0`` for a GHMM). Tokens with zero stationary probability get ``v[x] = 0``."""
    pi = hmm.pi
    joint = torch.einsum("i,xij->xj", pi, hmm.T)  # [V, S]: pi @ T[x]
    w = normaliser(hmm)
    prob = joint.sum(1) if w is None else joint @ w  # [V]: P(x) under pi
    safe = torch.where(prob > 0, prob, torch.ones_like(prob))
    return torch.where((prob > 0)[:, None], joint / safe[:, None] - pi, torch.zeros_like(joint))


def zero_sum_operator_eigenvalues(hmm: HMM) -> torch.Tensor:
    """[S-1] complex128 eigenvalues of ``u -> u @ Smat`` restricted to the zero-sum subspace {u : u @ 1 = 0}
    (Smat is row-stochastic, so it maps that subspace to itself; for a GHMM the subspace {u : u @ w = 0}, which
    ``Smat w = w`` keeps). Sorted by modulus, largest first, then by angle. Mess3(x, a): ``1 - 3x`` twice;
    RRXOR: 0, 0 and ``-1/2 +- i sqrt(3)/2``."""
    q = zero_sum_basis(hmm.n_states, normaliser(hmm))
    restricted = q.T @ hmm.transition_matrix.cpu() @ q  # [S-1, S-1], acting on row coordinates
    ev = torch.linalg.eigvals(restricted).to(torch.complex128)
    values = [complex(z) for z in ev.tolist()]
    order = sorted(range(len(values)),
                   key=lambda i: (-round(abs(values[i]), 12), math.atan2(values[i].imag, values[i].real)))
    return ev[order]
