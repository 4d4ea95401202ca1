"""Parameter recovery: the Belief Net fit steps on interp.hmm's expected-count gradient (tested against autograd,
hmmlearn and every hidden path in tests/hmm/test_smoothing.py), Baum-Welch and Belief Net started at the truth stay
there, configs, and a tiny study end to end."""

import json

import numpy as np
import pytest
import torch

from interp import hmm as H
from interp.baselines import spectral as SP
from interp.cli import main
from interp.config import ConfigError
from interp.io import fingerprint
from interp.studies.recovery import (
    BaumWelchFit,
    BeliefNetFit,
    fit_baum_welch,
    fit_belief_net,
    recovery_config_from_dict,
    run_recovery,
    run_seed,
    study_data,
    time_to_reach,
)


def test_the_fit_owns_a_belief_net_trained_by_the_expected_count_gradient():
    """The study's learner is the model family's BeliefNet: one Adam step from the returned weights' start is the
    step on interp.hmm's expected-count gradient (of the mean NLL per token)."""
    from interp.models.belief_net import BeliefNet

    hmm = H.get_process("cyclic", n_states=4, n_tokens=6, seed=0)
    train, held = H.sample(hmm, 50, 20, seed=1), H.sample(hmm, 20, 20, seed=2)
    logits = [torch.randn(*s, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
              for s in ((4,), (4, 4), (4, 6))]
    res = fit_belief_net(train, held, logits, BeliefNetFit(lr=0.1, max_steps=1, eval_every=1), seed=0,
                         dtype=torch.float64)
    model = res["model"]
    assert isinstance(model, BeliefNet)
    grads = H.log_likelihood_gradient(*logits, train)
    ref = [torch.nn.Parameter(x.clone()) for x in logits]
    opt = torch.optim.Adam(ref, lr=0.1)
    for p, g in zip(ref, (grads.mu, grads.A, grads.C)):
        p.grad = -g / train.numel()
    opt.step()
    for p, q in zip((model.mu_logits, model.A_logits, model.C_logits), ref):
        assert torch.equal(p.detach(), q.detach())
    # its curve and parameters are the exact filter's on the weights it holds
    start = H.EmissionForm(*(torch.softmax(x, -1) for x in logits)).to_hmm()
    assert res["curve"][0][2] == pytest.approx(float(-H.log_likelihood(start, held).sum() / held.numel()), abs=1e-12)
    assert res["curve"][-1][2] == pytest.approx(float(-model.log_likelihood(held).sum() / held.numel()), abs=1e-12)
    assert torch.equal(res["params"].C, torch.softmax(model.C_logits.detach(), -1))


def test_started_at_the_truth_both_learners_stay_there():
    hmm = H.get_process("cyclic", n_states=4, n_tokens=6, seed=0)
    em = hmm.to_emission()
    train, held = H.sample(hmm, 400, 50, seed=1), H.sample(hmm, 200, 50, seed=2)
    true_nll = float(-H.log_likelihood(hmm, held).sum() / held.numel())
    logits = [torch.log(x.clamp_min(1e-30)) for x in (em.mu, em.A, em.C)]
    bn = fit_belief_net(train, held, logits, BeliefNetFit(lr=1e-3, max_steps=20, eval_every=5), seed=0,
                        dtype=torch.float64)
    assert bn["curve"][0][2] == pytest.approx(true_nll, abs=1e-12)
    assert abs(bn["curve"][-1][2] - true_nll) < 2e-3
    assert torch.linalg.matrix_norm(bn["params"].C - em.C) < 0.05
    bw = fit_baum_welch(train.numpy(), held.numpy(), em, BaumWelchFit(max_iter=3), "scaling")
    assert bw["curve"][0][2] == pytest.approx(true_nll, abs=1e-9)
    assert abs(bw["curve"][-1][2] - true_nll) < 2e-3


def test_cosine_schedule_ends_at_zero_learning_rate():
    hmm = H.get_process("cyclic", n_states=3, n_tokens=4, seed=0)
    train, held = H.sample(hmm, 40, 20, seed=1), H.sample(hmm, 10, 20, seed=2)
    logits = [torch.zeros(3), torch.zeros(3, 3), torch.zeros(3, 4)]
    ends = {}
    for schedule in ("constant", "cosine"):
        fit = BeliefNetFit(lr=0.1, max_steps=12, eval_every=4, batch_size=10, lr_schedule=schedule)
        res = fit_belief_net(train, held, logits, fit, seed=0, dtype=torch.float64)
        ends[schedule] = res["final_lr"]
        assert res["steps"] == 12
    assert ends == {"constant": 0.1, "cosine": pytest.approx(0.0, abs=1e-15)}


def test_baum_welch_never_lowers_the_training_likelihood():
    hmm = H.get_process("cyclic", n_states=4, n_tokens=6, seed=3)
    train, held = H.sample(hmm, 100, 40, seed=1).numpy(), H.sample(hmm, 20, 40, seed=2).numpy()
    g = np.random.default_rng(0)
    init = H.EmissionForm(*(torch.as_tensor(x / x.sum(-1, keepdims=True)) for x in
                            (g.random(4), g.random((4, 4)), g.random((4, 6)))))
    from hmmlearn.hmm import CategoricalHMM

    m = CategoricalHMM(4, n_iter=30, tol=-np.inf, init_params="", implementation="scaling")
    m.startprob_, m.transmat_, m.emissionprob_ = (x.numpy() for x in (init.mu, init.A, init.C))
    m.fit(train.reshape(-1, 1), [40] * 100)
    hist = np.array(m.monitor_.history)
    assert np.all(np.diff(hist) >= -1e-8)
    res = fit_baum_welch(train, held, init, BaumWelchFit(max_iter=30, tol_per_token=-1.0), "scaling")
    assert res["iterations"] == 30
    # one-iteration fits chained reproduce hmmlearn's own 30-iteration fit
    np.testing.assert_allclose(res["params"].C.numpy(), m.emissionprob_, atol=1e-10)


def test_time_to_reach():
    curve = [(0.0, 0, 3.0), (1.0, 10, 2.0), (2.5, 20, 1.5)]
    assert time_to_reach(curve, 2.0) == 1.0
    assert time_to_reach(curve, 1.0) is None


@pytest.mark.parametrize("bad, key", [
    ({"hmm": {"n_states": 0}}, "hmm.n_states"),
    ({"baum_welch": {"implementations": ["fast"]}}, "baum_welch.implementations"),
    ({"belief_net": {"lr": -1.0}}, "belief_net.lr"),
    ({"belief_net": {"init": "zeros"}}, "belief_net.init"),
    ({"belief_net": {"lr_schedule": "linear"}}, "belief_net.lr_schedule"),
    ({"colour": 1}, "colour"),
    ({"data": {"length": 2}}, "data.length"),
    ({"seeds": []}, "seeds"),
    ({"spectral_window": 0}, "spectral_window"),
    ({"spectral_window": True}, "spectral_window"),
    ({"spectral_window": 3, "data": {"length": 6}}, "2 spectral_window"),
    ({"spectral_window": 3, "hmm": {"n_states": 8, "n_tokens": 32}}, "spectral_window 3 needs"),
])
def test_bad_configs_name_the_key(bad, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        recovery_config_from_dict({"name": "x", **bad})


TINY = {"name": "tiny", "seeds": [0, 1], "epsilon": 0.05,
        "hmm": {"n_states": 3, "n_tokens": 5, "transition_nnz": 2, "emission_nnz": 2},
        "data": {"n_train": 60, "n_heldout": 30, "length": 12},
        "belief_net": {"max_steps": 15, "eval_every": 5},
        "baum_welch": {"implementations": ["scaling", "log"], "max_iter": 5},
        "ablation": {"random_scales": [0.3], "near_uniform": True, "spectral": True, "restarts": 2,
                     "from_truth": True}}


def test_tiny_study_end_to_end_and_resume(tmp_path, capsys):
    cfg = recovery_config_from_dict(TINY)
    out = run_recovery(cfg, tmp_path / "tiny")
    methods = {"spectral", "belief_net", "belief_net/random_0.3", "belief_net/near_uniform", "belief_net/spectral",
               "belief_net/best_of_2", "belief_net/from_truth", "baum_welch_scaling", "baum_welch_log"}
    assert set(out["summary"]) == methods | {"speedup"}
    for seed in out["seeds"]:
        assert set(seed["methods"]) == methods
        bn = seed["methods"]["belief_net"]
        assert bn["excess_nll"] == pytest.approx(bn["heldout_nll"] - seed["true_heldout_nll"])
        assert {"A_frobenius", "C_frobenius", "curve", "time_to_epsilon"} <= set(bn)
        # the control starts at the truth: its first held-out evaluation is the true NLL (the fit runs in float32)
        ctrl = seed["methods"]["belief_net/from_truth"]
        assert ctrl["curve"][0][2] == pytest.approx(seed["true_heldout_nll"], abs=1e-6)
        assert ctrl["curve"][0][0] == 0.0 and ctrl["time_to_epsilon"] == 0.0
    saved = json.loads((tmp_path / "tiny" / "recovery.json").read_text())
    assert saved["summary"]["belief_net"]["n_seeds"] == 2
    # each seed file is its RecoverySeed, key for key, and reads back to an equal one
    from interp.studies.recovery import RecoverySeed, run_recovery_seed

    seed0 = json.loads((tmp_path / "tiny" / "seeds" / "seed_0000.json").read_text())
    back = run_recovery_seed(cfg, 0, tmp_path / "tiny")
    assert isinstance(back, RecoverySeed) and back.to_dict() == seed0 == saved["seeds"][0]
    assert RecoverySeed.from_dict(seed0) == back and back.methods == out["seeds"][0]["methods"]
    # a second call reuses the finished seeds
    before = (tmp_path / "tiny" / "seeds" / "seed_0000.json").read_bytes()
    run_recovery(cfg, tmp_path / "tiny")
    assert (tmp_path / "tiny" / "seeds" / "seed_0000.json").read_bytes() == before
    # more seeds extend the study: the finished ones are reused, only the new one runs
    cfg3 = recovery_config_from_dict({**TINY, "seeds": [0, 1, 2]})
    grown = run_recovery(cfg3, tmp_path / "tiny")
    assert (tmp_path / "tiny" / "seeds" / "seed_0000.json").read_bytes() == before
    assert [s["seed"] for s in grown["seeds"]] == [0, 1, 2]
    assert grown["seeds"][:2] == out["seeds"]
    # a seed file cut short (a crash, a copy) is not reused: that seed runs again, the others are kept
    seed1 = tmp_path / "tiny" / "seeds" / "seed_0001.json"
    seed1.write_bytes(seed1.read_bytes()[:100])
    lines: list[str] = []
    again = run_recovery(cfg3, tmp_path / "tiny", log=lines.append)
    assert any(l.startswith("seed 1:") for l in lines)
    assert all("reused" in l for l in lines if l.startswith(("seed 0:", "seed 2:")))
    assert not any("reused" in l for l in lines if l.startswith("seed 1:"))
    assert json.loads(seed1.read_text())["seed"] == 1 and again["seeds"][0] == out["seeds"][0]
    # config.json holds the config and its fingerprint, like a training run's
    saved = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert saved == {"config": cfg3.to_dict(), "config_hash": fingerprint(cfg3.to_dict())}
    # a study saved before a config field existed (and when config.json held the config bare) is the same
    # study: the field's default fills it in
    saved_cfg = saved["config"]
    del saved_cfg["ablation"]["from_truth"]
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(saved_cfg))
    run_recovery(recovery_config_from_dict({**TINY, "ablation": {**TINY["ablation"], "from_truth": False}}),
                 tmp_path / "tiny", log=print)
    # another config in the same folder is refused without --force
    other = recovery_config_from_dict({**TINY, "epsilon": 0.01})
    with pytest.raises(FileExistsError, match="another config"):
        run_recovery(other, tmp_path / "tiny")


def test_a_study_fits_the_spectral_baseline_over_its_configured_windows():
    over = {**TINY, "hmm": {**TINY["hmm"], "n_tokens": 2}, "ablation": {},
            "belief_net": {"max_steps": 2, "eval_every": 1, "init": "spectral"}, "baum_welch": {"max_iter": 1}}
    for window, rank in ((1, 2), (2, 3)):  # rank min(S, V^window): single tokens allow only V = 2 < S = 3
        cfg = recovery_config_from_dict({**over, "spectral_window": window})
        got = run_seed(cfg, 0).methods["spectral"]
        _, train, heldout = study_data(cfg, 0)
        model = SP.SpectralHMM.fit(SP.empirical_moments(train, 2, window=window), rank)
        want = float(-model.log_likelihood(heldout).sum() / heldout.numel())
        assert (got["window"], got["rank"]) == (window, rank)
        assert got["heldout_nll"] == pytest.approx(want, rel=1e-12)


def test_a_spectral_start_says_how_it_found_its_eigenvectors():
    over = {**TINY, "hmm": {**TINY["hmm"], "n_tokens": 2}, "ablation": {},
            "belief_net": {"max_steps": 2, "eval_every": 1, "init": "spectral"}, "baum_welch": {"max_iter": 1}}
    allowed = {"converged", "iterations_exhausted", "kept_last_good"}
    for window in (1, 2):
        cfg = recovery_config_from_dict({**over, "spectral_window": window})
        got = run_seed(cfg, 0).methods["belief_net"]["spectral_start"]
        _, train, _ = study_data(cfg, 0)
        rank = min(3, 2 ** window)
        rec = SP.fit_emission_form(SP.empirical_moments(train, 2, window=window), rank,
                                   generator=torch.Generator().manual_seed(0))
        assert got == {"refinement": rec.refinement, "start": rec.start, "sweeps": rec.sweeps}
        assert got["refinement"] in allowed
        if window == 1:  # rank 2 < S = 3: its combination has a complex pair (eigenvalues 1.26 +- 0.41i)
            assert got["start"] == "real_basis"
        else:  # rank S = 3 over 2-token windows: real common eigenvectors exist
            assert got["refinement"] == "converged"
    random_start = recovery_config_from_dict({**over, "belief_net": {**over["belief_net"], "init": "random"}})
    assert "spectral_start" not in run_seed(random_start, 0).methods["belief_net"]


def test_command_line(tmp_path, capsys):
    import tomllib  # noqa: F401  (the file below is TOML)

    cfg = tmp_path / "bad.toml"
    cfg.write_text("seeds = [0]\n[hmm]\nn_states = -3\n")
    assert main(["recover", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "hmm.n_states" in err
    assert main(["recover", str(tmp_path / "missing.toml")]) == 2


def test_figures_are_written_and_byte_identical(tmp_path):
    from interp.figures import recovery as figs

    run_recovery(recovery_config_from_dict({**TINY, "seeds": [0], "ablation": {}}), tmp_path / "s")
    assert figs.main([str(tmp_path / "s"), "--out", str(tmp_path / "a")]) == 0
    assert figs.main([str(tmp_path / "s"), "--out", str(tmp_path / "b")]) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["recovery_errors.pdf", "recovery_errors.png", "recovery_nll_time.pdf", "recovery_nll_time.png"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert figs.main([str(tmp_path / "nowhere")]) == 2


def test_spectral_windows_script_refits_on_the_studys_own_data(tmp_path, capsys):
    from interp.studies import spectral_windows as script

    over = {**TINY, "hmm": {**TINY["hmm"], "n_tokens": 2}, "ablation": {},
            "belief_net": {"max_steps": 2, "eval_every": 1}, "baum_welch": {"max_iter": 1}}
    study = run_recovery(recovery_config_from_dict(over), tmp_path / "s")
    assert script.main([str(tmp_path / "s"), "--windows", "1", "2"]) == 0
    out = json.loads((tmp_path / "s" / "spectral_windows.json").read_text())
    assert [(r["seed"], r["window"], r["rank"]) for r in out["rows"]] == [(0, 1, 2), (0, 2, 3), (1, 1, 2), (1, 2, 3)]
    for seed in study["seeds"]:  # window 1 is the study's own spectral baseline, refitted on regenerated data
        row = next(r for r in out["rows"] if r["seed"] == seed["seed"] and r["window"] == 1)
        assert row["excess_nll"] == pytest.approx(seed["methods"]["spectral"]["excess_nll"], rel=1e-12)
    assert "| 2 | 3 | 2 |" in capsys.readouterr().out
    assert script.main([str(tmp_path / "s"), "--windows", "9"]) == 2
    assert script.main([str(tmp_path / "nowhere")]) == 2
