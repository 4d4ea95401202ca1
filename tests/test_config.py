"""Run configs: every error a TOML file can hold is rejected with a message naming the key, the CLI
turns it into one ``interp: error:`` line, and every shipped config in runs/ loads."""

import copy
import itertools
import json
import math
import re
from dataclasses import replace
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

def _top_keys(path: Path) -> set[str]:
    import tomllib

    return set(tomllib.loads(path.read_text()))


SHIPPED_STUDIES = sorted(p for p in RUNS.glob("*.toml") if "kind" in _top_keys(p))  # interp study
SHIPPED_ANIMATIONS = sorted(p for p in RUNS.glob("*.toml") if "animation" in _top_keys(p))  # a sweep, drawn
SHIPPED = sorted(p for p in RUNS.glob("*.toml") if not p.stem.startswith(("recovery_", "pipeline_", "sweep_"))
                 and p not in SHIPPED_STUDIES and p not in SHIPPED_ANIMATIONS)
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


@pytest.mark.parametrize("path", SHIPPED_STUDIES, ids=[p.stem for p in SHIPPED_STUDIES])
def test_shipped_study_config_loads(path):
    from interp.studies.study import KINDS, load_study_config, study_config_from_dict

    cfg = load_study_config(path)
    assert cfg.name == path.stem and cfg.kind in KINDS and cfg.runs
    again = study_config_from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert {k: r.hash() for k, r in again.run_configs().items()} == {k: r.hash() for k, r in cfg.run_configs().items()}
    for run in cfg.run_configs().values():
        assert run_config_from_dict(run.to_dict()) == run


@pytest.mark.parametrize("path", SHIPPED_ANIMATIONS, ids=[p.stem for p in SHIPPED_ANIMATIONS])
def test_shipped_animation_config_loads(path):
    from interp.figures.animation import load_animation_config

    cfg = load_animation_config(path)
    assert cfg.sweep.name == path.stem and cfg.sweep.points
    assert all(run_config_from_dict(p.config.to_dict()) == p.config for p in cfg.sweep.points)


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

    from interp.studies.study import StudyConfig

    return {"run": RunConfig, "pipeline": PipelineConfig, "sweep": SweepConfig, "recovery": RecoveryConfig,
            "study": StudyConfig}[kind]


def _shipped_kinds() -> list[tuple[Path, str]]:
    from importlib.resources import files

    kinds = [(p, "run") for p in SHIPPED] + [(p, "recovery") for p in SHIPPED_RECOVERY]
    kinds += [(p, "sweep") for p in SHIPPED_SWEEPS] + [(p, "study") for p in SHIPPED_STUDIES]
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


# ------------------------------------------- hostile values (issue 20)
NON_FINITE = [(key, value) for key in ("train.lr", "train.weight_decay", "train.grad_clip", "train.momentum",
                                        "train.min_lr_ratio") for value in (math.inf, -math.inf, math.nan)]


@pytest.mark.parametrize("key,value", NON_FINITE, ids=[f"{k}={v}" for k, v in NON_FINITE])
def test_the_loader_refuses_non_finite_numbers_naming_the_key(tmp_path, key, value):
    path = write_config(tmp_path, mutated(key, value))  # TOML's own inf / -inf / nan literals
    assert f"= {value!r}" in path.read_text()
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert str(err.value) == f"{path}: {key} must be a finite number, got {value!r}"


def test_non_finite_numbers_inside_lists_and_model_tables_and_from_json():
    with pytest.raises(ConfigError, match=r"^train\.betas\[0\] must be a finite number, got nan$"):
        run_config_from_dict(mutated("train.betas", [math.nan, 0.9]), default_name="run")
    belief_net = {"family": "belief_net", "init_scale": math.inf}
    with pytest.raises(ConfigError, match=r"^model\.init_scale must be a finite number, got inf$"):
        run_config_from_dict(mutated("model", belief_net), default_name="run")
    # JSON (a saved config.json) holds integers of any size: one beyond float range is not finite either
    with pytest.raises(ConfigError, match=r"^train\.lr must be a finite number, got 1000+$"):
        run_config_from_dict(mutated("train.lr", 10**400), default_name="run")
    # a Python caller that skips the loader is stopped by the config itself
    with pytest.raises(ValueError, match=r"^lr must be a finite number, got inf$"):
        TrainConfig(lr=math.inf)
    with pytest.raises(ValueError, match=r"^init_scale must be a finite number >= 0, got nan$"):
        BeliefNetConfig(init_scale=math.nan)


@pytest.mark.parametrize("key,value,message", [
    ("seed", -1, "seed must be >= 0, got -1"),
    ("train.momentum", 1.0, "train.momentum must lie in [0, 1), got 1.0"),
    ("train.momentum", -0.5, "train.momentum must lie in [0, 1), got -0.5"),
    ("model", {"family": "transformer", "d_model": 8, "d_head": 5, "positional": "rotary"},
     "model.d_head must be even with positional = 'rotary', got 5"),
    ("model", {"family": "belief_net", "init_scale": -0.1}, "model.init_scale must be a finite number >= 0, got -0.1"),
    ("name", "..", "name must be a folder name that starts with a letter, digit or '_' and holds no '/', '\\' or "
                   "control character, got '..'"),
])
def test_nonsense_values_are_refused_naming_the_key(tmp_path, key, value, message):
    path = write_config(tmp_path, mutated(key, value))
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert str(err.value) == f"{path}: {message}"


def test_rotary_with_an_even_d_head_and_a_zero_init_scale_still_load():
    assert TransformerConfig(d_model=8, d_head=4, positional="rotary").d_head == 4
    assert BeliefNetConfig(init="random", init_scale=0.0).init_scale == 0.0  # every logit 0: the uniform model


FOLDER_NAMES_OK = ["mess3_tf1", "x=0.05_d_model=32_seed=0", "_private", "1run", "run.v2", "run-2", "lr=1e-05"]
FOLDER_NAMES_BAD = ["", ".", "..", ".hidden", "-rf", "a/b", "../x", "a\\b", "a\x00b", "a\nb", 3, None]


@pytest.mark.parametrize("name", FOLDER_NAMES_OK)
def test_check_folder_name_accepts_plain_names(name):
    from interp.config import check_folder_name

    assert check_folder_name(name) == name


@pytest.mark.parametrize("name", FOLDER_NAMES_BAD, ids=[repr(n) for n in FOLDER_NAMES_BAD])
def test_check_folder_name_refuses_what_escapes_or_hides(name):
    from interp.config import check_folder_name

    with pytest.raises(ConfigError) as err:
        check_folder_name(name, "models.x.name")
    assert str(err.value) == (f"models.x.name must be a folder name that starts with a letter, digit or '_' and "
                              f"holds no '/', '\\' or control character, got {name!r}")


def test_check_relative_path():
    from interp.config import check_relative_path

    for ok in ("paper_figs", "runs/figs", "./figs", "figs/"):
        assert check_relative_path(ok, "figures.out") == ok
    for bad, why in (("", "must be a non-empty relative path"), ("/tmp/figs", "must be a relative path"),
                     ("\\figs", "must be a relative path"), ("..", "must not contain '..'"),
                     ("../figs", "must not contain '..'"), ("a/../../b", "must not contain '..'"),
                     ("a\\..\\b", "must not contain '..'"), ("a\x00b", "must be a non-empty relative path"),
                     (None, "must be a non-empty relative path")):
        with pytest.raises(ConfigError, match=rf"^figures\.out {re.escape(why)}.*, got {re.escape(repr(bad))}$"):
            check_relative_path(bad, "figures.out")


def test_read_toml_says_a_directory_is_one(tmp_path):
    from interp.config import read_toml

    with pytest.raises(ConfigError) as err:
        read_toml(tmp_path)
    assert str(err.value) == f"config file {tmp_path} is a directory"


# -------------------------------------------------------- memory estimate
def test_memory_estimate_of_a_tiny_belief_net_term_by_term():
    from interp.training.runconfig import memory_estimate

    train = TrainConfig(context=10, batch_size=1, eval_sequences=1)
    est = memory_estimate(BeliefNetConfig(n_states=3), train, n_tokens=3, n_states=3)
    params, per_sequence = 3 * 3 + 3 * 3 + 3, 6 * 10 * 3 + 3 * 10 * 3  # (mu, A, C); beliefs and logits
    assert est["step"] == 4 * 4 * params + 2 * 4 * per_sequence + 8 * 10
    assert est["eval"] == 2 * 4 * params + 10 * 16 + 4 * per_sequence + 20_000 * 10 * 3 * 16
    assert est["data"] == 0
    fixed = memory_estimate(BeliefNetConfig(n_states=3), replace(train, data="fixed", dataset_size=100), 3, 3)
    assert fixed["data"] == 8 * 100 * 10
    no_mc = memory_estimate(BeliefNetConfig(n_states=3), train, 3, 3, monte_carlo=False)
    assert est["eval"] - no_mc["eval"] == 20_000 * 10 * 3 * 16


def test_memory_estimate_grows_with_the_square_of_a_transformers_context_and_with_the_batch():
    from interp.training.runconfig import memory_estimate

    model = TransformerConfig(d_model=64, d_head=64)
    step = {(c, b): memory_estimate(model, TrainConfig(context=c, batch_size=b), 3, 3)["step"]
            for c in (10_000, 20_000) for b in (1, 2)}
    assert 3.9 < step[20_000, 1] / step[10_000, 1] < 4.0  # attention: heads x context^2
    assert 1.99 < step[10_000, 2] / step[10_000, 1] < 2.0
    double = memory_estimate(model, TrainConfig(context=10_000, dtype="float64"), 3, 3)["step"]
    assert double == pytest.approx(2 * memory_estimate(model, TrainConfig(context=10_000), 3, 3)["step"], rel=1e-3)


@pytest.mark.parametrize("changes,model,message", [
    ({"context": 100_000}, None, "train.context = 100000 needs ~"),
    ({"context": 1000, "batch_size": 100_000}, None, "train.batch_size = 100000 needs ~"),
    ({"eval_sequences": 10**9}, None, "train.eval_sequences = 1000000000 needs ~"),
    ({"data": "fixed", "dataset_size": 10**9}, None, "train.dataset_size = 1000000000 needs ~"),
    ({}, TransformerConfig(d_model=100_000, d_head=100_000), "model.d_model = 100000 needs ~"),
])
def test_check_memory_names_the_key_whose_smallest_value_would_fit(changes, model, message):
    from interp.training.runconfig import check_memory

    available = 10**9
    with pytest.raises(ValueError) as err:
        check_memory(model or TransformerConfig(), replace(TrainConfig(), **changes), 3, 3, available)
    assert str(err.value).startswith(message) and str(err.value).endswith(f"; this machine has {available:.1e}")
    check_memory(model or TransformerConfig(), replace(TrainConfig(), **changes), 3, 3, None)  # unknown: no check


def _shipped_runs() -> list[tuple[str, object]]:
    from interp.studies.study import load_study_config

    runs = [(p.stem, load_run_config(p)) for p in SHIPPED]
    for p in SHIPPED_STUDIES:
        runs += [(f"{p.stem}.{name}", run) for name, run in load_study_config(p).run_configs().items()]
    return runs


@pytest.mark.parametrize("name,cfg", _shipped_runs(), ids=[n for n, _ in _shipped_runs()])
def test_shipped_configs_need_far_less_than_a_laptop(name, cfg):
    from interp.hmm.blocked import BlockedHMM
    from interp.training.runconfig import blocked_shape, memory_estimate

    hmm = cfg.process.build()
    est = memory_estimate(cfg.model, cfg.train, hmm.n_tokens, hmm.n_states, monte_carlo=not isinstance(hmm, BlockedHMM),
                          blocked=blocked_shape(hmm))
    assert max(est.values()) < 4e9, est


def test_a_blocked_models_memory_counts_its_blocks_not_a_dense_matrix():
    from interp.hmm.processes import get_process
    from interp.models.blocked_belief_net import parameter_count
    from interp.models.configs import BlockedBeliefNetConfig
    from interp.training.runconfig import _model_size, blocked_shape

    hmm = get_process("blocked", n_groups=8, group_size=16, tokens_per_group=2, successors=3, seed=0)
    shape = blocked_shape(hmm)
    assert shape == (8, 16, 2, 3)
    for cfg in (BlockedBeliefNetConfig(), BlockedBeliefNetConfig(group_size=4),
                BlockedBeliefNetConfig(parameterisation="neural", hidden=8)):
        params = _model_size(cfg, 10, hmm.n_tokens, hmm.n_states, shape)[0]
        assert params == parameter_count(cfg, hmm)  # the built model's count, tested in tests/models
    assert blocked_shape(get_process("mess3")) is None
