"""`interp run` end to end on a tiny config: summary keys, stage reuse, resume after a crash with the same
results, byte-identical figures, and clear errors for broken configs."""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from pathlib import Path

import pytest

from interp.cli import main
from interp.config import ConfigError
from interp.io import read_json
from interp.pipeline import pipeline as P

TINY = (Path(__file__).parents[1] / "tiny_pipeline.toml").read_text()


def tiny_config(**changes) -> P.PipelineConfig:
    data = tomllib.loads(TINY)
    for dotted, value in changes.items():
        *path, key = dotted.split(".")
        node = data
        for p in path:
            node = node.setdefault(p, {})
        node[key] = value
    return P.pipeline_config_from_dict(data)


def run(cfg, root: Path, **kw) -> tuple[dict, list[str]]:
    lines: list[str] = []
    summary = P.Pipeline(cfg, root / "run", root / "figs", workers=0, log=lines.append, **kw).run()
    assert isinstance(summary, P.PipelineSummary)
    assert P.PipelineSummary.from_dict(read_json(root / "run" / "summary.json")) == summary
    return summary.to_dict(), lines


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def results_only(summary: dict) -> dict:
    """The summary without the folder it was written in, and without wall-clock measures (the recovery
    speed-up is a ratio of fitting times)."""
    text = json.dumps(summary, sort_keys=True)
    out = json.loads(text.replace(str(summary["models"]["transformer"]["run"]).rsplit("/models/", 1)[0], "ROOT"))
    out["recovery"].pop("belief_net_speedup")
    return out


def flat(d, prefix=""):
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in flat(val, f"{prefix}{key}.").items()}
    return {prefix: d}


def both_rounding_noise(x, y) -> bool:
    """Floats that differ only in their last bits: BLAS sums in an order that can depend on how a buffer is
    aligned, so a refit on the same data may move the last bit (1 ulp of the SSM's decay has been seen), and a
    quantity that is exactly zero in exact arithmetic comes out at 1e-16 with either sign."""
    return isinstance(x, float) and isinstance(y, float) and math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-12)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    summary, lines = run(tiny_config(), root)
    return root, summary, lines


def test_summary_holds_the_headline_numbers(finished):
    root, summary, _ = finished
    assert read_json(root / "run" / "summary.json") == summary
    assert summary["process"]["name"] == "mess3" and summary["process"]["params"] == {"x": 0.15, "a": 0.6}
    assert summary["optimal_loss"] == pytest.approx(sum(summary["optimal_loss_per_position"][1:]) / 3)
    assert set(summary["models"]) == {"transformer", "fixed_attention", "ssm", "belief_net"}
    for family, m in summary["models"].items():
        result = read_json(root / "run" / "models" / family / "result.json")
        probe = read_json(root / "run" / "models" / family / "probe.json")
        assert m["relative_loss"] == result["relative_loss"] and m["relative_loss"] > 1
        assert m["probe_r2"] == probe["best_r2"] and m["probe_hook"] == probe["best_hook"]
    c = summary["construction"]
    assert c["lambda_analytic"] == pytest.approx(1 - 3 * 0.15)  # Mess3: lambda = 1 - 3x
    assert 0 < c["lambda_fitted"] < 1 and 0 < c["r2_analytic"] <= c["r2_fitted"] <= 1
    # the hand-set TransformerLens model read exactly is the analytic construction; its own logits read it linearly
    assert c["hand_set_model"]["relative_loss_exact_readout"] == pytest.approx(c["relative_loss_analytic"], rel=1e-9)
    assert c["hand_set_model"]["relative_loss"] >= c["hand_set_model"]["relative_loss_exact_readout"] - 1e-6
    a = summary["attention"]
    assert a["fixedness"] >= 0 and a["decay_fitted"] > 0
    assert a["fixed_attention"]["fixedness"] == pytest.approx(0, abs=1e-12)  # input-independent by construction
    assert summary["geometry"]["Z1R"]["process"] == "z1r(p=0.5)"
    assert summary["recovery"]["seeds"] == [0] and "belief_net" in summary["recovery"]["methods"]


def test_every_figure_is_drawn_with_a_caption(finished):
    root, _, _ = finished
    figs = root / "figs"
    index = (figs / "index.md").read_text()
    for n in range(1, 9):
        pngs = list(figs.glob(f"f{n}_*.png"))
        assert len(pngs) == 1, f"F{n}"
        assert pngs[0].with_suffix(".pdf").is_file()
        assert f"F{n}" in index and pngs[0].name in index
    assert "interp run" in index


def test_a_second_run_reuses_every_stage_and_rewrites_nothing(finished):
    root, summary, _ = finished
    before = {**digests(root / "figs"), **digests(root / "run")}
    again, lines = run(tiny_config(), root)
    assert again == summary
    stage_lines = [l for l in lines if not l.startswith(("[summary", "[done", "[recovery "))]
    assert stage_lines and all("reused" in l for l in stage_lines), lines
    after = {**digests(root / "figs"), **{k: v for k, v in digests(root / "run").items()}}
    assert after == before


def test_figures_redrawn_from_the_same_runs_are_byte_identical(finished, tmp_path):
    root, _, _ = finished
    assert main(["figures", str(root / "run"), "--out", str(tmp_path / "a")]) == 0
    assert main(["figures", str(root / "run"), "--out", str(tmp_path / "b")]) == 0
    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert len(a) == 17 and a == b  # 8 figures x (png, pdf) + index.md
    drawn_by_run = digests(root / "figs")
    assert {k: v for k, v in a.items() if k != "index.md"} == {k: v for k, v in drawn_by_run.items() if k != "index.md"}


def test_a_changed_model_redoes_only_what_depends_on_it(finished, tmp_path):
    import shutil

    root, summary, _ = finished
    shutil.copytree(root / "run", tmp_path / "run")
    shutil.copytree(root / "figs", tmp_path / "figs")
    again, lines = run(tiny_config(**{"models.belief_net.train.steps": 30}), tmp_path)
    ran = {l.split("]")[0].strip("[ ") for l in lines if "reused" not in l}
    assert "model belief_net" in ran and "compare" in ran and "figures" in ran
    assert not {"model transformer", "model ssm", "model fixed_attention", "construction", "geometry z1r"} & ran
    assert again["models"]["belief_net"]["train_steps"] == 30
    assert again["models"]["transformer"] == summary["models"]["transformer"] | {
        "run": str(tmp_path / "run" / "models" / "transformer")}


def test_a_crashed_pipeline_resumes_to_the_same_results(finished, tmp_path, monkeypatch):
    import interp.interpret.analyse as analyse

    _, summary, _ = finished
    real, calls = analyse.probe_run, []

    def crash_on_third(*args, **kw):  # two models finish, the third is trained but crashes while probing
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(analyse, "probe_run", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(), tmp_path)
    monkeypatch.setattr(analyse, "probe_run", real)
    assert not (tmp_path / "run" / "summary.json").exists()
    resumed, lines = run(tiny_config(), tmp_path)
    assert sum("reused" in l for l in lines if l.startswith("[model")) == 2
    a, b = flat(results_only(resumed)), flat(results_only(summary))
    assert a.keys() == b.keys()
    differ = {k: (a[k], b[k]) for k in a if a[k] != b[k] and not both_rounding_noise(a[k], b[k])}
    assert not differ, differ
    assert digests(tmp_path / "figs").keys() == digests(finished[0] / "figs").keys()


def test_a_failed_stage_is_reported_and_the_others_are_kept(tmp_path, monkeypatch):
    import interp.interpret.analyse as analyse

    def broken(*args, **kw):
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(analyse, "probe_run", broken)
    with pytest.raises(P.StageError, match="probe exploded"):
        run(tiny_config(), tmp_path, figures=False)
    assert (tmp_path / "run" / "models" / "ssm" / "result.json").is_file()  # trained before the probe failed


@pytest.mark.parametrize("change, message", [
    ({"models.transformer.model.n_layers": "two"}, r"models\.transformer\.model\.n_layers must be an integer"),
    ({"models.ssm.model.family": "transformer"}, "models.ssm.model.family must be 'ssm'"),
    ({"geometry.model": "lstm"}, "geometry.model must name one of"),
    ({"recovery.epsilon": -1.0}, r"recovery\.epsilon must be > 0"),
    ({"construction.decay": "guess"}, "construction.decay must be"),
    ({"models.ssm.train.context": 5}, "same train.context"),
    ({"name": "a/b"}, "name must be"),
    ({"process.params": {"x": 0.7}}, "process.params"),
])
def test_broken_configs_name_the_problem(change, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**change)


def test_the_cli_refuses_a_broken_config_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "broken.toml"
    path.write_text(TINY.replace('name = "tiny"', 'name = "tiny"\nbogus = 1'))
    assert main(["run", str(path), "--figures", str(tmp_path / "figs")]) == 2
    err = capsys.readouterr().err
    assert err.count("interp: error:") == 1 and "unknown key bogus" in err and str(path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.toml"]


def test_the_default_pipeline_is_package_data_and_exists_once():
    from importlib.resources import files

    shipped = files("interp.pipeline").joinpath(P.DEFAULT_CONFIG)
    assert P.load_pipeline_config(Path(str(shipped))) == P.default_pipeline_config()
    repo = Path(__file__).parents[2]
    copies = [p for p in repo.glob("runs/*.toml") if "[models." in p.read_text()]
    assert copies == [], "the default pipeline is kept once, as package data"
    cfg = P.default_pipeline_config()
    assert set(cfg.models) == {"transformer", "fixed_attention", "ssm", "belief_net"}
    assert cfg.process.params == {"x": 0.15, "a": 0.6} and cfg.context == 10
    assert cfg.recovery is not None and set(cfg.geometry_runs) == {"RRXOR", "Z1R", "Mess3(0.05, 0.85)"}
