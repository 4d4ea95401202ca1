"""Hostile but fair input to the command line: every case ends in exactly one ``interp: error:`` line naming the
flag or path, with the documented exit status (2: bad input, 1: a file system that refuses), and nothing written.
Plus: ``interp --help`` imports no torch, and the long steps report progress when output goes to a file."""

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from interp.cli import main

REPO = Path(__file__).resolve().parent.parent

RUN_TOML = ('[process]\nname = "mess3"\n\n[model]\nfamily = "fixed_attention"\nd_model = 8\nd_head = 8\n\n'
            '[train]\ncontext = 4\nsteps = 2\nbatch_size = 8\neval_sequences = 16\neval_every = 2\n')
RECOVERY_TOML = ('seeds = [0, 1]\nepsilon = 2e-2\n\n[hmm]\nn_states = 3\nn_tokens = 4\n\n'
                 '[data]\nn_train = 40\nn_heldout = 20\nlength = 12\n\n'
                 '[belief_net]\nlr = 0.3\nmax_steps = 20\neval_every = 5\n\n'
                 '[baum_welch]\nimplementations = ["scaling"]\nmax_iter = 10\n')


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A working folder (the current one) with a config of each kind, an empty folder and a plain file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(RUN_TOML)
    (tmp_path / "study.toml").write_text(RECOVERY_TOML)
    shutil.copy(REPO / "tests" / "tiny_pipeline.toml", tmp_path / "pipe.toml")
    shutil.copy(REPO / "runs" / "sweep_mess3.toml", tmp_path / "sweep.toml")
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("not a folder\n")
    return tmp_path


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: a file's bytes, None for a folder."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def files(snap: dict[str, bytes | None]) -> dict[str, bytes]:
    return {k: v for k, v in snap.items() if v is not None}


def fill(argv: list[str], root: Path) -> list[str]:
    names = {"{toml}": "tiny.toml", "{rec}": "study.toml", "{pipe}": "pipe.toml", "{sweep}": "sweep.toml",
             "{dir}": "empty", "{file}": "afile"}
    return [str(root / names[a]) if a in names else a for a in argv]


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("interp: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def attempt(lab, capsys, argv: list[str]) -> tuple[int, str, bool]:
    """Run ``interp argv`` in ``lab``: its exit status, its one error line, and whether ``lab`` is unchanged."""
    before = snapshot(lab)
    status = main(fill(argv, lab))
    return status, one_error_line(capsys), snapshot(lab) == before


# ----------------------------------------------------------------------------- integer and float flags
RANGES = [
    (["describe", "--length", "0"], "--length"),
    (["describe", "--samples", "-1"], "--samples"),
    (["describe", "--samples", "many"], "--samples"),
    (["describe", "--seed", "-1"], "--seed"),
    (["cache", "{dir}", "--batch-size", "0"], "--batch-size"),
    (["cache", "{dir}", "--batch-size", "-4096"], "--batch-size"),
    (["probe", "{dir}", "--causal-points", "-5"], "--causal-points"),
    (["probe", "{dir}", "--causal-points", "0"], "--causal-points"),
    (["probe", "{dir}", "--test-fraction", "0"], "--test-fraction"),
    (["probe", "{dir}", "--test-fraction", "1"], "--test-fraction"),
    (["probe", "{dir}", "--test-fraction", "nan"], "--test-fraction"),
    (["probe", "{dir}", "--ridge", "-1"], "--ridge"),
    (["probe", "{dir}", "--ridge", "inf"], "--ridge"),
    (["probe", "{dir}", "--ridge", "nan"], "--ridge"),
    (["probe", "{dir}", "--seed", "-3"], "--seed"),
    (["train", "{toml}", "--steps", "0"], "--steps"),
    (["train", "{toml}", "--steps", "1e3"], "--steps"),
    (["recover", "{rec}", "--seeds", "0"], "--seeds"),
    (["run", "{pipe}", "--workers", "-1"], "--workers"),
    (["sweep", "{sweep}", "--workers", "-1"], "--workers"),
    (["construct", "--context", "0"], "--context"),
    (["construct", "--context", "2.5"], "--context"),
]


@pytest.mark.parametrize("argv,flag", RANGES, ids=[" ".join(a) for a, _ in RANGES])
def test_a_flag_out_of_range_is_one_line_naming_it(lab, capsys, argv, flag):
    status, line, unchanged = attempt(lab, capsys, argv)
    assert status == 2 and unchanged and f"argument {flag}:" in line, line


def test_a_usage_error_is_one_line_too(lab, capsys):
    for argv, needle in ((["nosuch"], "invalid choice: 'nosuch'"), (["train"], "config")):
        status, line, unchanged = attempt(lab, capsys, argv)
        assert status == 2 and unchanged and needle in line, line


def test_help_still_prints_and_exits_0(capsys):
    assert main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: interp ")


# ----------------------------------------------------------------------------- --device
DEVICE_COMMANDS = [["describe"], ["train", "{toml}"], ["cache", "{dir}"], ["probe", "{dir}"], ["compare", "{dir}"],
                   ["recover", "{rec}"], ["run", "{pipe}"], ["sweep", "{sweep}"], ["bench", "--suite", "hmm"]]


@pytest.mark.parametrize("device", ["foo", "meta", "cuda:99"])
@pytest.mark.parametrize("argv", DEVICE_COMMANDS, ids=[a[0] for a in DEVICE_COMMANDS])
def test_an_unknown_device_is_one_line_naming_the_flag(lab, capsys, argv, device):
    status, line, unchanged = attempt(lab, capsys, [*argv, "--device", device])
    assert status == 2 and unchanged and "--device" in line, line


# ----------------------------------------------------------------------------- --out that is a file
OUTS = [["train", "{toml}", "--out"], ["compare", "{dir}", "--out"], ["recover", "{rec}", "--out"],
        ["run", "{pipe}", "--out"], ["run", "{pipe}", "--figures"], ["sweep", "{sweep}", "--out"],
        ["construct", "--out"]]


@pytest.mark.parametrize("argv", OUTS, ids=[" ".join(a) for a in OUTS])
def test_an_output_folder_that_is_a_file_is_refused(lab, capsys, argv):
    status, line, unchanged = attempt(lab, capsys, [*argv, "{file}"])
    assert status == 2 and unchanged and f"{argv[-1]} {lab / 'afile'} is a file, not a folder" in line, line


def test_figures_out_that_is_a_file_is_refused(lab, capsys):
    from interp.io import write_json
    from interp.pipeline.pipeline import load_pipeline_config
    from interp.rundir import PIPELINE

    write_json(lab / "pipe" / PIPELINE, load_pipeline_config(lab / "pipe.toml").to_dict())
    status, line, unchanged = attempt(lab, capsys, ["figures", str(lab / "pipe"), "--out", "{file}"])
    assert status == 2 and unchanged and f"--out {lab / 'afile'} is a file, not a folder" in line, line


def test_an_output_folder_inside_a_file_is_one_line(lab, capsys):
    status, line, unchanged = attempt(lab, capsys, ["train", "{toml}", "--out", str(lab / "afile" / "run")])
    assert status == 2 and unchanged and f"cannot access {lab / 'afile' / 'run'}: Not a directory" in line, line


# ----------------------------------------------------------------------------- --param
PARAMS = [
    (["describe", "--param", "x=1e999"], "--param x=1e999"),
    (["describe", "--param", "x=-1e999"], "--param x=-1e999"),
    (["describe", "--param", "x=nan"], "x"),
    (["describe", "--param", "x=abc"], "x"),
    (["describe", "--param", "x=[0.1]"], "x"),
    (["describe", "--param", "x=True"], "x"),
    (["describe", "--param", "x=0.1", "--param", "x=0.2"], "--param x is given twice"),
    (["describe", "--param", "y=1"], "'y'"),
    (["describe", "--param", "x"], "--param expects KEY=VALUE"),
    (["describe", "--process", "random", "--param", "n_states=2.5"], "n_states"),
    (["describe", "--process", "random", "--param", "seed=-1"], "seed=-1"),
    (["construct", "--param", "x=1e999"], "--param x=1e999"),
    (["construct", "--param", "x=nan"], "x"),
    (["construct", "--param", "a=[1, 2]"], "a"),
]


@pytest.mark.parametrize("argv,needle", PARAMS, ids=[" ".join(a) for a, _ in PARAMS])
def test_a_bad_process_parameter_is_one_line_naming_it(lab, capsys, argv, needle):
    status, line, unchanged = attempt(lab, capsys, argv)
    assert status == 2 and unchanged and needle in line, line


# ----------------------------------------------------------------------------- the file system refuses
@pytest.mark.parametrize("argv", [["train", "{toml}", "--out"], ["construct", "--out"]], ids=["train", "construct"])
def test_a_read_only_output_folder_is_one_line_naming_the_path(lab, capsys, monkeypatch, argv):
    ro = lab / "ro"
    ro.mkdir()
    out = ro / "run"
    if os.geteuid() == 0:  # root writes through chmod: refuse the renames that publish every file instead

        def replace(src, dst, *args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(src), None, str(dst))

        monkeypatch.setattr(os, "replace", replace)
        verb, reason = "cannot write", os.strerror(errno.EROFS)
    else:
        ro.chmod(0o555)
        verb, reason = "cannot access", os.strerror(errno.EACCES)
    try:
        before = snapshot(lab)
        assert main(fill([*argv, str(out)], lab)) == 1
        line = one_error_line(capsys)
        after = snapshot(lab)
    finally:
        ro.chmod(0o755)
    # the path that failed: the output or (construct builds beside it, then renames) a folder next to it
    assert line.startswith(f"interp: error: {verb} {ro}{os.sep}") and line.endswith(f": {reason}"), line
    assert files(after) == files(before)  # no file, whole or half (an empty folder is all root could leave)


@pytest.mark.parametrize("where", ["interp.io.atomic_write_bytes", "os.fsync"])
def test_a_full_disk_is_one_line_naming_the_output_and_leaves_no_partial_file(lab, capsys, monkeypatch, where):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(where, full)
    out = lab / "run"
    before = snapshot(lab)
    assert main(fill(["train", "{toml}", "--out", str(out)], lab)) == 1
    line = one_error_line(capsys)
    if where == "os.fsync":  # inside an atomic write, which names the file it was writing
        assert line.startswith(f"interp: error: cannot write {out}{os.sep}"), line
        assert line.endswith(f": {os.strerror(errno.ENOSPC)}"), line
    else:  # an error that names no file: the command's output folder
        assert line == f"interp: error: cannot write under {out}: {os.strerror(errno.ENOSPC)}"
    assert files(snapshot(lab)) == files(before)


def test_a_failed_stage_is_one_line(lab, capsys, monkeypatch):
    import interp.cli as cli
    from interp.pipeline.pipeline import StageError
    from interp.studies.sweep import SweepError

    for error in (StageError("stage 'probe' failed: ValueError: boom"), SweepError("1 of 4 runs failed: x=0.15")):
        def fail(args, error=error):
            raise error

        monkeypatch.setattr(cli, "cmd_run", fail)
        status, line, unchanged = attempt(lab, capsys, ["run", "{pipe}"])
        assert status == 2 and unchanged and str(error) in line, line


# ----------------------------------------------------------------------------- a fast start
def test_help_imports_neither_torch_nor_the_lab():
    code = ("import sys; from interp.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'interp.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['interp.cli']"
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "interp", "--help"], capture_output=True,
                         text=True, check=True)
    assert run.stdout.startswith("usage: interp ")
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "interp.cli" in imported
    assert not {m for m in imported if m.split(".")[0] in ("torch", "numpy", "transformer_lens")}, imported


# ----------------------------------------------------------------------------- progress, output to a file
def test_probing_reports_each_hook_and_the_causal_check(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import train_tiny

    run = train_tiny(tmp_path, "transformer")
    capsys.readouterr()
    assert main(["probe", str(run), "--causal-points", "50"]) == 0
    err = capsys.readouterr().err.splitlines()
    hooks = [line for line in err if ": probe " in line]
    assert hooks and hooks[-1].endswith(f"probe {len(hooks)}/{len(hooks)}: all_layers"), err
    assert any("causal check there at 50 points" in line for line in err), err
    assert any("causal check in" in line for line in err), err


def test_recovery_reports_each_seed(lab, capsys):
    assert main(["recover", str(lab / "study.toml"), "--out", str(lab / "study")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if " of 2)" in line] == ["recovery: seed 0 (1 of 2)", "recovery: seed 1 (2 of 2)"]
    assert sum(" methods fitted in " in line for line in err) == 2, err


def test_figure_drawing_reports_each_figure(tmp_path):
    from interp.figures.paper import FIGURES, FigureInputs, make_figures

    lines = []
    make_figures(FigureInputs(), tmp_path / "figs", command="test", log=lines.append)
    assert [line.split()[2] for line in lines] == list(FIGURES)
    assert all("not drawn" in line for line in lines), lines
