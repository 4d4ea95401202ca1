"""The Shai et al. 2024 figures (interp.figures.shai2024): drawn from tiny trained and probed MLP runs, byte-identical
when drawn again, and one-line errors for runs they cannot draw."""

import pytest

from interp.figures import shai2024 as F
from interp.interpret.analyse import probe_run
from interp.interpret.beyond import beyond_next_token
from interp.training.runconfig import run_config_from_dict
from interp.training.trainer import Trainer


def tiny_run(root, process: dict):
    cfg = run_config_from_dict({
        "name": f"tiny_{process['name']}", "process": process,
        "model": {"family": "transformer", "n_layers": 2, "d_model": 8, "d_head": 4, "attn_only": False, "d_mlp": 16,
                  "normalization": "LN"},
        "train": {"context": 6, "steps": 3, "batch_size": 8, "eval_sequences": 16, "eval_every": 3,
                  "checkpoint_every": 3}})
    Trainer(cfg, root / cfg.name).run()
    probe_run(root / cfg.name, causal_points=50)
    return root / cfg.name


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    root = tmp_path_factory.mktemp("shai2024")
    return {"mess3": tiny_run(root, {"name": "mess3", "params": {"x": 0.05, "a": 0.85}}),
            "rrxor": tiny_run(root, {"name": "rrxor"})}


def draw_all(probed, out):
    return (F.draw_fractal(probed["mess3"], out, n_points=500) + F.draw_geometry(probed["rrxor"], out, n_points=200)
            + F.draw_beyond(beyond_next_token(probed["rrxor"]), out, label="RRXOR"))


def test_figures_are_written_and_byte_identical(probed, tmp_path):
    names = draw_all(probed, tmp_path / "a")
    assert names == [f"{stem}.{ext}" for stem in (F.FRACTAL, F.GEOMETRY, F.BEYOND) for ext in ("png", "pdf")]
    assert draw_all(probed, tmp_path / "b") == names
    for name in names:
        a, b = tmp_path / "a" / name, tmp_path / "b" / name
        assert a.stat().st_size > 1000, name
        assert a.read_bytes() == b.read_bytes(), name


def test_final_residual_hook_is_the_last_layers():
    hooks = ["hook_embed", "blocks.0.hook_resid_post", "blocks.10.hook_resid_post", "blocks.2.hook_resid_post",
             "blocks.10.hook_mlp_out"]
    assert F.final_residual_hook(hooks) == "blocks.10.hook_resid_post"
    with pytest.raises(ValueError, match="no hook_resid_post"):
        F.final_residual_hook(["hook_embed"])


def test_mess3_draws_no_beyond_figure(probed, tmp_path):
    result = beyond_next_token(probed["mess3"])
    assert result.groups == () and F.draw_beyond(result, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_runs_it_cannot_draw_are_one_line_errors(probed, tmp_path):
    with pytest.raises(ValueError, match=r"needs a 3-state process, rrxor\(p=0.5\) has 5") as err:
        F.draw_fractal(probed["rrxor"], tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="no trained run at"):
        F.draw_fractal(tmp_path / "missing", tmp_path)
    with pytest.raises(ValueError, match="no probe at 'blocks.0.hook_mlp_out'"):
        F.draw_fractal(probed["mess3"], tmp_path, hook="blocks.0.hook_mlp_out")
    assert not (tmp_path / f"{F.FRACTAL}.png").exists()


def test_draw_all_draws_what_the_process_allows(probed, tmp_path):
    stems = lambda names: sorted({n.rsplit(".", 1)[0] for n in names})  # noqa: E731
    assert stems(F.draw_all(probed["mess3"], tmp_path / "mess3")) == [F.FRACTAL, F.GEOMETRY]
    assert stems(F.draw_all(probed["rrxor"], tmp_path / "rrxor")) == [F.BEYOND, F.GEOMETRY]
