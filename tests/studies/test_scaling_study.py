"""The scaling study (kind "scaling"): blocked Belief Nets are trained, not probed, and tabulated."""

from __future__ import annotations

import sys

import pytest

from interp.config import ConfigError
from interp.studies.jobs import done, probeable
from interp.studies.study import Study, study_config_from_dict

DATA = {"name": "blocked", "params": dict(n_groups=4, group_size=4, tokens_per_group=2, successors=2, seed=0)}
TRAIN = {"context": 8, "steps": 2, "batch_size": 16, "eval_sequences": 32, "eval_every": 1, "checkpoint_every": 2}


def study(**runs) -> dict:
    return {"name": "scaling_test", "kind": "scaling", "process": DATA, "train": TRAIN, "runs": runs}


def bbn(**model) -> dict:
    return {"model": {"family": "blocked_belief_net", **model}}


def test_blocked_runs_are_trained_without_probes_and_tabulated(tmp_path):
    cfg = study_config_from_dict(study(scalar_k2=bbn(group_size=2), scalar_k4_drop=bbn(state_dropout=0.5),
                                       neural_k2=bbn(parameterisation="neural", hidden=4, group_size=2),
                                       chain=bbn(group_size=1)))
    s = Study(cfg, tmp_path / "s", workers=0, log=lambda msg: None)
    res = s.run()
    rows = {r["run"]: r for r in res["rows"]}
    assert set(rows) == set(cfg.runs) and res["columns"][0] == "run"
    assert rows["scalar_k2"]["states"] == "4 x 2" and rows["scalar_k4_drop"]["states"] == "4 x 4"
    assert rows["scalar_k2"]["parameters"] == 4 * 2 + 4 * 2 + 4 * 2 * 2 * 2 + 4 * 2 * 2
    for r in rows.values():
        assert r["true NLL"] > 0 and r["gap"] == pytest.approx(r["held-out NLL"] - r["true NLL"])
        assert r["s / step"] > 0
        assert r["share of the group-chain gap closed"] == pytest.approx(1 - r["gap"] / rows["chain"]["gap"])
        assert [step for step, _ in r["curve"]] == [0, 1, 2]  # every evaluation (eval_every = 1)
        assert r["curve"][-1][1] == pytest.approx(r["gap"]) and r["gap one evaluation earlier"] == r["curve"][1][1]
        if sys.platform.startswith("linux"):  # measured by interp.training.memory (tested there)
            assert r["step memory (MB)"] > 0
    assert {"scaling.png", "scaling_steps.png"} <= set(res["figures"])
    assert all((tmp_path / "s" / "figures" / f).is_file() for f in res["figures"])
    for name, run in cfg.run_configs().items():
        assert not probeable(run) and done(run, s.run_dirs()[name])
        assert not (s.run_dirs()[name] / "probe.json").exists()
    again = []
    Study(cfg, tmp_path / "s", workers=0, log=again.append).run()
    assert any("4 runs, 4 done already, 0 to run" in line for line in again)


def test_the_learning_curve_reads_every_evaluation_once(tmp_path):
    from interp.io import append_jsonl
    from interp.studies.scaling import learning_curve

    for row in ({"step": 0, "eval_loss": 3.0, "optimal_loss": 2.5}, {"step": 5, "train_loss": 2.9},
                {"step": 10, "eval_loss": 2.75, "optimal_loss": 2.5},
                {"step": 10, "eval_loss": 2.625, "optimal_loss": 2.5}):  # step 10 again: a resumed run's line
        append_jsonl(tmp_path / "metrics.jsonl", row)
    assert learning_curve(tmp_path) == [(0, 0.5), (10, 0.125)]


def test_a_dense_process_is_probeable():
    from interp.training.runconfig import run_config_from_dict

    assert probeable(run_config_from_dict({"name": "m", "process": {"name": "mess3"},
                                           "model": {"family": "transformer"}}))


def test_the_scaling_study_refuses_other_families_and_options():
    with pytest.raises(ValueError, match="runs.tf: the scaling study compares blocked Belief Nets, got family "
                                         "'transformer'"):
        study_config_from_dict(study(tf={"model": {"family": "transformer"}}))
    with pytest.raises(ValueError, match="options.margin: unknown option for kind scaling"):
        study_config_from_dict({**study(a=bbn()), "options": {"margin": 0.1}})


def test_the_shipped_study_loads():
    from pathlib import Path

    from interp.studies.study import load_study_config

    cfg = load_study_config(Path(__file__).parents[2] / "runs" / "scaling_hmm.toml")
    models = [run.model for run in cfg.run_configs().values()]
    assert cfg.kind == "scaling" and len(models) == 13
    assert {(m.parameterisation, m.state_dropout, m.group_size) for m in models} == {
        (p, d, k) for p in ("scalar", "neural") for d in (0.0, 0.5) for k in (16, 64, 256)} | {("scalar", 0.0, 1)}
