"""Standard transformers (MLPs, normalisation) through TransformerLens ``boot_native``: the config's checks, the
attention-only configs' unchanged hashes, the hook names sitting in the data flow, bit-identical resume, reloading,
caches and probes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interp.cli import main
from interp.config import ConfigError
from interp.hmm import get_process
from interp.hmm.sampling import sample
from interp.interpret.cache import build_cache, cached_hook_names, load_cache
from interp.io import read_tensors
from interp.models import TransformerConfig, build_model
from interp.training.checkpoint import list_checkpoints, load_model
from interp.training.runconfig import load_run_config, memory_estimate, run_config_from_dict
from interp.training.trainer import Trainer

RUNS = Path(__file__).resolve().parents[2] / "runs"
MESS3 = get_process("mess3")
N_CTX, T = 10, 4  # edits go to position T, in the middle of the context
STANDARD = {"family": "transformer", "n_layers": 2, "n_heads": 1, "d_model": 8, "d_head": 4, "attn_only": False,
            "d_mlp": 16, "normalization": "LN"}


def run_cfg(model: dict, name: str = "std", **train):
    t = {"context": 8, "steps": 12, "batch_size": 16, "eval_sequences": 128, "eval_every": 4, "checkpoint_every": 5,
         "lr": 1e-2, **train}
    return run_config_from_dict({"name": name, "process": {"name": "mess3"}, "model": model, "train": t})


# ------------------------------------------------------------------ the config
@pytest.mark.parametrize("model,message", [
    ({"d_mlp": 32}, "model.d_mlp = 32 needs attn_only = false (an attention-only model has no MLPs)"),
    ({"act_fn": "gelu"}, "model.act_fn = 'gelu' needs attn_only = false (an attention-only model has no MLPs)"),
    ({"attn_only": False, "d_mlp": 0}, "model.d_mlp must be >= 1, got 0"),
    ({"attn_only": False, "act_fn": "tanh"}, "model.act_fn must be one of 'relu' | 'gelu', got 'tanh'"),
    ({"normalization": "RMSPre"}, "model.normalization must be one of 'none' | 'LN' | 'LNPre' | 'RMS', got 'RMSPre'"),
])
def test_bad_mlp_settings_are_refused_naming_the_key(model, message):
    with pytest.raises(ConfigError) as err:
        run_cfg({"family": "transformer", **model})
    assert str(err.value) == message


def test_the_cli_refuses_d_mlp_on_an_attention_only_model_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[process]\nname = "mess3"\n[model]\nfamily = "transformer"\nd_mlp = 32\n')
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"interp: error: {path}: model.d_mlp = 32 needs attn_only = false (an attention-only model has "
                     f"no MLPs)"]
    assert not (tmp_path / "run").exists()


def test_a_shipped_attention_only_config_keeps_its_hash():
    # The hashes these configs had before the MLP keys existed: their run folders stay fresh.
    assert load_run_config(RUNS / "mess3_tf1.toml").hash() == "0cd2560e34657366"
    assert load_run_config(RUNS / "mess3_tf4.toml").hash() == "bf571e8a009c541c"
    model = load_run_config(RUNS / "mess3_tf1.toml").to_dict()["model"]
    assert not {"attn_only", "d_mlp", "act_fn"} & set(model)


def test_a_standard_config_records_its_mlp_keys_and_reads_back_equal():
    cfg = run_cfg(STANDARD)
    model = cfg.to_dict()["model"]
    assert (model["attn_only"], model["d_mlp"]) == (False, 16) and "act_fn" not in model  # relu is the default
    assert run_config_from_dict(cfg.to_dict()) == cfg
    gelu = run_cfg({**STANDARD, "act_fn": "gelu"})
    assert gelu.to_dict()["model"]["act_fn"] == "gelu" and gelu.hash() != cfg.hash()
    assert run_cfg({**STANDARD, "d_mlp": None}).to_dict()["model"]["attn_only"] is False


def test_d_mlp_defaults_to_four_times_d_model_and_counts_in_the_memory_estimate():
    cfg = TransformerConfig(n_layers=2, d_model=8, d_head=4, attn_only=False)
    weights = build_model(cfg, 3, N_CTX).state_dict()
    assert weights["blocks.1.mlp.in.weight"].shape == (32, 8) and weights["blocks.1.mlp.out.weight"].shape == (8, 32)
    attn_only = TransformerConfig(n_layers=2, d_model=8, d_head=4)
    assert not any(".mlp." in k for k in build_model(attn_only, 3, N_CTX).state_dict())
    train = run_cfg(STANDARD).train
    assert memory_estimate(cfg, train, 3, 3)["step"] > memory_estimate(attn_only, train, 3, 3)["step"]


# ------------------------------------------------------------------ hooks
CONFIGS = {
    "ln_relu": TransformerConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, attn_only=False, d_mlp=32,
                                 normalization="LN"),
    "lnpre_gelu": TransformerConfig(n_layers=2, n_heads=1, d_model=16, d_head=8, attn_only=False, act_fn="gelu",
                                    normalization="LNPre"),
    "rms_rotary": TransformerConfig(n_layers=2, n_heads=1, d_model=16, d_head=8, attn_only=False,
                                    normalization="RMS", positional="rotary"),
    "none": TransformerConfig(n_layers=2, n_heads=1, d_model=16, d_head=8, attn_only=False),
}


def test_the_usual_hook_names_exist():
    model = build_model(CONFIGS["ln_relu"], MESS3.n_tokens, N_CTX)
    for layer in range(2):
        for name in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post",
                     "ln1.hook_normalized", "ln2.hook_normalized", "attn.hook_pattern", "mlp.hook_post"):
            assert f"blocks.{layer}.{name}" in model.hook_dict, name
    assert "ln_final.hook_normalized" in model.hook_dict
    attn_only = build_model(TransformerConfig(n_layers=2, d_model=16, d_head=8), MESS3.n_tokens, N_CTX)
    assert not any(n.endswith(("hook_resid_mid", "hook_mlp_out")) for n in attn_only.hook_dict)


def test_the_residual_stream_adds_up():
    # resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out: the hooks read what the blocks add.
    model = build_model(CONFIGS["ln_relu"], MESS3.n_tokens, N_CTX)
    with torch.no_grad():
        _, cache = model.run_with_cache(sample(MESS3, 6, N_CTX, seed=1))
    for layer in range(2):
        b = f"blocks.{layer}."
        torch.testing.assert_close(cache[b + "hook_resid_mid"], cache[b + "hook_resid_pre"] + cache[b + "hook_attn_out"])
        torch.testing.assert_close(cache[b + "hook_resid_post"], cache[b + "hook_resid_mid"] + cache[b + "hook_mlp_out"])
    assert not torch.allclose(cache["blocks.1.hook_mlp_out"], torch.zeros(()))


def edit_at(t: int, calls: list):
    def hook(x, hook):
        calls.append(tuple(x.shape))
        x = x.clone()
        x[:, t] = x[:, t].roll(1, -1)
        return x
    return hook


# (hook, whether positions after the edited one depend on it): the last layer after its attention feeds only its
# own position; whatever its attention reads (ln1's output included) feeds the later ones.
HOOKS = [("blocks.0.hook_resid_pre", True), ("blocks.0.hook_attn_out", True), ("blocks.0.hook_resid_mid", True),
         ("blocks.0.mlp.hook_post", True), ("blocks.0.hook_mlp_out", True), ("blocks.0.hook_resid_post", True),
         ("blocks.1.ln1.hook_normalized", True), ("blocks.1.hook_attn_out", False),
         ("blocks.1.hook_resid_mid", False), ("blocks.1.ln2.hook_normalized", False),
         ("blocks.1.hook_mlp_out", False), ("blocks.1.hook_resid_post", False)]
CASES = [(c, h, later) for c in CONFIGS for h, later in HOOKS if c != "none" or ".ln" not in h]


@pytest.mark.parametrize("config,name,later", CASES, ids=[f"{c}-{h}" for c, h, _ in CASES])
def test_an_edit_at_position_t_changes_what_depends_on_it_and_nothing_before(config, name, later):
    model = build_model(CONFIGS[config], MESS3.n_tokens, N_CTX, seed=0)
    tokens = sample(MESS3, 6, N_CTX, seed=1)
    calls = []
    with torch.no_grad():
        clean = model(tokens)
        edited = model.run_with_hooks(tokens, fwd_hooks=[(name, edit_at(T, calls))])
        assert torch.equal(model(tokens), clean), "a hook outlived its call"
    assert calls, f"{name} was never called"
    assert torch.isfinite(edited).all()
    assert torch.equal(edited[:, :T], clean[:, :T]), "an edit at position t reached an earlier position"
    for s in range(T, N_CTX if later else T + 1):
        assert not torch.allclose(edited[:, s], clean[:, s], rtol=1e-5, atol=0), f"position {s} ignored the edit"
    if not later:
        assert torch.equal(edited[:, T + 1:], clean[:, T + 1:])


# ------------------------------------------------------------------ training, resume, reload, cache, probes
def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_tensors(run_dir / "model.safetensors")


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert not [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 12-step standard-transformer run, and one trained for 6 steps and resumed to 12."""
    root = tmp_path_factory.mktemp("standard")
    cfg = run_cfg(STANDARD)
    Trainer(cfg, root / "full").run()
    Trainer(cfg.with_steps(6), root / "split").run()
    Trainer(cfg, root / "split", resume=True).run()
    return cfg, root


def test_a_standard_transformer_trains_and_resumes_bit_identically(trained):
    cfg, root = trained
    full, split = weights(root / "full"), weights(root / "split")
    assert any(".mlp." in k for k in full) and any(".ln2." in k for k in full)
    assert_bit_identical(full, split)
    assert not torch.equal(full["blocks.0.mlp.in.weight"], build_model(cfg.model, 3, 8, seed=cfg.seeds()["model"])
                           .state_dict()["blocks.0.mlp.in.weight"]), "the MLP was not trained"
    a, b = list_checkpoints(root / "full")[-1], list_checkpoints(root / "split")[-1]
    assert a.name == b.name == "step_0000012"
    assert_bit_identical(read_tensors(a / "optimizer.safetensors"), read_tensors(b / "optimizer.safetensors"))


def test_load_model_reopens_a_standard_transformer(trained):
    cfg, root = trained
    model, loaded_cfg = load_model(root / "full")
    assert loaded_cfg == cfg and loaded_cfg.model.d_mlp == 16 and not loaded_cfg.model.attn_only
    fresh = build_model(cfg.model, 3, 8)
    fresh.load_state_dict(weights(root / "full"))
    tokens = sample(MESS3, 8, 8, seed=9)
    with torch.no_grad():
        assert torch.equal(model(tokens), fresh.eval()(tokens))


def test_its_cache_and_probes_see_every_layer_after_its_mlp(trained):
    from interp.interpret.analyse import probe_run

    _, root = trained
    run_dir = root / "full"
    build_cache(run_dir)
    cache, (model, _) = load_cache(run_dir), load_model(run_dir)
    assert cache.hooks == cached_hook_names(model)
    assert {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"} <= set(cache.hooks)
    with torch.no_grad():
        _, fresh = model.run_with_cache(cache.tokens)
    for name in cache.hooks:
        assert torch.equal(cache[name], fresh[name]), name
    # The cached residual stream is the one after the MLP.
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"],
                               fresh["blocks.1.hook_resid_mid"] + fresh["blocks.1.hook_mlp_out"])
    result = probe_run(run_dir, causal_points=50)
    assert {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"} <= set(result.hooks)
    assert set(result.all_layers["hooks"]) >= {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}
