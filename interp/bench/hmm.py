"""HMM benchmark: our sampler and filter beside hmmlearn's, in one process, on the same data,
with the machine's matmul peak for scale.

hmmlearn samples one long sequence and filters sequence by sequence, so it is timed on fewer
tokens than ours; every row reports throughputs (per second), which do not depend on the size.
Each time is the best of several repetitions after a warm-up (ours and hmmlearn's alike, repeated until half a
second has been spent, so that a burst of other load does not decide a row).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from hmmlearn.hmm import CategoricalHMM

from interp.hmm import HMM, filter_sequential, get_process, native
from interp.hmm.sampling import sample

TARGETS = {"sample": 200.0, "filter_s3": 8.0, "filter_s256": 50.0, "peak_fraction": 0.5}


def _best(fn: Callable[[], object], reps: int, sync: Callable[[], None], min_seconds: float = 0.0,
          max_reps: int = 100) -> float:
    """Best time of ``fn`` over at least ``reps`` runs after a warm-up, and more (up to ``max_reps``) until
    ``min_seconds`` have been spent, so that a short call is not judged on a few runs that a burst of other
    load on the machine can all hit."""
    fn()  # warm-up
    times: list[float] = []
    while len(times) < reps or (sum(times) < min_seconds and len(times) < max_reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


# the sampler and filter rows, ours and hmmlearn's alike, repeat each call until this long has been spent
_ROW_SECONDS = 0.5


def matmul_peak(dtype: torch.dtype, device: torch.device, sizes: tuple[int, ...] = (2048, 3072, 4096),
                reps: int = 5) -> float:
    """Best GFLOP/s of square matrix products over ``sizes`` (2048^2 alone can under-read the peak)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        best = max(best, 2 * n**3 / _best(lambda: a @ b, reps, sync) / 1e9)
    return best


def hmmlearn_model(hmm: HMM, implementation: str) -> CategoricalHMM:
    """hmmlearn's CategoricalHMM for the same token process (via the exact emission form)."""
    em = hmm.to_emission()
    model = CategoricalHMM(n_components=em.A.shape[0], n_features=hmm.n_tokens, implementation=implementation)
    model.startprob_ = em.mu.cpu().numpy()
    model.transmat_ = em.A.cpu().numpy()
    model.emissionprob_ = em.C.cpu().numpy()
    return model


def _row(name, ours, peer, ratio=None, target=None, ok=None) -> dict:
    return {"name": name, "ours": ours, "peer": peer, "ratio": "" if ratio is None else f"{ratio:,.1f}x",
            "target": target or "", "ok": ok}


def _filter_rows(label: str, hmm: HMM, n: int, n_peer: int, length: int, dev: torch.device, sync,
                 peak64: float | None, target_key: str, reps: int, row_seconds: float) -> list[dict]:
    tokens = sample(hmm, n, length, seed=1)
    on_dev, tokens_dev = hmm.to(dev), tokens.to(dev)
    ours = n * length / _best(lambda: filter_sequential(on_dev, tokens_dev), reps, sync, row_seconds)
    # hmmlearn's score returns log-likelihoods only: the same work without writing n x L x S beliefs
    ours_ll = n * length / _best(lambda: filter_sequential(on_dev, tokens_dev, return_beliefs=False), reps, sync,
                                 row_seconds)
    X = tokens[:n_peer].reshape(-1, 1).cpu().numpy()
    lengths = [length] * n_peer
    peers = {}
    for impl in ("scaling", "log"):
        model = hmmlearn_model(hmm, impl)
        peers[impl] = n_peer * length / _best(lambda: model.score(X, lengths), 1, lambda: None, row_seconds)
        ref = model.score(X, lengths)
        mine = float(filter_sequential(hmm, tokens[:n_peer], return_beliefs=False).log_likelihood.sum())
        if not np.isclose(mine, ref, rtol=1e-9, atol=0):
            raise RuntimeError(f"{label}: log-likelihoods disagree with hmmlearn ({mine} vs {ref})")
    best_peer = max(peers.values())
    ratio = ours / best_peer
    rows = [_row(f"filter {label}, {n} x {length}", f"{ours / 1e6:.3g} M beliefs/s",
                 f"hmmlearn scaling {peers['scaling'] / 1e6:.3g} M/s, log {peers['log'] / 1e6:.3g} M/s "
                 f"({n_peer} seqs)", ratio, f">= {TARGETS[target_key]:g}x", ratio >= TARGETS[target_key]),
            _row(f"filter {label}, {n} x {length}, log-likelihood only", f"{ours_ll / 1e6:.3g} M tokens/s",
                 "as above", ours_ll / best_peer)]
    if peak64 is not None:
        S = hmm.n_states
        frac = ours * 2 * S * S / 1e9 / peak64
        rows.append(_row(f"filter {label}: share of float64 matmul peak", f"{frac:.0%}",
                         f"peak {peak64:.1f} GFLOP/s", None, f">= {TARGETS['peak_fraction']:.0%}",
                         frac >= TARGETS["peak_fraction"]))
    return rows


def run_hmm_bench(quick: bool = False, device: str = "cpu",
                  progress: Callable[[str], None] | None = None) -> list[dict]:
    say = progress or (lambda msg: None)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    reps = 2 if quick else 5
    row_seconds = 0.0 if quick else _ROW_SECONDS
    rows = []

    say("matmul peak")
    sizes = (512,) if quick else (2048, 3072, 4096)
    peak64 = matmul_peak(torch.float64, dev, sizes)
    peak32 = matmul_peak(torch.float32, dev, sizes)
    rows.append(_row(f"matmul peak (best of {', '.join(f'{n}^2' for n in sizes)}; float64 / float32)", f"{peak64:.1f} GFLOP/s", f"{peak32:.1f} GFLOP/s (float32)"))

    say("sampling Mess3")
    mess3 = get_process("mess3", x=0.15, a=0.6)
    n, length = (10_000, 64) if quick else (100_000, 64)
    m3 = mess3.to(dev)
    ours = n * length / _best(lambda: sample(m3, n, length, seed=0), reps, sync, row_seconds)
    peer_tokens = 20_000 if quick else 200_000
    model = hmmlearn_model(mess3, "scaling")
    peer = peer_tokens / _best(lambda: model.sample(peer_tokens, random_state=0), 1, lambda: None, row_seconds)
    rows.append(_row(f"sample Mess3(0.15, 0.6), {n} x {length}", f"{ours / 1e6:.3g} M tokens/s",
                     f"hmmlearn sample {peer / 1e6:.3g} M tokens/s ({peer_tokens} tokens)", ours / peer,
                     f">= {TARGETS['sample']:g}x", ours / peer >= TARGETS["sample"]))

    say("filtering S=3")
    rows += _filter_rows("Mess3 S=3", mess3, 2_000 if quick else 10_000, 500 if quick else 2_000, 64, dev, sync,
                         None, "filter_s3", reps, row_seconds)
    say("filtering S=256")
    big = get_process("random", n_states=256, n_tokens=16, seed=0)
    rows += _filter_rows("random S=256 V=16", big, 200 if quick else 2_000, 4 if quick else 20, 64, dev, sync,
                         peak64 if dev.type == "cpu" else None, "filter_s256", reps, row_seconds)
    if not quick:
        say("filtering S=1024")
        huge = get_process("random", n_states=1024, n_tokens=16, seed=0)
        rows += _filter_rows("random S=1024 V=16", huge, 400, 2, 64, dev, sync,
                             peak64 if dev.type == "cpu" else None, "filter_s256", 3, row_seconds)
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of benchmark rows."""
    head = "| benchmark | ours | peer | ratio | target | met |\n|---|---|---|---|---|---|"
    mark = {True: "yes", False: "NO", None: ""}
    lines = [f"| {r['name']} | {r['ours']} | {r['peer']} | {r['ratio']} | {r['target']} | {mark[r['ok']]} |"
             for r in rows]
    return "\n".join([head, *lines])


# ----------------------------------------------------------------------------- scan against sequential
def run_filter_method_bench(quick: bool = False, device: str = "cpu",
                            progress: Callable[[str], None] | None = None) -> list[dict]:
    """Both filters over a grid of (states, sequences, length): which is faster, and whether ``method="auto"``
    (:func:`interp.hmm.filtering.choose_method`) picks it. A pick within 10% of the faster counts as right."""
    from interp.hmm.filtering import _SCAN_MAX_BYTES, _compiled, choose_method, filter_scan

    say = progress or (lambda msg: None)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    grid_s, grid_n, grid_l = ((3, 16), (1, 64), (64, 1024)) if quick else ((3, 16, 64), (1, 16, 256),
                                                                            (64, 1024, 16384))
    rows, right, cells = [], 0, 0
    for S in grid_s:
        hmm = get_process("mess3", x=0.15, a=0.6) if S == 3 else get_process("random", n_states=S, n_tokens=8,
                                                                               seed=0)
        on_dev = hmm.to(dev)
        for n in grid_n:
            for L in grid_l:
                say(f"filter methods S={S} n={n} L={L}")
                tokens = sample(hmm, n, L, seed=0).to(dev)
                reps = 3 if n * L * S * S < 10**8 else 1
                seq = _best(lambda: filter_sequential(on_dev, tokens, return_beliefs=False), reps, sync)
                pick = choose_method(n, L, S, compiled=_compiled(on_dev))
                name = f"filter S={S}, {n} x {L}: sequential vs scan"
                if 4 * 8 * n * L * S * S > _SCAN_MAX_BYTES:
                    rows.append(_row(name, f"sequential {seq * 1e3:.3g} ms", "scan not run (> 1 GiB)", None,
                                     f"auto: {pick}", pick == "sequential"))
                    right, cells = right + (pick == "sequential"), cells + 1
                    continue
                scan = _best(lambda: filter_scan(on_dev, tokens, return_beliefs=False), reps, sync)
                ok = {"sequential": seq, "scan": scan}[pick] <= 1.1 * min(seq, scan)
                right, cells = right + ok, cells + 1
                rows.append(_row(name, f"sequential {seq * 1e3:.3g} ms", f"scan {scan * 1e3:.3g} ms", seq / scan,
                                 f"auto: {pick}", ok))
    rows.append(_row("filter method='auto' picks the faster (within 10%)", f"{right} of {cells} cells", "",
                     None, "all", right == cells))
    return rows


# ----------------------------------------------------------------------------- block-sparse HMMs
def run_blocked_bench(quick: bool = False, device: str = "cpu", peak64: float | None = None,
                      progress: Callable[[str], None] | None = None) -> list[dict]:
    """The blocked filter at S = 2^14 (64 groups of k = 256, 4 successors; 4096 x 256 tokens): throughput as
    GFLOP/s of the k x k products it needs, against the float64 matmul peak measured in the same run. On CPU with
    the compiled kernels it is the filter's compiled schedule (passes over the blocks across positions), beside
    the torch filter (one position at a time) as the peer; elsewhere the torch filter alone."""
    say = progress or (lambda msg: None)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    G, k, m, d, n, L = (16, 128, 4, 4, 512, 64) if quick else (64, 256, 4, 4, 4096, 256)
    if peak64 is None:
        say("matmul peak")
        peak64 = matmul_peak(torch.float64, dev, (512,) if quick else (2048, 3072, 4096))
    say(f"blocked filter S={G * k}")
    hmm = get_process("blocked", n_groups=G, group_size=k, tokens_per_group=m, successors=d, seed=0).to(dev)
    tokens = sample(hmm, n, L, seed=1)
    flops = n * (L - 1) * 2 * k * k
    lib = native.library() if dev.type == "cpu" else None

    def timed(compiled: bool) -> tuple[float, float]:  # GFLOP/s, rows per product
        out = []
        seconds = _best(lambda: out.append(hmm.filter(tokens, return_beliefs=False, compiled=compiled)), 2, sync)
        return flops / seconds / 1e9, n * (L - 1) / out[-1].products

    rate, rows = timed(True)
    name = f"blocked filter S={G * k} ({G} groups x k={k}, d={d}), {n} x {L}"
    ours = f"{n * L * rate / flops * 1e3:.3g} M tokens/s, {rate:.1f} GFLOP/s, {rows:.0f} rows a product"
    if lib is None:
        how = "no compiled kernels here: the torch filter, one position at a time"
        return [_row(name, ours, how, None, "", None),
                _row(f"blocked filter S={G * k}: share of float64 matmul peak", f"{rate / peak64:.0%}",
                     f"peak {peak64:.1f} GFLOP/s", None, f">= {TARGETS['peak_fraction']:.0%}",
                     rate / peak64 >= TARGETS["peak_fraction"])]
    say(f"blocked filter S={G * k}, torch")
    peer, peer_rows = timed(False)
    return [_row(name + ", compiled passes over the blocks", ours,
                 f"torch filter, one position at a time: {peer:.1f} GFLOP/s, {peer_rows:.0f} rows a product",
                 rate / peer, "", None),
            _row(f"blocked filter S={G * k}: share of float64 matmul peak", f"{rate / peak64:.0%}",
                 f"peak {peak64:.1f} GFLOP/s; the torch filter {peer / peak64:.0%}", None,
                 f">= {TARGETS['peak_fraction']:.0%}", rate / peak64 >= TARGETS["peak_fraction"])]
