"""Generalised HMMs (GHMMs): token matrices of any sign, normalised by a right eigenvector instead of ones.

A GHMM with S states and V tokens is a tensor ``T[x]`` (V, S, S) whose net matrix ``Smat = sum_x T[x]`` has
eigenvalue 1, with right eigenvector ``w`` (``Smat w = w``) and left eigenvector ``pi`` (``pi Smat = pi``,
``pi w = 1``). Starting from ``eta_0 = initial`` (default ``pi``):

    P(x_1..x_n) = eta_0 T[x_1] ... T[x_n] w,   P(x | eta) = eta T[x] w,   eta' = eta T[x] / (eta T[x] w).

An HMM is the case ``w = 1`` with non-negative entries; any HMM under an invertible change of basis B
(``T[x] -> B^-1 T[x] B``, ``w -> B^-1 1``, ``initial -> initial B``) is a GHMM with the same word probabilities.
The matrices describe a process only when no word has negative probability; construction checks every word
up to a depth (:data:`CHECK_DEPTH`).

The module-level functions of :mod:`interp.hmm` (filtering, sampling, the MSP, loss bounds) dispatch here for a
:class:`GHMM`: a plain torch path (CPU or GPU, batched) with no compiled kernels.
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
import torch

from interp.hmm.core import ROW_SUM_TOL, HMM, TokenMatrices, _as_float64
from interp.hmm.processes import register

# Smat counts as having eigenvalue 1 when it lies within EIGEN_TOL * max(1, ||Smat||_2) (spectral norm) of a
# matrix that has it: the smallest singular value of Smat - I is exactly that distance. The tolerance is the
# one HMM rows get (ROW_SUM_TOL): an HMM whose rows sum to 1 within it has its Perron eigenvalue that close to 1.
EIGEN_TOL = ROW_SUM_TOL
# Left and right unit eigenvectors whose overlap is below this belong to a repeated (or nearly repeated)
# eigenvalue 1: pi w = 1 cannot be met without huge, unreliable numbers.
DEFECT_TOL = 1e-6
# A conditional next-token probability below -NEG_TOL is a negative word probability (same tolerance as HMM rows).
NEG_TOL = ROW_SUM_TOL
# |P(x | eta)| at or below ZERO_PROB is round-off around an impossible token: signed products rarely cancel
# to an exact 0, and dividing by their remainder would make a meaningless belief.
ZERO_PROB = 1e-12
CHECK_DEPTH = 6  # words checked for negative probability, up to this many tokens ...
CHECK_MAX_WORDS = 1 << 16  # ... while a depth holds at most this many possible words
_ALL_TOKENS_MAX = 256  # up to this V*S a filter step multiplies each belief by all V matrices at once
_MAX_WORDS = 1 << 22  # word_probabilities refuses to list more words than this


def _fmt(z) -> str:
    z = complex(z)
    return f"{z.real:.6g}" if z.imag == 0 else f"{z.real:.6g}{z.imag:+.6g}i"


def _unit_eigenvectors(smat: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(right, left, tol): unit null vectors of ``Smat - I``; raise when eigenvalue 1 is missing or repeated."""
    s = smat.shape[0]
    tol = EIGEN_TOL * max(1.0, float(np.linalg.norm(smat, 2)))
    u, sv, vh = np.linalg.svd(smat - np.eye(s))
    near = int((sv <= tol).sum())
    if near == 0:
        ev = np.linalg.eigvals(smat)
        nearest = ev[np.argmin(np.abs(ev - 1))]
        raise ValueError(f"T: Smat = sum_x T[x] has no eigenvalue 1 (the nearest is {_fmt(nearest)}, "
                         f"{sv[-1]:.3g} away in norm; tolerance {tol:.3g}): rescale T so that its largest one is 1")
    if near > 1:
        raise ValueError(f"T: eigenvalue 1 of Smat = sum_x T[x] is repeated ({near} independent eigenvectors): "
                         "w and pi are not unique (the matrices hold several separate processes)")
    right, left = vh[-1], u[:, -1]
    overlap = abs(float(left @ right))
    if overlap < DEFECT_TOL:
        raise ValueError(f"T: eigenvalue 1 of Smat = sum_x T[x] is repeated or nearly so (its left and right "
                         f"eigenvectors are orthogonal: overlap {overlap:.2g} < {DEFECT_TOL:g}); w and pi are not "
                         "defined")
    return right, left, tol


def _first_negative_word(T: torch.Tensor, w: torch.Tensor, start: torch.Tensor, depth: int, max_words: int):
    """(word, P(word), P(last token | rest), depth checked) for the first word (shortest, then lexicographic)
    with a conditional probability below -NEG_TOL, or (None, ..., depth checked). Words through an impossible
    token (|P| <= ZERO_PROB) are not extended."""
    V, S = T.shape[0], T.shape[1]
    t_flat = T.permute(1, 0, 2).reshape(S, V * S)
    eta, prob = start[None], torch.ones(1, dtype=torch.float64)
    words = torch.zeros(1, 0, dtype=torch.int64)
    for d in range(1, depth + 1):
        if eta.shape[0] * V > max_words:
            return None, 0.0, 0.0, d - 1
        u = (eta @ t_flat).view(-1, V, S)
        p = u @ w  # (m, V): rows are the live prefixes in lexicographic order
        bad = torch.nonzero(p < -NEG_TOL)
        if bad.numel():
            k, x = bad[0].tolist()
            word = (*words[k].tolist(), x)
            return word, float(prob[k] * p[k, x]), float(p[k, x]), d
        parent, token = torch.nonzero(p > ZERO_PROB, as_tuple=True)
        if parent.numel() == 0:
            break
        pt = p[parent, token]
        eta, prob = u[parent, token] / pt[:, None], prob[parent] * pt
        words = torch.cat([words[parent], token[:, None]], 1)
    return None, 0.0, 0.0, depth


class GHMM(TokenMatrices):
    """A generalised hidden Markov model: ``T[x]`` of any sign, normalised by ``w``.

    Args:
        T: (V, S, S) real array; ``Smat = sum_x T[x]`` must have a simple eigenvalue 1 (within
            :data:`EIGEN_TOL` relative to ``||Smat||``).
        w: (S,) right eigenvector of ``Smat`` for eigenvalue 1, kept as given (it fixes the scale of the
            beliefs); default: computed, scaled so that its entries sum to S (``w = 1`` for an HMM).
        initial: (S,) belief before the first token, with ``initial @ w = 1`` (within 1e-9); default ``pi``.
        check_depth: every word of up to this many tokens (fewer when a depth would hold more than
            :data:`CHECK_MAX_WORDS` possible words; ``checked_depth`` says how many) must have non-negative
            probability, starting from ``initial``; 0 skips the check.
        name: a label used in configs and reports.

    Raises ValueError naming the problem: no eigenvalue 1, a repeated one, a ``w`` that is not its eigenvector,
    or the first word (shortest, then lexicographic) with negative probability.
    """

    def __init__(self, T, w=None, initial=None, *, check_depth: int = CHECK_DEPTH, name: str = "ghmm",
                 device=None):
        if isinstance(check_depth, bool) or not isinstance(check_depth, int) or check_depth < 0:
            raise ValueError(f"check_depth must be a non-negative integer, got {check_depth!r}")
        T = _as_float64(T, "T", device)
        if T.ndim != 3 or T.shape[1] != T.shape[2]:
            raise ValueError(f"T must have shape (V, S, S), got {tuple(T.shape)}")
        if T.shape[0] == 0 or T.shape[1] == 0:
            raise ValueError(f"T must be non-empty, got shape {tuple(T.shape)}")
        if not torch.isfinite(T).all():
            bad = torch.nonzero(~torch.isfinite(T))[0].tolist()
            raise ValueError(f"T is not finite: entry {tuple(bad)} is {T[tuple(bad)].item()}")
        S = T.shape[1]
        t_cpu = T.cpu()
        smat = t_cpu.sum(0).numpy()
        right, left, tol = _unit_eigenvectors(smat)
        if w is None:
            total = right.sum()
            # Sum S (ones for an HMM) unless the entries cancel; then unit norm, largest entry positive.
            w_np = right * (S / total) if abs(total) > 1e-8 else right * np.sign(right[np.argmax(np.abs(right))])
            w_cpu = torch.as_tensor(w_np, dtype=torch.float64)
        else:
            w_cpu = _as_float64(w, "w").cpu()
            if w_cpu.shape != (S,):
                raise ValueError(f"w must have shape ({S},), got {tuple(w_cpu.shape)}")
            norm = float(torch.linalg.vector_norm(w_cpu))
            if not math.isfinite(norm) or norm == 0:
                raise ValueError("w must be finite and non-zero")
            resid = float(torch.linalg.vector_norm(t_cpu.sum(0) @ w_cpu - w_cpu)) / norm
            if resid > tol:
                raise ValueError(f"w is not a right eigenvector of Smat = sum_x T[x] for eigenvalue 1: "
                                 f"|Smat w - w| / |w| = {resid:.3g} (tolerance {tol:.3g})")
        pi_cpu = torch.as_tensor(left, dtype=torch.float64)
        pi_cpu = pi_cpu / (pi_cpu @ w_cpu)
        init_cpu = None
        if initial is not None:
            init_cpu = _as_float64(initial, "initial").cpu()
            if init_cpu.shape != (S,):
                raise ValueError(f"initial must have shape ({S},), got {tuple(init_cpu.shape)}")
            total = float(init_cpu @ w_cpu)
            if not abs(total - 1) <= ROW_SUM_TOL:
                raise ValueError(f"initial @ w is {total:.17g}, not 1 (tolerance {ROW_SUM_TOL:g}): a GHMM's beliefs "
                                 "are normalised by w")
        start = pi_cpu if init_cpu is None else init_cpu
        word, p_word, p_last, checked = _first_negative_word(t_cpu, w_cpu, start, check_depth, CHECK_MAX_WORDS)
        if word is not None:
            raise ValueError(f"T: word {word} has negative probability {p_word:.6g} (P(token {word[-1]} | the "
                             f"tokens before) = {p_last:.6g}): not a valid process")
        dev = T.device
        self._T = T.clone()  # the object owns its numbers: later edits by the caller cannot reach them
        self._w, self._pi = w_cpu.to(dev), pi_cpu.to(dev)
        self._initial = None if init_cpu is None else init_cpu.to(dev)
        self.checked_depth = checked
        self.name = name
        self.params: dict = {}  # the parameters get_process built it from

    # ----------------------------------------------------------------- basics
    @property
    def w(self) -> torch.Tensor:
        """(S,) right eigenvector of ``Smat`` for eigenvalue 1: ``P(x | eta) = eta T[x] w``."""
        return self._w

    def to(self, device) -> "GHMM":
        """This GHMM on ``device``: itself when already there (it is immutable)."""
        if torch.device(device) == self.device or (torch.device(device).type == self.device.type == "cpu"):
            return self
        out = GHMM.__new__(GHMM)
        out._T, out._w, out._pi = self._T.to(device), self._w.to(device), self._pi.to(device)
        out._initial = None if self._initial is None else self._initial.to(device)
        out.checked_depth, out.name, out.params = self.checked_depth, self.name, dict(self.params)
        return out

    @cached_property
    def transition_matrix(self) -> torch.Tensor:
        """(S, S) net matrix ``Smat = sum_x T[x]``."""
        return self._T.sum(0)

    @cached_property
    def emission_matrix(self) -> torch.Tensor:
        """(S, V) ``sum_j T[x, i, j] w[j]``: ``eta @ emission_matrix`` is the next-token distribution."""
        return torch.einsum("xij,j->ix", self._T, self._w).contiguous()

    @property
    def pi(self) -> torch.Tensor:
        """(S,) left eigenvector of ``Smat`` for eigenvalue 1 with ``pi @ w = 1`` (the stationary belief)."""
        return self._pi

    @property
    def initial(self) -> torch.Tensor:
        """(S,) belief before the first token."""
        return self._pi if self._initial is None else self._initial

    @property
    def is_stationary(self) -> bool:
        """True when the process starts in its stationary belief."""
        return self._initial is None or bool(torch.allclose(self._initial, self._pi, atol=1e-12, rtol=0))


def clean_probabilities(p: torch.Tensor) -> torch.Tensor:
    """Next-token probabilities of a GHMM with round-off around zero (down to -NEG_TOL, up to ZERO_PROB) set
    to 0; a value below -NEG_TOL (a word beyond the depth checked at construction) raises ValueError."""
    low = p < -NEG_TOL
    if bool(low.any()):
        raise ValueError(f"the GHMM gives a token probability {float(p[low][0]):.6g} < 0 after some prefix: "
                         "its matrices are not a valid process beyond the depth checked at construction")
    return torch.where(p > ZERO_PROB, p, torch.zeros((), dtype=p.dtype, device=p.device))


def word_probabilities(process: HMM | GHMM, length: int) -> torch.Tensor:
    """(V**length,) ``P(x_1..x_length)`` from ``process.initial`` for every word, in lexicographic order
    (word ``(x_1, .., x_L)`` at index ``sum_t x_t V^(L-t)``); an HMM is normalised by ones, a GHMM by ``w``."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"length must be a non-negative integer, got {length!r}")
    V, S = process.n_tokens, process.n_states
    if V**length > _MAX_WORDS:
        raise ValueError(f"{V}**{length} words is over {_MAX_WORDS}: use a shorter length")
    T = process.T
    w = process.w if isinstance(process, GHMM) else torch.ones(S, dtype=torch.float64, device=T.device)
    t_flat = T.permute(1, 0, 2).reshape(S, V * S)
    v = process.initial[None]
    for _ in range(length):
        v = (v @ t_flat).reshape(-1, S)  # row k V + x extends word k by token x
    return v @ w


# ------------------------------------------------------------------ filtering
def filter_ghmm(ghmm: GHMM, tokens: torch.Tensor, return_beliefs: bool):
    """Time-major (beliefs (L, n, S) or None, ``P(x_t | x_<t)`` (L, n)) for checked int64 ``tokens`` (n, L) on
    ``ghmm.device``. A conditional probability within round-off of zero is 0 (an impossible token: the beliefs
    from it on are not finite); a negative one stays negative (the caller's log makes it NaN)."""
    n, L = tokens.shape
    S, V, dev = ghmm.n_states, ghmm.n_tokens, ghmm.device
    tok = tokens.T.contiguous()
    w, T = ghmm.w, ghmm.T
    out = torch.empty(L, n, S, dtype=torch.float64, device=dev) if return_beliefs else None
    z = torch.empty(L, n, dtype=torch.float64, device=dev)
    eta = ghmm.initial.expand(n, S)
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    small = V * S <= _ALL_TOKENS_MAX
    if small:
        t_flat = T.permute(1, 0, 2).reshape(S, V * S)
        rows = tok + torch.arange(n, device=dev) * V  # row of (eta @ t_flat).view(n*V, S) to keep
    for t in range(L):
        if small:
            u = torch.index_select((eta @ t_flat).view(n * V, S), 0, rows[t])
        else:
            u = torch.empty(n, S, dtype=torch.float64, device=dev)
            for x in torch.unique(tok[t]).tolist():
                idx = torch.nonzero(tok[t] == x).squeeze(1)
                u.index_copy_(0, idx, torch.index_select(eta, 0, idx) @ T[x])
        zt = u @ w
        zt = torch.where(zt.abs() > ZERO_PROB, zt, zero)
        z[t] = zt
        eta = u / zt[:, None]
        if out is not None:
            out[t] = eta
    return out, z


# ------------------------------------------------------------------- sampling
def sample_ghmm(ghmm: GHMM, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(n, length) int64 tokens drawn through the beliefs: each step draws ``x ~ eta T[x] w`` (inverse CDF on a
    float64 uniform from ``generator``) and moves every sequence to its updated belief."""
    S, V, dev = ghmm.n_states, ghmm.n_tokens, ghmm.device
    t_flat = ghmm.T.permute(1, 0, 2).reshape(S, V * S)
    w = ghmm.w
    base = torch.arange(n, device=dev) * V
    tokens = torch.empty(length, n, dtype=torch.int64, device=dev)
    eta = ghmm.initial.expand(n, S)
    for t in range(length):
        u = (eta @ t_flat).view(n * V, S)
        p = clean_probabilities((u @ w).view(n, V))
        cdf = p.cumsum(1)
        r = torch.rand(n, dtype=torch.float64, device=dev, generator=generator) * cdf[:, -1]
        x = (cdf <= r[:, None]).sum(1)
        # r * total can round up to the total: fall back to the last token with positive probability
        last = (V - 1) - torch.argmax((p > 0).flip(1).to(torch.int8), 1)
        x = torch.minimum(x, last)
        tokens[t] = x
        idx = base + x
        eta = torch.index_select(u, 0, idx) / torch.index_select(p.view(-1), 0, idx)[:, None]
    return tokens.T.contiguous()


# ------------------------------------------------------------------ processes
def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


GHMM_PROCESSES = ("post_quantum", "tom_quantum", "fanizza")  # the registered processes that are GHMMs


@register("post_quantum")
def post_quantum(log_alpha: float = 1.0, beta: float = 0.5) -> GHMM:
    """Post-quantum process (Riechers et al. 2025; simplexity's ``post_quantum``): 3 states, 3 tokens.

    With ``alpha = exp(log_alpha)`` and ``M(v) = [[v, 0, 0], [0, 1, 0], [0, ln v, 1]]``: token 0 is the rank-one
    reset ``(1, 1, 0)^T (1, -1, -1)``, token 1 is ``M(alpha)``, token 2 is ``M(beta)``, all divided by the largest
    eigenvalue modulus of their sum. Needs ``alpha > 1 > beta > 0``, ``alpha + beta != 2`` and
    ``ln(alpha) / ln(beta)`` not an integer (simplexity's conditions). Defaults: simplexity's shipped config.
    """
    log_alpha, beta = _real(log_alpha, "log_alpha"), _real(beta, "beta")
    if not (log_alpha > 0 and 0 < beta < 1):
        raise ValueError(f"need alpha = exp(log_alpha) > 1 > beta > 0, got log_alpha={log_alpha}, beta={beta}")
    alpha = math.exp(log_alpha)
    if math.isclose(alpha + beta, 2.0, rel_tol=0, abs_tol=1e-12):
        raise ValueError(f"need alpha + beta != 2, got alpha={alpha}, beta={beta}")
    ratio = log_alpha / math.log(beta)
    if math.isclose(ratio, round(ratio), rel_tol=1e-9, abs_tol=1e-9):
        raise ValueError(f"need ln(alpha) / ln(beta) not an integer, got {ratio}")

    def m(v: float) -> np.ndarray:
        return np.array([[v, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, math.log(v), 1.0]])

    T = np.stack([np.outer([1.0, 1.0, 0.0], [1.0, -1.0, -1.0]), m(alpha), m(beta)])
    T /= np.abs(np.linalg.eigvals(T.sum(0))).max()
    return GHMM(T)


@register("tom_quantum")
def tom_quantum(alpha: float = 1.0, beta: float = 1.0) -> GHMM:
    """Tom's quantum process (simplexity's ``tom_quantum``): 3 states, 4 tokens.

    With ``g = 1 / (4 (alpha^2 + beta^2))``, ``d = (alpha^2 - beta^2) g`` and ``c = 2 alpha beta g``: tokens 0 and 1
    have ``1/4`` on diagonal entries 0 and 2, ``d`` on entry 1 and ``+c`` / ``-c`` coupling states 0 and 2; tokens 2
    and 3 have ``1/4`` on entries 0 and 1, ``d`` on entry 2 and ``+c`` / ``-c`` coupling states 0 and 1.
    ``beta = 0`` makes eigenvalue 1 of the net matrix repeated (refused). Defaults: simplexity's shipped config.
    """
    alpha, beta = _real(alpha, "alpha"), _real(beta, "beta")
    if alpha == 0 and beta == 0:
        raise ValueError("alpha and beta must not both be 0")
    g = 1.0 / (4.0 * (alpha**2 + beta**2))
    q, d, c = 0.25, (alpha**2 - beta**2) * g, 2.0 * alpha * beta * g
    T = np.array([
        [[q, 0, c], [0, d, 0], [c, 0, q]],
        [[q, 0, -c], [0, d, 0], [-c, 0, q]],
        [[q, c, 0], [c, q, 0], [0, 0, d]],
        [[q, -c, 0], [-c, q, 0], [0, 0, d]],
    ], dtype=np.float64)
    return GHMM(T)


@register("fanizza")
def fanizza(alpha: float = 2000.0, lamb: float = 0.49) -> GHMM:
    """Fanizza's process (simplexity's ``fanizza``): 4 states, 2 tokens.

    Token 0 is the rank-one reset ``u pi0^T`` and token 1 is ``lamb`` times ``diag(0, 1, R(alpha))``, where
    ``R(alpha)`` rotates states 2 and 3 by ``alpha`` radians. With ``a, b = (1 - lamb cos alpha +- lamb sin alpha) /
    (1 - 2 lamb cos alpha + lamb^2)``: ``pi0 = (1 - (2 / (1 - lamb) - a - b) / 4, 1 / (2 (1 - lamb)), -a/4, -b/4)``
    and ``u = (1, 1 - lamb, 1 + lamb (sin alpha - cos alpha), 1 - lamb (sin alpha + cos alpha))``. ``lamb`` in
    (0, 1) is the decay per token 1. Defaults: simplexity's shipped config.
    """
    alpha, lamb = _real(alpha, "alpha"), _real(lamb, "lamb")
    if not 0 < lamb < 1:
        raise ValueError(f"lamb must lie in (0, 1), got {lamb}")
    cos, sin = math.cos(alpha), math.sin(alpha)
    den = 1 - 2 * lamb * cos + lamb**2  # > 0 for lamb in (0, 1)
    a, b = (1 - lamb * cos + lamb * sin) / den, (1 - lamb * cos - lamb * sin) / den
    pi0 = np.array([1 - (2 / (1 - lamb) - a - b) / 4, 1 / (2 * (1 - lamb)), -a / 4, -b / 4])
    u = np.array([1.0, 1 - lamb, 1 + lamb * (sin - cos), 1 - lamb * (sin + cos)])
    decay = lamb * np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, cos, -sin], [0, 0, sin, cos]], dtype=np.float64)
    return GHMM(np.stack([np.outer(u, pi0), decay]))
