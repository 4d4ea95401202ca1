"""Models on generalised-HMM data end to end: training, the cache's exact beliefs, probes, the causal check and the
comparison on a GHMM, and the Hankel-rank check behind "no 3-state HMM generates the post-quantum process"."""

import itertools
import json
import math
import shutil

import pytest
import torch

from interp import hmm as H
from interp.cli import main
from interp.interpret import construction as K
from interp.interpret.analyse import compare_runs, probe_run
from interp.interpret.cache import load_cache
from interp.training.runconfig import run_config_from_dict
from interp.training.trainer import Trainer

TINY_TRAIN = {"context": 5, "steps": 3, "batch_size": 8, "eval_sequences": 16, "eval_every": 3,
              "checkpoint_every": 3}


def train_tiny(root, model: dict, process: str = "post_quantum"):
    cfg = run_config_from_dict({"name": f"tiny_{process}_{model['family']}", "process": {"name": process},
                                "model": model, "train": TINY_TRAIN})
    Trainer(cfg, root / cfg.name).run()
    return root / cfg.name


@pytest.fixture(scope="module")
def ghmm_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ghmm_runs")
    return {
        "transformer": train_tiny(root, {"family": "transformer", "n_layers": 1, "d_model": 8, "d_head": 8}),
        "belief_net": train_tiny(root, {"family": "belief_net", "n_states": 3, "init": "random"}),
    }


def disguised_mess3(seed: int = 0) -> tuple[H.GHMM, H.HMM, torch.Tensor]:
    """Mess3 under a change of basis M (T' = M^-1 T M, w' = M^-1 1): a GHMM whose beliefs are eta M."""
    hmm = H.get_process("mess3")
    g = torch.Generator().manual_seed(seed)
    M = torch.eye(3, dtype=torch.float64) + 0.3 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    return H.GHMM(torch.linalg.solve(M, hmm.T @ M), w=torch.linalg.solve(M, torch.ones(3, dtype=torch.float64))), \
        hmm, M


def test_cache_holds_the_ghmm_beliefs(ghmm_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ghmm_runs["transformer"], run)
    assert main(["cache", str(run)]) == 0
    cache = load_cache(run)
    ghmm = H.get_process("post_quantum")
    torch.testing.assert_close(cache.beliefs, H.beliefs(ghmm, cache.tokens), atol=1e-12, rtol=0)
    # GHMM beliefs, not simplex points: normalised by w, with negative entries
    torch.testing.assert_close(cache.beliefs @ ghmm.w, torch.ones(cache.beliefs.shape[:2], dtype=torch.float64),
                               atol=1e-12, rtol=0)
    assert bool((cache.beliefs < -1e-3).any())
    # every possible sequence of the context length, weighted by its probability
    assert cache.exhaustive and float(cache.weight.sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(cache.log_prob, H.log_likelihood(ghmm, cache.tokens), atol=1e-12, rtol=0)


@pytest.fixture(scope="module")
def probed(ghmm_runs, tmp_path_factory):
    """A copy of the transformer run (probing writes into it), probed."""
    run = tmp_path_factory.mktemp("probed") / "run"
    shutil.copytree(ghmm_runs["transformer"], run)
    return run, probe_run(run, causal_points=200)


def test_probe_and_causal_check_give_finite_numbers(probed):
    _, out = probed
    for scores in [*out.hooks.values(), out.all_layers]:
        for key in ("r2", "rmse", "r2_train", "shuffled_r2"):
            assert math.isfinite(scores[key]), key
        assert scores["simplex_distance"] is None  # no simplex for a GHMM's beliefs
    for key in ("kl_target_before", "kl_target_after", "kl_target_random", "share_closer", "change_r2",
                "mean_shift_norm"):
        assert math.isfinite(out.causal[key]), key
    assert out.causal["kl_target_before"] >= 0 and out.causal["n_points"] == 200


def test_causal_targets_are_the_ghmm_predictions(probed):
    """The causal check's targets are ``eta @ emission_matrix`` (``eta T[x] w``): the exact next-token
    probabilities of the cached beliefs, which ``eta T[x] 1`` would miss."""
    run, _ = probed
    cache, ghmm = load_cache(run), H.get_process("post_quantum")
    p = cache.beliefs @ ghmm.emission_matrix
    torch.testing.assert_close(p, H.next_token_probs(ghmm, cache.tokens), atol=1e-12, rtol=0)
    torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:2], dtype=torch.float64), atol=1e-12, rtol=0)
    assert float((cache.beliefs @ ghmm.T.sum(-1).T).sum(-1).sub(1).abs().max()) > 1e-2


def test_probe_command_prints_no_simplex_distance(ghmm_runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(ghmm_runs["transformer"], run)
    assert main(["probe", str(run), "--causal-points", "50"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("blocks.0.")]
    assert rows and all(row[4] == "-" for row in rows)  # the "dist" column
    saved = json.loads((run / "probe.json").read_text())
    assert all(s["simplex_distance"] is None for s in saved["hooks"].values())


def test_compare_runs_on_ghmm_data(ghmm_runs, tmp_path):
    runs = []
    for family, path in ghmm_runs.items():
        runs.append(tmp_path / family)
        shutil.copytree(path, runs[-1])
    out = compare_runs(runs, tmp_path / "cmp")
    (label, k), = out["construction"].items()
    assert label == "post_quantum(log_alpha=1.0, beta=0.5)"
    from interp.interpret.cache import evaluation_set
    from interp.training.checkpoint import load_model

    ghmm, (_, cfg) = H.get_process("post_quantum"), load_model(runs[0])
    # the construction is scored on every position of the context (not the cache's trained positions); the exact
    # beliefs' cross-entropy is the filter's: -log P(x_t | x_<t), positions 1..L-1, weighted
    data = evaluation_set(ghmm, cfg.train.context, seed=cfg.seeds()["eval"])
    log_z = H.forward_filter(ghmm, data.tokens, return_beliefs=False).log_normalizers[:, 1:]
    assert k["loss_optimal"] == pytest.approx(float(data.weight @ -log_z.mean(1)), abs=1e-12)
    assert all(math.isfinite(k[key]) for key in ("r2_matrix_power", "r2_fitted", "loss_matrix_power"))
    rows = {r["family"]: r for r in out["runs"]}
    assert rows["belief_net"]["belief_net"]["comparable"] is False
    assert "generalised HMM" in rows["belief_net"]["belief_net"]["reason"]
    assert math.isfinite(rows["transformer"]["probe_r2"])


def test_construction_maths_is_basis_free():
    """Token vectors, the operator on {u : u @ w = 0} and its decay, for a GHMM that is Mess3 in another basis:
    v'[x] = v[x] M, the same eigenvalues and lambda = 1 - 3x = 0.55."""
    ghmm, hmm, M = disguised_mess3()
    v = K.token_vectors(ghmm)
    torch.testing.assert_close(v, K.token_vectors(hmm) @ M, atol=1e-12, rtol=0)
    torch.testing.assert_close(v @ ghmm.w, torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert K.analytic_decay(ghmm) == pytest.approx(0.55, abs=1e-12)
    torch.testing.assert_close(K.zero_sum_operator_eigenvalues(ghmm), K.zero_sum_operator_eigenvalues(hmm),
                               atol=1e-12, rtol=0)
    assert K.analytic_decay(H.get_process("post_quantum")) is None


def test_belief_net_cannot_start_from_a_ghmm():
    with pytest.raises(ValueError, match=r"^model\.init: 'truth' needs an HMM's emission form; process "
                                         r"'post_quantum' is a generalised HMM"):
        run_config_from_dict({"name": "x", "process": {"name": "post_quantum"},
                              "model": {"family": "belief_net", "init": "truth"}})


def test_post_quantum_hankel_rank_is_three():
    """The Hankel matrix of word probabilities P(u v), |u|, |v| <= 4, has rank 3 (a clear gap after the third
    singular value): no process representation with fewer than 3 dimensions exists, so any 3-state HMM
    generating the process would be this GHMM in another basis (docs/hmm.md)."""
    ghmm = H.get_process("post_quantum", log_alpha=1.0, beta=0.5)
    T, w = ghmm.T, ghmm.w
    words = [w_ for L in range(5) for w_ in itertools.product(range(3), repeat=L)]

    def prefix(u):
        v = ghmm.initial
        for x in u:
            v = v @ T[x]
        return v

    def suffix(s):
        c = w
        for x in reversed(s):
            c = T[x] @ c
        return c

    hankel = torch.stack([prefix(u) for u in words]) @ torch.stack([suffix(s) for s in words]).T
    assert hankel[0, 0] == pytest.approx(1.0, abs=1e-12)  # P(empty word)
    sv = torch.linalg.svdvals(hankel)
    rel = sv / sv[0]
    assert rel[1] == pytest.approx(0.0373, abs=1e-4) and rel[2] == pytest.approx(0.00672, abs=1e-5)
    assert float(rel[3]) < 1e-13  # the gap: ~1e-16 against 6.7e-3
