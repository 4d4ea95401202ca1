"""`interp study`: the config (shared process and train, per-run overrides, errors naming the key), quick mode,
and a tiny study end to end (runs reused on a second call, the table written from the runs' own files)."""

from __future__ import annotations

import sys
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


# TINY's two runs under a kind that reads several (a shai2024 study has one run, the paper's model)
TWO_RUNS = {"kind": "heads", "options": {"margin": 0.05}}
ONE_RUN = {"runs": {"tf": tomllib.loads(TINY)["runs"]["tf"]}}


def test_runs_share_the_study_process_and_train_and_override_them():
    cfg = ST.study_config_from_dict(tiny(**TWO_RUNS))
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
    # each analysis's check_config, at load time
    ({}, "runs: a shai2024 study has one run, the paper's model, got 2 (tf, rr)"),
    ({**ONE_RUN, "options": {"aimz": {}}},
     "options.aimz: unknown option for kind shai2024 (expected one of aims)"),
    ({**ONE_RUN, "options": {"aims": {"aimz": 1.0}}},
     "options.aims: unknown key 'aimz' (known: relative_loss, final_r2, all_layers_r2)"),
    ({**ONE_RUN, "options": {"aims": {"final_r2": "high"}}}, "options.aims.final_r2 must be a number, got 'high'"),
    ({**ONE_RUN, "options": {"aims": 0.9}}, "options.aims must be a table of aim = number, got 0.9"),
    ({**TWO_RUNS, "options": {"margin": "abc"}}, "options.margin must be a number, got 'abc'"),
    ({**TWO_RUNS, "options": {"margin": 1.5}}, "options.margin must lie in [0, 1), got 1.5"),
    ({**TWO_RUNS, "options": {"margins": 0.1}}, "options.margins: unknown option for kind heads (expected one of "
                                                "margin)"),
    ({**TWO_RUNS, "runs": {"fx": {"model": {"family": "fixed_attention", "d_model": 8, "d_head": 8}}}},
     "runs.fx: the heads study compares transformers, got family 'fixed_attention'"),
    ({"kind": "minimal_chain", "options": {}},
     "runs.rr: every step of the chain must use the same process and context as the first (tf)"),
    ({"kind": "minimal_chain", **ONE_RUN, "options": {"decays": "analytic"}},
     "options.decays: unknown option for kind minimal_chain (expected one of decay, labels)"),
])
def test_bad_configs_name_the_key(change, words):
    with pytest.raises((ConfigError, ValueError)) as err:
        ST.study_config_from_dict(tiny(**change))
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_a_bad_option_stops_the_study_command_before_any_training(tmp_path, capsys):
    from interp.cli import main

    path = tmp_path / "heads.toml"
    path.write_text(TINY.replace('kind = "shai2024"', 'kind = "heads"')
                    .replace("aims = { relative_loss = 1.5, final_r2 = 0.1 }", 'margin = "abc"'))
    assert main(["study", str(path)]) == 2
    assert capsys.readouterr().err == f"interp: error: {path}: options.margin must be a number, got 'abc'\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heads.toml"]


def test_quick_study_is_another_folder_at_quick_sizes():
    cfg = ST.quick_study_config(ST.study_config_from_dict(tiny(**TWO_RUNS, train={"context": 4, "steps": 5000})))
    assert cfg.name == "tiny_quick"
    for run in cfg.run_configs().values():
        assert run.train.steps <= 60 and run.train.context == 4
    assert cfg.runs["rr"].process.name == "rrxor" and cfg.runs["rr"].seed == 3


def test_tiny_study_end_to_end_table_from_the_runs_and_runs_reused(tmp_path):
    from interp.io import read_json

    data = tiny()
    data["runs"] = {"rr": data["runs"]["rr"]}
    data["process"] = {"name": "rrxor", "params": {}}
    cfg = ST.study_config_from_dict(data)
    logs: list[str] = []
    res = ST.Study(cfg, tmp_path / "s", workers=0, log=logs.append).run()
    root = tmp_path / "s"
    probe = read_json(root / "runs" / "rr" / "probe.json")
    result = read_json(root / "runs" / "rr" / "result.json")
    rows = {r["quantity"]: r for r in res["rows"]}
    assert rows["relative loss (eval / optimal)"]["lab"] == result["relative_loss"]
    assert rows["relative loss (eval / optimal)"]["aim"] == 1.5
    assert rows["relative loss (eval / optimal)"]["met"] == ("yes" if result["relative_loss"] <= 1.5 else "no")
    assert rows["concatenated-layers probe R^2"]["lab"] == probe["all_layers"]["r2"]
    assert rows["model"]["paper"] == "the paper's model"
    assert read_json(root / "table.json")["rows"] == res["rows"]
    md = (root / "table.md").read_text()
    assert md.startswith("# tiny: ") and "| relative loss (eval / optimal) |" in md
    assert res["seconds"]["ran"] == 1
    for name in res["figures"]:
        assert (root / "figures" / name).is_file()
    # RRXOR has histories with equal next-token distributions and different beliefs
    assert res["extra"]["beyond_next_token"]["groups"]
    # a second call reuses the trained and probed run, and redraws the same figures byte for byte
    before = {n: (root / "figures" / n).read_bytes() for n in res["figures"]}
    again = ST.Study(cfg, root, workers=0, log=logs.append).run()
    assert again["seconds"]["ran"] == 0
    assert {n: (root / "figures" / n).read_bytes() for n in again["figures"]} == before


def test_a_failed_run_is_reported_in_one_line_and_the_others_kept(tmp_path, monkeypatch):
    from interp.studies import jobs

    cfg = ST.study_config_from_dict(tiny(**TWO_RUNS))
    real = jobs.train_and_probe

    def flaky(cfg_dict, run_dir, device):
        if cfg_dict["name"] == "rr":
            raise RuntimeError("boom")
        return real(cfg_dict, run_dir, device)

    monkeypatch.setattr(ST, "train_and_probe", flaky)
    with pytest.raises(ST.StudyError) as err:
        ST.Study(cfg, tmp_path / "s", workers=0, log=lambda m: None).run()
    assert "1 of 2 runs failed: rr (RuntimeError: boom)" in str(err.value) and "\n" not in str(err.value)
    assert (tmp_path / "s" / "runs" / "tf" / "probe.json").is_file()
    assert not (tmp_path / "s" / "table.json").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_sigterm_stops_a_study_and_its_worker_processes(tmp_path):
    import os
    import signal
    import subprocess
    import time

    toml = tmp_path / "slow.toml"
    runs = "".join(f'\n[runs.r{i}]\nmodel = {{ family = "blocked_belief_net", group_size = 4 }}\n' for i in range(2))
    toml.write_text('name = "slow"\nkind = "scaling"\nseed = 0\n[process]\nname = "blocked"\n'
                    'params = { n_groups = 4, group_size = 4, tokens_per_group = 2, successors = 2 }\n'
                    '[train]\ncontext = 8\nsteps = 100000\nbatch_size = 8\neval_every = 100000\n'
                    'checkpoint_every = 100\n' + runs)
    proc = subprocess.Popen([sys.executable, "-m", "interp", "study", str(toml), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def workers() -> list[int]:
        try:
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        except OSError:
            return []
        return [int(k) for k in kids if b"multiprocessing-fork" in Path(f"/proc/{k}/cmdline").read_bytes()]

    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "slow" / "runs").glob("r*/checkpoints/*")) and time.monotonic() < deadline:
            time.sleep(0.2)  # until the workers train
        pids = workers()
        assert len(pids) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
        assert "interp: interrupted" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    def alive(pid: int) -> bool:
        try:
            return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False

    deadline = time.monotonic() + 30
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in pids if alive(p)]
    for pid in left:  # a failing run must not leave them training
        os.kill(pid, signal.SIGKILL)
    assert not left  # stopped, not left running their jobs
