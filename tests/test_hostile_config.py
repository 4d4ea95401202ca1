"""Hostile configs through the command line: every one is refused with exit status 2 and one
``interp: error:`` line naming the key, before anything is written (issue 20, items 1, 2 and 7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from interp.cli import main

TINY_PIPELINE = (Path(__file__).resolve().parent / "tiny_pipeline.toml").read_text()

RUN_MODEL = 'family = "transformer"\nn_layers = 1\nd_model = 8\nd_head = 8\n'


def run_toml(top: str = "", model: str = RUN_MODEL, train: str = "") -> str:
    """A tiny run config; ``train`` lines replace the defaults of the keys they set."""
    given = {line.split("=")[0].strip() for line in train.splitlines()}
    defaults = "".join(f"{k} = {v}\n" for k, v in (("context", 4), ("steps", 2), ("batch_size", 8),
                                                     ("eval_sequences", 16)) if k not in given)
    return (f'{top}\n[process]\nname = "mess3"\nparams = {{ x = 0.15, a = 0.6 }}\n\n[model]\n{model}\n'
            f"[train]\n{defaults}{train}")


SWEEP = """
seeds = [0, 1]

[grid]
"process.params.x" = [0.05, 0.15]

[process]
name = "mess3"
params = { a = 0.6 }

[model]
family = "ssm"
d_model = 8
d_state = 4

[train]
context = 4
steps = 2
"""

RECOVERY = """
seeds = [0, 1]
hmm = { n_states = 3, n_tokens = 4 }
data = { n_train = 40, n_heldout = 20, length = 12 }
belief_net = { lr = 0.3, max_steps = 5, eval_every = 5 }
baum_welch = { implementations = ["scaling"], max_iter = 5 }
"""


def pipeline(old: str = "", new: str = "", extra: str = "") -> str:
    assert old in TINY_PIPELINE
    return TINY_PIPELINE.replace(old, new, 1) + extra


# (id, command, TOML text, what the one error line must hold)
CASES = [
    # names that would escape the folder beside the config, or hide in it
    ("train_name_dotdot", "train", run_toml('name = ".."'),
     "name must be a folder name that starts with a letter, digit or '_'"),
    ("train_name_dot", "train", run_toml('name = "."'), "got '.'"),
    ("train_name_empty", "train", run_toml('name = ""'), "got ''"),
    ("train_name_slash", "train", run_toml('name = "a/b"'), "got 'a/b'"),
    ("train_name_backslash", "train", run_toml('name = "a\\\\b"'), "name must be a folder name"),
    ("train_name_nul", "train", run_toml('name = "a\\u0000b"'), "name must be a folder name"),
    ("train_name_hidden", "train", run_toml('name = ".hidden"'), "got '.hidden'"),
    ("train_name_dash", "train", run_toml('name = "-rf"'), "got '-rf'"),
    ("run_name_dotdot", "run", pipeline('name = "tiny"', 'name = ".."'), "name must be a folder name"),
    ("sweep_name_dotdot", "sweep", 'name = ".."\n' + SWEEP, "name must be a folder name"),
    ("recover_name_dotdot", "recover", 'name = ".."\n' + RECOVERY, "name must be a folder name"),
    ("recover_name_slash", "recover", 'name = "../x"\n' + RECOVERY, "got '../x'"),
    # output paths in a config
    ("figures_out_parent", "run", pipeline(extra='\n[figures]\nout = "../figs"\n'),
     "figures.out must not contain '..'"),
    ("figures_out_inner_parent", "run", pipeline(extra='\n[figures]\nout = "a/../../figs"\n'), "figures.out"),
    ("figures_out_absolute", "run", pipeline(extra='\n[figures]\nout = "/tmp/figs"\n'),
     "figures.out must be a relative path"),
    ("figures_out_empty", "run", pipeline(extra='\n[figures]\nout = ""\n'), "figures.out must be a non-empty"),
    ("geometry_labels_one_folder", "run",
     pipeline('processes = [{ label = "Z1R", name = "z1r" }]',
              'processes = [{ label = "Z1R", name = "z1r" }, { label = "z1r!", name = "z1r" }]'),
     "geometry.processes[1]: label 'z1r!' names the same folder ('z1r') as 'Z1R'"),
    ("sweep_grid_key_with_slash", "sweep", SWEEP.replace('"process.params.x"', '"process.params.a/b"'),
     "grid key 'process.params.a/b' must name a field"),
    # non-finite numbers (TOML's own literals)
    ("lr_inf", "train", run_toml(train="lr = inf\n"), "train.lr must be a finite number, got inf"),
    ("lr_nan", "train", run_toml(train="lr = nan\n"), "train.lr must be a finite number, got nan"),
    ("lr_minus_inf", "train", run_toml(train="lr = -inf\n"), "train.lr must be a finite number, got -inf"),
    ("weight_decay_inf", "train", run_toml(train="weight_decay = inf\n"), "train.weight_decay must be a finite"),
    ("grad_clip_nan", "train", run_toml(train="grad_clip = nan\n"), "train.grad_clip must be a finite"),
    ("momentum_inf", "train", run_toml(train='optimizer = "sgd"\nmomentum = inf\n'), "train.momentum must be a finite"),
    ("min_lr_ratio_nan", "train", run_toml(train="min_lr_ratio = nan\n"), "train.min_lr_ratio must be a finite"),
    ("beta_nan", "train", run_toml(train="betas = [0.9, nan]\n"), "train.betas[1] must be a finite"),
    ("init_scale_inf", "train", run_toml(model='family = "belief_net"\ninit_scale = inf\n'),
     "model.init_scale must be a finite number, got inf"),
    ("run_lr_inf", "run", pipeline("lr = 1e-2", "lr = inf"), "train.lr must be a finite number, got inf"),
    ("sweep_lr_inf", "sweep", SWEEP.replace("steps = 2", "steps = 2\nlr = inf"), "train.lr must be a finite"),
    ("sweep_grid_lr_nan", "sweep", SWEEP.replace('"process.params.x" = [0.05, 0.15]', '"train.lr" = [nan]'),
     "train.lr must be a finite number, got nan"),
    ("recover_lr_inf", "recover", RECOVERY.replace("lr = 0.3", "lr = inf"), "belief_net.lr must be a finite"),
    ("recover_init_scale_inf", "recover", RECOVERY.replace("lr = 0.3", "lr = 0.3, init_scale = inf"),
     "belief_net.init_scale must be a finite number, got inf"),
    ("recover_random_scale_nan", "recover", RECOVERY + "ablation = { random_scales = [nan] }\n",
     "ablation.random_scales[0] must be a finite number, got nan"),
    # nonsense values
    ("lr_zero", "train", run_toml(train="lr = 0.0\n"), "train.lr must be > 0"),
    ("weight_decay_negative", "train", run_toml(train="weight_decay = -0.1\n"), "train.weight_decay must be >= 0"),
    ("grad_clip_negative", "train", run_toml(train="grad_clip = -1.0\n"), "train.grad_clip must be >= 0"),
    ("momentum_one", "train", run_toml(train='optimizer = "sgd"\nmomentum = 1.0\n'), "train.momentum must lie in"),
    ("init_scale_negative", "train", run_toml(model='family = "belief_net"\ninit_scale = -1.0\n'),
     "model.init_scale must be a finite number >= 0"),
    ("recover_random_scale_negative", "recover", RECOVERY + "ablation = { random_scales = [-0.5] }\n",
     "ablation.random_scales[0]"),
    ("recover_restarts_negative", "recover", RECOVERY + "ablation = { restarts = -2 }\n",
     "ablation.restarts must be >= 0"),
    ("rotary_odd_d_head", "train",
     run_toml(model='family = "transformer"\nd_model = 8\nd_head = 7\npositional = "rotary"\n'),
     "model.d_head must be even with positional = 'rotary', got 7"),
    # seeds
    ("train_seed_negative", "train", run_toml("seed = -1"), "seed must be >= 0, got -1"),
    ("run_seed_negative", "run", pipeline('name = "tiny"', 'name = "tiny"\nseed = -1'), ": seed must be >= 0"),
    ("sweep_seed_negative", "sweep", SWEEP.replace("seeds = [0, 1]", "seeds = [0, -1]"), "seeds[1] must be >= 0"),
    ("sweep_seed_twice", "sweep", SWEEP.replace("seeds = [0, 1]", "seeds = [1, 1]"), "seeds must be a non-empty list"),
    ("recover_seed_negative", "recover", RECOVERY.replace("seeds = [0, 1]", "seeds = [0, -3]"),
     "seeds[1] must be >= 0, got -3"),
    ("recover_seed_twice", "recover", RECOVERY.replace("seeds = [0, 1]", "seeds = [0, 1, 0]"),
     "seeds lists 0 twice (seeds[0] and seeds[2])"),
    # memory: refused before anything is allocated (sizes far beyond any machine: petabytes and more)
    ("context_too_long", "train", run_toml(train="context = 1000000\n"), "train.context = 1000000 needs ~"),
    ("batch_too_large", "train", run_toml(train="context = 3000\nbatch_size = 1000000000\n"),
     "train.batch_size = 1000000000 needs ~"),
    ("eval_set_too_large", "train", run_toml(train="eval_sequences = 1000000000000000\n"),
     "train.eval_sequences = 1000000000000000 needs ~"),
    ("fixed_dataset_too_large", "train", run_toml(train='data = "fixed"\ndataset_size = 1000000000000000\n'),
     "train.dataset_size = 1000000000000000 needs ~"),
    ("model_too_wide", "train", run_toml(model='family = "transformer"\nd_model = 10000000\nd_head = 10000000\n'),
     "model.d_model = 10000000 needs ~"),
    ("run_context_too_long", "run", pipeline("context = 4", "context = 1000000"), "train.context = 1000000 needs ~"),
]


def files_under(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a folder)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("command,text,wanted", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_config_is_one_error_line_and_writes_nothing(tmp_path, capsys, command, text, wanted):
    # the config sits one folder down, so a run folder named '..' or '.' would land inside tmp_path
    folder = tmp_path / "configs"
    folder.mkdir()
    path = folder / f"{command}_case.toml"
    path.write_text(text)
    before = files_under(tmp_path)
    assert main([command, str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"interp: error: {path}: "), captured.err
    assert wanted in lines[0], lines[0]
    assert captured.out == ""
    assert files_under(tmp_path) == before


def test_memory_message_says_the_estimate_and_the_machine(tmp_path, capsys):
    from interp.training.runconfig import physical_memory

    path = tmp_path / "long.toml"
    path.write_text(run_toml(train="context = 1000000\n"))
    assert main(["train", str(path)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.endswith(f"bytes per training step; this machine has {physical_memory():.1e}"), line


def test_a_directory_given_as_a_config_says_so(tmp_path, capsys):
    folder = tmp_path / "runs.toml"
    folder.mkdir()
    for command in ("train", "run", "sweep", "recover"):
        assert main([command, str(folder)]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert lines == [f"interp: error: config file {folder} is a directory"], (command, lines)
    assert list(tmp_path.rglob("*")) == [folder]
