"""The generalised-HMM geometry figure (interp.figures.ghmm): drawn from a tiny trained and probed run, byte-identical
when drawn again, with a caption that carries the run's numbers, and one-line errors for runs it cannot draw."""

import json

import pytest

from interp.figures import ghmm as G
from interp.interpret.analyse import probe_run
from interp.training.runconfig import run_config_from_dict
from interp.training.trainer import Trainer


def tiny_run(root, name: str = "tiny_pq"):
    cfg = run_config_from_dict({
        "name": name, "process": {"name": "post_quantum"},
        "model": {"family": "transformer", "n_layers": 1, "d_model": 8, "d_head": 8},
        "train": {"context": 5, "steps": 3, "batch_size": 8, "eval_sequences": 16, "eval_every": 3,
                  "checkpoint_every": 3}})
    Trainer(cfg, root / name).run()
    return root / name


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    run = tiny_run(tmp_path_factory.mktemp("ghmm_figure"))
    probe_run(run, causal_points=50)
    return run


def test_figure_is_written_and_byte_identical(probed, tmp_path):
    assert G.main([str(probed), "--out", str(tmp_path / "a")]) == 0
    assert G.main([str(probed), "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "index.md").is_file()  # (it names its own --out, so it differs between the two)
    for name in ("ghmm_geometry.png", "ghmm_geometry.pdf"):
        a, b = (tmp_path / d / name for d in ("a", "b"))
        assert a.is_file() and a.stat().st_size > 1000, name
        assert a.read_bytes() == b.read_bytes(), name


def test_caption_carries_the_runs_numbers(probed, tmp_path):
    G.draw(probed, tmp_path, command="test")
    text = (tmp_path / "index.md").read_text()
    result = json.loads((probed / "result.json").read_text())
    probe = json.loads((probed / "probe.json").read_text())
    assert f"relative loss {result['relative_loss']:.6f}" in text
    assert f"probe R^2 {probe['best_r2']:.4f}" in text
    assert "post_quantum(log_alpha=1.0, beta=0.5)" in text and "generalised HMM" in text
    assert f"Run `{probed}`" in text and "![ghmm_geometry](ghmm_geometry.png)" in text


def test_plane_projection_keeps_the_plane(probed):
    """Three-state GHMM beliefs lie in the plane eta . w = 1: two components hold all their variance."""
    from interp.figures.paper import exact_geometry
    from interp.hmm import get_process

    b, w, _ = exact_geometry(get_process("post_quantum"), 5)
    proj = G.PlaneProjection.fit(b, w)
    assert float(proj.share[:2].sum()) == pytest.approx(1.0, abs=1e-9)
    assert len(proj.lo) == 2  # the flat third component does not colour the points


def test_unprobed_run_is_one_error_line(tmp_path, capsys):
    run = tiny_run(tmp_path, "unprobed")
    assert G.main([str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"python -m interp.figures.ghmm: error: {run}: no up-to-date probe.json; "
                   f"run `interp probe {run}` first"]
    assert not (tmp_path / "out").exists()
    assert G.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"python -m interp.figures.ghmm: error: no run folder at {tmp_path / 'nowhere'}"
