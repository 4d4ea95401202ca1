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
import inspect
import os
import sys
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
    for folder in folders if "." not in module else []:
        for path, package in ((folder / f"{module}.py", False), (folder / module / "__init__.py", True)):
            if path.is_file():
                return _import_file(module, path, package)
    where = ", ".join(str(f) for f in folders)
    raise ValueError(f"no module {module!r} on the Python path, nor a {module}.py in {where}")


def _import_file(module: str, path: Path, package: bool):
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location(module, path, submodule_search_locations=[str(path.parent)] if package else None)
    mod = module_from_spec(spec)
    sys.modules[module] = mod  # as an import would: later imports of the name (and pickling) find it
    try:
        spec.loader.exec_module(mod)
    except BaseException as err:
        sys.modules.pop(module, None)
        if not isinstance(err, Exception):
            raise
        raise ValueError(f"importing {module!r} from {path} failed: {type(err).__name__}: {err}") from err
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
