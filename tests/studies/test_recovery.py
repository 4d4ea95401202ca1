"""Parameter recovery: the Belief Net's gradient against autograd and an exact zero at the truth,
Baum-Welch and Belief Net started at the truth stay there, configs, and a tiny study end to end."""

import json

import numpy as np
import pytest
import torch

from interp import hmm as H
from interp.baselines import spectral as SP
from interp.interpret.cache import all_sequences
from interp.cli import main
from interp.config import ConfigError
from interp.studies.recovery import (
    BaumWelchFit,
    BeliefNetFit,
    belief_net_gradient,
    belief_net_log_likelihood,
    fit_baum_welch,
    fit_belief_net,
    recovery_config_from_dict,
    run_recovery,
    run_seed,
    study_data,
    time_to_reach,
)


def test_gradient_equals_autograd():
    g = torch.Generator().manual_seed(0)
    p = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in ((4,), (4, 4), (4, 6))]
    tokens = torch.randint(6, (5, 11), generator=g)
    ll = belief_net_log_likelihood(*p, tokens)
    ll.sum().backward()
    ll2, grads = belief_net_gradient(*[x.detach() for x in p], tokens)
    torch.testing.assert_close(ll2, ll.detach(), atol=1e-12, rtol=0)
    for x, gr in zip(p, grads):
        torch.testing.assert_close(gr, x.grad, atol=1e-12, rtol=0)


def test_log_likelihood_equals_the_exact_filter():
    hmm = H.get_process("cyclic", n_states=4, n_tokens=5, seed=2)
    em = hmm.to_emission()
    tokens = H.sample(hmm, 20, 30, seed=0)
    ll = belief_net_log_likelihood(*(torch.log(x) for x in (em.mu, em.A, em.C)), tokens)
    torch.testing.assert_close(ll, H.log_likelihood(hmm, tokens), atol=1e-10, rtol=0)


def test_expected_gradient_at_the_truth_is_exactly_zero():
    # sum_x p(x) grad log p(x) = grad sum_x p(x) = 0, over every sequence of the length
    hmm = H.get_process("cyclic", n_states=3, n_tokens=3, seed=1, transition_nnz=2, emission_nnz=2)
    em = hmm.to_emission()
    logits = [torch.log(x) for x in (em.mu, em.A, em.C)]
    tokens = all_sequences(3, 5)
    p = torch.exp(H.log_likelihood(hmm, tokens))
    total = [torch.zeros_like(x) for x in logits]
    for k in range(tokens.shape[0]):
        _, grads = belief_net_gradient(*logits, tokens[k:k + 1])
        for t, gr in zip(total, grads):
            t += p[k] * gr
    for t in total:
        torch.testing.assert_close(t, torch.zeros_like(t), atol=1e-12, rtol=0)


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
        "ablation": {"random_scales": [0.3], "uniform": True, "spectral": True, "restarts": 2,
                     "from_truth": True}}


def test_tiny_study_end_to_end_and_resume(tmp_path, capsys):
    cfg = recovery_config_from_dict(TINY)
    out = run_recovery(cfg, tmp_path / "tiny")
    methods = {"spectral", "belief_net", "belief_net/random_0.3", "belief_net/uniform", "belief_net/spectral",
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
    # a second call reuses the finished seeds
    before = (tmp_path / "tiny" / "seeds" / "seed_0000.json").read_bytes()
    run_recovery(cfg, tmp_path / "tiny")
    assert (tmp_path / "tiny" / "seeds" / "seed_0000.json").read_bytes() == before
    # more seeds extend the study: the finished ones are reused, only the new one runs
    grown = run_recovery(recovery_config_from_dict({**TINY, "seeds": [0, 1, 2]}), tmp_path / "tiny")
    assert (tmp_path / "tiny" / "seeds" / "seed_0000.json").read_bytes() == before
    assert [s["seed"] for s in grown["seeds"]] == [0, 1, 2]
    assert grown["seeds"][:2] == out["seeds"]
    # a study saved before a config field existed is the same study: the field's default fills it in
    saved_cfg = json.loads((tmp_path / "tiny" / "config.json").read_text())
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
        got = run_seed(cfg, 0)["methods"]["spectral"]
        _, train, heldout = study_data(cfg, 0)
        model = SP.SpectralHMM.fit(SP.empirical_moments(train, 2, window=window), rank)
        want = float(-model.log_likelihood(heldout).sum() / heldout.numel())
        assert (got["window"], got["rank"]) == (window, rank)
        assert got["heldout_nll"] == pytest.approx(want, rel=1e-12)


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
