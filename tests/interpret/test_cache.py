"""Activation caches: the exact evaluation set, bit-exact round trips, stale caches refused, no half-written output."""

import itertools
import math
import re

import pytest
import torch

from interp import hmm as H
from interp.cli import main
from interp.interpret.cache import (
    ActivationCache,
    StaleCacheError,
    all_sequences,
    build_cache,
    cached_hook_names,
    evaluation_length,
    evaluation_set,
    load_cache,
)
from interp.io import read_json, write_json
from interp.training.checkpoint import load_model


# ------------------------------------------------------------------ evaluation set
def test_all_sequences_is_lexicographic_product():
    assert all_sequences(3, 4).tolist() == [list(p) for p in itertools.product(range(3), repeat=4)]


def test_exhaustive_set_weights_are_sequence_probabilities():
    hmm = H.get_process("mess3")
    data = evaluation_set(hmm, 4)
    assert data.exhaustive and data.tokens.shape == (81, 4)
    # brute force over hidden paths: P(x) = sum_z pi[z0] prod T[x_t, z_t, z_t+1]
    T, pi = hmm.T, hmm.pi
    for k in (0, 17, 80):
        x = data.tokens[k].tolist()
        p = sum(pi[z[0]] * math.prod(float(T[x[t], z[t], z[t + 1]]) for t in range(4))
                for z in itertools.product(range(3), repeat=5))
        assert float(data.weight[k]) == pytest.approx(float(p), rel=1e-12)
    assert float(data.weight.sum()) == pytest.approx(1.0, abs=1e-14)


def test_exhaustive_set_drops_impossible_sequences():
    data = evaluation_set(H.get_process("rrxor"), 6)
    assert data.exhaustive and torch.isfinite(data.log_prob).all()
    assert data.tokens.shape[0] < 2**6
    # every kept sequence is possible, every dropped one impossible
    ll = H.log_likelihood(H.get_process("rrxor"), all_sequences(2, 6))
    assert data.tokens.shape[0] == int(torch.isfinite(ll).sum())


def test_large_sets_are_sampled_with_equal_weights():
    data = evaluation_set(H.get_process("mess3"), 12, max_exhaustive=1000, n_samples=500, seed=3)
    assert not data.exhaustive and data.tokens.shape == (500, 12)
    torch.testing.assert_close(data.weight, torch.full((500,), 1 / 500, dtype=torch.float64))
    again = evaluation_set(H.get_process("mess3"), 12, max_exhaustive=1000, n_samples=500, seed=3)
    assert torch.equal(data.tokens, again.tokens)


# ------------------------------------------------------------------ caches of trained runs
@pytest.mark.parametrize("family", ["transformer", "fixed_attention", "ssm", "belief_net"])
def test_cache_round_trips_bit_exactly(runs, family):
    run_dir = runs[family]
    build_cache(run_dir, batch_size=50, shard_size=100)  # several batches and shards
    cache = load_cache(run_dir)
    model, cfg = load_model(run_dir)
    assert cache.hooks == cached_hook_names(model)
    assert "blocks.0.hook_resid_post" in cache.hooks
    # the positions the model was trained on: context 5 trains positions 0..3 (position 4 would predict token 5)
    assert cfg.train.context == 5 and cache.meta["length"] == 4
    assert cache.exhaustive and cache.tokens.shape == (3**4, 4)
    torch.testing.assert_close(cache.beliefs, H.beliefs(cfg.process.build(), cache.tokens), rtol=0, atol=0)
    with torch.no_grad():
        _, fresh = model.run_with_cache(cache.tokens, names_filter=lambda n: n in cache.hooks)
    for name in cache.hooks:
        assert torch.equal(cache[name], fresh[name]), name


def test_the_last_position_is_never_trained_so_the_cache_leaves_it_out(runs):
    from interp.models import build_model

    model, cfg = load_model(runs["transformer"])
    hmm = cfg.process.build()
    init = build_model(cfg.model, hmm.n_tokens, cfg.train.context, seed=cfg.seeds()["model"], hmm=hmm)
    last = cfg.train.context - 1
    assert torch.equal(model.W_pos[last], init.W_pos[last])  # no gradient ever reached it
    assert not torch.equal(model.W_pos[last - 1], init.W_pos[last - 1])
    assert evaluation_length(cfg.train.context) == last


def test_later_resid_pre_is_stored_once_and_read_back(runs):
    cache = load_cache(runs["transformer"])
    assert cache.meta["aliases"] == {"blocks.1.hook_resid_pre": "blocks.0.hook_resid_post"}
    assert torch.equal(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])


def test_stale_cache_is_refused(runs, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs["fixed_attention"], run_dir)
    build_cache(run_dir)
    load_cache(run_dir)  # fresh
    meta = read_json(run_dir / "model.json")
    write_json(run_dir / "model.json", {**meta, "config_hash": "0" * 16})
    with pytest.raises(StaleCacheError, match="config_hash"):
        load_cache(run_dir)
    write_json(run_dir / "model.json", meta)
    weights = (run_dir / "model.safetensors").read_bytes()
    (run_dir / "model.safetensors").write_bytes(weights[:-4] + bytes(4))  # retrained weights, same config
    with pytest.raises(StaleCacheError, match="weights_sha256"):
        load_cache(run_dir)
    assert load_cache(run_dir, check=False).tokens.shape[0] == 3**4
    # the command line rebuilds a stale cache and reuses a fresh one
    (run_dir / "model.safetensors").write_bytes(weights)
    assert main(["cache", str(run_dir)]) == 0
    write_json(run_dir / "model.json", {**meta, "config_hash": "1" * 16})
    from interp.rundir import record  # as a retrain with another config records its files (else: corrupt)

    record(run_dir, "train", {"config_hash": "1" * 16},
           [run_dir / name for name in ("model.safetensors", "model.json", "result.json")])
    assert main(["cache", str(run_dir)]) == 0
    assert load_cache(run_dir).meta["config_hash"] == "1" * 16


def test_failed_build_leaves_the_old_cache_and_no_temporary_folder(runs, tmp_path, monkeypatch):
    import shutil

    import interp.interpret.cache as cache_module

    run_dir = tmp_path / "run"
    shutil.copytree(runs["ssm"], run_dir)
    build_cache(run_dir)
    before = (run_dir / "cache" / "cache.json").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cache_module, "write_json", boom)
    with pytest.raises(OSError, match="disk full"):
        build_cache(run_dir)
    assert (run_dir / "cache" / "cache.json").read_bytes() == before
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".cache")] == []


def test_missing_and_corrupt_inputs_give_clear_errors(runs, tmp_path, capsys):
    import shutil

    assert main(["cache", str(tmp_path / "nowhere")]) == 2
    assert "no run folder" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    assert main(["cache", str(unfinished)]) == 2
    assert "no final weights" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="interp cache"):
        ActivationCache(unfinished)
    run_dir = tmp_path / "run"
    shutil.copytree(runs["belief_net"], run_dir)
    build_cache(run_dir)
    shard = run_dir / "cache" / "shard_00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    # the run's manifest holds the shard's hash: the damaged cache is refused before it is read
    with pytest.raises(StaleCacheError, match=re.escape(f"{shard} changed after it was written")):
        load_cache(run_dir)
    # read unchecked, the shard itself is reported corrupt
    with pytest.raises(ValueError, match="corrupt"):
        load_cache(run_dir, check=False)["blocks.0.hook_resid_post"]
    with pytest.raises(KeyError, match="not in the cache"):
        load_cache(run_dir, check=False)["blocks.7.hook_resid_post"]
