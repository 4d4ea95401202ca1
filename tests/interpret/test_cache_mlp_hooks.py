"""Caches of transformers with MLPs keep hook_resid_mid and hook_mlp_out; caches of models without MLPs keep the
fingerprint they had; probes stay on the residual stream between blocks."""

import shutil

import pytest
import torch

from interp.cli import main
from interp.interpret.analyse import residual_hooks
from interp.interpret.cache import StaleCacheError, build_cache, cache_is_fresh, cached_hook_names, load_cache
from interp.io import read_json
from interp.rundir import Manifest
from interp.training.checkpoint import load_model
from interp.training.runconfig import run_config_from_dict
from interp.training.trainer import Trainer


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    cfg = run_config_from_dict({
        "name": "tiny_mlp", "process": {"name": "mess3"},
        "model": {"family": "transformer", "n_layers": 2, "d_model": 8, "d_head": 4, "attn_only": False, "d_mlp": 16,
                  "normalization": "LN"},
        "train": {"context": 5, "steps": 3, "batch_size": 8, "eval_sequences": 16, "eval_every": 3,
                  "checkpoint_every": 3}})
    run_dir = tmp_path_factory.mktemp("mlp") / cfg.name
    Trainer(cfg, run_dir).run()
    build_cache(run_dir)
    return run_dir


def test_mlp_hooks_are_cached_in_forward_order(mlp_run):
    cache, (model, _) = load_cache(mlp_run), load_model(mlp_run)
    assert cache.hooks == cached_hook_names(model) == [
        "hook_embed",
        "blocks.0.hook_resid_pre", "blocks.0.attn.hook_pattern", "blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_pre", "blocks.1.attn.hook_pattern", "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out",
        "blocks.1.hook_resid_post"]
    with torch.no_grad():
        _, fresh = model.run_with_cache(cache.tokens)
    for name in ("blocks.0.hook_resid_mid", "blocks.1.hook_mlp_out"):
        assert torch.equal(cache[name], fresh[name]), name
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"],
                               cache["blocks.1.hook_resid_mid"] + cache["blocks.1.hook_mlp_out"])


def test_probes_stay_on_the_residual_stream_between_blocks(mlp_run):
    assert residual_hooks(load_cache(mlp_run)) == [
        "hook_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def test_models_without_mlps_keep_their_cache_fingerprint(runs):
    for family in ("transformer", "fixed_attention", "ssm", "belief_net"):
        build_cache(runs[family])
        inputs = Manifest(runs[family]).entry("cache")["inputs"]
        assert set(inputs) == {"format", "config_hash", "weights_sha256"}, family
        assert not any(h.endswith(("hook_resid_mid", "hook_mlp_out")) for h in load_cache(runs[family]).hooks)


def test_an_mlp_cache_made_before_the_mlp_hooks_is_stale_and_rebuilt(mlp_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(mlp_run, run_dir)
    manifest = Manifest(run_dir)
    entry = manifest.entry("cache")
    assert entry["inputs"]["mlp_hooks"] is True
    old_inputs = {k: v for k, v in entry["inputs"].items() if k != "mlp_hooks"}  # as recorded before
    manifest.record("cache", old_inputs, [run_dir / rel for rel in entry["files"]])
    assert not cache_is_fresh(run_dir)
    with pytest.raises(StaleCacheError, match="mlp_hooks"):
        load_cache(run_dir)
    assert main(["cache", str(run_dir)]) == 0
    assert cache_is_fresh(run_dir) and "blocks.1.hook_mlp_out" in load_cache(run_dir).hooks
    assert read_json(run_dir / "cache" / "cache.json")["hooks"] == load_cache(mlp_run).hooks
