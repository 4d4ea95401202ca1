"""The transformer without its skip path (``skip = false``, a step of the minimal-model chain): the config's check and
unchanged hashes, the block's output being the attention output alone with every hook in the data flow, and a
reload that gives the same logits."""

from __future__ import annotations

import pytest
import torch

from interp.cli import main
from interp.config import ConfigError
from interp.models import TransformerConfig, build_model
from interp.training.checkpoint import load_model
from interp.training.runconfig import run_config_from_dict
from interp.training.trainer import Trainer

NO_SKIP = {"family": "transformer", "n_layers": 1, "n_heads": 1, "d_model": 8, "d_head": 4, "normalization": "LN",
           "skip": False}


def run_cfg(model: dict, name: str = "no_skip"):
    return run_config_from_dict({"name": name, "process": {"name": "mess3"}, "model": model,
                                 "train": {"context": 6, "steps": 4, "batch_size": 16, "eval_sequences": 64,
                                           "eval_every": 4, "checkpoint_every": 4}})


def test_skip_false_needs_an_attention_only_model(tmp_path, capsys):
    message = "model.skip = false needs attn_only = true (only an attention-only block can drop its skip path)"
    with pytest.raises(ConfigError) as err:
        run_cfg({**NO_SKIP, "attn_only": False})
    assert str(err.value) == message
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[process]\nname = "mess3"\n[model]\nfamily = "transformer"\nattn_only = false\nskip = false\n')
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == f"interp: error: {cfg}: {message}"
    assert not (tmp_path / "run").exists()


def test_skip_at_its_default_keeps_the_hash():
    with_key = run_cfg({**NO_SKIP, "skip": True})
    without = run_cfg({k: v for k, v in NO_SKIP.items() if k != "skip"})
    assert "skip" not in with_key.to_dict()["model"]
    assert with_key.hash() == without.hash()
    assert run_cfg(NO_SKIP).to_dict()["model"]["skip"] is False
    assert run_cfg(NO_SKIP).hash() != without.hash()


@pytest.mark.parametrize("normalization", ["LN", "none"])
def test_the_block_output_is_the_attention_output(normalization):
    torch.manual_seed(0)
    tokens = torch.randint(0, 3, (5, 6))
    cfg = TransformerConfig(**{**{k: v for k, v in NO_SKIP.items() if k != "family"}, "n_layers": 2,
                               "normalization": normalization})
    model = build_model(cfg, 3, 6)
    _, cache = model.run_with_cache(tokens)
    for layer in range(2):
        assert torch.equal(cache[f"blocks.{layer}.hook_resid_post"], cache[f"blocks.{layer}.hook_attn_out"])
    # the hooks are in the data flow: zeroing the attention output zeroes what the block passes on
    zero = lambda act, hook: torch.zeros_like(act)  # noqa: E731
    logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_attn_out", zero)])
    bias_only = model.run_with_hooks(torch.zeros_like(tokens), fwd_hooks=[("blocks.1.hook_attn_out", zero)])
    assert torch.allclose(logits, bias_only)
    # the same weights with the skip path give other outputs
    skip = build_model(TransformerConfig(**{**{k: v for k, v in NO_SKIP.items() if k not in ("family", "skip")},
                                            "n_layers": 2, "normalization": normalization}), 3, 6)
    skip.load_state_dict(model.state_dict())
    assert not torch.allclose(skip(tokens), model(tokens))


def test_a_trained_run_reloads_without_its_skip_path(tmp_path):
    cfg = run_cfg(NO_SKIP)
    Trainer(cfg, tmp_path / "run").run()
    model, loaded = load_model(tmp_path / "run")
    assert loaded.model.skip is False
    tokens = torch.randint(0, 3, (4, 6), generator=torch.Generator().manual_seed(1))
    _, cache = model.run_with_cache(tokens)
    assert torch.equal(cache["blocks.0.hook_resid_post"], cache["blocks.0.hook_attn_out"])
