"""`interp run --quick` and `interp sweep --quick` into their own folders; a pipeline's figures in its own folder
unless it is the embedded default; `interp figures --only` redraws some and keeps index.md true for the rest."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pytest

from interp.cli import main
from interp.io import read_json
from interp.pipeline import pipeline as P
from interp.studies import sweep as SW

TINY = (Path(__file__).parents[1] / "tiny_pipeline.toml").read_text()
# the tiny pipeline with one model and no geometry or recovery: every stage, in seconds
SMALL = TINY.split("[models.fixed_attention]")[0].replace('name = "tiny"', 'name = "small"')


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def index_entries(folder: Path) -> dict[str, str]:
    text = (folder / "index.md").read_text()
    return {part.split(":", 1)[0]: part for part in text.split("\n## ")[1:]}


def test_the_quick_config_scales_down_what_takes_time_and_keeps_the_rest():
    cfg = P.default_pipeline_config()
    quick = P.quick_config(cfg)
    assert quick.name == "mess3_quick" and quick.figures.out is None
    assert set(quick.models) == set(cfg.models) and set(quick.geometry_runs) == set(cfg.geometry_runs)
    for family, run in quick.runs.items():
        assert run.model == cfg.runs[family].model and run.process == cfg.runs[family].process
        assert run.train.steps == P.QUICK_STEPS < cfg.runs[family].train.steps
        assert run.train.eval_sequences <= 512 and run.train.batch_size <= 128
    assert quick.context == 7 and 3**7 <= P.QUICK_PROBE_SEQUENCES < 3**8  # Mess3: 2187 sequences, every one
    assert all(run.train.steps == P.QUICK_STEPS for run in quick.geometry_runs.values())
    assert quick.recovery.seeds == (0,) and quick.recovery.belief_net.max_steps <= 40
    assert quick.recovery.baum_welch.max_iter <= 20 and quick.recovery.hmm == cfg.recovery.hmm
    tiny = P.pipeline_config_from_dict(tomllib.loads(TINY))
    assert P.quick_config(tiny).context == tiny.context == 4  # already small: kept
    assert "What changes" in P.quick_config.__doc__


def test_only_the_embedded_default_draws_into_paper_figs(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(P.Pipeline, "run", lambda self: seen.append((self.lay.root, self.figures_dir)))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "copy.toml").write_text(TINY)
    assert main(["run"]) == 0
    assert main(["run", "--quick"]) == 0
    assert main(["run", "copy.toml"]) == 0
    assert main(["run", "copy.toml", "--quick", "--out", "mine", "--figures", "figs"]) == 0
    assert seen == [(Path("runs/mess3"), Path("paper_figs")),
                    (Path("runs/mess3_quick"), Path("runs/mess3_quick/figures")),
                    (Path("tiny"), Path("tiny/figures")),
                    (Path("mine_quick"), Path("figs_quick"))]


def test_a_quick_run_writes_its_own_folder_only_and_saves_its_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.toml").write_text(SMALL)
    assert main(["run", "small.toml", "--quick", "--workers", "0"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.toml", "small_quick"]  # no small/, no paper_figs/
    root = tmp_path / "small_quick"
    cfg = P.load_pipeline_config(tmp_path / "small.toml")
    assert P.pipeline_config_from_dict(read_json(root / "pipeline.json")) == P.quick_config(cfg)
    assert read_json(root / "summary.json")["name"] == "small_quick"
    figs = root / "figures"
    assert (figs / "index.md").is_file() and len(list(figs.glob("*.png"))) >= 1
    assert "figures -> small_quick/figures" in capsys.readouterr().out

    # `interp figures` redraws where the run drew; --only keeps the other entries of index.md as they were
    before, entries = digests(figs), index_entries(figs)
    header = (figs / "index.md").read_text().split("\n## ")[0]
    assert "Made by `interp run`" in header
    assert main(["figures", str(root), "--only", "F2,f4"]) == 0
    after, now = digests(figs), index_entries(figs)
    assert after.keys() == before.keys()
    assert {k for k in after if after[k] != before[k]} <= {"index.md", *[f for f in after if f.startswith(("f2_", "f4_"))]}
    assert {k: v for k, v in now.items() if k not in ("F2", "F4")} == {
        k: v for k, v in entries.items() if k not in ("F2", "F4")}
    assert "--only F2,F4" in now["F2"] and "--only F2,F4" in now["F4"]
    assert (figs / "index.md").read_text().split("\n## ")[0] == header  # the set was made by `interp run`


def test_unknown_figures_are_one_line_listing_the_valid_ones(tmp_path, capsys):
    (tmp_path / "pipeline.json").write_text("{}")
    assert main(["figures", str(tmp_path), "--only", "F2,F9"]) == 2
    err = capsys.readouterr().err
    assert err == "interp: error: --only: unknown figure 'F9'; the figures are F1, F2, F3, F4, F5, F6, F7, F8\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.json"]


SWEEP = """
name = "grid"
seeds = [0, 1]

[grid]
"train.steps" = [100, 200, 30]

[process]
name = "mess3"

[model]
family = "transformer"
n_layers = 1
d_model = 8
d_head = 8
normalization = "none"

[train]
context = 4
batch_size = 256
eval_sequences = 2000
"""


def test_the_quick_sweep_runs_the_first_seed_at_small_sizes():
    cfg = SW.sweep_config_from_dict(tomllib.loads(SWEEP))
    quick = SW.quick_sweep_config(cfg)
    assert quick.name == "grid_quick" and quick.seeds == (0,)
    assert quick.grid == {"train.steps": [60, 30]}  # 100 and 200 both become 60, kept once
    assert [p.config.train.steps for p in quick.points] == [60, 30]
    assert all(p.config.train.batch_size == 128 and p.config.train.eval_sequences == 512 for p in quick.points)
    assert all(p.config.model == cfg.points[0].config.model for p in quick.points)


def test_interp_sweep_quick_writes_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid.toml").write_text(SWEEP.replace("[100, 200, 30]", "[5]"))
    assert main(["sweep", "grid.toml", "--quick", "--workers", "0", "--no-figure"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml", "grid_quick"]
    res = read_json(tmp_path / "grid_quick" / "results.json")
    assert res["sweep"] == "grid_quick" and res["seeds"] == [0] and len(res["rows"]) == 1
    assert read_json(tmp_path / "grid_quick" / "sweep.json")["config"]["name"] == "grid_quick"


@pytest.mark.parametrize("config", ["default", "tiny"])
def test_a_pipeline_without_figures_out_draws_into_its_folder(config, tmp_path):
    cfg = P.default_pipeline_config() if config == "default" else P.pipeline_config_from_dict(tomllib.loads(TINY))
    assert cfg.figures.out is None  # the shipped default too: a copy of it never draws over paper_figs
    assert P.Pipeline(cfg, tmp_path / "p").figures_dir == tmp_path / "p" / "figures"
    out = P.pipeline_config_from_dict({**tomllib.loads(TINY), "figures": {"out": "elsewhere"}})
    assert P.Pipeline(out, tmp_path / "p").figures_dir == Path("elsewhere")
