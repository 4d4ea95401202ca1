"""A process defined in the user's own module reaches the command line, configs, pipelines and spawned workers;
installed packages register theirs through the entry-point group `interp.processes`; the docs' example works as
written."""

from __future__ import annotations

import os
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

from interp.cli import main
from interp.config import ConfigError
from interp.hmm import get_process, list_processes, processes, register
from interp.io import read_json
from interp.training.runconfig import ProcessConfig, load_run_config, run_config_from_dict

REPO = Path(__file__).resolve().parents[1]
ADDING = (REPO / "docs" / "hmm.md").read_text().split("## Adding a process", 1)[1].split("\n## ", 1)[0]
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", ADDING, re.S)
(EXAMPLE,) = [code for lang, code in BLOCKS if lang == "python" and code.startswith("# my_processes.py")]
COMMANDS = [line for lang, code in BLOCKS if lang == "sh" for line in code.splitlines() if line.startswith("interp ")]
(PROCESS_TABLE,) = [code for lang, code in BLOCKS if lang == "toml" and code.startswith("[process]")]

RUN = """
[model]
family = "transformer"
n_layers = 1
d_model = 8
d_head = 8

[train]
context = 4
steps = 2
batch_size = 8
eval_sequences = 16
"""


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Run in tmp_path; whatever a test imports, registers or adds to the search path is undone after it."""
    monkeypatch.chdir(tmp_path)
    modules, registry = set(sys.modules), dict(processes._REGISTRY)
    search = os.environ.get(processes.PATH_VARIABLE)
    loaded = processes._entry_points_loaded
    yield tmp_path
    for name in set(sys.modules) - modules:  # the test's own modules only: the lab's stay as imported
        if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]
    processes._REGISTRY.clear()
    processes._REGISTRY.update(registry)
    processes._entry_points_loaded = loaded
    if search is None:
        os.environ.pop(processes.PATH_VARIABLE, None)
    else:
        os.environ[processes.PATH_VARIABLE] = search


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interp: error: "), err
    return err


def test_the_docs_example_works_exactly_as_written(isolated, capsys):
    (isolated / "my_processes.py").write_text(EXAMPLE)
    assert COMMANDS and all("--module my_processes" in c for c in COMMANDS)
    for command in COMMANDS:
        assert main(shlex.split(command)[1:]) == 0, command
    out = capsys.readouterr().out
    assert "sticky_coin(stay=0.9, bias=0.8)  (from my_processes)" in out  # interp processes
    assert "process   sticky_coin(stay=0.95, bias=0.8): 2 states, 2 tokens" in out  # interp describe
    # the [process] table of the docs in a run config
    (isolated / "run.toml").write_text(PROCESS_TABLE + RUN)
    cfg = load_run_config(isolated / "run.toml")
    assert cfg.process.module == "my_processes" and cfg.process.build().params == {"stay": 0.95, "bias": 0.8}


def test_without_the_module_the_command_line_says_how_to_find_the_process(isolated, capsys):
    (isolated / "my_processes.py").write_text(EXAMPLE)
    assert main(["describe", "--process", "sticky_coin"]) == 2
    err = one_error(capsys)
    assert "--process: unknown process 'sticky_coin'" in err and "--module" in err
    assert main(["describe", "--module", "no_such_module", "--process", "sticky_coin"]) == 2
    assert "--module: no module 'no_such_module'" in one_error(capsys)


@pytest.mark.parametrize("module, source, message", [
    ("no_such_module", None, "process.module: no module 'no_such_module' on the Python path, nor a no_such_module.py"),
    ("broken", "1 / 0\n", "process.module: importing 'broken' from "),
    ("needs_more", "import no_such_dependency\n", "failed: ModuleNotFoundError: No module named 'no_such_dependency'"),
    ("my-processes", None, "process.module: 'my-processes' is not a module name"),
])
def test_a_module_that_cannot_be_imported_is_one_line_naming_the_key(isolated, capsys, module, source, message):
    if source is not None:
        (isolated / f"{module}.py").write_text(source)
    path = isolated / "run.toml"
    path.write_text(f'[process]\nmodule = "{module}"\nname = "sticky_coin"\n' + RUN)
    before = sorted(p.name for p in isolated.iterdir())
    assert main(["train", str(path)]) == 2
    err = one_error(capsys)
    assert message in err and str(path) in err
    assert sorted(p.name for p in isolated.iterdir()) == before  # nothing written


def test_an_unknown_name_is_named_by_its_key():
    with pytest.raises(ConfigError, match=r"process\.name: unknown process 'sticky_coin'; known: .*set module"):
        run_config_from_dict({"name": "r", "process": {"name": "sticky_coin"}, "model": {"family": "transformer"}})


def test_a_config_without_a_module_keeps_its_hash(isolated):
    """Run folders trained before `module` existed stay up to date: the key is left out when it is None."""
    cfg = run_config_from_dict({"name": "r", "process": {"name": "mess3"}, "model": {"family": "transformer"}})
    assert "module" not in cfg.to_dict()["process"]
    (isolated / "my_processes.py").write_text(EXAMPLE)
    mod = run_config_from_dict({"name": "r", "process": {"name": "mess3", "module": "my_processes"},
                                "model": {"family": "transformer"}})
    assert mod.to_dict()["process"]["module"] == "my_processes" and mod.hash() != cfg.hash()
    assert run_config_from_dict(mod.to_dict()) == mod


def test_a_pipeline_beside_its_module_runs_it_in_a_spawned_worker(isolated, capsys):
    """The module sits beside the config, not in the current folder nor on the Python path: the CLI makes it
    findable, and a spawned worker (--workers 1, two jobs) that rebuilds the run config imports it too."""
    configs = isolated / "configs"
    configs.mkdir()
    (configs / "my_processes.py").write_text(EXAMPLE)
    tiny = tomllib.loads((REPO / "tests" / "tiny_pipeline.toml").read_text())
    (configs / "sticky.toml").write_text(f"""name = "sticky"
{PROCESS_TABLE}
[train]
context = 4
batch_size = 32
eval_sequences = 64
eval_every = 5
checkpoint_every = 5
lr = 1e-2

[models.transformer]
model = {{ n_layers = 1, n_heads = 1, d_model = 8, d_head = 8, normalization = "none" }}
train = {{ steps = 5 }}

[construction]
decay = "fitted"
""")
    assert "geometry" in tiny and "recovery" in tiny  # left out above: two jobs, so a pool is spawned
    elsewhere = isolated / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)
    assert main(["run", str(configs / "sticky.toml"), "--workers", "1", "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "2 jobs on 1 worker processes" in out
    summary = read_json(configs / "sticky" / "summary.json")
    assert summary["process"]["name"] == "sticky_coin" and summary["process"]["params"] == {"stay": 0.95, "bias": 0.8}
    assert read_json(configs / "sticky" / "pipeline.json")["process"]["module"] == "my_processes"
    assert "my_processes" in sys.modules and sys.modules["my_processes"].__file__ == str(configs / "my_processes.py")


def test_registering_a_taken_name_is_refused_unless_it_is_the_same_function_again(isolated):
    def make():
        def coin(p: float = 0.5):
            return get_process("mess3")
        return coin

    register("twice")(make())
    register("twice")(make())  # the same function defined again (a module imported anew) replaces itself

    def other(p: float = 0.5):
        return get_process("mess3")

    with pytest.raises(ValueError, match="process 'twice' is already registered"):
        register("twice")(other)


def write_distribution(site: Path, entry_points: str, package: str) -> None:
    """A minimal installed distribution: a package and its dist-info with entry points."""
    (site / "plug_pkg").mkdir(parents=True)
    (site / "plug_pkg" / "__init__.py").write_text(package)
    info = site / "plug_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plug_pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[interp.processes]\n{entry_points}\n")


PLUGIN = """
from interp.hmm import HMM, register


@register("plug_registered")
def plug_registered(p: float = 0.5) -> HMM:
    \"\"\"A fair or biased coin.\"\"\"
    return HMM.from_emission(mu=[1.0], A=[[1.0]], C=[[1 - p, p]])


def plug_function(p: float = 0.25) -> HMM:
    \"\"\"Registered by its entry point's name.\"\"\"
    return HMM.from_emission(mu=[1.0], A=[[1.0]], C=[[1 - p, p]])
"""


def test_installed_packages_register_processes_through_entry_points(isolated, monkeypatch, capsys):
    write_distribution(isolated / "site", "plug = plug_pkg\nplug_fn = plug_pkg:plug_function", PLUGIN)
    monkeypatch.syspath_prepend(str(isolated / "site"))
    processes._entry_points_loaded = False
    assert "plug_pkg" not in sys.modules  # lazily: nothing is imported until a name is missing or listed
    assert get_process("plug_fn").params == {"p": 0.25}
    assert {"plug_registered", "plug_fn"} <= set(list_processes())
    cfg = ProcessConfig("plug_registered", {"p": 0.9})  # no module: the entry point brings it
    assert cfg.build().params == {"p": 0.9}
    assert main(["processes"]) == 0
    assert "plug_fn(p=0.25)  (from plug_pkg)" in capsys.readouterr().out


def test_a_broken_entry_point_is_named(isolated, monkeypatch):
    write_distribution(isolated / "site", "plug = plug_pkg.missing", "")
    monkeypatch.syspath_prepend(str(isolated / "site"))
    processes._entry_points_loaded = False
    with pytest.raises(ValueError, match=r"entry point 'plug' = 'plug_pkg.missing' of group 'interp.processes' "
                                         r"cannot be loaded: ModuleNotFoundError"):
        get_process("not_there")
