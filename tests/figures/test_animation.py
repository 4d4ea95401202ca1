"""The interpolation animation (interp.figures.animation): a tiny sweep trained and probed through the sweep
machinery, the GIF and contact sheet byte-identical when drawn again, frame titles naming trained and constructed
frames, and one-line errors for configs whose sweep leaves the path."""

import json

import pytest
from PIL import Image

from interp.config import ConfigError
from interp.figures import animation as A
from interp.studies.sweep import Sweep

TINY = {
    "name": "tiny_animation",
    "seeds": [0],
    "animation": {"path": [[0.05, 0.6], [0.25, 0.6]], "frames_per_segment": 2, "fps": 2, "n_points": 150},
    "grid": {"process.params.x": [0.15]},
    "process": {"name": "mess3", "params": {"x": 0.15, "a": 0.6}},
    "model": {"family": "transformer", "n_layers": 1, "d_model": 8, "d_head": 8, "normalization": "none",
              "bos": True},
    "train": {"context": 4, "steps": 20, "batch_size": 16, "eval_sequences": 32, "eval_every": 20,
              "checkpoint_every": 20},
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    cfg = A.animation_config_from_dict(TINY)
    root = tmp_path_factory.mktemp("animation")
    Sweep(cfg.sweep, root, workers=0, figure=False, log=lambda msg: None).run()
    return cfg, root


def test_animation_is_byte_identical_when_drawn_again(swept):
    cfg, root = swept
    paths = A.make_animation(cfg, root, log=lambda msg: None)
    assert [p.name for p in paths] == [A.GIF, f"{A.SHEET}.png", f"{A.SHEET}.pdf", A.FRAMES_JSON]
    first = {p.name: p.read_bytes() for p in paths}
    with Image.open(root / A.GIF) as gif:
        assert gif.n_frames == 3
    A.make_animation(cfg, root, log=lambda msg: None)
    for name, data in first.items():
        assert len(data) > 1000, name
        assert (root / name).read_bytes() == data, name


def test_frame_titles_name_trained_and_constructed_frames(swept):
    cfg, root = swept
    frames = json.loads((root / A.FRAMES_JSON).read_text())["frames"]
    assert [(f["x"], f["trained"], f["point"]) for f in frames] == [
        (0.05, False, None), (0.15, True, "x=0.15_seed=0"), (0.25, False, None)]
    assert frames[1]["title"] == "frame 2/3: Mess3(x = 0.15, a = 0.6), trained (run x=0.15_seed=0)"
    for f in (frames[0], frames[2]):
        assert f["title"].endswith(", constructed (exact beliefs and construction only)")
        assert f["probe_r2"] is None
    assert frames[1]["probe_r2"] is not None
    assert {f["decay_kind"] for f in frames} == {"analytic"}
    assert frames[0]["decay"] == pytest.approx(1 - 3 * 0.05)


def test_a_point_without_a_finished_run_is_constructed(tmp_path):
    cfg = A.animation_config_from_dict(TINY)
    frames = A.resolve_frames(cfg, tmp_path)
    assert frames[1].point == "x=0.15_seed=0" and not frames[1].trained
    assert A.frame_title(frames[1], 3) == "frame 2/3: Mess3(x = 0.15, a = 0.6), constructed (exact beliefs and " \
                                          "construction only)"


def test_the_construction_is_scored_on_the_trained_positions():
    from interp import hmm as H
    from interp.interpret.cache import evaluation_set
    from interp.interpret.construction import construction_beliefs
    from interp.interpret.metrics import pooled_r2

    hmm = H.get_process("mess3", x=0.05, a=0.6)

    def r2(length):
        ev = evaluation_set(hmm, length)
        pred = construction_beliefs(hmm, ev.tokens, decay=1 - 3 * 0.05)
        return float(pooled_r2(H.beliefs(hmm, ev.tokens), pred, ev.weight[:, None].expand(-1, length)))

    data = A.frame_data(A.Frame(0, 0.05, 0.6), 3, 4, 50)
    assert r2(3) != pytest.approx(r2(4), abs=1e-6)
    assert data.construction_r2 == pytest.approx(r2(3), abs=1e-12)


def test_a_sweep_point_off_the_path_is_refused():
    data = {**TINY, "grid": {"process.params.x": [0.15, 0.2]}}
    with pytest.raises(ConfigError, match=r"^sweep point x=0.2_seed=0 \(x=0.2, a=0.6\) is not a frame of "
                                          r"animation.path; put it on the path or change frames_per_segment$"):
        A.animation_config_from_dict(data)


def test_two_seeds_are_accepted_and_frames_name_the_first():
    cfg = A.animation_config_from_dict({**TINY, "seeds": [0, 1]})
    assert sorted(p.name for p in cfg.sweep.points) == ["x=0.15_seed=0", "x=0.15_seed=1"]
    assert [f.point for f in A.plan_frames(cfg)] == [None, "x=0.15_seed=0", None]
    data = {**TINY, "seeds": [0, 1], "grid": {"process.params.x": [0.15, 0.2]}}
    with pytest.raises(ConfigError, match=r"^sweep point x=0.2_seed=0 \(x=0.2, a=0.6\) is not a frame"):
        A.animation_config_from_dict(data)


def test_command_reports_a_bad_config_in_one_line(tmp_path, capsys):
    path = tmp_path / "anim.toml"
    path.write_text('seeds = [0]\n[animation]\npath = [[0.05, 0.6]]\n[process]\nname = "mess3"\n'
                    '[model]\nfamily = "transformer"\n')
    assert A.main([str(path), "--no-train"]) == 2
    err = capsys.readouterr().err
    assert err == (f"animation: error: {path}: animation.path must list at least two [x, a] keypoints, got 1\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anim.toml"]
