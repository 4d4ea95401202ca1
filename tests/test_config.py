"""Run configs: every error a TOML file can hold is rejected with a message naming the key, the CLI
turns it into one ``interp: error:`` line, and every shipped config in runs/ loads."""

import copy
import itertools
import json
import math
from pathlib import Path

import pytest

from interp.cli import main
from interp.config import ConfigError
from interp.models import BeliefNetConfig, FixedAttentionConfig, SSMConfig, TransformerConfig
from interp.training.runconfig import ProcessConfig, RunConfig, TrainConfig, load_run_config, run_config_from_dict
from interp.training.trainer import lr_at

RUNS = Path(__file__).resolve().parent.parent / "runs"
# runs/recovery_*.toml are recovery studies (interp recover), runs/pipeline_*.toml pipelines (interp run,
# tested in test_pipeline.py), runs/sweep_*.toml sweeps (interp sweep); the rest are training runs
SHIPPED = sorted(p for p in RUNS.glob("*.toml") if not p.stem.startswith(("recovery_", "pipeline_", "sweep_")))
SHIPPED_RECOVERY = sorted(RUNS.glob("recovery_*.toml"))
SHIPPED_SWEEPS = sorted(RUNS.glob("sweep_*.toml"))

VALID = {
    "seed": 1,
    "process": {"name": "mess3", "params": {"x": 0.15, "a": 0.6}},
    "model": {"family": "transformer", "n_layers": 1, "d_model": 8, "d_head": 8},
    "train": {"context": 10, "steps": 10, "lr": 1e-3, "betas": [0.9, 0.99]},
}


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def to_toml(data: dict) -> str:
    """TOML for a config dict: top-level dicts become [tables], everything else a key = value line."""
    lines = [f"{k} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]"] + [f"{kk} = {toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def write_config(tmp_path: Path, data: dict, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(to_toml(data))
    return path


def mutated(path: str, value=..., delete: bool = False) -> dict:
    """VALID with ``path`` ("train.lr", "process.params.x", "colour") set to ``value`` or deleted."""
    data = copy.deepcopy(VALID)
    *parents, leaf = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    if delete:
        del node[leaf]
    else:
        node[leaf] = value
    return data


def test_valid_config_loads_exactly(tmp_path):
    cfg = load_run_config(write_config(tmp_path, VALID))
    assert cfg == RunConfig(
        name="run", seed=1, process=ProcessConfig("mess3", {"x": 0.15, "a": 0.6}),
        model=TransformerConfig(n_layers=1, d_model=8, d_head=8),
        train=TrainConfig(context=10, steps=10, lr=1e-3, betas=(0.9, 0.99)),
    )
    assert run_config_from_dict(cfg.to_dict()) == cfg
    assert cfg.hash() == run_config_from_dict(json.loads(json.dumps(cfg.to_dict()))).hash()


# (id, config dict, the key the message must name)
BAD_CONFIGS = [
    ("unknown_top_level_key", mutated("colour", "red"), "colour"),
    ("unknown_model_key", mutated("model.n_layer", 2), "model.n_layer"),
    ("unknown_train_key", mutated("train.learning_rate", 0.1), "train.learning_rate"),
    ("unknown_process_key", mutated("process.nam", "x"), "process.nam"),
    ("unknown_process_param", mutated("process.params.z", 1.0), "'z'"),
    ("unknown_process", mutated("process.name", "mess4"), "'mess4'"),
    ("process_param_out_of_range", mutated("process.params.x", 0.9), "x must"),
    ("process_param_wrong_type", mutated("process.params.x", "fast"), "process.params: x must be a number"),
    ("string_for_lr", mutated("train.lr", "fast"), "train.lr"),
    ("float_for_steps", mutated("train.steps", 10.0), "train.steps"),
    ("bool_for_int", mutated("train.batch_size", True), "train.batch_size"),
    ("bool_for_seed", mutated("seed", True), "seed"),
    ("bool_for_float", mutated("train.lr", True), "train.lr"),
    ("string_for_bool", mutated("model", {"family": "fixed_attention", "skip": "yes"}), "model.skip"),
    ("int_for_name", mutated("name", 3), "name"),
    ("table_for_list", mutated("train.betas", {"b1": 0.9}), "train.betas"),
    ("list_for_table_params", mutated("process.params", [0.15, 0.6]), "process.params must be a table"),
    ("list_for_table_model", mutated("model", [1, 2]), "model must be a table"),
    ("int_for_table_train", mutated("train", 5), "train must be a table"),
    ("string_for_table_train", mutated("train", "fast"), "train must be a table"),
    ("empty_list_for_table_train", mutated("train", []), "train must be a table"),
    ("bad_literal_optimizer", mutated("train.optimizer", "adam"), "train.optimizer"),
    ("bad_literal_schedule", mutated("train.schedule", "step"), "train.schedule"),
    ("bad_literal_family", mutated("model.family", "mlp"), "model.family"),
    ("bad_literal_in_model", mutated("model.positional", "alibi"), "model.positional"),
    ("missing_family", mutated("model.family", delete=True), "model.family"),
    ("missing_model", mutated("model", delete=True), "model"),
    ("missing_process", mutated("process", delete=True), "process"),
    ("lr_zero", mutated("train.lr", 0.0), "train.lr"),
    ("lr_negative", mutated("train.lr", -1e-3), "train.lr"),
    ("context_1", mutated("train.context", 1), "train.context"),
    ("steps_0", mutated("train.steps", 0), "train.steps"),
    ("negative_weight_decay", mutated("train.weight_decay", -0.1), "train.weight_decay"),
    ("negative_grad_clip", mutated("train.grad_clip", -1.0), "train.grad_clip"),
    ("beta_one", mutated("train.betas", [0.9, 1.0]), "train.betas"),
    ("beta_negative", mutated("train.betas", [-0.1, 0.99]), "train.betas"),
    ("one_beta", mutated("train.betas", [0.9]), "train.betas"),
    ("min_lr_ratio_above_1", mutated("train.min_lr_ratio", 1.5), "train.min_lr_ratio"),
    ("d_model_0", mutated("model.d_model", 0), "model.d_model"),
]


@pytest.mark.parametrize("data,key", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_config_error_names_the_key_and_the_file(tmp_path, data, key):
    path = write_config(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert key in message.removeprefix(f"{path}: "), message


def test_malformed_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('[model]\nfamily = "transformer\n')
    with pytest.raises(ConfigError, match="broken.toml is not valid TOML"):
        load_run_config(path)


def test_binary_file_names_the_file(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="binary.toml is not a text file"):
        load_run_config(path)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.toml does not exist"):
        load_run_config(tmp_path / "nowhere.toml")


def test_unknown_process_param_through_process_build():
    with pytest.raises(ValueError, match="has no parameter 'z'"):
        ProcessConfig("mess3", {"z": 1.0}).build()
    assert ProcessConfig("mess3", {"x": 0.1}).build().params == {"x": 0.1, "a": 0.6}


def test_name_defaults_to_the_file_stem_and_a_given_name_wins(tmp_path):
    assert load_run_config(write_config(tmp_path, VALID, "my_run.toml")).name == "my_run"
    assert load_run_config(write_config(tmp_path, {"name": "other", **VALID}, "x.toml")).name == "other"


def test_each_family_loads_with_its_own_fields(tmp_path):
    models = {
        "fixed_attention": ({"family": "fixed_attention", "pattern": "raw", "skip": False},
                            FixedAttentionConfig(pattern="raw", skip=False)),
        "ssm": ({"family": "ssm", "n_layers": 2, "transition": "complex"}, SSMConfig(n_layers=2, transition="complex")),
        "belief_net": ({"family": "belief_net", "init": "truth", "init_scale": 0}, BeliefNetConfig(init="truth", init_scale=0.0)),
    }
    for family, (table, expected) in models.items():
        assert load_run_config(write_config(tmp_path, mutated("model", table), f"{family}.toml")).model == expected
    # A field of another family is unknown here.
    with pytest.raises(ConfigError, match="unknown key model.d_state"):
        load_run_config(write_config(tmp_path, mutated("model.d_state", 4)))


# ------------------------------------------------------------------- CLI
CLI_BAD = {
    "malformed": '[model\nfamily = "transformer"\n',
    "unknown_key": to_toml(mutated("train.learning_rate", 0.1)),
    "invalid_value": to_toml(mutated("train.lr", 0.0)),
    "bad_literal": to_toml(mutated("model.family", "mlp")),
    "train_not_a_table": to_toml(mutated("train", 5)),
}


@pytest.mark.parametrize("text", list(CLI_BAD.values()), ids=list(CLI_BAD))
def test_cli_train_with_a_bad_config_prints_one_error_line(tmp_path, capsys, text):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "x"
    assert main(["train", str(path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("interp: error:"), captured.err
    assert str(path) in lines[0]
    assert captured.out == ""
    assert not out.exists()


def test_cli_train_with_a_missing_config(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["train", str(tmp_path / "absent.toml"), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("interp: error:") and "absent.toml" in lines[0]
    assert not out.exists()


# -------------------------------------------------------- shipped configs
def test_runs_folder_ships_configs():
    assert len(SHIPPED) >= 5, SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_config_loads(path):
    cfg = load_run_config(path)
    assert cfg.name == path.stem
    assert cfg.process.build().n_tokens >= 2
    assert run_config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("path", SHIPPED_RECOVERY, ids=[p.stem for p in SHIPPED_RECOVERY])
def test_shipped_recovery_config_loads(path):
    from interp.studies.recovery import load_recovery_config, recovery_config_from_dict

    cfg = load_recovery_config(path)
    assert cfg.name == path.stem and len(cfg.seeds) >= 10
    assert recovery_config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("path", SHIPPED_SWEEPS, ids=[p.stem for p in SHIPPED_SWEEPS])
def test_shipped_sweep_config_loads(path):
    from interp.studies.sweep import load_sweep_config

    cfg = load_sweep_config(path)
    assert cfg.name == path.stem and len(cfg.points) == len(cfg.seeds) * len(list(itertools.product(*cfg.grid.values())))
    assert all(run_config_from_dict(p.config.to_dict()) == p.config for p in cfg.points)


# ----------------------------------------------------------- lr schedule
def test_lr_warmup_is_linear_to_the_peak():
    cfg = TrainConfig(lr=0.4, steps=100, warmup_steps=4, schedule="constant")
    assert [lr_at(cfg, s) for s in range(6)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    assert lr_at(cfg, 99) == pytest.approx(0.4)


def test_lr_cosine_endpoints_and_midpoint():
    cfg = TrainConfig(lr=1.0, steps=12, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(0.5)
    assert lr_at(cfg, 1) == pytest.approx(1.0)
    assert lr_at(cfg, 2) == pytest.approx(1.0)  # decay starts at the peak
    assert lr_at(cfg, 7) == pytest.approx(0.55)  # half-way through the 10 decay steps: 0.1 + 0.9 / 2
    assert lr_at(cfg, 4) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    assert lr_at(cfg, 12) == pytest.approx(0.1)  # the end of the schedule: lr * min_lr_ratio
    assert lr_at(cfg, 50) == pytest.approx(0.1)  # and it stays there


def test_lr_linear_endpoints_and_midpoint():
    cfg = TrainConfig(lr=2.0, steps=10, warmup_steps=0, schedule="linear", min_lr_ratio=0.0)
    assert lr_at(cfg, 0) == pytest.approx(2.0)
    assert lr_at(cfg, 5) == pytest.approx(1.0)
    assert lr_at(cfg, 9) == pytest.approx(0.2)
    assert lr_at(cfg, 10) == pytest.approx(0.0, abs=1e-15)


def test_lr_constant_without_warmup():
    cfg = TrainConfig(lr=3e-3, steps=10)
    assert {lr_at(cfg, s) for s in range(10)} == {3e-3}


# ------------------------------------------------- one loader, every kind
def config_class(kind: str) -> type:
    from interp.pipeline.pipeline import PipelineConfig
    from interp.studies.recovery import RecoveryConfig
    from interp.studies.sweep import SweepConfig
    from interp.training.runconfig import RunConfig

    return {"run": RunConfig, "pipeline": PipelineConfig, "sweep": SweepConfig, "recovery": RecoveryConfig}[kind]


def _shipped_kinds() -> list[tuple[Path, str]]:
    from importlib.resources import files

    kinds = [(p, "run") for p in SHIPPED] + [(p, "recovery") for p in SHIPPED_RECOVERY]
    kinds += [(p, "sweep") for p in SHIPPED_SWEEPS]
    return kinds + [(Path(str(files("interp.pipeline").joinpath("default.toml"))), "pipeline")]


@pytest.mark.parametrize("path,kind", _shipped_kinds(), ids=[f"{k}-{p.stem}" for p, k in _shipped_kinds()])
def test_every_shipped_config_loads_with_the_one_loader(path, kind):
    from interp.config import load, load_config, to_dict

    cfg = load_config(path, config_class(kind))
    assert type(cfg) is config_class(kind)
    assert cfg.name == tomllib_name(path)
    # what a run folder saves (config.json, pipeline.json, sweep.json's config) reads back to the same config
    assert load(type(cfg), json.loads(json.dumps(to_dict(cfg)))) == cfg


def tomllib_name(path: Path) -> str:
    import tomllib

    return tomllib.loads(path.read_text()).get("name", path.stem)


# kind -> (a TOML, a dotted path deep inside it where an unknown key goes, what the message names)
DEEP = {
    "run": (to_toml(VALID), "train", "train.colour"),
    "recovery": ("seeds = [0]\n[belief_net]\nlr = 0.1\n", "belief_net", "belief_net.colour"),
    "sweep": ('seeds = [0]\n[grid]\n"train.lr" = [0.1]\n[process]\nname = "mess3"\n[model]\nfamily = "ssm"\n'
              "[train]\nsteps = 5\n", "train", "train.colour"),
}


@pytest.mark.parametrize("kind", list(DEEP) + ["pipeline"])
def test_an_unknown_key_deep_inside_each_kind_names_its_dotted_path_and_the_file(tmp_path, kind):
    from importlib.resources import files

    from interp.config import load_config

    if kind == "pipeline":
        text = files("interp.pipeline").joinpath("default.toml").read_text()
        text = text.replace("train = { steps = 2000 }\n\n[models.belief_net]",
                            "train = { steps = 2000, colour = 1 }\n\n[models.belief_net]")
        wanted = "models.ssm.train.colour"
        assert text.count("colour") == 1
    else:
        text, table, wanted = DEEP[kind]
        text = text.replace(f"[{table}]\n", f"[{table}]\ncolour = 1\n")
    path = tmp_path / f"{kind}.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, config_class(kind))
    assert str(err.value).startswith(f"{path}: unknown key {wanted} (allowed: "), str(err.value)


def test_a_pipeline_model_inherits_the_shared_train_and_overrides_it():
    from interp.pipeline.pipeline import default_pipeline_config

    cfg = default_pipeline_config()
    shared, bn = cfg.train, cfg.runs["belief_net"].train
    assert (bn.lr, bn.steps) == (3e-2, 1000)  # its own table wins
    assert (bn.context, bn.batch_size, bn.schedule, bn.warmup_steps) == (10, 512, "cosine", 100)  # the shared
    assert shared.lr == 3e-3 and cfg.runs["transformer"].train.lr == 3e-3
    assert cfg.runs["ssm"].model == SSMConfig(d_state=16, transition="diagonal")
    # a table's family may be left out (it is the table's name), and must match it when given
    data = tomllib_default()
    del data["models"]["ssm"]["model"]["family"]
    from interp.pipeline.pipeline import pipeline_config_from_dict

    assert pipeline_config_from_dict(data).runs["ssm"] == cfg.runs["ssm"]
    data["models"]["ssm"]["model"]["family"] = "belief_net"
    with pytest.raises(ConfigError, match=r"^models\.ssm\.model\.family must be 'ssm' \(the table's name\)"):
        pipeline_config_from_dict(data)


def tomllib_default() -> dict:
    import tomllib
    from importlib.resources import files

    return tomllib.loads(files("interp.pipeline").joinpath("default.toml").read_text())


def test_a_pipeline_model_table_may_be_left_out_and_gets_the_familys_defaults():
    from interp.pipeline.pipeline import pipeline_config_from_dict

    data = tomllib_default()
    del data["models"]["ssm"]["model"]
    assert pipeline_config_from_dict(data).runs["ssm"].model == SSMConfig()
