"""Named processes. Adding one is a function returning an :class:`HMM` plus ``@register``.

Every function takes keyword parameters only; random families take an explicit ``seed``.
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np
import torch

from interp.hmm.core import HMM

_REGISTRY: dict[str, Callable[..., HMM]] = {}


def register(name: str):
    """Decorator adding a process constructor to the registry under ``name``."""

    def wrap(fn: Callable[..., HMM]) -> Callable[..., HMM]:
        if name in _REGISTRY:
            raise ValueError(f"process {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_processes() -> list[str]:
    return sorted(_REGISTRY)


def get_process(name: str, **params) -> HMM:
    """Build the registered process ``name`` with ``params``; unknown names or parameters raise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown process {name!r}; known: {', '.join(list_processes())}")
    fn = _REGISTRY[name]
    allowed = inspect.signature(fn).parameters
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"process {name!r} has no parameter {unknown[0]!r}; it takes: {', '.join(allowed)}")
    try:
        hmm = fn(**params)
    except TypeError as err:  # e.g. a string where a number belongs
        raise ValueError(f"process {name!r}: bad parameter value ({err})") from err
    bound = inspect.signature(fn).bind(**params)
    bound.apply_defaults()
    hmm.name, hmm.params = name, dict(bound.arguments)
    return hmm


def _probability(value: float, name: str, *, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (0.0 <= value <= 1.0) or (open_low and value == 0.0):
        raise ValueError(f"{name} must lie in {'(0' if open_low else '[0'}, 1], got {value}")
    return value


@register("mess3")
def mess3(x: float = 0.15, a: float = 0.6) -> HMM:
    """Mess3(x, a): 3 states, 3 tokens. ``T[k, i, j] = Smat[i, j] E[j, k]`` with ``y = 1 - 2x`` on the
    diagonal of Smat and ``x`` off it, ``a`` on the diagonal of E and ``b = (1 - a) / 2`` off it."""
    x, a = _probability(x, "x"), _probability(a, "a")
    if x > 0.5:
        raise ValueError(f"x must lie in [0, 1/2] so that 1 - 2x >= 0, got {x}")
    y, b = 1.0 - 2.0 * x, (1.0 - a) / 2.0
    smat = torch.full((3, 3), x, dtype=torch.float64).fill_diagonal_(y)
    emit = torch.full((3, 3), b, dtype=torch.float64).fill_diagonal_(a)
    T = torch.einsum("ij,jk->kij", smat, emit)
    return HMM(T)


@register("rrxor")
def rrxor(p: float = 0.5) -> HMM:
    """Random-random-XOR: two random bits (1 with probability p), then their XOR.

    States: 0 start, 1 saw a 0, 2 saw a 1, 3 "XOR is 1", 4 "XOR is 0".
    """
    p = _probability(p, "p")
    T = torch.zeros(2, 5, 5, dtype=torch.float64)
    T[0, 0, 1], T[1, 0, 2] = 1 - p, p
    T[0, 1, 4], T[1, 1, 3] = 1 - p, p  # 0 xor 0 = 0, 0 xor 1 = 1
    T[0, 2, 3], T[1, 2, 4] = 1 - p, p  # 1 xor 0 = 1, 1 xor 1 = 0
    T[1, 3, 0] = 1.0
    T[0, 4, 0] = 1.0
    return HMM(T)


@register("z1r")
def z1r(p: float = 0.5) -> HMM:
    """Zero-one-random: the period-3 process 0, 1, then a random bit (1 with probability p).

    States: 0 emits 0, 1 emits 1, 2 emits the random bit; each moves to the next mod 3.
    """
    p = _probability(p, "p")
    T = torch.zeros(2, 3, 3, dtype=torch.float64)
    T[0, 0, 1] = 1.0
    T[1, 1, 2] = 1.0
    T[0, 2, 0], T[1, 2, 0] = 1 - p, p
    return HMM(T)


@register("golden_mean")
def golden_mean(p: float = 0.5) -> HMM:
    """Golden mean process: binary sequences with no two consecutive 0s.

    State 0 emits 1 (stay) with probability p or 0 (go to state 1) with 1 - p; state 1 must emit 1.
    """
    p = _probability(p, "p")
    T = torch.zeros(2, 2, 2, dtype=torch.float64)
    T[1, 0, 0], T[0, 0, 1] = p, 1 - p
    T[1, 1, 0] = 1.0
    return HMM(T)


@register("even")
def even(p: float = 0.5) -> HMM:
    """Even process: blocks of 1s of even length separated by 0s.

    State 0 emits 0 (stay) with probability p or 1 (go to state 1) with 1 - p; state 1 must emit 1.
    """
    p = _probability(p, "p")
    T = torch.zeros(2, 2, 2, dtype=torch.float64)
    T[0, 0, 0], T[1, 0, 1] = p, 1 - p
    T[1, 1, 0] = 1.0
    return HMM(T)


def _check_size(value: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _sparse_rows(rng: np.random.Generator, rows: int, cols: int, nnz: int, alpha: float) -> np.ndarray:
    """Row-stochastic (rows, cols) matrix with ``nnz`` random non-zeros per row, Dirichlet(alpha) weights."""
    nnz = min(nnz, cols)
    out = np.zeros((rows, cols))
    for r in range(rows):
        idx = rng.choice(cols, size=nnz, replace=False)
        out[r, idx] = rng.dirichlet(np.full(nnz, alpha))
    return out


@register("random")
def random(n_states: int = 3, n_tokens: int = 3, seed: int = 0, alpha: float = 1.0,
           emission: bool = True) -> HMM:
    """Dense random HMM from ``seed``.

    emission=True: emission form with Dirichlet(alpha) rows of A (S x S) and C (S x V), the
    stationary start (what hmmlearn and Belief Nets model). emission=False: a general
    edge-emitting HMM, each row of the (S, V*S) joint table Dirichlet(alpha).
    """
    s, v = _check_size(n_states, "n_states"), _check_size(n_tokens, "n_tokens")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    rng = np.random.default_rng(seed)
    if emission:
        A = rng.dirichlet(np.full(s, alpha), size=s)
        C = rng.dirichlet(np.full(v, alpha), size=s)
        T = torch.as_tensor(C.T[:, :, None] * A[None], dtype=torch.float64)
    else:
        joint = rng.dirichlet(np.full(v * s, alpha), size=s)  # (S, V*S)
        T = torch.as_tensor(joint.reshape(s, v, s).transpose(1, 0, 2), dtype=torch.float64)
    return HMM(T)


@register("cyclic")
def cyclic(n_states: int = 64, n_tokens: int = 128, seed: int = 0, shift_weight: float = 0.9,
           transition_nnz: int = 4, emission_nnz: int = 4, alpha: float = 1.0) -> HMM:
    """The Belief Net paper's family in emission form.

    ``A = shift_weight * (cyclic shift i -> i+1) + (1 - shift_weight) * sparse random``;
    ``C`` sparse random; each sparse row has ``*_nnz`` non-zeros with Dirichlet(alpha) weights.
    ``n_tokens > n_states`` is the undercomplete regime, ``n_tokens < n_states`` overcomplete.
    Starts in the stationary distribution.
    """
    s, v = _check_size(n_states, "n_states"), _check_size(n_tokens, "n_tokens")
    w = _probability(shift_weight, "shift_weight")
    tn, en = _check_size(transition_nnz, "transition_nnz"), _check_size(emission_nnz, "emission_nnz")
    rng = np.random.default_rng(seed)
    shift = np.roll(np.eye(s), 1, axis=1)
    A = w * shift + (1 - w) * _sparse_rows(rng, s, s, tn, alpha)
    C = _sparse_rows(rng, s, v, en, alpha)
    T = torch.as_tensor(C.T[:, :, None] * A[None], dtype=torch.float64)
    return HMM(T)


@register("blocked")
def blocked(n_groups: int = 64, group_size: int = 256, tokens_per_group: int = 4, successors: int = 4, seed: int = 0,
            self_weight: float = 0.5):
    """Block-sparse HMM (``interp.hmm.blocked.BlockedHMM``): groups of ``group_size`` states, each emitting its own
    ``tokens_per_group`` tokens and moving to ``successors`` groups; never stored as a dense tensor."""
    from interp.hmm.blocked import random_blocked

    return random_blocked(n_groups, group_size, tokens_per_group, successors, seed, self_weight)
