"""Compiled CPU kernels for the forward filter (``kernels.cpp``), built on first use with the machine's C++
compiler and cached.

Why: torch runs a filter step as separate operations. With few states each costs a few microseconds of
fixed overhead whatever its size (Mess3: six per position); with many states the emission factor and its
normaliser are four passes over the (n, S) beliefs beside the product. One compiled loop over all
positions (few states) or one fused pass per step (many states) removes that.

The library is linked against torch's own OpenMP runtime, so its parallel regions use the same threads as
torch's operations (numba, with a second runtime, lost most of its gain to the two pools contending for the
cores). It is built with ``-march=native`` into ``$INTERP_CACHE_DIR`` (default ``~/.cache/interp``; the
temporary folder if that is not writable) under a name keyed by the source, compiler, flags, torch and CPU,
written atomically. Without a compiler (``$CXX``,
else ``g++`` or ``c++``), or with ``INTERP_NATIVE=0``, :func:`library` returns None and the filter uses its
torch implementation, which gives the same results; a failed build warns once.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from interp.io import fingerprint

_SOURCE = Path(__file__).with_name("kernels.cpp")
# On x86, 512-bit vectors where the CPU has them: GCC's tuning for Skylake-SP and later servers prefers 256-bit
# ones, which doubles the blocked filter's accumulators past the 32 registers (docs/benchmarks.md).
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-fopenmp", "-shared", "-fPIC") + (
    ("-mprefer-vector-width=512",) if platform.machine().lower() in ("x86_64", "amd64") else ())
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}

_P, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
_SIGNATURES = {
    "interp_filter_small": [_P, _P, _P, _P, _I64, _I64, _I64, _I64, _I32, _P, _P, _I32],
    "interp_emit_normalise": [_P, _P, _P, _P, _P, _P, _I64, _I64, _P, _I32, _I32],
    "interp_stream_copy": [_P, _P, _I64, _I32],
    "interp_blocked_filter": [_P, _P, _P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _P, _P, _P, _I32],
}


def enabled() -> bool:
    """False when ``INTERP_NATIVE=0`` asks for the torch filter only."""
    return os.environ.get("INTERP_NATIVE", "1") != "0"


def compiler() -> str | None:
    """The C++ compiler to build with: ``$CXX``, else ``g++`` or ``c++`` on the PATH."""
    return _find_compiler(os.environ.get("CXX"), os.environ.get("PATH"))


@functools.lru_cache(maxsize=8)
def _find_compiler(cxx: str | None, path: str | None) -> str | None:  # a PATH search is ~0.3 ms: once
    if cxx:
        return shutil.which(cxx, path=path)
    return shutil.which("g++", path=path) or shutil.which("c++", path=path)


def cache_dir() -> Path:
    root = os.environ.get("INTERP_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "interp"


def _torch_openmp() -> Path | None:
    """torch's bundled OpenMP runtime, if it ships one (Linux wheels do)."""
    lib = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    return lib if lib.exists() else None


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() + platform.processor()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _untrusted(path: Path) -> str | None:
    """Why ``path`` may not be trusted to hold code this process loads: owned by another user, or writable by
    others. None when it is safe."""
    st = path.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"{path} is owned by another user (uid {st.st_uid})"
    if st.st_mode & 0o022:
        return f"{path} is writable by others (mode {st.st_mode & 0o777:o})"
    return None


def _build(cxx: str) -> Path:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    gomp = _torch_openmp()
    link = [str(gomp), f"-Wl,-rpath,{gomp.parent}"] if gomp is not None else []
    key = fingerprint([_SOURCE.read_text(), cxx, version, *_FLAGS, *link, torch.__version__, _cpu_id()])
    name = f"kernels-{key}.so"
    refused = []
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"interp-{os.getuid()}"):
        try:  # an unwritable cache (a read-only home) falls back to the temporary folder
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue
        why = _untrusted(folder) or ((folder / name).exists() and _untrusted(folder / name))
        if why:  # code others could have written is never loaded
            refused.append(why)
            continue
        if (folder / name).exists():
            return folder / name
        try:
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
            break
        except OSError:
            continue
    else:
        raise RuntimeError(f"no safe writable folder for the compiled kernels ({cache_dir()} or the temporary "
                           f"folder){': ' + '; '.join(refused) if refused else ''}")
    target = folder / name
    os.close(fd)
    try:
        run = subprocess.run([cxx, *_FLAGS, str(_SOURCE), "-o", tmp, *link], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{cxx} failed to build {_SOURCE.name}:\n{run.stderr[-2000:]}")
        os.replace(tmp, target)  # atomic: a concurrent build of the same key writes the same file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on first use; None without a compiler or when disabled."""
    if not enabled():
        return None
    cxx = compiler()
    if cxx is None:
        return None
    with _lock:
        if cxx not in _loaded:
            try:
                lib = ctypes.CDLL(str(_build(cxx)))
                for name, args in _SIGNATURES.items():
                    fn = getattr(lib, name)
                    fn.argtypes, fn.restype = args, None
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                warnings.warn(f"interp: compiled filter kernels unavailable, using torch ({err})", RuntimeWarning,
                              stacklevel=2)
                lib = None
            _loaded[cxx] = lib
        return _loaded[cxx]


def _check(name: str, t: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    if t.device.type != "cpu" or t.dtype != dtype or tuple(t.shape) != shape or not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous CPU {dtype} tensor of shape {shape}, got {t.dtype} "
                         f"{tuple(t.shape)} on {t.device} (contiguous: {t.is_contiguous()})")
    return t.data_ptr()


def filter_small(lib: ctypes.CDLL, tokens: torch.Tensor, initial: torch.Tensor, A: torch.Tensor, C: torch.Tensor,
                 side: str, beliefs: torch.Tensor | None, norms: torch.Tensor) -> None:
    """The whole emission-form filter in one call: fills norms (L, n) with ``P(x_t | x_<t)`` and, unless None,
    beliefs (L, n, S) with the posterior after token t (time-major buffers).

    tokens: (n, L) int64, each in [0, V) (not checked here); initial (S,), A (S, S), C (S, V): float64.
    side: "source" (``T[x, i, j] = C[i, x] A[i, j]``) or "destination" (``A[i, j] C[j, x]``)."""
    n, L = tokens.shape
    S, V = C.shape
    f8 = torch.float64
    lib.interp_filter_small(
        _check("tokens", tokens, torch.int64, (n, L)), _check("initial", initial, f8, (S,)),
        _check("A", A, f8, (S, S)), _check("C", C, f8, (S, V)), n, L, S, V, int(side == "source"),
        None if beliefs is None else _check("beliefs", beliefs, f8, (L, n, S)),
        _check("norms", norms, f8, (L, n)), torch.get_num_threads())


def emit_normalise(lib: ctypes.CDLL, a: torch.Tensor, table: torch.Tensor, tokens: torch.Tensor,
                   weights: torch.Tensor, out: torch.Tensor, norm: torch.Tensor, *, copy: torch.Tensor | None = None,
                   copy_input: bool = False) -> torch.Tensor:
    """For every row r: ``norm[r] = (a[r] * table[tokens[r]]) @ weights`` and
    ``out[r] = a[r] * table[tokens[r]] / norm[r]``; returns out. Unless None, ``copy`` receives a copy of a
    (``copy_input``) or of out, written with streaming stores (it is not read back soon).

    a, out, copy: (n, S); table: (V, S); weights: (S,); norm: (n,) float64; tokens: (n,) int64 in [0, V) (not
    checked here). ``out`` may be ``a``; ``copy`` must not overlap them."""
    n, S = a.shape
    V = table.shape[0]
    f8 = torch.float64
    lib.interp_emit_normalise(
        _check("a", a, f8, (n, S)), _check("table", table, f8, (V, S)), _check("tokens", tokens, torch.int64, (n,)),
        _check("weights", weights, f8, (S,)), _check("out", out, f8, (n, S)), _check("norm", norm, f8, (n,)),
        n, S, None if copy is None else _check("copy", copy, f8, (n, S)), int(copy_input), torch.get_num_threads())
    return out


def stream_copy(lib: ctypes.CDLL, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``dst.copy_(src)`` for contiguous float64 CPU tensors of one shape, with streaming stores."""
    shape = tuple(src.shape)
    lib.interp_stream_copy(_check("src", src, torch.float64, shape), _check("dst", dst, torch.float64, shape),
                           src.numel(), torch.get_num_threads())
    return dst


def blocked_filter(lib: ctypes.CDLL, tokens: torch.Tensor, move: torch.Tensor, weight: torch.Tensor,
                   mu: torch.Tensor, group: torch.Tensor, blocks: torch.Tensor, emission: torch.Tensor,
                   order: torch.Tensor, log_z: torch.Tensor, beliefs: torch.Tensor | None) -> int:
    """The block-sparse filter (:meth:`interp.hmm.blocked.BlockedHMM.filter`) in one call: fills log_z (n, L) and,
    unless None, beliefs (n, L, k); returns the number of (rows, k) @ (k, k) products it made.

    tokens (n, L) int64; move (n, L - 1) int64, the block index g d + e of each step, and weight (n, L - 1) its
    probability (0 where no move leads there); mu (G, k) and group (n,) int64, the first token's group; blocks
    (P, k, k); emission (V, k), row x the emission probability of token x from the states of its group; order (P,)
    int64, a permutation of the blocks: the order of the passes over them (speed only). Indices are not checked
    here."""
    n, L = tokens.shape
    P, k, _ = blocks.shape
    f8, i8 = torch.float64, torch.int64
    calls = torch.zeros(1, dtype=i8)
    lib.interp_blocked_filter(
        _check("tokens", tokens, i8, (n, L)), _check("move", move, i8, (n, L - 1)),
        _check("weight", weight, f8, (n, L - 1)), _check("mu", mu, f8, tuple(mu.shape)),
        _check("group", group, i8, (n,)), _check("blocks", blocks, f8, (P, k, k)),
        _check("emission", emission, f8, (emission.shape[0], k)), _check("order", order, i8, (P,)), n, L, k, P,
        _check("log_z", log_z, f8, (n, L)),
        None if beliefs is None else _check("beliefs", beliefs, f8, (n, L, k)), calls.data_ptr(),
        torch.get_num_threads())
    return int(calls)
