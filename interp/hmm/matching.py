"""Matching the states of a learned HMM to the true one, and the parameter errors after matching.

States are only identified up to a permutation. The matching is the assignment (Hungarian algorithm,
scipy's ``linear_sum_assignment``) that minimises the total squared distance between emission rows;
transition rows live in coordinates that depend on the permutation itself, so they are compared only
after the emission-based matching.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from interp.hmm.core import EmissionForm


def match_states(C_true: torch.Tensor, C_hat: torch.Tensor) -> torch.Tensor:
    """[S] ``perm`` with learned state ``perm[i]`` matched to true state ``i`` (C: [S, V] emission rows)."""
    if C_true.shape != C_hat.shape:
        raise ValueError(f"emission matrices differ in shape: {tuple(C_true.shape)} vs {tuple(C_hat.shape)}")
    # differences, not ||a||^2 + ||b||^2 - 2 a.b through BLAS: equal rows cost exactly the same, so ties
    # (a padded estimate's copies of a state) are broken by index alone, on every machine
    cost = torch.cdist(C_true.double(), C_hat.double(), compute_mode="donot_use_mm_for_euclid_dist") ** 2
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(cols[rows.argsort()], dtype=torch.long)


def permute(em: EmissionForm, perm: torch.Tensor) -> EmissionForm:
    """The same HMM with its states reordered: new state i is old state ``perm[i]``."""
    return EmissionForm(em.mu[perm], em.A[perm][:, perm], em.C[perm])


def parameter_errors(true: EmissionForm, learned: EmissionForm) -> dict:
    """Frobenius errors of A and C (and L1 of mu) after matching the learned states to the true ones."""
    perm = match_states(true.C, learned.C)
    m = permute(learned, perm)
    return {
        "perm": perm.tolist(),
        "A_frobenius": float(torch.linalg.matrix_norm(m.A.double() - true.A.double())),
        "C_frobenius": float(torch.linalg.matrix_norm(m.C.double() - true.C.double())),
        "mu_l1": float((m.mu.double() - true.mu.double()).abs().sum()),
        "A_max_abs": float((m.A.double() - true.A.double()).abs().max()),
        "C_max_abs": float((m.C.double() - true.C.double()).abs().max()),
    }
