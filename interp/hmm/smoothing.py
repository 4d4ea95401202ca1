"""Forward-backward smoothing in emission form: log-likelihoods, expected counts and logit gradients.

In the emission form (mu, A, C) (``z_0 ~ mu``, ``x_t ~ C[z_t, :]``, ``z_{t+1} ~ A[z_t, :]``) the expected counts
of a sequence x are the posterior expectations that Baum-Welch's E-step accumulates:

    N_mu[i]   = P(z_0 = i | x)
    N_A[i, j] = sum_t P(z_t = i, z_{t+1} = j | x)
    N_C[i, v] = sum_{t: x_t = v} P(z_t = i | x)

They are also the gradient of the log-likelihood: for a row-softmax parameter P = softmax(W) (mu, A or C),

    d log P(x) / d W[i, j] = N[i, j] - P[i, j] sum_j' N[i, j'],

which :func:`log_likelihood_gradient` uses to train a Belief Net without autograd. The log-likelihood is the
forward filter's (:func:`interp.hmm.log_likelihood` of ``EmissionForm.to_hmm()``, first token included).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from interp.hmm.core import EmissionForm
from interp.hmm.filtering import check_token_array


class ExpectedCounts(NamedTuple):
    """log_likelihood (n,): ``log P(x_0..x_{L-1})`` per sequence; initial (S,), transitions (S, S) and
    emissions (S, V): the expected counts N_mu, N_A, N_C summed over the sequences."""

    log_likelihood: torch.Tensor
    initial: torch.Tensor
    transitions: torch.Tensor
    emissions: torch.Tensor


class LogitGradient(NamedTuple):
    """log_likelihood (n,) per sequence; mu (S,), A (S, S), C (S, V): the gradient of their sum with respect to
    the softmax logits of each parameter."""

    log_likelihood: torch.Tensor
    mu: torch.Tensor
    A: torch.Tensor
    C: torch.Tensor


@torch.no_grad()
def expected_counts(params: EmissionForm, tokens: torch.Tensor) -> ExpectedCounts:
    """Expected counts and log-likelihoods of ``tokens`` (n, L) under ``params`` by a scaled forward-backward
    pass, in the parameters' dtype and on their device. Every sequence must have positive probability (true
    for softmax parameters, which have no zeros).

    Tuned for the Belief Net's training loop: one time-major (L, n, S) array of forward beliefs (each step reads
    and writes contiguous rows), each step's emission rows gathered from the small (V, S) table, the normaliser
    as an extra column of the product, and the counts accumulated on the way back. Autograd through the same
    L sequential steps is two orders of magnitude slower (it allocates and saves every intermediate)."""
    mu, A, C = params.mu, params.A, params.C
    S, V = C.shape
    tokens = check_token_array(tokens, V).to(A.device)
    n, L = tokens.shape
    dt, dev = A.dtype, A.device
    tok = tokens.T.contiguous()  # [L, n]: each step reads contiguous rows
    CT = C.T.contiguous()  # [V, S]
    a_ext = torch.cat([A, torch.ones(S, 1, dtype=dt, device=dev)], 1)  # last column: row sums
    alpha = torch.empty(L, n, S, dtype=dt, device=dev)  # normalised forward beliefs, time-major
    r = torch.empty(L, n, dtype=dt, device=dev)  # 1 / c_t
    u = torch.empty(n, S + 1, dtype=dt, device=dev)
    e = torch.empty(n, S, dtype=dt, device=dev)
    prior = mu.expand(n, S)
    for t in range(L):
        torch.index_select(CT, 0, tok[t], out=e)
        w = torch.mul(prior, e, out=alpha[t])
        torch.mm(w, a_ext, out=u)
        torch.reciprocal(u[:, S], out=r[t])
        w.mul_(r[t, :, None])
        prior = u[:, :S].mul_(r[t, :, None])
    n_A = torch.zeros(S, S, dtype=dt, device=dev)
    n_C = torch.zeros(V, S, dtype=dt, device=dev)
    beta = torch.ones(n, S, dtype=dt, device=dev)
    nxt = torch.empty(n, S, dtype=dt, device=dev)
    AT = A.T.contiguous()
    n_C.index_add_(0, tok[L - 1], alpha[L - 1])
    for t in range(L - 2, -1, -1):
        torch.index_select(CT, 0, tok[t + 1], out=e)
        torch.mul(e, beta, out=nxt).mul_(r[t + 1, :, None])
        n_A.addmm_(alpha[t].T, nxt)
        torch.mm(nxt, AT, out=beta)
        g = e  # reuse: gamma_t
        torch.mul(alpha[t], beta, out=g)
        n_C.index_add_(0, tok[t], g)
    n_A = n_A * A
    n_mu = g.sum(0) if L > 1 else alpha[0].sum(0)
    return ExpectedCounts(-torch.log(r).sum(0), n_mu, n_A, n_C.T)


def softmax_gradient(counts: ExpectedCounts, params: EmissionForm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of the summed log-likelihood with respect to the logits of (mu, A, C), where ``params`` are
    their row softmaxes: ``N - P * N.sum(-1)`` per parameter."""
    pairs = ((counts.initial, params.mu), (counts.transitions, params.A), (counts.emissions, params.C))
    return tuple(N - P * N.sum(-1, keepdim=True) for N, P in pairs)


def log_likelihood_gradient(mu_logits: torch.Tensor, A_logits: torch.Tensor, C_logits: torch.Tensor,
                            tokens: torch.Tensor) -> LogitGradient:
    """Log-likelihoods of ``tokens`` (n, L) under the emission form ``softmax`` of each logit tensor (rows), and
    the exact gradient of their sum with respect to the three logit tensors, in the logits' dtype."""
    with torch.no_grad():
        params = EmissionForm(*(torch.softmax(x, -1) for x in (mu_logits, A_logits, C_logits)))
    counts = expected_counts(params, tokens)
    return LogitGradient(counts.log_likelihood, *softmax_gradient(counts, params))
