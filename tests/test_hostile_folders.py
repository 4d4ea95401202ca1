"""Hostile use of output folders through the command line: --force on folders the lab did not make, two
writers on one folder, --resume with another --steps, file modes, and the compiled-kernel cache's trust."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from interp import cli
from interp.io import read_tensors, write_json
from interp.rundir import MODEL, FolderBusyError, claim, clear, writer


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root``: its bytes and mtime (what a refused command must leave alone)."""
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_config(folder: Path, name: str, *, steps: int = 4, schedule: str = "constant") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""
        name = "{name}"
        [process]
        name = "mess3"
        [model]
        family = "transformer"
        n_layers = 1
        n_heads = 1
        d_model = 8
        d_head = 8
        [train]
        context = 5
        steps = {steps}
        batch_size = 8
        eval_sequences = 16
        eval_every = 2
        checkpoint_every = 2
        schedule = "{schedule}"
        warmup_steps = 0
    """))
    return path


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("interp: error: "), err
    return err[0]


def test_force_refuses_a_folder_the_lab_did_not_make(tmp_path, capsys):
    cfg = write_config(tmp_path, "mine")
    own = tmp_path / "mine"
    own.mkdir()
    (own / "thesis.tex").write_text("years of work")
    before = tree(tmp_path)
    assert cli.main(["train", str(cfg), "--force"]) == 2
    assert "was not made by interp" in one_error(capsys)
    assert tree(tmp_path) == before


def test_force_refuses_the_folder_above_and_the_current_one(tmp_path, capsys, monkeypatch):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    cfg = write_config(tmp_path, "x")
    before = tree(tmp_path)
    for out in (str(tmp_path), str(tmp_path / "..")):
        assert cli.main(["train", str(cfg), "--force", "--out", out]) == 2
        one_error(capsys)
    assert tree(tmp_path) == before
    # even a marked folder is not emptied while it holds the current directory
    claim(tmp_path / "run", "run")
    (tmp_path / "run" / "keep.txt").write_text("x")
    monkeypatch.chdir(tmp_path / "run")
    with pytest.raises(ValueError, match="holds the current directory"):
        clear(tmp_path / "run")
    assert (tmp_path / "run" / "keep.txt").is_file()


def test_force_empties_a_run_folder_the_lab_made(tmp_path, capsys):
    cfg = write_config(tmp_path, "r")
    assert cli.main(["train", str(cfg)]) == 0
    (tmp_path / "r" / "left_over.txt").write_text("x")
    assert cli.main(["train", str(cfg), "--force"]) == 0
    assert not (tmp_path / "r" / "left_over.txt").exists()
    assert (tmp_path / "r" / MODEL).is_file()


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path, capsys):
    cfg = write_config(tmp_path, "busy")
    assert cli.main(["train", str(cfg)]) == 0
    before, _ = tree(tmp_path), capsys.readouterr()
    with writer(tmp_path / "busy"):  # another open of the lock file: as another process would hold it
        for extra in ([], ["--force"], ["--resume"]):
            assert cli.main(["train", str(cfg), *extra]) == 2
            assert "in use by another interp process" in one_error(capsys)
    assert tree(tmp_path) == before


def test_a_crashed_writer_leaves_no_stuck_lock(tmp_path):
    folder = tmp_path / "run"
    code = (f"from interp.rundir import writer\nimport os\nwith writer({str(folder)!r}):\n"
            "    print('held', flush=True)\n    os._exit(9)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 9 and "held" in proc.stdout
    with writer(folder):  # the kernel released it when the process died
        pass
    holder = subprocess.Popen([sys.executable, "-c", code.replace("os._exit(9)", "import time; time.sleep(60)")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusyError):
            with writer(folder):
                pass
    finally:
        holder.kill()
        holder.wait()
    with writer(folder):
        pass


def test_resume_with_more_steps_on_a_decaying_schedule_is_refused(tmp_path, capsys):
    cfg = write_config(tmp_path, "cos", steps=4, schedule="cosine")
    assert cli.main(["train", str(cfg)]) == 0
    before, _ = tree(tmp_path), capsys.readouterr()
    assert cli.main(["train", str(cfg), "--resume", "--steps", "6"]) == 2
    msg = one_error(capsys)
    assert "cosine" in msg and "--steps 4" in msg
    assert tree(tmp_path) == before


def test_resume_with_more_steps_on_a_constant_schedule_continues_it_exactly(tmp_path, capsys):
    short = write_config(tmp_path, "ext", steps=4)
    assert cli.main(["train", str(short)]) == 0
    assert cli.main(["train", str(short), "--resume", "--steps", "6"]) == 0
    straight = write_config(tmp_path, "straight", steps=6)
    assert cli.main(["train", str(straight)]) == 0
    a, b = read_tensors(tmp_path / "ext" / MODEL), read_tensors(tmp_path / "straight" / MODEL)
    assert a.keys() == b.keys()
    for k in a:  # the same machine, the same computation: bit-identical
        assert torch.equal(a[k], b[k]), k
    # fewer steps than a checkpoint already holds: refused
    capsys.readouterr()
    assert cli.main(["train", str(short), "--resume", "--steps", "3"]) == 2
    assert "checkpoint at step 6" in one_error(capsys)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_outputs_get_the_users_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        cfg = write_config(tmp_path, "modes")
        assert cli.main(["train", str(cfg)]) == 0
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "modes").rglob("*") if p.is_file()]
    dirs = [p for p in (tmp_path / "modes").rglob("*") if p.is_dir()]
    assert files and dirs
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p
    for p in dirs:
        assert p.stat().st_mode & 0o777 == 0o777 & ~mask, p


def test_the_kernel_cache_is_not_trusted_when_others_may_write_it(tmp_path, monkeypatch):
    from interp.hmm import native

    if native.compiler() is None:
        pytest.skip("no C++ compiler: no kernels are built or loaded")
    shared = tmp_path / "shared"
    (shared / f"interp-{os.getuid()}").mkdir(parents=True)
    for d in (shared, shared / f"interp-{os.getuid()}"):
        d.chmod(0o777)
    monkeypatch.setenv("INTERP_CACHE_DIR", str(shared))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(shared))
    with pytest.raises(RuntimeError, match="writable by others"):
        native._build(native.compiler())
    assert not any(p.suffix == ".so" for p in shared.rglob("*"))
    # a private folder is used; a library in it that others may write is passed over for the fallback
    private, fallback = tmp_path / "private", tmp_path / "tmp"
    monkeypatch.setenv("INTERP_CACHE_DIR", str(private))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(fallback))
    built = native._build(native.compiler())
    assert built.parent == private and built.is_file()
    built.chmod(0o777)
    rebuilt = native._build(native.compiler())
    assert rebuilt.parent == fallback / f"interp-{os.getuid()}" and rebuilt.is_file()


def test_a_recovery_study_will_not_take_over_a_foreign_folder(tmp_path, capsys):
    cfg = tmp_path / "study.toml"
    cfg.write_text('seeds = [0]\n[data]\nn_train = 8\nn_heldout = 8\nlength = 4\n')
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.md").write_text("x")
    write_json(out / "other.json", {"a": 1})
    before = tree(tmp_path)
    for extra in ([], ["--force"]):
        assert cli.main(["recover", str(cfg), "--out", str(out), *extra]) == 2
        one_error(capsys)
    assert tree(tmp_path) == before
