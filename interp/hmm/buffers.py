"""Large uninitialised CPU buffers for results (filter beliefs, sampled tokens), reused across calls.

A fresh buffer of a few hundred MB is mapped by the kernel page by page on first write, and zeroing those
pages (with huge-page compaction) can cost as much as the whole filter (docs/benchmarks.md). So, like
PyTorch's CUDA caching allocator, the buffers of at least ``POOL_MIN_BYTES`` stay mapped after the tensors that
used them are gone and serve the next request of about the same size. A block is handed out again only once
the array that the tensor's storage holds has been collected: every view, slice, ``.numpy()`` or transposed
result keeps that array, and so the block, alive. At most ``POOL_MAX_BYTES`` are kept; :func:`release_pool`
drops the idle ones.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import torch

POOL_MIN_BYTES = 1 << 20  # smaller requests come from numpy's allocator directly
POOL_MAX_BYTES = 1 << 30
_ALIGN = 64  # numpy only guarantees 16-byte alignment; vector stores want 64


class _Block:
    __slots__ = ("in_use", "raw")

    def __init__(self, nbytes: int):
        self.raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
        self.in_use = False

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes - _ALIGN


_pool: list[_Block] = []
_lock = threading.RLock()  # re-entrant: a collection inside _take may free a block


def _free(block: _Block) -> None:
    with _lock:
        block.in_use = False


def _take(nbytes: int) -> _Block | None:
    """A pooled block for ``nbytes`` (at most twice as large, so little memory sits unused), marked in use;
    None when the request is not pooled."""
    if nbytes < POOL_MIN_BYTES or nbytes > POOL_MAX_BYTES:
        return None
    with _lock:
        fits = [b for b in _pool if not b.in_use and nbytes <= b.nbytes <= 2 * nbytes]
        if fits:
            block = min(fits, key=lambda b: b.nbytes)
        else:
            held = sum(b.nbytes for b in _pool)
            for idle in sorted((b for b in _pool if not b.in_use), key=lambda b: -b.nbytes):
                if held + nbytes <= POOL_MAX_BYTES:
                    break
                _pool.remove(idle)
                held -= idle.nbytes
            if held + nbytes > POOL_MAX_BYTES:
                return None
            block = _Block(nbytes)
            _pool.append(block)
        block.in_use = True
        return block


def pooled_bytes() -> tuple[int, int]:
    """(bytes held by the pool, of which in use)."""
    with _lock:
        return sum(b.nbytes for b in _pool), sum(b.nbytes for b in _pool if b.in_use)


def release_pool() -> None:
    """Unmap every idle pooled block (blocks in use leave the pool and are freed with their tensors)."""
    with _lock:
        _pool.clear()


def empty_buffer(shape: tuple[int, ...], dtype: torch.dtype, device=None) -> torch.Tensor:
    """An uninitialised, 64-byte aligned tensor for a large result; on CPU from the pool (see the module)."""
    if device is not None and torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    nbytes = int(np.prod(shape)) * np_dtype.itemsize
    block = _take(nbytes)
    raw = block.raw if block is not None else np.empty(nbytes + _ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % _ALIGN
    arr = raw[start:start + nbytes].view(np_dtype).reshape(shape)  # its base is raw: the one owner to watch
    if block is not None:
        weakref.finalize(arr, _free, block)
    return torch.from_numpy(arr)
