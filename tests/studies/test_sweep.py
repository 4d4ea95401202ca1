"""`interp sweep` on a tiny grid: the points, the aggregated numbers against the run folders, skipping finished
runs, a failed run reported then retried, a killed worker's run resumed to the same result, submitit's debug
executor, and clear errors for broken configs."""

from __future__ import annotations

import statistics
import tomllib
from pathlib import Path

import pytest
import sweep_jobs
import torch

from interp import rundir
from interp.cli import main
from interp.config import ConfigError
from interp.io import read_json
from interp.studies import jobs
from interp.studies import sweep as SW

TINY = """
name = "tiny"
seeds = [0, 1]

[grid]
"process.params.x" = [0.05, 0.15]

[process]
name = "mess3"
params = { a = 0.6 }

[model]
family = "transformer"
n_layers = 1
d_model = 16
d_head = 8
normalization = "none"

[train]
context = 4
steps = 20
batch_size = 64
lr = 1e-2
eval_sequences = 256
eval_every = 10
checkpoint_every = 10
"""


def tiny(**changes) -> dict:
    data = tomllib.loads(TINY)
    data.update(changes)
    return data


def run_sweep(cfg, root: Path, **kw) -> tuple[dict, list[str]]:
    logs: list[str] = []
    res = SW.Sweep(cfg, root, log=logs.append, **kw).run()
    return res, logs


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    cfg = SW.sweep_config_from_dict(tiny())
    root = tmp_path_factory.mktemp("sweep") / "tiny"
    res, logs = run_sweep(cfg, root, workers=2)
    return cfg, root, res, logs


def numbers(res: dict) -> dict:
    return {(r["run"], k): r[k] for r in res["rows"] for k in ("relative_loss", "probe_r2", "steps")}


def same_numbers(a: dict, b: dict) -> bool:
    """Equal up to the last bits that BLAS reduction order may move (the buffers' alignment differs between
    processes); steps are integers and compare exactly."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (k[1] != "steps" and abs(a[k] - b[k]) <= 1e-12 * abs(b[k]))
                                        for k in a)


def test_points_are_the_grid_times_the_seeds():
    cfg = SW.sweep_config_from_dict(tiny(grid={"process.params.x": [0.05, 0.15], "model.d_model": [16, 32]}))
    assert [p.name for p in cfg.points[:3]] == ["x=0.05_d_model=16_seed=0", "x=0.05_d_model=16_seed=1",
                                                  "x=0.05_d_model=32_seed=0"]
    assert len(cfg.points) == 2 * 2 * 2 and len({p.name for p in cfg.points}) == 8
    for p in cfg.points:
        assert p.config.process.params == {"a": 0.6, "x": p.values["process.params.x"]}
        assert p.config.model.d_model == p.values["model.d_model"] and p.config.seed == p.seed
        assert p.config.name == p.name and p.config.train.steps == 20


def test_results_hold_every_runs_numbers(finished):
    cfg, root, res, _ = finished
    assert res["missing"] == [] and res["failed"] == {} and len(res["rows"]) == 4
    for row in res["rows"]:
        run = root / "runs" / row["run"]
        result, probe = read_json(run / "result.json"), read_json(run / "probe.json")
        assert row["relative_loss"] == result["relative_loss"] and row["probe_r2"] == probe["best_r2"]
        assert row["steps"] == 20 and read_json(run / "config.json")["config"]["process"]["params"]["x"] == \
            row["process.params.x"]
    for group in res["groups"]:
        mine = [r for r in res["rows"] if r["process.params.x"] == group["process.params.x"]]
        assert group["n_seeds"] == 2 and sorted(r["seed"] for r in mine) == [0, 1]
        for metric in ("relative_loss", "probe_r2"):
            vals = [r[metric] for r in mine]
            assert group[f"{metric}_mean"] == pytest.approx(statistics.mean(vals), abs=1e-15)
            assert group[f"{metric}_std"] == pytest.approx(statistics.stdev(vals), abs=1e-15)
    assert read_json(root / rundir.RESULTS_JSON)["rows"] == res["rows"]


def test_the_table_and_the_figure_are_written(finished):
    _, root, res, _ = finished
    table = (root / rundir.RESULTS_MD).read_text()
    assert "4 of 4 runs finished" in table
    for row in res["rows"]:
        assert row["run"] in table and f"{row['relative_loss']:.5f}" in table
    for ext in ("png", "pdf"):
        assert (root / f"sweep.{ext}").stat().st_size > 1000
    assert [p["name"] for p in read_json(root / rundir.SWEEP)["points"]] == [r["run"] for r in res["rows"]]


def test_a_second_call_skips_every_finished_run(finished):
    cfg, root, res, _ = finished
    weights = {p: p.stat().st_mtime_ns for p in root.glob("runs/*/model.safetensors")}
    again, logs = run_sweep(cfg, root, workers=2)
    assert any("4 done already, 0 to run" in line for line in logs)
    assert same_numbers(numbers(again), numbers(res))
    assert {p: p.stat().st_mtime_ns for p in root.glob("runs/*/model.safetensors")} == weights


def test_a_failed_run_is_reported_and_retried_by_the_next_call(finished, tmp_path):
    cfg, _, res, _ = finished
    root = rundir.claim(tmp_path / "tiny", "sweep")  # a sweep folder the lab made, ...
    blocker = root / "runs" / "x=0.15_seed=1"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a run folder")  # the run cannot create its folder
    with pytest.raises(SW.SweepError, match=r"1 of 4 runs failed: x=0\.15_seed=1 .*run the same command again"):
        run_sweep(cfg, root, workers=0)
    partial = read_json(root / rundir.RESULTS_JSON)
    assert partial["missing"] == ["x=0.15_seed=1"] and list(partial["failed"]) == ["x=0.15_seed=1"]
    assert "x=0.15_seed=1" in (root / rundir.RESULTS_MD).read_text()
    blocker.unlink()
    again, logs = run_sweep(cfg, root, workers=0)
    assert any("3 done already, 1 to run" in line for line in logs)
    assert again["missing"] == [] and len(again["rows"]) == 4


def test_a_killed_workers_run_is_retried_and_resumes_to_the_same_result(finished, tmp_path, monkeypatch):
    _, _, res, _ = finished
    cfg = SW.sweep_config_from_dict(tiny(grid={"process.params.x": [0.05]}))  # 2 of the 4 runs
    monkeypatch.setattr(SW, "train_and_probe", sweep_jobs.die_after_first_checkpoint)
    again, logs = run_sweep(cfg, tmp_path / "tiny", workers=2)
    assert any("a worker process died" in line for line in logs)
    # the first worker to die had written its checkpoint, so its run resumes; the death breaks the pool, which
    # ends the other worker wherever it was, before or after its own checkpoint
    assert sum("resumed and trained 20 steps" in line for line in logs) >= 1
    assert sum("trained 20 steps" in line for line in logs) == 2
    # bit-identical to the runs that were never killed
    assert same_numbers(numbers(again), {k: v for k, v in numbers(res).items() if k[0].startswith("x=0.05_")})


def test_a_job_that_keeps_killing_its_worker_fails_alone():
    logs: list[str] = []
    failures = jobs.run_jobs([("dies", sweep_jobs.always_die, ()), ("three", sweep_jobs.square, (3,)),
                              ("four", sweep_jobs.square, (4,))], workers=2, log=logs.append, max_attempts=2)
    assert list(failures) == ["dies"] and isinstance(failures["dies"], jobs.WorkerDied)
    assert any("[three" in line and "] 9 (" in line for line in logs)
    assert any("[four" in line and "] 16 (" in line for line in logs)


def test_submitit_debug_executor_gives_the_same_results(finished, tmp_path):
    cfg, _, res, _ = finished
    threads = torch.get_num_threads()
    try:
        again, logs = run_sweep(cfg, tmp_path / "tiny", executor="debug")
    finally:
        torch.set_num_threads(threads)
    assert any("4 jobs submitted (debug)" in line for line in logs)
    assert same_numbers(numbers(again), numbers(res))


@pytest.mark.parametrize("change, message", [
    ({"runs": 3}, "unknown key runs"),
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"seeds": [0, 0]}, "seeds must be a non-empty list of distinct"),
    ({"grid": {"x": [0.1]}}, "grid key 'x' must name a field of process, model or train"),
    ({"grid": {"process.params.x": []}}, r"grid.'process.params.x' must be a non-empty list"),
    ({"grid": {"process.params.x": [0.1, 0.1]}}, "lists a value twice"),
    ({"grid": {"model.family": ["ssm"]}}, "one family per sweep"),
    ({"grid": {"process.params.x": [0.1, 0.7]}}, r"point x=0.7_seed=0: process.params"),
    ({"grid": {"model.d_modle": [8]}}, r"point d_modle=8_seed=0: .*d_modle"),
    ({"model": "transformer"}, "model must be a table"),
])
def test_broken_configs_name_the_problem(change, message):
    with pytest.raises(ConfigError, match=message):
        SW.sweep_config_from_dict(tiny(**change))


def test_the_cli_refuses_a_broken_config_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(TINY.replace('"process.params.x" = [0.05, 0.15]', '"process.params.x" = [0.05, 1.5]'))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("interp: error:") and "x=1.5_seed=0" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]
