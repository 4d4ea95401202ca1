"""The command line's main job and the benchmark's building blocks (not its timings)."""

import numpy as np
import pytest

from interp.bench.hmm import format_table, hmmlearn_model, matmul_peak
from interp.cli import main
from interp.hmm import get_process, log_likelihood
from interp.hmm.sampling import sample


@pytest.mark.parametrize("name,params", [("mess3", {}), ("rrxor", {}), ("random", {"n_states": 5, "n_tokens": 4})])
def test_benchmark_peer_scores_the_same_process(name, params):
    """The hmmlearn model the benchmark times is the same token process as ours (else the ratio is meaningless)."""
    hmm = get_process(name, **params)
    tokens = sample(hmm, 50, 20, seed=3)
    ours = float(log_likelihood(hmm, tokens).sum())
    for impl in ("scaling", "log"):
        ref = hmmlearn_model(hmm, impl).score(tokens.reshape(-1, 1).numpy(), [20] * 50)
        assert ours == pytest.approx(ref, rel=1e-10)


def test_matmul_peak_is_positive_and_table_has_every_row():
    import torch

    assert matmul_peak(torch.float64, torch.device("cpu"), sizes=(64,), reps=1) > 0
    rows = [{"name": "a", "ours": "1", "peer": "2", "ratio": "0.5x", "target": ">= 1x", "ok": False},
            {"name": "b", "ours": "3", "peer": "", "ratio": "", "target": "", "ok": None}]
    table = format_table(rows).splitlines()
    assert len(table) == 4 and table[2].endswith("| NO |") and table[3].startswith("| b |")


def test_run_prints_exact_optimal_loss(capsys):
    assert main(["describe", "--samples", "200", "--length", "6"]) == 0
    out = capsys.readouterr().out
    assert "mess3(x=0.15, a=0.6)" in out
    # position 0 of Mess3 is uniform: log 3 exactly
    assert f"{np.log(3):.6f}" in out


def test_run_rejects_bad_process_parameter(capsys):
    assert main(["describe", "--param", "x=0.7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("interp: error:") and "x must" in err[0]


def test_filter_method_and_blocked_benchmarks_report_every_cell(capsys):
    assert main(["bench", "--suite", "filter", "--quick"]) == 0
    out = capsys.readouterr().out
    assert out.count("sequential vs scan") == 8 and "picks the faster (within 10%) | " in out
    assert main(["bench", "--suite", "blocked", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "blocked filter S=2048" in out and "share of float64 matmul peak" in out


def test_best_repeats_until_the_time_budget_and_returns_the_fastest(monkeypatch):
    import interp.bench.hmm as B

    clock = [0.0]
    monkeypatch.setattr(B.time, "perf_counter", lambda: clock[0])  # a call takes exactly what fn adds
    calls, durations = [], iter([4.0, 3.0, 1.0, 2.0] + [3.0] * 100)

    def fn():
        calls.append(1)
        clock[0] += next(durations)

    assert B._best(fn, 2, lambda: None) == 1.0  # the warm-up (4) is not timed; best of 3 and 1
    assert len(calls) == 3
    calls.clear()
    assert B._best(fn, 2, lambda: None, min_seconds=30.0) == 3.0  # warm-up 2, then 3 s calls until 30 s spent
    assert len(calls) == 1 + 10
    calls.clear()
    B._best(fn, 1, lambda: None, min_seconds=1e9, max_reps=4)
    assert len(calls) == 1 + 4
