"""Named processes. Adding one is a function returning an :class:`HMM` plus ``@register``.

Every function takes keyword parameters only; random families take an explicit ``seed``.

Processes defined outside this file reach the registry in two ways:

- a module of the user's that registers them when imported: :func:`import_process_module` (a config's
  ``[process] module``, ``interp describe --module``) imports it from the Python path, or else from a
  ``<module>.py`` (or ``<module>/__init__.py``) in a folder of ``$INTERP_PROCESS_PATH`` or the current folder;
- an installed package's entry points in the group ``interp.processes``, loaded the first time a name is not
  found or the registry is listed: one naming a module registers what that module registers, one naming a
  function registers it under the entry point's name.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from interp.hmm.core import HMM

_REGISTRY: dict[str, Callable[..., HMM]] = {}

ENTRY_POINT_GROUP = "interp.processes"
PATH_VARIABLE = "INTERP_PROCESS_PATH"  # folders searched for a process module the Python path does not hold
_entry_points_loaded = False


def register(name: str):
    """Decorator adding a process constructor to the registry under ``name``."""

    def wrap(fn: Callable[..., HMM]) -> Callable[..., HMM]:
        old = _REGISTRY.get(name)
        # the same function defined again (a module imported anew, a notebook cell run twice) replaces itself
        same = old is not None and (old.__module__, old.__qualname__) == (fn.__module__, fn.__qualname__)
        if old is not None and not same:
            raise ValueError(f"process {name!r} is already registered (by {old.__module__}.{old.__qualname__})")
        _REGISTRY[name] = fn
        return fn

    return wrap


def _load_entry_points() -> None:
    """Register the processes of installed packages (entry-point group ``interp.processes``), once."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    from importlib.metadata import entry_points

    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as err:  # noqa: BLE001 - a broken plugin is named, in one line
            _entry_points_loaded = False  # so that a fixed installation is read again
            raise ValueError(f"entry point {ep.name!r} = {ep.value!r} of group {ENTRY_POINT_GROUP!r} cannot be "
                             f"loaded: {type(err).__name__}: {err}") from err
        if callable(obj) and not inspect.ismodule(obj) and ep.name not in _REGISTRY:
            register(ep.name)(obj)


def process_search_folders() -> list[Path]:
    """Where :func:`import_process_module` looks for a module the Python path does not hold: the folders of
    ``$INTERP_PROCESS_PATH``, then the current folder."""
    folders = [Path(p) for p in os.environ.get(PATH_VARIABLE, "").split(os.pathsep) if p]
    return [*folders, Path.cwd()]


def add_process_folder(folder: str | Path) -> None:
    """Search ``folder`` (e.g. the folder of a config) for process modules, in this process and in the worker
    processes it starts (they inherit the environment)."""
    folder = str(Path(folder).resolve())
    current = [p for p in os.environ.get(PATH_VARIABLE, "").split(os.pathsep) if p]
    if folder not in current:
        os.environ[PATH_VARIABLE] = os.pathsep.join([*current, folder])


def import_process_module(module: str):
    """Import the user's module ``module`` (which registers processes): from the Python path, or else from
    :func:`process_search_folders`. A module that is not found or fails to import raises ValueError."""
    if not isinstance(module, str) or not module or not all(part.isidentifier() for part in module.split(".")):
        raise ValueError(f"{module!r} is not a module name (e.g. 'my_processes')")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is None or not (module == err.name or module.startswith(err.name + ".")):
            raise ValueError(f"importing {module!r} failed: {type(err).__name__}: {err}") from err
    except Exception as err:  # noqa: BLE001 - the user's own code: one line naming it
        raise ValueError(f"importing {module!r} failed: {type(err).__name__}: {err}") from err
    folders = process_search_folders()
    # the import system's own finder over the user's folders (a module file or a package); the path stays as it is
    importlib.invalidate_caches()  # a module written since the last look (its folder's listing is cached)
    spec = None if "." in module else PathFinder.find_spec(module, [str(f) for f in folders])
    if spec is None:
        where = ", ".join(str(f) for f in folders)
        raise ValueError(f"no module {module!r} on the Python path, nor a {module}.py in {where}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod  # as an import would: later imports of the name (and pickling) find it
    try:
        spec.loader.exec_module(mod)
    except BaseException as err:
        sys.modules.pop(module, None)
        if not isinstance(err, Exception):
            raise
        raise ValueError(f"importing {module!r} from {spec.origin} failed: {type(err).__name__}: {err}") from err
    return mod


def list_processes() -> list[str]:
    """Every registered name, the installed packages' entry points included."""
    _load_entry_points()
    return sorted(_REGISTRY)


def has_process(name: str) -> bool:
    """Whether ``name`` is registered (the entry points are read only when it is not built in)."""
    if name not in _REGISTRY:
        _load_entry_points()
    return name in _REGISTRY


def get_process(name: str, **params) -> HMM:
    """Build the registered process ``name`` with ``params``; unknown names or parameters raise."""
    if not has_process(name):
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
    # a parameter left at None follows another (rrxor's p1, p2 follow p): its label shows the one that was set
    hmm.name, hmm.params = name, {k: v for k, v in bound.arguments.items() if v is not None}
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


@register("rotation")
def rotation(p: float = 0.9, a: float = 0.6) -> HMM:
    """3 states, 3 tokens: the hidden state rotates ``i -> i + 1 (mod 3)`` with probability ``p`` and stays with
    ``1 - p``; emissions are Mess3's (``a`` on the diagonal of E, ``b = (1 - a) / 2`` off it), ``T[k, i, j] =
    Smat[i, j] E[j, k]``. Smat is doubly stochastic (pi uniform) and its zero-sum eigenvalues are the complex pair
    ``1 - p + p e^{+-2 pi i / 3} = 1 - 3p/2 +- i p sqrt(3) / 2``, so the first-order update turns a lag (a head
    count above one, docs/construction.md "How many heads")."""
    p, a = _probability(p, "p", open_low=True), _probability(a, "a")
    b = (1.0 - a) / 2.0
    eye = torch.eye(3, dtype=torch.float64)
    smat = (1.0 - p) * eye + p * torch.roll(eye, 1, dims=1)
    emit = torch.full((3, 3), b, dtype=torch.float64).fill_diagonal_(a)
    return HMM(torch.einsum("ij,jk->kij", smat, emit))


def _rrxor_T(p1: float, p2: float) -> torch.Tensor:
    T = torch.zeros(2, 5, 5, dtype=torch.float64)
    T[0, 0, 1], T[1, 0, 2] = 1 - p1, p1
    T[0, 1, 4], T[1, 1, 3] = 1 - p2, p2  # 0 xor 0 = 0, 0 xor 1 = 1
    T[0, 2, 3], T[1, 2, 4] = 1 - p2, p2  # 1 xor 0 = 1, 1 xor 1 = 0
    T[1, 3, 0] = 1.0
    T[0, 4, 0] = 1.0
    return T


@register("rrxor")
def rrxor(p: float = 0.5, p1: float | None = None, p2: float | None = None) -> HMM:
    """Random-random-XOR: two random bits (the first 1 with probability p1, the second with p2), then their XOR.

    ``p1`` and ``p2`` default to ``p`` (``rrxor(p=x)`` is both bits 1 with probability x). They are P(1);
    simplexity's ``rrxor(p1, p2)`` and epsilon-transformers' ``RRXOR(pR1, pR2)`` take P(0), so theirs is
    ``rrxor(p1=1 - p1, p2=1 - p2)`` here, with the same tokens and the same state order.
    States: 0 start, 1 saw a 0, 2 saw a 1, 3 "XOR is 1", 4 "XOR is 0".
    """
    p = _probability(p, "p")
    p1 = p if p1 is None else _probability(p1, "p1")
    p2 = p if p2 is None else _probability(p2, "p2")
    return HMM(_rrxor_T(p1, p2))


@register("leaky_rrxor")
def leaky_rrxor(p1: float = 0.5, p2: float = 0.5, eps: float = 0.1) -> HMM:
    """RRXOR mixed with uniform noise: ``T = (1 - eps) T_rrxor(p1, p2) + eps / 10`` on every (token, state) pair.

    ``p1``, ``p2`` are P(1) of the two random bits as in ``rrxor``; ``eps`` in [0, 1] is the leak (0: RRXOR,
    1: fair i.i.d. bits). Simplexity's ``leaky_rrxor(p1, p2, epsilon)`` takes P(0): it is
    ``leaky_rrxor(1 - p1, 1 - p2, epsilon)`` here. Every word has positive probability once ``eps > 0``.
    """
    p1, p2, eps = _probability(p1, "p1"), _probability(p2, "p2"), _probability(eps, "eps")
    return HMM((1 - eps) * _rrxor_T(p1, p2) + eps / 10)


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
def golden_mean(p: float = 0.5, R: int = 1, k: int = 1) -> HMM:
    """Golden mean process, the (R, k) generalisation: 0s in runs of exactly R, 1s in runs of at least k.

    R = k = 1 (the default) is the golden mean: no two consecutive 0s. States 0..R+k-1: state 0 emits 1 (stay)
    with probability p or 0 (go to state 1) with 1 - p; states 1..R-1 emit 0, states R..R+k-1 emit 1, each
    moving to the next (the last back to 0). Tokens are exchanged against epsilon-transformers'
    ``GoldenMean(R, k, p)`` (R 1s, at least k 0s): theirs is ``golden_mean(1 - p, R, k)`` here with 0 <-> 1,
    and simplexity's ``no_consecutive_ones(p)`` is ``golden_mean(1 - p)`` with 0 <-> 1.
    """
    p, R, k = _probability(p, "p"), _check_size(R, "R"), _check_size(k, "k")
    n = R + k
    T = torch.zeros(2, n, n, dtype=torch.float64)
    T[1, 0, 0], T[0, 0, 1] = p, 1 - p
    for i in range(1, n):
        T[0 if i < R else 1, i, (i + 1) % n] = 1.0
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


@register("coin")
def coin(p: float = 0.5) -> HMM:
    """A biased coin: independent tokens, 1 with probability p (1 state, 2 tokens).

    ``p`` is P(1), as in ``rrxor`` and ``z1r``; simplexity's ``coin(p)`` takes P(0): it is ``coin(1 - p)`` here.
    """
    p = _probability(p, "p")
    return HMM(torch.tensor([[[1 - p]], [[p]]], dtype=torch.float64))


@register("sns")
def sns(p: float = 0.5, q: float = 0.5) -> HMM:
    """Simple nonunifilar source (Marzen & Crutchfield 2017, arXiv:1702.08565, Fig. 2): isolated 1s.

    State 0 emits 0 and stays with 1 - p, or emits 0 and moves to state 1 with p; state 1 emits 0 and stays with
    1 - q, or emits 1 and moves to state 0 with q. No ``11``. The same tokens, states and parameters as
    simplexity's ``sns(p, q)``. Both in (0, 1] so that both states recur.
    """
    p, q = _probability(p, "p", open_low=True), _probability(q, "q", open_low=True)
    T = torch.zeros(2, 2, 2, dtype=torch.float64)
    T[0, 0, 0], T[0, 0, 1] = 1 - p, p
    T[0, 1, 1], T[1, 1, 0] = 1 - q, q
    return HMM(T)


@register("nond")
def nond() -> HMM:
    """Nond (Marzen & Crutchfield 2017, arXiv:1702.08565): a nonunifilar 3-state source, no parameters.

    State 0 emits 0 and moves to 2; state 1 emits 1 and moves to 0 or 1 (1/2 each); state 2 emits 1 and moves to
    0, 1 or 2 (1/3 each). No ``00``. The same tokens and states as epsilon-transformers' ``Nond``.
    """
    T = torch.zeros(2, 3, 3, dtype=torch.float64)
    T[0, 0, 2] = 1.0
    T[1, 1, 0] = T[1, 1, 1] = 0.5
    T[1, 2, :] = 1.0 / 3.0
    return HMM(T)


@register("matching_parens")
def matching_parens(open_probs: tuple = (1.0, 0.5, 0.5)) -> HMM:
    """Balanced parentheses: token 0 is "(", token 1 is ")"; the state is the nesting depth 0..D, D = len(open_probs).

    At depth d < D the next token is "(" with probability ``open_probs[d]``, else ")"; at depth D it is ")".
    ``open_probs[0]`` must be 1 (depth 0 cannot close) and every entry lie in (0, 1]. The same tokens, states and
    parameter as simplexity's ``matching_parens(open_probs)``.
    """
    if not isinstance(open_probs, (list, tuple)) or not open_probs:
        raise ValueError(f"open_probs must be a non-empty list of probabilities, got {open_probs!r}")
    probs = [_probability(v, f"open_probs[{d}]", open_low=True) for d, v in enumerate(open_probs)]
    if probs[0] != 1.0:
        raise ValueError(f"open_probs[0] must be 1 (depth 0 cannot close), got {probs[0]}")
    n = len(probs) + 1
    T = torch.zeros(2, n, n, dtype=torch.float64)
    for d, o in enumerate(probs):
        T[0, d, d + 1] = o
        if d > 0:
            T[1, d, d - 1] = 1 - o
    T[1, n - 1, n - 2] = 1.0
    return HMM(T)


@register("mr_name")
def mr_name(p: float = 0.4, q: float = 0.25) -> HMM:
    """Mr. Name: tokens (and states, the last token) 0 "Mr.", 1 "Something", 2 "Blah", 3 "name".

    "Mr." is always followed by "name"; "name" by "Something" or "Blah" (1/2 each); "Something" by "Mr." with
    probability q, "Blah" with p, itself with 1 - p - q; "Blah" likewise with "Something" and "Blah" exchanged.
    The same tokens, states and parameters as simplexity's ``mr_name(p, q)``; q > 0 so that "Mr." recurs.
    """
    p, q = _probability(p, "p"), _probability(q, "q", open_low=True)
    if p + q > 1 + 1e-12:
        raise ValueError(f"p + q must be at most 1, got p={p}, q={q}")
    mr, something, blah, name = range(4)
    T = torch.zeros(4, 4, 4, dtype=torch.float64)
    T[name, mr, name] = 1.0
    T[something, name, something] = T[blah, name, blah] = 0.5
    for here, other in ((something, blah), (blah, something)):
        T[mr, here, mr], T[other, here, other], T[here, here, here] = q, p, max(1 - p - q, 0.0)  # rounds below 0 for some p + q = 1
    return HMM(T)


_DAYS = 7
_TOMORROW, _YESTERDAY, _WEEKEND, _WEEKDAY = 7, 8, 9, 10


@register("days_of_week")
def days_of_week() -> HMM:
    """Days of the week: 7 states (today), 11 tokens (the day names, tomorrow, yesterday, weekend, weekday).

    States 0-6 are Monday..Sunday; tokens 0-6 their names, 7 "tomorrow", 8 "yesterday", 9 "weekend", 10 "weekday".
    From every day, with weights out of 15: the next day's name 5 (moving there), each other day's name 1 (moving
    there), "tomorrow" 1 (to the next day), "yesterday" 1 (to the previous day), "weekday" 1 (to one of Monday..
    Friday, 1/5 each), "weekend" 1 (to Saturday or Sunday, 1/2 each). The same tokens and states as simplexity's
    ``days_of_week()``; epsilon-transformers' version divides by column sums and is not stochastic.
    """
    T = torch.zeros(11, _DAYS, _DAYS, dtype=torch.float64)
    for day in range(_DAYS):
        T[day, :, day] = 1.0
        T[day, (day - 1) % _DAYS, day] = 5.0
        T[_TOMORROW, day, (day + 1) % _DAYS] = 1.0
        T[_YESTERDAY, day, (day - 1) % _DAYS] = 1.0
    T[_WEEKDAY, :, :5] = 1.0 / 5.0
    T[_WEEKEND, :, 5:] = 1.0 / 2.0
    return HMM(T / 15.0)


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
            self_weight: float = 0.5, alpha: float = 1.0):
    """Block-sparse HMM (``interp.hmm.blocked.BlockedHMM``): groups of ``group_size`` states, each emitting its own
    ``tokens_per_group`` tokens and moving to ``successors`` groups; never stored as a dense tensor. ``alpha``: the
    Dirichlet concentration of the blocks' and emissions' rows (small: sparse rows, a state that remembers more)."""
    from interp.hmm.blocked import random_blocked

    return random_blocked(n_groups, group_size, tokens_per_group, successors, seed, self_weight, alpha)
