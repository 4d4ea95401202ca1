"""`interp study`: the config (shared process and train, per-run overrides, errors naming the key), quick mode,
and a tiny study end to end (runs reused on a second call, the table written from the runs' own files)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from interp.config import ConfigError
from interp.studies import study as ST

TINY = """
name = "tiny"
kind = "shai2024"

[process]
name = "mess3"
params = { x = 0.05, a = 0.85 }

[train]
context = 4
steps = 20
batch_size = 64
lr = 1e-2
eval_sequences = 256
eval_every = 10
checkpoint_every = 10

[paper]
model = "the paper's model"

[options]
aims = { relative_loss = 1.5, final_r2 = 0.1 }

[runs.tf]
model = { family = "transformer", n_layers = 2, d_model = 16, d_head = 8, attn_only = false, d_mlp = 32, normalization = "LN" }
train = { steps = 30 }

[runs.rr]
model = { family = "transformer", n_layers = 1, d_model = 16, d_head = 8 }
process = { name = "rrxor", params = {} }
seed = 3
"""


def tiny(**changes) -> dict:
    data = tomllib.loads(TINY)
    data.update(changes)
    return data


def test_runs_share_the_study_process_and_train_and_override_them():
    cfg = ST.study_config_from_dict(tiny())
    runs = cfg.run_configs()
    assert list(runs) == ["tf", "rr"]
    assert runs["tf"].train.steps == 30 and runs["tf"].train.context == 4 and runs["tf"].train.lr == 1e-2
    assert runs["rr"].train.steps == 20
    assert runs["tf"].process.name == "mess3" and runs["tf"].process.params == {"x": 0.05, "a": 0.85}
    assert runs["rr"].process.name == "rrxor"
    assert runs["tf"].seed == 0 and runs["rr"].seed == 3
    assert runs["tf"].name == "tf"
    # the saved config reads back to the same runs
    again = ST.study_config_from_dict(cfg.to_dict())
    assert {k: r.hash() for k, r in again.run_configs().items()} == {k: r.hash() for k, r in runs.items()}


@pytest.mark.parametrize("change, words", [
    ({"kind": "nope"}, "kind must be one of"),
    ({"runs": {}}, "at least one"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"runs": {"..": {"model": {"family": "transformer"}}}}, "runs.."),
    ({"runs": {"a": {"model": {"family": "transformer", "d_model": 0}}}}, "d_model"),
    ({"runs": {"a": {"model": {"family": "transformer"}, "process": {"name": "mess3", "params": {"x": 2.0}}}}},
     "runs.a: process.params"),
    ({"runs": {"a": {"model": {"family": "transformer"}, "colour": 1}}}, "colour"),
])
def test_bad_configs_name_the_key(change, words):
    with pytest.raises((ConfigError, ValueError)) as err:
        ST.study_config_from_dict(tiny(**change))
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_quick_study_is_another_folder_at_quick_sizes():
    cfg = ST.quick_study_config(ST.study_config_from_dict(tiny(train={"context": 4, "steps": 5000})))
    assert cfg.name == "tiny_quick"
    for run in cfg.run_configs().values():
        assert run.train.steps <= 60 and run.train.context == 4
    assert cfg.runs["rr"].process.name == "rrxor" and cfg.runs["rr"].seed == 3
