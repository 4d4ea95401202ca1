"""Run-level analysis end to end on tiny runs: probe files, the construction as a run, the comparison table."""

import json
import shutil

import pytest
import torch

from interp import hmm as H
from interp.cli import main
from interp.interpret import construction as K
from interp.interpret.analyse import ProbeResult, build_construction_run, compare_runs, load_probe_result, probe_run
from interp.interpret.cache import load_cache
from interp.io import read_tensors
from interp.rundir import PROBE
from interp.training.checkpoint import load_model


@pytest.fixture(scope="module")
def probed(runs, tmp_path_factory):
    """Copies of the tiny runs (probing writes into the run folder)."""
    root = tmp_path_factory.mktemp("probed")
    out = {}
    for family, path in runs.items():
        out[family] = root / path.name
        shutil.copytree(path, out[family], ignore=shutil.ignore_patterns("cache"))
    return out


def test_probe_run_writes_scores_and_weights(probed):
    run = probed["transformer"]
    out = probe_run(run, causal_points=200)
    saved = json.loads((run / PROBE).read_text())
    assert saved == out.to_dict()  # the file is the result, key for key
    assert saved["best_hook"] == out.best_hook and saved["best_hook"] in saved["hooks"]
    assert set(saved["hooks"]) == {"hook_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post",
                                   "blocks.1.hook_resid_post"}  # blocks.1.hook_resid_pre is stored once
    for scores in [*saved["hooks"].values(), saved["all_layers"]]:
        assert set(scores) >= {"r2", "rmse", "simplex_distance", "r2_train", "shuffled_r2", "n_train", "n_test"}
        assert scores["n_train"] + scores["n_test"] == 3**4  # context 5: the four trained positions
    # the saved weights reproduce the held-out score's predictions
    w = read_tensors(run / "probe.safetensors")
    cache = load_cache(run)
    best = saved["best_hook"]
    pred = cache[best].double() @ w[f"{best}.coef"].T + w[f"{best}.intercept"]
    assert pred.shape == cache.beliefs.shape
    assert saved["causal"]["n_points"] == 200 and saved["causal"]["hook"] == best
    assert load_probe_result(run) == out == ProbeResult.from_dict(saved)


def test_probe_result_goes_stale_with_the_weights(probed, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(probed["ssm"], run)
    probe_run(run, causal_points=50)
    assert load_probe_result(run) is not None
    weights = read_tensors(run / "model.safetensors")
    from interp.io import write_tensors

    write_tensors(run / "model.safetensors", {k: v + 0.01 for k, v in weights.items()})
    assert load_probe_result(run) is None


def test_construction_run_loads_caches_and_matches_the_construction(tmp_path):
    run = tmp_path / "mess3_construction"
    res = build_construction_run({"name": "mess3"}, 5, run)
    assert res["construction"]["decay"] == pytest.approx(0.55)
    model, cfg = load_model(run)
    assert model.bos_token == 3 and cfg.model.bos
    assert main(["cache", str(run)]) == 0
    cache = load_cache(run)
    hmm = H.get_process("mess3")
    eta_hat = K.construction_beliefs(hmm, cache.tokens, decay=0.55)
    belief = cache["blocks.0.hook_resid_post"][..., K.transformer_channels(3)["belief"]]
    torch.testing.assert_close(belief + hmm.pi, eta_hat, atol=1e-12, rtol=0)
    # without the BOS key the cached pattern rows are the row-normalised decay's real-token part
    pattern = cache["blocks.0.attn.hook_pattern"][0, 0]
    t = torch.arange(4)  # context 5: the cache holds the four trained positions
    expect = torch.where(t[:, None] >= t[None, :], (1 - 0.55) * 0.55 ** (t[:, None] - t[None, :]).clamp_min(0), 0.0)
    # (the bridge's hooked pattern carries float32 rounding even in a float64 model; the residual does not)
    torch.testing.assert_close(pattern, expect.double(), atol=1e-7, rtol=0)
    with pytest.raises(FileExistsError, match="not empty"):
        build_construction_run({"name": "mess3"}, 5, run)


def test_construction_needs_a_scalar_decay_or_a_fit(tmp_path, capsys):
    assert main(["construct", "--process", "rrxor", "--context", "4", "--out", str(tmp_path / "r")]) == 2
    assert "no analytic decay" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["construct", "--process", "rrxor", "--context", "4", "--decay", "fitted",
                 "--out", str(tmp_path / "r")]) == 0


def test_compare_covers_every_family(probed, tmp_path):
    construction = tmp_path / "construction"
    build_construction_run({"name": "mess3"}, 5, construction)
    runs = [probed[f] for f in ("transformer", "fixed_attention", "ssm", "belief_net")] + [construction]
    out = compare_runs(runs, tmp_path / "cmp")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert md.startswith("# Runs compared")
    # the construction's R^2 is over the whole context, unlike the runs' probes: the section says so
    section = md.split("## Construction (scaled vector addition) per process")[1].split("##")[0]
    assert "Scored on every position of the context" in section
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["family"] for r in saved["runs"]] == ["transformer", "fixed_attention", "ssm", "belief_net",
                                                    "transformer"]
    (label, k), = saved["construction"].items()
    assert label == "mess3(x=0.15, a=0.6)" and k["lambda_analytic"] == pytest.approx(0.55)
    rows = {r["run"]: r for r in out["runs"]}
    assert len(rows["tiny_transformer"]["attention"]) == 2  # two layers, one head each
    assert rows["construction"]["attention"][0]["distance_to_analytic"]["tv"] == pytest.approx(0.0, abs=1e-12)
    assert rows["construction"]["attention"][0]["mean_std"] == pytest.approx(0.0, abs=1e-12)
    ssm = rows["tiny_ssm"]["ssm"]
    assert len(ssm) == 2 and len(ssm[0]["eigenvalues"]) == 4
    assert sum(e["share"] for e in ssm[0]["leading"]) == pytest.approx(1.0)  # 4 modes, all listed
    bn = rows["tiny_belief_net"]["belief_net"]
    assert bn["comparable"] and sorted(bn["perm"]) == [0, 1, 2]


def test_command_line_errors(tmp_path, capsys):
    assert main(["probe", str(tmp_path / "nowhere")]) == 2
    assert "no run folder" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nowhere")]) == 2
    assert "no run folder" in capsys.readouterr().err
    assert main(["probe", str(tmp_path), "--test-fraction", "1.5"]) == 2
    assert "test-fraction" in capsys.readouterr().err
