"""F8's learner: `[geometry.learner]` (and a process's own `learner`) trains a second model on each geometry
process, into `geometry/<slug>_learner/`; summary.json adds it under the process's entry; F8 draws it above the
contrast with the spectrum's reason in the caption. The default pipeline's transformer reads a BOS token."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from interp.cli import main
from interp.config import ConfigError
from interp.io import read_json
from interp.pipeline import pipeline as P

TINY = (Path(__file__).parents[1] / "tiny_pipeline.toml").read_text()
LEARNER = {"model": {"family": "transformer", "n_layers": 1, "n_heads": 2, "d_model": 16, "d_head": 8,
                     "attn_only": False, "d_mlp": 32, "normalization": "LN"}, "train": {"steps": 12}}


def tiny(geometry: dict | None = None, **top) -> dict:
    data = tomllib.loads(TINY)
    data["geometry"].update(geometry or {})
    return {**data, **top}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("learner")
    cfg = P.pipeline_config_from_dict(tiny({"learner": LEARNER}))
    lines: list[str] = []
    summary = P.Pipeline(cfg, root / "run", root / "figs", workers=0, log=lines.append).run().to_dict()
    return root, cfg, summary, lines


def test_the_learner_trains_beside_the_contrast_and_inherits_the_shared_train_table():
    cfg = P.pipeline_config_from_dict(tiny({"learner": LEARNER}))
    assert set(cfg.learner_runs) == set(cfg.geometry_runs) == {"Z1R"}
    run, contrast = cfg.learner_runs["Z1R"], cfg.geometry_runs["Z1R"]
    assert run.name == "z1r_learner" and contrast.name == "z1r"
    assert run.process == contrast.process and run.model.attn_only is False and run.model.d_mlp == 32
    assert run.train.steps == 12 and run.train.context == 4 and run.train.lr == 1e-2  # the rest from [train]
    assert P.pipeline_config_from_dict(tiny()).learner_runs == {}  # no learner table: the contrast alone


def test_a_process_own_learner_replaces_the_shared_one():
    own = {**LEARNER, "train": {"steps": 7}}
    cfg = P.pipeline_config_from_dict(tiny({"learner": LEARNER, "processes": [
        {"label": "Z1R", "name": "z1r", "learner": own}, {"label": "RRXOR", "name": "rrxor"}]}))
    assert cfg.learner_runs["Z1R"].train.steps == 7 and cfg.learner_runs["RRXOR"].train.steps == 12
    only = P.pipeline_config_from_dict(tiny({"processes": [{"label": "Z1R", "name": "z1r", "learner": own},
                                                           {"label": "RRXOR", "name": "rrxor"}]}))
    assert set(only.learner_runs) == {"Z1R"}


@pytest.mark.parametrize("geometry, message", [
    ({"learner": {"train": {"steps": 5}}}, "missing required key geometry.learner.model"),
    ({"learner": {**LEARNER, "model": {**LEARNER["model"], "d_mlp": 0}}}, r"geometry\.learner\.model\.d_mlp must be >= 1"),
    ({"learner": {**LEARNER, "train": {"steps": 0}}}, r"geometry\.learner\.train\.steps must be >= 1, got 0"),
    ({"learner": LEARNER, "processes": [{"label": "Z1R", "name": "z1r"}, {"label": "z1r learner", "name": "z1r"}]},
     r"geometry\.processes\[0\]: the learner of 'Z1R' would share the folder 'z1r_learner' with 'z1r learner'"),
])
def test_broken_learner_tables_name_the_key(geometry, message):
    with pytest.raises(ConfigError, match=message):
        P.pipeline_config_from_dict(tiny(geometry))


def test_the_summary_adds_the_learner_and_keeps_the_contrast_keys(finished):
    root, cfg, summary, lines = finished
    z = summary["geometry"]["Z1R"]
    assert {"run", "process", "relative_loss", "probe_r2", "probe_hook"} <= set(z)
    assert z["run"] == str(root / "run" / "geometry" / "z1r") and z["probe_r2_all_layers"] is not None
    learner = z["learner"]
    folder = root / "run" / "geometry" / "z1r_learner"
    assert learner["run"] == str(folder) and learner["train_steps"] == 12
    assert learner["relative_loss"] == read_json(folder / "result.json")["relative_loss"]
    assert learner["probe_r2_all_layers"] == read_json(folder / "probe.json")["all_layers"]["r2"]
    assert learner["model"]["d_mlp"] == 32 and learner["model"]["attn_only"] is False
    assert any(l.startswith("[geometry z1r_learner") for l in lines)


def test_f8_draws_the_learner_above_the_contrast_with_the_spectrum(finished):
    root, _, _, _ = finished
    index = (root / "figs" / "index.md").read_text()
    f8 = index.split("## F8")[1]
    assert "learner (1-layer standard (LN, MLP) transformer, 2 heads, 12 steps)" in f8
    assert "contrast (1-layer attention-only transformer" in f8
    # Z1R: Smat on zero-sum vectors rotates by a third of a turn; at context 4 the model predicts from positions
    # 0..2, so lags 1..2 turn by 120 degrees, inside a half-space: two heads (the head-count rule)
    assert ("Z1R: 2 heads: over lags 1..2 the lag terms span 2 dimensions and lie strictly inside a half-space"
            in f8)
    assert "the pair of modulus 1 turns by 120.0 degrees a lag" in f8
    assert "geometry/z1r_learner" in f8 and "Not shown" not in f8


def test_a_second_run_reuses_the_learner(finished):
    root, cfg, summary, _ = finished
    lines: list[str] = []
    again = P.Pipeline(cfg, root / "run", root / "figs", workers=0, log=lines.append).run().to_dict()
    assert again == summary
    assert [l for l in lines if l.startswith("[geometry z1r_learner")] == [
        f"[{'geometry z1r_learner':<24}] reused (trained and probed)"]


def test_the_figure_script_takes_learners(finished, tmp_path):
    root, _, _, _ = finished
    geo = root / "run" / "geometry"
    assert main_figures(["--geometry", f"Z1R={geo / 'z1r'}", "--learner", f"Z1R={geo / 'z1r_learner'}",
                         "--only", "F8", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "f8_other_processes.png").read_bytes() == (root / "figs" / "f8_other_processes.png").read_bytes()


def main_figures(argv):
    from interp.figures.paper import main as figures_main

    return figures_main(argv)


def test_the_default_transformer_reads_a_bos_token_and_every_process_has_a_learner():
    cfg = P.default_pipeline_config()
    assert cfg.runs["transformer"].model.bos is True
    assert cfg.geometry_runs["RRXOR"].model.bos is True  # the contrast is the same model
    assert set(cfg.learner_runs) == set(cfg.geometry_runs)
    assert all(not run.model.attn_only and run.model.normalization == "LN" for run in cfg.learner_runs.values())
    quick = P.quick_config(cfg)
    assert all(run.train.steps <= P.QUICK_STEPS and run.train.context <= quick.context
               for run in quick.learner_runs.values())


def test_the_cli_names_a_broken_learner_key(tmp_path, capsys):
    path = tmp_path / "p.toml"
    path.write_text(TINY + '\n[geometry.learner]\ntrain = { steps = 5 }\n')
    assert main(["run", str(path), "--figures", str(tmp_path / "figs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"interp: error: {path}: missing required key geometry.learner.model"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.toml"]
