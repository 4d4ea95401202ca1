"""The minimal-model chain study (kind "minimal_chain"): the shipped config, what-changed wording, the option checks
and a tiny chain end to end through ``interp study`` (table rows, the construction as the last step, a figure
byte-identical across two analyses)."""

from __future__ import annotations

from pathlib import Path

import pytest

from interp.config import to_dict
from interp.studies.minimal_chain import COLUMNS, analyse, describe_change
from interp.studies.study import Study, load_study_config, study_config_from_dict

RUNS = Path(__file__).resolve().parents[2] / "runs"
SMALL = {"n_heads": 1, "d_model": 8, "d_head": 4}
TINY = {
    "name": "chain_tiny", "kind": "minimal_chain", "seed": 0,
    "process": {"name": "mess3", "params": {"x": 0.15, "a": 0.6}},
    "train": {"context": 4, "steps": 4, "batch_size": 16, "eval_sequences": 64, "eval_every": 4,
              "checkpoint_every": 4},
    "runs": {
        "tf2": {"model": {"family": "transformer", "n_layers": 2, **SMALL, "attn_only": False, "d_mlp": 8,
                          "normalization": "LN"}},
        "attn_only": {"model": {"family": "transformer", "n_layers": 1, **SMALL, "normalization": "LN"}},
        "no_skip": {"model": {"family": "transformer", "n_layers": 1, **SMALL, "normalization": "LN",
                              "skip": False}},
        "fixed": {"model": {"family": "fixed_attention", "d_model": 8, "d_head": 4, "skip": False}},
    },
}


def test_the_shipped_chain_loads_in_order():
    cfg = load_study_config(RUNS / "minimal_chain.toml")
    assert cfg.kind == "minimal_chain"
    assert list(cfg.runs) == ["tf4", "tf2", "tf1", "attn_only", "no_skip", "no_norm", "fixed"]
    models = [to_dict(run.model) for run in cfg.run_configs().values()]
    changes = [describe_change(a, b) for a, b in zip([None, *models], models)]
    assert changes == ["start", "2 layers (was 4)", "1 layer (was 2)", "attention-only (no MLPs)", "no skip path",
                       "no normalisation", "one fixed attention matrix"]


def test_describe_change_names_other_keys():
    a = {"family": "transformer", "d_model": 64, "bos": False}
    assert describe_change(a, {**a, "d_model": 32}) == "d_model: 64 -> 32"
    assert describe_change(a, dict(a)) == "nothing"


@pytest.mark.parametrize("options,message", [
    ({"decays": "analytic"}, "options.decays: unknown option for kind minimal_chain (expected one of decay, labels)"),
    ({"decay": "best"}, "options.decay must be 'analytic' or 'fitted', got 'best'"),
    ({"labels": {"tf9": "x"}}, "options.labels.tf9: no such run"),
])
def test_bad_options_are_refused_naming_the_key(tmp_path, options, message):
    with pytest.raises(ValueError) as err:  # when the study is loaded (check_config), before any training
        study_config_from_dict({**TINY, "options": options})
    assert str(err.value) == message
    assert not any(tmp_path.iterdir())


def test_steps_must_share_process_and_context(tmp_path):
    runs = {**TINY["runs"], "fixed": {**TINY["runs"]["fixed"], "train": {"context": 5}}}
    with pytest.raises(ValueError) as err:
        study_config_from_dict({**TINY, "runs": runs})
    assert str(err.value) == ("runs.fixed: every step of the chain must use the same process and context as the "
                              "first (tf2)")


def test_a_bad_option_in_the_shipped_config_is_found(tmp_path):
    cfg = tmp_path / "chain.toml"
    cfg.write_text((RUNS / "minimal_chain.toml").read_text().replace('decay = "analytic"', 'decay = "best"'))
    with pytest.raises(ValueError) as err:
        load_study_config(cfg)
    assert str(err.value) == f"{cfg}: options.decay must be 'analytic' or 'fitted', got 'best'"


def test_a_tiny_chain_end_to_end(tmp_path):
    cfg = study_config_from_dict(TINY)
    res = Study(cfg, tmp_path / "chain", workers=0, log=lambda msg: None).run()
    assert res["columns"] == COLUMNS
    rows = res["rows"]
    assert [r["run"] for r in rows] == ["tf2", "attn_only", "no_skip", "fixed", "construction"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["what changed"] for r in rows] == [
        "start", "1 layer (was 2), attention-only (no MLPs)", "no skip path", "one fixed attention matrix",
        "the construction: hand-set weights, not trained"]
    for r in rows:
        assert set(r) == set(COLUMNS)
        assert r["relative loss"] >= 1.0 - 1e-3 and r["best probe R^2"] <= 1.0
        assert 0.0 <= r["TV to lambda^k"] <= 1.0
    # no embedding through a missing skip path
    assert rows[2]["embedding cosine"] is None and rows[3]["embedding cosine"] is None
    assert -1.0 <= rows[1]["embedding cosine"] <= 1.0
    # the construction: its head is lambda^(t-s) and its OV vectors are v[x] (against the run's exact probe map)
    last = rows[4]
    assert last["TV to lambda^k"] < 1e-9 and last["fitted decay"] == pytest.approx(0.55, abs=1e-9)
    assert last["attention std"] < 1e-9 and last["OV cosine"] > 0.99
    # with MLPs the first attention's update is read where it lands, before the MLP
    tf2 = res["extra"]["steps"]["tf2"]["constrained"]
    assert tf2["map_hook"] == "blocks.0.hook_resid_mid"
    assert [r["hook"] for r in tf2["layers"]] == ["blocks.0.hook_resid_mid", "blocks.0.hook_resid_post",
                                                  "blocks.1.hook_resid_post"]
    assert res["figures"] == ["chain.png", "chain.pdf"]
    figures = tmp_path / "chain" / "figures"
    first = {name: (figures / name).read_bytes() for name in res["figures"]}
    again = analyse(cfg, Study(cfg, tmp_path / "chain").run_dirs(), tmp_path / "chain", log=lambda msg: None)
    assert again["rows"] == rows
    assert {name: (figures / name).read_bytes() for name in again["figures"]} == first
    assert (tmp_path / "chain" / "table.md").read_text().count("| construction |") == 1
