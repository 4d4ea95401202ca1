"""Scaled vector addition: a hand-built predictor of an HMM's belief states, and models that implement it.

The exact belief update divides by the probability of the new token, so it is not linear in the past.
Its first-order version around the stationary distribution ``pi`` is. With

    Tn[x] = T[x] / (pi @ T[x] @ 1),        v[x] = pi @ Tn[x] - pi        (zero-sum rows),

the belief after tokens x_0..x_t is approximated by

    eta_hat_t = pi + sum_{k=0}^{t} v[x_{t-k}] @ Smat^k                   (matrix-power form)

which is exact at t = 0 when the process starts in ``pi``. ``Smat`` maps zero-sum vectors to zero-sum
vectors; when it acts on them as a scalar ``lambda`` (Mess3(x, a): ``lambda = 1 - 3x``) the sum becomes

    eta_hat_t = pi + sum_{k=0}^{t} lambda^k v[x_{t-k}]                   (scalar form)

one attention head with the input-independent pattern ``M[t, s] = lambda^(t-s)`` and the OV circuit
writing ``v[x_s]``. Where Smat is not a scalar there (RRXOR: a period-3 rotation) no single decaying head
is exact to first order; :func:`construction_report` measures what the best one loses.

Contents:
- maths (pure functions, float64): :func:`token_vectors`, :func:`zero_sum_operator_eigenvalues`,
  :func:`analytic_decay`, :func:`construction_beliefs`, :func:`fit_construction`,
  :func:`readout_logits_params`, :func:`next_token_loss`, :func:`construction_report`;
- realisations with hand-set weights: :func:`fixed_attention_construction` (the FixedAttentionModel
  family) and :func:`transformer_construction` (a TransformerLens native model), plus
  :func:`to_tokens_with_bos` and :func:`transformer_channels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from interp.hmm.core import HMM
from interp.hmm.ghmm import GHMM
from interp.hmm.first_order import normaliser as _normaliser
from interp.hmm.first_order import token_vectors, zero_sum_operator_eigenvalues  # noqa: F401 (part of this API)
from interp.hmm.first_order import zero_sum_basis as _zero_sum_basis
from interp.interpret.metrics import pooled_r2, project_to_simplex

# Logit of a token that can never be predicted (BOS; tokens the stationary process never emits). Finite so
# that float16/32 arithmetic on logits stays NaN-free; exp(-1e4) is 0 in every float type.
NEVER_LOGIT = -1.0e4
# Probabilities are clamped here before taking logs in the next-token losses.
PROB_FLOOR = 1e-12
# Coarse grid over the decay before the bounded 1-D search (guards against local minima).
_GRID_POINTS = 41


# ----------------------------------------------------------------------------- helpers
def _tokens(tokens, n_tokens: int) -> torch.Tensor:
    """Validate a [n, L] integer token array with values in [0, n_tokens); return int64."""
    t = torch.as_tensor(tokens)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"tokens must be an integer tensor, got dtype {t.dtype}")
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"tokens must be a non-empty [n, L] array, got shape {tuple(t.shape)}")
    lo, hi = (int(v) for v in torch.aminmax(t))
    if lo < 0 or hi >= n_tokens:
        raise ValueError(f"token {lo if lo < 0 else hi} is out of range [0, {n_tokens})")
    return t.to(torch.int64)


def _float64(x, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach().to(torch.float64)
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} is not finite")
    return t


def _sequence_weight(weight, n: int) -> torch.Tensor:
    """[n] non-negative sequence weights normalised to sum 1 (uniform when None)."""
    if weight is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    w = _float64(weight, "weight").reshape(-1)
    if w.numel() != n:
        raise ValueError(f"weight has {w.numel()} entries for {n} sequences")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be non-negative and not all zero")
    return w / w.sum()


def _decayed_sum(x: torch.Tensor, decay) -> torch.Tensor:
    """[n, L, d] -> [n, L, d]: h_t = h_{t-1} @ decay + x_t (decay an [d, d] matrix) or decay * h_{t-1} + x_t
    (decay a number), h_{-1} = 0. A linear recursion over positions: no powers are formed."""
    out = torch.empty_like(x)
    h = torch.zeros_like(x[:, 0])
    matrix = isinstance(decay, torch.Tensor) and decay.ndim == 2
    for t in range(x.shape[1]):
        h = (h @ decay if matrix else decay * h) + x[:, t]
        out[:, t] = h
    return out


def _onehot(tokens: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """[n, L] -> [n, L, V] float64."""
    return torch.nn.functional.one_hot(tokens, n_tokens).to(torch.float64)


def _solve_normal(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """A solution of ``gram @ coef = rhs`` (gram symmetric PSD [p, p], rhs [p, q]).

    Rescales to unit diagonal, then inverts through eigh, dropping eigenvalues below 1e-13 of the largest,
    so exactly collinear columns (an intercept and a full one-hot set) give the minimum-norm solution in the
    rescaled coordinates instead of noise; the fitted values do not depend on that choice."""
    d = gram.diagonal().clamp_min(0).sqrt()
    d = torch.where(d > 0, d, torch.ones_like(d))
    g = gram / d[:, None] / d[None, :]
    evals, evecs = torch.linalg.eigh(g)
    keep = evals > evals.max() * 1e-13
    inv = (evecs[:, keep] / evals[keep]) @ evecs[:, keep].T
    return (inv @ (rhs / d[:, None])) / d[:, None]


def _weighted_lstsq(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """argmin_B sum_i w_i ||y_i - x_i B||^2 for x [m, p], y [m, q], w [m] (normal equations, :func:`_solve_normal`)."""
    return _solve_normal(x.T @ (w[:, None] * x), x.T @ (w[:, None] * y))


def _row_weights(seq_weight: torch.Tensor, length: int) -> torch.Tensor:
    """[n] sequence weights -> [n * L] row weights (every position of a sequence counts equally)."""
    return seq_weight[:, None].expand(-1, length).reshape(-1)


# ----------------------------------------------------------------------------- maths
def analytic_decay(hmm: HMM, tol: float = 1e-9) -> float | None:
    """The scalar ``lambda`` with ``u @ Smat = lambda * u`` for every zero-sum ``u``, or None if there is none.

    Checked on an orthonormal basis of the subspace (max abs deviation <= ``tol``), not from the
    eigenvalues alone: a Jordan block or a rotation can have equal or unit-modulus eigenvalues without
    being a scalar. Mess3(x, a): ``1 - 3x``. RRXOR, Z1R: None. With one state the subspace is {0} and any
    decay is exact: 0.0 is returned."""
    s = hmm.n_states
    if s == 1:
        return 0.0
    q = _zero_sum_basis(s, _normaliser(hmm))
    smat = hmm.transition_matrix.cpu()
    lam = float(torch.trace(q.T @ smat @ q)) / (s - 1)
    deviation = float((q.T @ smat - lam * q.T).abs().max())
    return lam if deviation <= tol else None


def head_patterns(heads, length: int) -> torch.Tensor:
    """[n_heads, L, L] float64 lower-triangular ``P_j[t, s] = a_j(t - s)`` for s < t (lag >= 1; the diagonal, lag 0,
    is 0: the skip path carries the current token), from a :class:`interp.hmm.heads.HeadCount`."""
    if length > heads.context:
        raise ValueError(f"the heads were solved for context {heads.context}, the tokens have length {length}")
    t = torch.arange(length)
    lag = t[:, None] - t[None, :]
    a = heads.weights[:, :length].to(torch.float64)
    return torch.where(lag > 0, a[:, lag.clamp_min(0)], torch.zeros((), dtype=torch.float64))


def multihead_beliefs(hmm: HMM, tokens, heads=None, *, offset=None) -> torch.Tensor:
    """[n, L, S] the multi-head construction: ``offset + v[x_t] + sum_j sum_{k>=1} a_j(k) M_j[x_{t-k}]``.

    ``heads``: :func:`interp.hmm.heads.head_count` (default: at the tokens' length); head j attends to lag k with
    weight ``a_j(k) >= 0`` and writes row ``x`` of its matrix ``M_j``. Equal to the matrix-power form of
    :func:`construction_beliefs` up to rounding and the lags ``head_count`` leaves out (terms below its
    tolerance of lag 0's)."""
    from interp.hmm.heads import head_count

    V, S = hmm.n_tokens, hmm.n_states
    tokens = _tokens(tokens, V).cpu()
    heads = head_count(hmm, tokens.shape[1]) if heads is None else heads
    b = hmm.pi.cpu() if offset is None else _float64(offset, "offset", (S,))
    out = token_vectors(hmm).cpu()[tokens] + b
    if heads.n_heads:
        writes = heads.matrices.to(torch.float64)[:, tokens]  # [J, n, L, S]
        out = out + torch.einsum("jts,jnsd->ntd", head_patterns(heads, tokens.shape[1]), writes)
    return out


def construction_beliefs(hmm: HMM, tokens, *, decay: float | None = None, vectors=None, offset=None) -> torch.Tensor:
    """[n, L, S] the construction's beliefs after tokens x_0..x_t of ``tokens`` [n, L]:

        decay=None:   eta_hat_t = offset + sum_{k=0}^{t} v[x_{t-k}] @ Smat^k
        decay=lam:    eta_hat_t = offset + sum_{k=0}^{t} lam^k v[x_{t-k}]

    computed by the recursion ``h_t = h_{t-1} @ Smat + v[x_t]`` (or ``lam * h_{t-1} + v[x_t]``).
    Defaults: ``vectors = token_vectors(hmm)`` [V, S], ``offset = hmm.pi`` [S]; with them, position 0 is
    the exact belief of a process started in ``pi``."""
    V, S = hmm.n_tokens, hmm.n_states
    tokens = _tokens(tokens, V)
    v = token_vectors(hmm) if vectors is None else _float64(vectors, "vectors", (V, S))
    b = hmm.pi if offset is None else _float64(offset, "offset", (S,))
    v, b = v.cpu(), b.cpu()
    step = hmm.transition_matrix.cpu() if decay is None else float(decay)
    return _decayed_sum(v[tokens.cpu()], step) + b


@dataclass(frozen=True)
class FittedConstruction:
    """``eta_hat_t = offset + sum_{k=0}^{t} decay^k vectors[x_{t-k}] (+ current_vectors[x_t])``.

    decay: the fitted (or given) lambda; vectors [V, S]; offset [S]; current_vectors [V, S] or None: the
    extra vector of the current token (a skip path next to the decaying head), in the gauge where its
    weighted mean over the fitting data is zero; r2: pooled weighted R^2 on the data it was fitted on."""

    decay: float
    vectors: torch.Tensor
    offset: torch.Tensor
    r2: float
    current_vectors: torch.Tensor | None = None

    @property
    def n_tokens(self) -> int:
        return self.vectors.shape[0]

    def predict(self, tokens) -> torch.Tensor:
        """[n, L, S] predicted beliefs for ``tokens`` [n, L]."""
        tokens = _tokens(tokens, self.n_tokens)
        onehot = _onehot(tokens, self.n_tokens)
        out = _decayed_sum(onehot, self.decay) @ self.vectors + self.offset
        if self.current_vectors is not None:
            out = out + onehot @ self.current_vectors
        return out

    def to_dict(self) -> dict:
        """JSON-friendly: floats and nested lists."""
        return {
            "decay": float(self.decay),
            "vectors": self.vectors.tolist(),
            "current_vectors": None if self.current_vectors is None else self.current_vectors.tolist(),
            "offset": self.offset.tolist(),
            "r2": float(self.r2),
        }


class _DecayFit:
    """Weighted least squares of centred targets on [1, phi(lam), (onehot(x_t))] for many values of lam.

    Everything that does not depend on lam is computed once; one evaluation builds phi (time-major, a
    recursion over positions) and a few small Gram blocks, and reads the residual off the normal
    equations (``sum w ||y_c||^2 - 2 rhs . coef + coef . gram . coef``, y centred): no pass over the rows."""

    def __init__(self, tokens: torch.Tensor, y: torch.Tensor, seq_w: torch.Tensor, n_tokens: int,
                 separate_current: bool):
        n, L = tokens.shape
        self.n_tokens, self.separate_current = n_tokens, separate_current
        self.onehot = _onehot(tokens.T.contiguous(), n_tokens)  # [L, n, V] time-major
        self.w = seq_w.repeat(L) / L  # [L * n] row weights summing to 1, time-major
        y = y.transpose(0, 1).reshape(L * n, -1)  # [L * n, S]
        self.y_mean = self.w @ y
        yc = y - self.y_mean
        self.wy = self.w[:, None] * yc
        self.yy = float((self.wy * yc).sum())
        oh = self.onehot.reshape(L * n, n_tokens)
        self.oh_flat = oh
        if separate_current:
            self.oh_mass = self.w @ oh  # [V]
            self.oh_rhs = oh.T @ self.wy  # [V, S]
        self.phi = torch.empty_like(self.onehot)

    def features(self, decay: float) -> torch.Tensor:
        """[L * n, V] phi_t = decay * phi_{t-1} + onehot(x_t), time-major rows."""
        phi, oh = self.phi, self.onehot
        phi[0] = oh[0]
        for t in range(1, oh.shape[0]):
            torch.add(oh[t], phi[t - 1], alpha=decay, out=phi[t])
        return phi.reshape(-1, self.n_tokens)

    def solve(self, decay: float) -> tuple[torch.Tensor, float]:
        """Coefficients [1 + V (+ V), S] (row 0: offset relative to the weighted target mean) and the
        weighted residual sum of squares."""
        phi = self.features(decay)
        wphi = self.w[:, None] * phi
        V = self.n_tokens
        p = 1 + V + (V if self.separate_current else 0)
        gram = torch.empty(p, p, dtype=torch.float64)
        rhs = torch.zeros(p, self.wy.shape[1], dtype=torch.float64)
        gram[0, 0] = 1.0
        gram[0, 1:1 + V] = gram[1:1 + V, 0] = wphi.sum(0)
        gram[1:1 + V, 1:1 + V] = phi.T @ wphi
        rhs[1:1 + V] = phi.T @ self.wy
        if self.separate_current:
            cross = wphi.T @ self.oh_flat  # [V, V]
            gram[0, 1 + V:] = gram[1 + V:, 0] = self.oh_mass
            gram[1:1 + V, 1 + V:] = cross
            gram[1 + V:, 1:1 + V] = cross.T
            gram[1 + V:, 1 + V:] = torch.diag(self.oh_mass)
            rhs[1 + V:] = self.oh_rhs
        coef = _solve_normal(gram, rhs)
        # The full quadratic form, not yy - rhs . coef: that shortcut holds only at the exact solution and
        # drifts where the Gram matrix is nearly singular (decay near 0: phi ~ onehot, collinear with 1).
        resid = self.yy - 2.0 * float((rhs * coef).sum()) + float((coef * (gram @ coef)).sum())
        return coef, max(resid, 0.0)


def fit_construction(tokens, target_beliefs, weight=None, *, n_tokens: int, decay: float | None = None,
                     bounds: tuple[float, float] = (0.0, 0.999), separate_current: bool = False) -> FittedConstruction:
    """Fit ``eta_hat_t = b + sum_k lam^k v[x_{t-k}]`` to ``target_beliefs`` [n, L, S] by weighted least squares.

    For a fixed ``lam`` the features ``phi_t = sum_k lam^k onehot(x_{t-k})`` [V] are linear, so ``b`` [S] and
    ``v`` [V, S] are solved in closed form (float64). ``lam`` is the minimiser of the weighted residual over
    ``bounds``: a coarse grid of 41 points, then a bounded Brent search (scipy ``minimize_scalar``) between
    the neighbours of the best grid point; or ``decay`` when given. ``weight`` [n]: one weight per sequence,
    shared by its positions (uniform when None). ``separate_current=True`` adds ``c[x_t]`` (V more features,
    ``onehot(x_t)``): a skip path next to the decaying head."""
    tokens = _tokens(tokens, n_tokens)
    n, L = tokens.shape
    y = _float64(target_beliefs, "target_beliefs")
    if y.ndim != 3 or y.shape[:2] != (n, L):
        raise ValueError(f"target_beliefs must have shape [{n}, {L}, S], got {tuple(y.shape)}")
    seq_w = _sequence_weight(weight, n)
    problem = _DecayFit(tokens, y, seq_w, n_tokens, separate_current)

    if decay is None:
        lo, hi = float(bounds[0]), float(bounds[1])
        if not lo < hi:
            raise ValueError(f"bounds must be increasing, got {bounds}")
        grid = np.linspace(lo, hi, _GRID_POINTS)
        losses = [problem.solve(float(g))[1] for g in grid]
        i = int(np.argmin(losses))
        best_lam, best_loss = float(grid[i]), losses[i]
        bracket = (float(grid[max(i - 1, 0)]), float(grid[min(i + 1, len(grid) - 1)]))
        res = minimize_scalar(lambda lam: problem.solve(float(lam))[1], bounds=bracket, method="bounded",
                              options={"xatol": 1e-12})
        if res.fun < best_loss:
            best_lam = float(res.x)
        decay = best_lam
    decay = float(decay)
    coef, _ = problem.solve(decay)
    offset, vectors = problem.y_mean + coef[0], coef[1:1 + n_tokens]
    current = None
    if separate_current:
        current = coef[1 + n_tokens:]
        # Gauge: the intercept and the current-token set are collinear; move the current vectors' weighted
        # mean over the fitting rows into the offset (predictions unchanged).
        mean = problem.oh_mass @ current
        current, offset = current - mean, offset + mean
    fitted = FittedConstruction(decay, vectors.clone(), offset.clone(), float("nan"),
                                None if current is None else current.clone())
    r2 = pooled_r2(y, fitted.predict(tokens), seq_w[:, None].expand(n, L))
    return FittedConstruction(decay, fitted.vectors, fitted.offset, r2, fitted.current_vectors)


def readout_logits_params(hmm: HMM) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_U [S, V], b_U [V])``: next-token logits ``delta @ W_U + b_U`` from the centred belief
    ``delta = eta - pi``, from the HMM alone.

    It is the first-order (in ``delta``) expansion of ``log(eta @ E)`` around ``pi`` (E = emission matrix):
    ``b_U = log(pi @ E)``, ``W_U = E / (pi @ E)`` column-wise. Exact at ``delta = 0`` only; the softmax of
    these logits agrees with ``eta @ E`` to first order. Tokens with ``pi @ E = 0`` get a zero column and
    the logit ``NEVER_LOGIT``."""
    E = hmm.emission_matrix.cpu()
    p0 = hmm.pi.cpu() @ E  # [V]
    ok = p0 > 0
    safe = torch.where(ok, p0, torch.ones_like(p0))
    W_U = torch.where(ok[None], E / safe, torch.zeros_like(E))
    b_U = torch.where(ok, torch.log(safe), torch.full_like(p0, NEVER_LOGIT))
    return W_U, b_U


def next_token_loss(hmm: HMM, tokens, weight, beliefs) -> float | None:
    """Cross-entropy (nats per token) of predicting tokens 1..L-1 from beliefs [n, L, S] at positions 0..L-2.

    The prediction is ``project_to_simplex(beliefs) @ E`` (``beliefs @ E`` for a GHMM), clamped at ``PROB_FLOOR``
    and renormalised; sequences are weighted by ``weight`` [n] (normalised to sum 1), positions equally. None when
    L == 1."""
    tokens = _tokens(tokens, hmm.n_tokens)
    n, L = tokens.shape
    if L < 2:
        return None
    w = _sequence_weight(weight, n)
    b = _float64(beliefs, "beliefs")[:, :-1]
    # a GHMM's beliefs have no simplex: their predictions are clamped and renormalised below as they are
    p = (b if isinstance(hmm, GHMM) else project_to_simplex(b)) @ hmm.emission_matrix.cpu()
    p = p.clamp_min(PROB_FLOOR)
    p = p / p.sum(-1, keepdim=True)
    nll = -torch.log(p.gather(-1, tokens[:, 1:, None]).squeeze(-1))  # [n, L-1]
    return float(w @ nll.mean(1))


def _split(n: int, train_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = min(max(int(round(train_fraction * n)), 1), n - 1)
    return perm[:k], perm[k:]


def _heldout_affine_r2(features: torch.Tensor, y: torch.Tensor, seq_w: torch.Tensor,
                       train: torch.Tensor, test: torch.Tensor) -> float:
    """Fit ``y ~ features @ A + c`` ([n, L, p] -> [n, L, S]) on sequences ``train``; pooled R^2 on ``test``."""
    L = y.shape[1]

    def rows(idx):
        f = features[idx].reshape(-1, features.shape[-1])
        x = torch.cat([torch.ones(f.shape[0], 1, dtype=torch.float64), f], 1)
        return x, y[idx].reshape(-1, y.shape[-1]), _row_weights(seq_w[idx], L)

    x_tr, y_tr, w_tr = rows(train)
    coef = _weighted_lstsq(x_tr, y_tr, w_tr)
    x_te, y_te, w_te = rows(test)
    return pooled_r2(y_te, x_te @ coef, w_te)


def construction_report(hmm: HMM, tokens, weight, beliefs, optimal_loss_per_token: float | None = None, *,
                        split_seed: int = 0, train_fraction: float = 0.5) -> dict:
    """How well the construction reproduces the exact beliefs on an evaluation set.

    tokens [n, L], weight [n] (sequence weights, e.g. probabilities of every sequence), beliefs [n, L, S]
    (exact). Every R^2 is pooled over belief coordinates and weighted by sequence weight. Keys:

    - ``lambda_analytic``: :func:`analytic_decay` (None when Smat is not a scalar on zero-sum vectors);
      ``zero_sum_eigenvalues``: [re, im] pairs.
    - ``r2_analytic``: scalar form with ``lambda_analytic`` (None when not scalar); ``r2_matrix_power``:
      matrix-power form (always; equal to the scalar form when that exists).
    - ``r2_analytic_readout``: the features ``phi_t = sum_k lambda_analytic^k onehot(x_{t-k})`` with a free
      affine read-out (vectors and offset) fitted by weighted least squares on a random ``train_fraction``
      of the sequences (``split_seed``), R^2 on the other sequences (None when not scalar);
      ``r2_matrix_power_readout``: the same for a free affine probe on the matrix-power beliefs [S].
    - ``lambda_fitted``, ``r2_fitted``: :func:`fit_construction` on the whole set (in-sample: V*S + S + 1
      parameters); ``..._separate_current``: the same with a separate current-token vector set.
    - ``loss_*``: :func:`next_token_loss` (positions 0..L-2 predicting tokens 1..L-1) of the exact beliefs
      (``loss_optimal``), the analytic scalar form, the matrix-power form and the fitted constructions;
      ``relative_loss_* = loss_* / optimal`` where optimal is ``optimal_loss_per_token`` if given (it must be
      the optimum over the same positions), else ``loss_optimal``.
    - ``r2_matrix_power_minus_fitted``: what the best single decay loses against Smat's powers (positive
      only where Smat is not a scalar on zero-sum vectors; there ``note`` says so in words).
    """
    V, S = hmm.n_tokens, hmm.n_states
    tokens = _tokens(tokens, V)
    n, L = tokens.shape
    y = _float64(beliefs, "beliefs", (n, L, S))
    seq_w = _sequence_weight(weight, n)
    row_w = seq_w[:, None].expand(n, L)
    lam = analytic_decay(hmm)
    eig = zero_sum_operator_eigenvalues(hmm)

    matrix_power = construction_beliefs(hmm, tokens)
    analytic = None if lam is None else construction_beliefs(hmm, tokens, decay=lam)
    fitted = fit_construction(tokens, y, seq_w, n_tokens=V)
    fitted_sc = fit_construction(tokens, y, seq_w, n_tokens=V, separate_current=True)

    train, test = _split(n, train_fraction, split_seed)
    r2_readout = None
    if lam is not None:
        phi = _decayed_sum(_onehot(tokens, V), lam)
        r2_readout = _heldout_affine_r2(phi, y, seq_w, train, test)

    out = {
        "n_sequences": n, "length": L,
        "lambda_analytic": lam,
        "zero_sum_eigenvalues": [[float(z.real), float(z.imag)] for z in eig.tolist()],
        "r2_analytic": None if analytic is None else pooled_r2(y, analytic, row_w),
        "r2_matrix_power": pooled_r2(y, matrix_power, row_w),
        "r2_analytic_readout": r2_readout,
        "r2_matrix_power_readout": _heldout_affine_r2(matrix_power, y, seq_w, train, test),
        "readout_split": (f"read-outs fitted on a random {train_fraction:g} of the sequences (seed {split_seed}), "
                          f"R^2 on the other {len(test)} sequences"),
        "lambda_fitted": fitted.decay,
        "r2_fitted": fitted.r2,
        "lambda_fitted_separate_current": fitted_sc.decay,
        "r2_fitted_separate_current": fitted_sc.r2,
        "fitted": fitted.to_dict(),
        "fitted_separate_current": fitted_sc.to_dict(),
    }
    out["r2_matrix_power_minus_fitted"] = out["r2_matrix_power"] - out["r2_fitted"]
    if lam is None:
        out["note"] = ("Smat is not a scalar on zero-sum vectors, so no single decaying head is exact to first "
                       f"order: Smat's powers give R^2 {out['r2_matrix_power']:.4f}, the best single decay "
                       f"(lambda {fitted.decay:.4f}, vectors fitted) {fitted.r2:.4f}.")
        memory = float((token_vectors(hmm) @ hmm.transition_matrix).abs().max())
        out["token_vectors_times_smat_max"] = memory
        if memory < 1e-12:
            out["note"] += (" Here v[x] @ Smat = 0 for every token: the matrix-power form is pi + v[x_t], a function"
                            " of the current token alone, so first order keeps no memory of earlier tokens and a"
                            " decay of 0 loses nothing against it.")

    losses = {
        "optimal": next_token_loss(hmm, tokens, seq_w, y),
        "analytic": None if analytic is None else next_token_loss(hmm, tokens, seq_w, analytic),
        "matrix_power": next_token_loss(hmm, tokens, seq_w, matrix_power),
        "fitted": next_token_loss(hmm, tokens, seq_w, fitted.predict(tokens)),
        "fitted_separate_current": next_token_loss(hmm, tokens, seq_w, fitted_sc.predict(tokens)),
    }
    denominator = losses["optimal"] if optimal_loss_per_token is None else float(optimal_loss_per_token)
    out["optimal_loss_per_token_given"] = optimal_loss_per_token
    for key, value in losses.items():
        out[f"loss_{key}"] = value
        if key != "optimal":
            out[f"relative_loss_{key}"] = None if value is None or not denominator else value / denominator
    return out


# ----------------------------------------------------------------------------- realisations
def fixed_attention_construction(hmm: HMM, n_ctx: int, decay: float, vectors=None, *, offset=None,
                                 dtype: torch.dtype = torch.float64):
    """A :class:`FixedAttentionModel` computing the scalar-form construction exactly.

    ``FixedAttentionConfig(d_model=S, d_head=S, pattern="raw", skip=False)``; ``M[t, s] = decay^(t-s)``
    (s <= t), ``W_E = vectors`` (default :func:`token_vectors`), ``W_V = W_O = I``, so
    ``blocks.0.hook_resid_post = eta_hat - offset`` (``offset`` default pi). The unembedding is
    :func:`readout_logits_params` (first order around pi) applied to ``eta_hat - pi``: a given ``offset``
    enters the bias as ``(offset - pi) @ W_U``."""
    from interp.models.configs import FixedAttentionConfig
    from interp.models.fixed_attention import FixedAttentionModel

    V, S = hmm.n_tokens, hmm.n_states
    v = token_vectors(hmm) if vectors is None else _float64(vectors, "vectors", (V, S))
    W_U, b_U = _readout_with_offset(hmm, offset)
    cfg = FixedAttentionConfig(d_model=S, d_head=S, pattern="raw", skip=False)
    model = FixedAttentionModel(cfg, V, n_ctx).to(dtype)
    t = torch.arange(n_ctx)
    lag = (t[:, None] - t[None, :]).clamp_min(0).to(torch.float64)
    M = torch.where(t[:, None] >= t[None, :], float(decay) ** lag, torch.zeros_like(lag))
    eye = torch.eye(S, dtype=torch.float64)
    with torch.no_grad():
        attn = model.blocks[0].attn
        for param, value in ((model.W_E, v), (attn.M, M), (attn.W_V, eye), (attn.W_O, eye),
                             (model.W_U, W_U), (model.b_U, b_U)):
            param.copy_(value.to(dtype))
    return model


def _readout_with_offset(hmm: HMM, offset) -> tuple[torch.Tensor, torch.Tensor]:
    W_U, b_U = readout_logits_params(hmm)
    if offset is not None:
        b_U = b_U + (_float64(offset, "offset", (hmm.n_states,)) - hmm.pi.cpu()) @ W_U
    return W_U, b_U


def transformer_channels(n_states: int) -> dict[str, slice]:
    """Residual-stream layout of :func:`transformer_construction` (d_model = 2S + 1):
    ``belief`` [0, S): the attention output, ``eta_hat - pi`` (bos=True); ``input`` [S, 2S): the token
    embedding ``v[x]`` (the skip path carries it, the OV circuit reads it); ``score`` [2S]: the positional
    embedding, the attention score of that key position."""
    S = n_states
    return {"belief": slice(0, S), "input": slice(S, 2 * S), "score": slice(2 * S, 2 * S + 1)}


def to_tokens_with_bos(tokens, n_tokens: int) -> torch.Tensor:
    """[n, L] -> [n, L + 1]: the BOS token (id ``n_tokens``) prepended to every sequence."""
    tokens = _tokens(tokens, n_tokens)
    bos = torch.full((tokens.shape[0], 1), n_tokens, dtype=tokens.dtype, device=tokens.device)
    return torch.cat([bos, tokens], 1)


def transformer_construction(hmm: HMM, n_ctx: int, decay: float, vectors=None, *, bos: bool = True, offset=None,
                             dtype: torch.dtype = torch.float64):
    """A 1-layer, 1-head, attention-only TransformerLens native model (``TransformerBridge.boot_native``, no
    normalisation, standard positional embeddings) whose weights implement the scalar-form construction.

    Layout (:func:`transformer_channels`, d_model = 2S + 1, d_head = S): the token embedding writes
    ``v[x]`` into the ``input`` channels, the positional embedding writes the score ``b_p`` into the
    ``score`` channel; every query is the constant ``b_Q = sqrt(d_head) e_0`` and the key is
    ``b_p e_0``, so after TransformerLens's 1/sqrt(d_head) scaling the score of key p is exactly ``b_p``.
    W_V copies the input channels, W_O writes them (times ``c``) into the ``belief`` channels; all other
    biases are zero. The skip path keeps ``v[x_p]`` and ``b_p`` in their own channels, so the residual
    equals the construction on the belief channels only; the unembedding reads only those
    (:func:`readout_logits_params`, ``b_U`` via ``unembed.bias``).

    bos=True (vocabulary V + 1, BOS = V with zero embedding, n_ctx + 1 positions, inputs from
    :func:`to_tokens_with_bos`): ``b_0 = 0`` and ``b_p = -p log(decay) + log(1 - decay)`` for p >= 1, so the
    query at p puts ``decay^p`` on BOS (a sink: its value is 0) and ``(1 - decay) decay^(p - p')`` on key p';
    with ``c = 1 / (1 - decay)`` the belief channels at position p are exactly
    ``sum_{p'=1}^{p} decay^(p-p') v[x_{p'}] = eta_hat - pi`` after the first p real tokens, and 0 (the prior)
    at BOS. BOS is never predicted: its logit is ``NEVER_LOGIT``. Needs 0 < decay < 1.

    bos=False (the trained models' format: V tokens, n_ctx positions): ``b_p = -p log(decay)`` and ``c = 1``
    give the row-normalised pattern ``decay^(t-s) / Z_t`` with ``Z_t = sum_{k=0}^{t} decay^k``, so the
    belief channels hold ``(eta_hat_t - pi) / Z_t``: exact at t = 0 only. Needs decay > 0.
    """
    from interp.models.configs import TransformerConfig
    from interp.models.transformer import build_transformer

    decay = float(decay)
    if bos and not 0.0 < decay < 1.0:
        raise ValueError(f"transformer_construction with bos=True needs 0 < decay < 1, got {decay}")
    if not bos and not decay > 0.0:
        raise ValueError(f"transformer_construction needs decay > 0, got {decay}")
    V, S = hmm.n_tokens, hmm.n_states
    v = token_vectors(hmm) if vectors is None else _float64(vectors, "vectors", (V, S))
    W_U, b_U = _readout_with_offset(hmm, offset)
    ch = transformer_channels(S)
    belief, inp, score = ch["belief"], ch["input"], ch["score"].start
    d_model, d_head = 2 * S + 1, S
    d_vocab, n_pos = (V + 1, n_ctx + 1) if bos else (V, n_ctx)
    model = build_transformer(TransformerConfig(n_layers=1, n_heads=1, d_model=d_model, d_head=d_head,
                                                positional="standard", normalization="none"),
                              d_vocab, n_pos, dtype=dtype)

    p = torch.arange(n_pos, dtype=torch.float64)
    if bos:
        scores = torch.where(p > 0, -p * math.log(decay) + math.log1p(-decay), torch.zeros_like(p))
        gain = 1.0 / (1.0 - decay)
    else:
        scores, gain = -p * math.log(decay), 1.0
    zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
    embed = zeros(d_vocab, d_model)
    embed[:V, inp] = v
    pos = zeros(n_pos, d_model)
    pos[:, score] = scores
    q_bias = zeros(d_head)
    q_bias[0] = math.sqrt(d_head)
    k_weight = zeros(d_head, d_model)
    k_weight[0, score] = 1.0
    v_weight = zeros(d_head, d_model)
    v_weight[:, inp] = torch.eye(S, dtype=torch.float64)
    o_weight = zeros(d_model, d_head)
    o_weight[belief, :] = gain * torch.eye(S, dtype=torch.float64)
    unembed = zeros(d_vocab, d_model)
    unembed[:V, belief] = W_U.T
    unembed_bias = torch.full((d_vocab,), NEVER_LOGIT, dtype=torch.float64)
    unembed_bias[:V] = b_U
    values = {
        "embed.weight": embed, "pos_embed.weight": pos,
        "blocks.0.attn.q.weight": zeros(d_head, d_model), "blocks.0.attn.q.bias": q_bias,
        "blocks.0.attn.k.weight": k_weight, "blocks.0.attn.k.bias": zeros(d_head),
        "blocks.0.attn.v.weight": v_weight, "blocks.0.attn.v.bias": zeros(d_head),
        "blocks.0.attn.o.weight": o_weight, "blocks.0.attn.o.bias": zeros(d_model),
        "unembed.weight": unembed, "unembed.bias": unembed_bias,
    }
    state = model.state_dict()
    if set(state) != set(values):
        raise RuntimeError(f"unexpected TransformerLens state-dict keys: {sorted(set(state) ^ set(values))}")
    for key, value in values.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise RuntimeError(f"{key}: expected shape {tuple(value.shape)}, the model has {tuple(state[key].shape)}")
        state[key] = value.to(dtype=state[key].dtype, device=state[key].device)
    model.load_state_dict(state)
    model.construction = {"decay": decay, "bos": bos, "channels": ch}
    return model


def multihead_channels(n_states: int, n_tokens: int, n_pos: int) -> dict[str, slice]:
    """Residual-stream layout of :func:`multihead_transformer_construction` (d_model = S + V + n_pos):
    ``belief`` [0, S): ``eta_hat - pi`` (the current token's ``v[x]`` from the embedding plus every head's
    output); ``token`` [S, S + V): the current token one-hot (the heads' values); ``position``: the position one-hot
    (queries and keys)."""
    S, V = n_states, n_tokens
    return {"belief": slice(0, S), "token": slice(S, S + V), "position": slice(S + V, S + V + n_pos)}


def multihead_transformer_construction(hmm: HMM, n_ctx: int, heads=None, *, offset=None,
                                       dtype: torch.dtype = torch.float64):
    """A 1-layer attention-only TransformerLens native model (no normalisation, BOS first) with one head per
    generator of :func:`interp.hmm.heads.head_count` (default: at ``n_ctx``), computing :func:`multihead_beliefs`.

    Layout (:func:`multihead_channels`): the token embedding writes ``v[x]`` into the belief channels (lag 0, kept
    by the skip path) and a one-hot into the token channels; the positional embedding writes a position one-hot.
    Head j (d_head = max(n_ctx + 1, V)) has the query ``sqrt(d_head) e_t`` at position t and the key
    ``(S_j[0, p], ..., S_j[n_ctx, p])`` at key position p, so its score is any lower-triangular ``S_j[t, p]``:
    ``log(a_j(t - p) / g_j)`` for a real key at lag >= 1 (``NEVER_LOGIT`` where the weight is 0 and at lag 0),
    and on BOS (value 0) the rest of the row, ``log(1 - sum_{k=1}^{t-1} a_j(k) / g_j)``, with
    ``g_j = 2 sum_k a_j(k)`` so that the rest is at least 1/2. Its value is the token one-hot and W_O writes
    ``g_j M_j`` into the belief channels. The belief channels at position p are then ``eta_hat - pi`` after the first
    p real tokens (0 at BOS); the unembedding reads them (:func:`readout_logits_params`, BOS never predicted).
    Inputs come from :func:`to_tokens_with_bos`. A process that needs no head gets one with zero output."""
    from interp.hmm.heads import head_count
    from interp.models.configs import TransformerConfig
    from interp.models.transformer import build_transformer

    V, S = hmm.n_tokens, hmm.n_states
    heads = head_count(hmm, n_ctx) if heads is None else heads
    if n_ctx > heads.context:
        raise ValueError(f"the heads were solved for context {heads.context}, the model has n_ctx {n_ctx}")
    W_U, b_U = _readout_with_offset(hmm, offset)
    n_pos, d_vocab = n_ctx + 1, V + 1
    ch = multihead_channels(S, V, n_pos)
    belief, tok, pos_ch = ch["belief"], ch["token"], ch["position"]
    n_heads, d_model, d_head = max(heads.n_heads, 1), S + V + n_pos, max(n_pos, V)
    model = build_transformer(TransformerConfig(n_layers=1, n_heads=n_heads, d_model=d_model, d_head=d_head,
                                                positional="standard", normalization="none"),
                              d_vocab, n_pos, dtype=dtype)

    zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
    eye = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731
    embed = zeros(d_vocab, d_model)
    embed[:V, belief] = token_vectors(hmm).cpu()
    embed[:V, tok] = eye(V)
    pos = zeros(n_pos, d_model)
    pos[:, pos_ch] = eye(n_pos)
    q_weight, k_weight = zeros(n_heads * d_head, d_model), zeros(n_heads * d_head, d_model)
    v_weight, o_weight = zeros(n_heads * d_head, d_model), zeros(d_model, n_heads * d_head)
    t = torch.arange(n_pos)
    for j in range(heads.n_heads):
        rows = slice(j * d_head, (j + 1) * d_head)
        a = heads.weights[j, :n_ctx].to(torch.float64)  # a_j(k), k = 0..n_ctx-1
        gain = 2.0 * float(a.sum()) or 1.0  # a head no lag uses writes nothing either way
        lag = (t[:, None] - t[None, :]).clamp(0, n_ctx - 1)
        real = (t[None, :] >= 1) & (t[:, None] > t[None, :])  # real keys at lag >= 1
        w = torch.where(real, a[lag] / gain, zeros(1))
        scores = torch.where(w > 0, torch.log(torch.where(w > 0, w, 1.0)), NEVER_LOGIT)
        scores[:, 0] = torch.log1p(-w.sum(1))  # BOS takes the rest of the row
        q_weight[rows][:n_pos, pos_ch] = math.sqrt(d_head) * eye(n_pos)
        k_weight[rows][:n_pos, pos_ch] = scores
        v_weight[rows][:V, tok] = eye(V)
        o_weight[belief, j * d_head:j * d_head + V] = gain * heads.matrices[j].to(torch.float64).T
    unembed = zeros(d_vocab, d_model)
    unembed[:V, belief] = W_U.T
    unembed_bias = torch.full((d_vocab,), NEVER_LOGIT, dtype=torch.float64)
    unembed_bias[:V] = b_U
    values = {
        "embed.weight": embed, "pos_embed.weight": pos,
        "blocks.0.attn.q.weight": q_weight, "blocks.0.attn.q.bias": zeros(n_heads * d_head),
        "blocks.0.attn.k.weight": k_weight, "blocks.0.attn.k.bias": zeros(n_heads * d_head),
        "blocks.0.attn.v.weight": v_weight, "blocks.0.attn.v.bias": zeros(n_heads * d_head),
        "blocks.0.attn.o.weight": o_weight, "blocks.0.attn.o.bias": zeros(d_model),
        "unembed.weight": unembed, "unembed.bias": unembed_bias,
    }
    state = model.state_dict()
    if set(state) != set(values):
        raise RuntimeError(f"unexpected TransformerLens state-dict keys: {sorted(set(state) ^ set(values))}")
    for key, value in values.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise RuntimeError(f"{key}: expected shape {tuple(value.shape)}, the model has {tuple(state[key].shape)}")
        state[key] = value.to(dtype=state[key].dtype, device=state[key].device)
    model.load_state_dict(state)
    model.construction = {"heads": heads.n_heads, "bos": True, "channels": ch}
    return model
