"""The pool of large result buffers: a block is reused only once nothing can reach its memory."""

from __future__ import annotations

import gc

import pytest
import torch

from interp.hmm import buffers, filter_sequential, get_process
from interp.hmm.buffers import empty_buffer, pooled_bytes, release_pool
from interp.hmm.sampling import sample

SHAPE = (300, 1000)  # 2.4 MB of float64: pooled
MB = 1 << 20


@pytest.fixture(autouse=True)
def empty_pool():
    release_pool()
    yield
    release_pool()


def test_a_freed_buffer_is_reused_and_aligned():
    a = empty_buffer(SHAPE, torch.float64)
    ptr = a.data_ptr()
    assert ptr % 64 == 0 and a.shape == SHAPE and a.is_contiguous()
    del a
    gc.collect()
    b = empty_buffer(SHAPE, torch.float64)
    assert b.data_ptr() == ptr
    assert pooled_bytes() == (SHAPE[0] * SHAPE[1] * 8, SHAPE[0] * SHAPE[1] * 8)


@pytest.mark.parametrize("keep", [
    lambda t: t.T[::2],  # a strided view of the tensor
    lambda t: t[5],  # a slice
    lambda t: t.numpy(),  # a numpy array over the same memory
    lambda t: t.view(torch.int64),  # a reinterpretation
])
def test_a_buffer_reachable_through_any_view_is_not_handed_out(keep):
    a = empty_buffer(SHAPE, torch.float64)
    a.fill_(7.0)
    ptr = a.data_ptr()
    view = keep(a)
    del a
    gc.collect()
    b = empty_buffer(SHAPE, torch.float64)
    assert b.data_ptr() != ptr
    b.fill_(-1.0)
    assert float(torch.as_tensor(view).view(torch.float64).reshape(-1)[0]) == 7.0
    del view
    gc.collect()
    assert empty_buffer(SHAPE, torch.float64).data_ptr() == ptr  # released with the last view


def test_filter_beliefs_survive_later_calls():
    hmm = get_process("random", n_states=16, n_tokens=4, seed=0)
    tokens = sample(hmm, 500, 64, seed=1)  # 4 MB of beliefs
    first = filter_sequential(hmm, tokens).beliefs
    kept = first.clone()
    for seed in (2, 3):
        filter_sequential(hmm, sample(hmm, 500, 64, seed=seed))
    assert torch.equal(first, kept)
    del first
    gc.collect()
    assert torch.equal(filter_sequential(hmm, tokens).beliefs, kept)  # into a reused block


def test_small_requests_and_much_smaller_ones_are_not_served_from_a_big_block():
    small = empty_buffer((10, 10), torch.float64)
    assert pooled_bytes() == (0, 0) and small.data_ptr() % 64 == 0
    big = empty_buffer((4 * MB,), torch.uint8)
    big_ptr = big.data_ptr()
    del big
    gc.collect()
    half = empty_buffer((MB + MB // 2,), torch.uint8)  # under half of the free 4 MB block: a new block
    assert half.data_ptr() != big_ptr
    assert pooled_bytes() == (4 * MB + MB + MB // 2, MB + MB // 2)


def test_the_pool_never_holds_more_than_its_cap(monkeypatch):
    monkeypatch.setattr(buffers, "POOL_MAX_BYTES", 5 * MB)
    held = [empty_buffer((2 * MB,), torch.uint8) for _ in range(3)]  # the third does not fit: not pooled
    assert pooled_bytes() == (4 * MB, 4 * MB)
    held.clear()
    gc.collect()
    assert pooled_bytes() == (4 * MB, 0)
    big = empty_buffer((3 * MB,), torch.uint8)  # evicts idle blocks to make room
    assert pooled_bytes()[0] <= 5 * MB and pooled_bytes()[1] == 3 * MB
    del big
    gc.collect()
    release_pool()
    assert pooled_bytes() == (0, 0)
