"""The compiled filter kernels (interp.hmm.native) against the torch filter, which test_filtering.py checks
against brute-force enumeration and hmmlearn; their build, cache and fallbacks."""

import math
import os
import warnings
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from interp.hmm import HMM, filter_sequential, filtering, get_process, native
from interp.hmm.sampling import sample

needs_compiler = pytest.mark.skipif(native.compiler() is None,
                                    reason="no C++ compiler on this machine: the torch filter runs instead")


def torch_filter(h, x, **kw):
    orig = native.enabled
    native.enabled = lambda: False
    try:
        return filter_sequential(h, x, **kw)
    finally:
        native.enabled = orig


def destination_hmm(S: int, V: int, seed: int) -> HMM:
    """T[x, i, j] = A[i, j] C[j, x] with dense random A and C."""
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(S, S, generator=g, dtype=torch.float64) + 0.05
    C = torch.rand(S, V, generator=g, dtype=torch.float64) + 0.05
    A, C = A / A.sum(1, keepdim=True), C / C.sum(1, keepdim=True)
    return HMM(A[None] * C.T[:, None, :])


def force_fused_step(monkeypatch):
    """Every size through the BLAS product and the fused pass (no one-call filter)."""
    monkeypatch.setattr(filtering, "_NATIVE_SMALL_MAX_STATES", 0)
    monkeypatch.setattr(filtering, "_NATIVE_ONE_CALL_MAX_WORK", 0)


def test_kernels_build_wherever_there_is_a_compiler():
    assert (native.library() is not None) == (native.compiler() is not None)


@needs_compiler
def test_library_shares_torchs_openmp_runtime():
    """One thread pool for torch and the kernels: no second GNU OpenMP runtime is loaded beside torch's."""
    native.library()
    maps = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libgomp.so" in line}
    torch_lib = Path(torch.__file__).parent / "lib"
    assert maps and all(Path(p).parent == torch_lib for p in maps), maps


@needs_compiler
@pytest.mark.parametrize("side", ["source", "destination"])
@pytest.mark.parametrize("S", [1, 2, 3, 5, 6, 7, 9])
def test_one_call_filter_matches_torch(S, side, monkeypatch):
    monkeypatch.setattr(filtering, "_NATIVE_SMALL_MAX_STATES", 16)  # one call at every n
    h = get_process("random", n_states=S, n_tokens=4, seed=S) if side == "source" else destination_hmm(S, 4, S)
    assert h.factorization[0] == ("source" if S == 1 else side)  # with one state both forms hold
    for n, L in [(1, 1), (255, 7), (256, 3), (257, 5), (700, 2), (3, 150), (300, 129)]:  # L past 64 and 128
        x = sample(h, n, L, seed=n)
        ours, ref = filter_sequential(h, x), torch_filter(h, x)
        assert_close(ours.beliefs, ref.beliefs, rtol=0, atol=1e-14)
        assert_close(ours.log_normalizers, ref.log_normalizers, rtol=0, atol=1e-13)
        ll = filter_sequential(h, x, return_beliefs=False)
        assert_close(ll.log_likelihood, ref.log_likelihood, rtol=1e-13, atol=0)


@needs_compiler
@pytest.mark.parametrize("side", ["source", "destination"])
def test_few_sequences_of_a_larger_hmm_one_row_each(side):
    """Below 8 sequences and from 8 states the one-call filter keeps each belief as a contiguous row. A token
    that no state emits makes its sequence impossible from there on, and leaves the others untouched."""
    S, V = 40, 5
    g = torch.Generator().manual_seed(2)
    A = torch.rand(S, S, generator=g, dtype=torch.float64) + 0.05
    C = torch.rand(S, V, generator=g, dtype=torch.float64) + 0.05
    C[:, V - 1] = 0.0
    A, C = A / A.sum(1, keepdim=True), C / C.sum(1, keepdim=True)
    mu = torch.full((S,), 1.0 / S, dtype=torch.float64)
    h = HMM.from_emission(mu, A, C) if side == "source" else HMM(A[None] * C.T[:, None, :], initial=mu)
    assert h.factorization[0] == side
    for n in (1, 7):
        x = sample(h, n, 200, seed=n)
        x[0, 150] = V - 1
        ours, ref = filter_sequential(h, x), torch_filter(h, x)
        assert ours.log_likelihood[0] == -math.inf and torch.isnan(ours.beliefs[0, 150:]).all()
        assert_close(ours.beliefs[0, :150], ref.beliefs[0, :150], rtol=0, atol=1e-14)
        assert_close(ours.beliefs[1:], ref.beliefs[1:], rtol=0, atol=1e-14)
        assert_close(ours.log_likelihood[1:], ref.log_likelihood[1:], rtol=1e-13, atol=0)


@needs_compiler
@pytest.mark.parametrize("fused", [False, True], ids=["one-call", "fused-step"])
def test_results_do_not_depend_on_the_thread_count(fused, monkeypatch):
    if fused:
        force_fused_step(monkeypatch)
    h = get_process("mess3")
    x = sample(h, 1000, 9, seed=0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = filter_sequential(h, x)
        torch.set_num_threads(max(2, threads))
        many = filter_sequential(h, x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one.beliefs, many.beliefs) and torch.equal(one.log_normalizers, many.log_normalizers)


@needs_compiler
@pytest.mark.parametrize("fused", [False, True], ids=["one-call", "fused-step"])
def test_impossible_sequences_inside_a_block(fused, monkeypatch):
    """z1r: "0 0 0" is impossible at position 2. Among 300 sequences (two blocks), exactly those get -inf and
    NaN beliefs from that position on; the others match the torch filter."""
    if fused:
        force_fused_step(monkeypatch)
    h = get_process("z1r")
    x = sample(h, 300, 6, seed=1)
    bad = torch.tensor([0, 7, 255, 256, 299])
    x[bad, :3] = 0
    res, ref = filter_sequential(h, x), torch_filter(h, x)
    assert (res.log_likelihood[bad] == -math.inf).all()
    good = torch.ones(300, dtype=torch.bool)
    good[bad] = False
    assert torch.isfinite(res.log_likelihood[good]).all()
    assert_close(res.log_likelihood[good], ref.log_likelihood[good], rtol=1e-14, atol=0)
    assert_close(res.beliefs[good], ref.beliefs[good], rtol=0, atol=1e-14)  # as elsewhere: FMA vs torch's order
    assert torch.isnan(res.beliefs[bad, 2:]).all() and not torch.isnan(res.beliefs[bad, :2]).any()
    assert res.log_normalizers[bad, 2].eq(-math.inf).all()


@needs_compiler
@pytest.mark.parametrize("side", ["source", "destination"])
def test_fused_step_matches_torch_at_many_states(side, monkeypatch):
    force_fused_step(monkeypatch)
    h = get_process("random", n_states=40, n_tokens=7, seed=3) if side == "source" else destination_hmm(40, 7, 3)
    assert h.factorization[0] == side
    x = sample(h, 300, 12, seed=2)
    ours, ref = filter_sequential(h, x), torch_filter(h, x)
    assert_close(ours.beliefs, ref.beliefs, rtol=0, atol=1e-14)
    assert_close(ours.log_likelihood, ref.log_likelihood, rtol=1e-13, atol=0)


@needs_compiler
@pytest.mark.parametrize("shared", [False, True], ids=["from-initial", "after-prefix-tables"])
@pytest.mark.parametrize("side", ["source", "destination"])
def test_streamed_beliefs_match_torch(side, shared, monkeypatch):
    """Rows of at least _STREAM_MIN_STATES states go through cache-resident buffers and are streamed into the
    result, also right after positions filled from the shared-prefix tables."""
    S = filtering._STREAM_MIN_STATES
    force_fused_step(monkeypatch)
    monkeypatch.setattr(filtering, "_SHARED_PREFIX_MIN_WORK", 0 if shared else math.inf)
    h = get_process("random", n_states=S, n_tokens=3, seed=5) if side == "source" else destination_hmm(S, 3, 5)
    x = sample(h, 120, 7, seed=4)
    assert filtering._shared_prefix_length(120, 7, S, 3, h.device) == (3 if shared else 0)
    ours, ref = filter_sequential(h, x), torch_filter(h, x)
    assert_close(ours.beliefs, ref.beliefs, rtol=0, atol=1e-14)
    assert_close(ours.log_normalizers, ref.log_normalizers, rtol=0, atol=1e-13)


@needs_compiler
def test_emit_normalise_against_its_definition():
    lib = native.library()
    g = torch.Generator().manual_seed(0)
    n, S, V = 37, 11, 5
    a = torch.rand(n, S, generator=g, dtype=torch.float64)
    table = torch.rand(V, S, generator=g, dtype=torch.float64)
    tok = torch.randint(0, V, (n,), generator=g)
    w = torch.rand(S, generator=g, dtype=torch.float64)
    e = a * table[tok]
    want_norm = e @ w
    out, norm = torch.empty(n, S, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    native.emit_normalise(lib, a, table, tok, w, out, norm)
    assert_close(norm, want_norm, rtol=1e-14, atol=0)
    assert_close(out, e / want_norm[:, None], rtol=1e-14, atol=0)
    native.emit_normalise(lib, a, table, tok, w, a, norm)  # in place
    assert_close(a, e / want_norm[:, None], rtol=1e-14, atol=0)


@needs_compiler
def test_kernel_arguments_are_checked():
    lib = native.library()
    a = torch.rand(4, 3, dtype=torch.float64)
    table = torch.rand(2, 3, dtype=torch.float64)
    tok = torch.zeros(4, dtype=torch.int64)
    w, norm = torch.ones(3, dtype=torch.float64), torch.empty(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="a: expected a contiguous CPU torch.float64"):
        native.emit_normalise(lib, a.float(), table, tok, w, a, norm)
    with pytest.raises(ValueError, match=r"table: .*shape \(2, 3\).*\(2, 4\)"):
        native.emit_normalise(lib, a, torch.rand(2, 4, dtype=torch.float64), tok, w, a, norm)
    with pytest.raises(ValueError, match="tokens: .*contiguous: False"):
        native.emit_normalise(lib, a, table, torch.zeros(8, dtype=torch.int64)[::2], w, a, norm)
    with pytest.raises(ValueError, match="beliefs: "):
        native.filter_small(lib, torch.zeros(4, 5, dtype=torch.int64), torch.full((3,), 1 / 3, dtype=torch.float64),
                            torch.eye(3, dtype=torch.float64), torch.full((3, 2), 0.5, dtype=torch.float64), "source",
                            torch.empty(5, 4, 2, dtype=torch.float64), torch.empty(5, 4, dtype=torch.float64))


# ------------------------------------------------------------------ build, cache and fallbacks
@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache and no library loaded yet in this process."""
    monkeypatch.setenv("INTERP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_loaded", {})
    return tmp_path / "cache"


def test_disabled_or_without_compiler_the_torch_filter_runs(fresh, monkeypatch):
    h = get_process("mess3")
    x = sample(h, 50, 8, seed=0)
    ref = torch_filter(h, x)
    monkeypatch.setenv("INTERP_NATIVE", "0")
    assert native.library() is None
    assert_close(filter_sequential(h, x).beliefs, ref.beliefs, rtol=0, atol=0)
    monkeypatch.delenv("INTERP_NATIVE")
    monkeypatch.setenv("CXX", str(fresh / "no-such-compiler"))
    assert native.compiler() is None and native.library() is None
    assert_close(filter_sequential(h, x).beliefs, ref.beliefs, rtol=0, atol=0)
    assert not fresh.exists()


@needs_compiler
def test_build_is_cached_under_a_key_of_its_inputs(fresh, monkeypatch, tmp_path):
    cxx = native.compiler()
    first = native._build(cxx)
    assert first.parent == fresh and [p.name for p in fresh.iterdir()] == [first.name]
    stamp = first.stat().st_mtime_ns
    assert native._build(cxx) == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    edited = tmp_path / "kernels.cpp"
    edited.write_text(native._SOURCE.read_text() + "\n// edited\n")
    monkeypatch.setattr(native, "_SOURCE", edited)
    second = native._build(cxx)
    assert second != first and sorted(p.name for p in fresh.iterdir()) == sorted([first.name, second.name])


@needs_compiler
def test_unwritable_cache_falls_back_to_the_temporary_folder(fresh, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("INTERP_CACHE_DIR", str(blocker / "cache"))  # cannot be created under a file
    monkeypatch.setattr(native.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    built = native._build(native.compiler())
    assert built.parent == tmp_path / "tmp" / f"interp-{os.getuid()}" and built.exists()
    assert native._build(native.compiler()) == built


@needs_compiler
def test_failed_build_warns_once_leaves_nothing_and_falls_back(fresh, monkeypatch, tmp_path):
    broken = tmp_path / "kernels.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native, "_SOURCE", broken)
    with pytest.warns(RuntimeWarning, match="compiled filter kernels unavailable, using torch .*failed to build"):
        assert native.library() is None
    assert list(fresh.iterdir()) == []  # no partial library left behind
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.library() is None  # remembered: no second build, no second warning
    h = get_process("mess3")
    x = sample(h, 20, 5, seed=0)
    assert_close(filter_sequential(h, x).beliefs, torch_filter(h, x).beliefs, rtol=0, atol=0)
