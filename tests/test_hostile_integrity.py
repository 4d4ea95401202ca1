"""Hostile inputs, integrity (issue 20, item 4): damaged weights, shards, probes and checkpoints are caught when
read, each with one error line naming the file, and no interrupted build leaves a temporary folder behind."""

import json
import shutil
from pathlib import Path

import pytest

import interp.interpret.cache as cache_module
import interp.training.trainer as trainer_module
from interp.cli import main
from interp.interpret.analyse import load_probe_result, load_probe_weights
from interp.interpret.cache import build_cache, cache_is_fresh
from interp.io import read_jsonl, read_tensors, write_json
from interp.rundir import IntegrityError, Manifest, temporary_folder
from interp.training.checkpoint import checkpoint_problem, latest_intact_checkpoint, list_checkpoints, load_model


def flip_last_byte(path: Path) -> None:
    """One bit-flipped byte in the tensor data: the file still parses, only its SHA-256 tells."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def error_line(capsys) -> str:
    """The one error line, last on stderr (progress lines may come before it), with no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("interp: error:")]
    assert len(lines) == 1 and err.splitlines()[-1] == lines[0] and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def run(runs, tmp_path) -> Path:
    """A copy of a finished tiny run, without its cache."""
    path = tmp_path / "run"
    shutil.copytree(runs["fixed_attention"], path, ignore=shutil.ignore_patterns("cache"))
    return path


# ------------------------------------------------------------------ weights
@pytest.mark.parametrize("command", ["cache", "probe"])
def test_a_bit_flipped_model_is_refused_in_one_line_naming_it(run, capsys, command):
    weights = run / "model.safetensors"
    flip_last_byte(weights)
    read_tensors(weights)  # still a readable file
    before = snapshot(run)
    assert main([command, str(run)]) == 2
    assert error_line(capsys) == (f"interp: error: {weights} does not match the SHA-256 recorded in "
                                  f"{run / 'manifest.json'} (corrupt or edited); retrain with --force")
    assert snapshot(run) == before and not list(run.glob(".cache*"))


def test_an_edited_model_json_is_refused_and_a_bare_checkpoint_is_not(run, capsys):
    ckpt = list_checkpoints(run)[-1]
    load_model(ckpt)  # a checkpoint folder has no manifest record: its own checksums hold
    meta = json.loads((run / "model.json").read_text())
    write_json(run / "model.json", {**meta, "n_ctx": meta["n_ctx"]})  # same content, rewritten: still intact
    load_model(run)
    (run / "model.json").write_text(json.dumps(meta, indent=4))  # same meaning, other bytes
    with pytest.raises(IntegrityError, match="model.json does not match the SHA-256"):
        load_model(run)


# ------------------------------------------------------------------ cache shards
@pytest.mark.parametrize("damage", ["truncate", "delete", "edit"])
def test_a_damaged_shard_is_rebuilt_by_interp_cache_and_probe_then_works(run, capsys, damage):
    build_cache(run, shard_size=30)  # 81 sequences (the four trained positions of context 5): 3 shards
    shards = sorted((run / "cache").glob("shard_*.safetensors"))
    assert len(shards) == 3 and cache_is_fresh(run)
    shard = shards[-1]
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-10])
    elif damage == "delete":
        shard.unlink()
    else:
        flip_last_byte(shard)
    assert not cache_is_fresh(run)
    capsys.readouterr()
    assert main(["cache", str(run)]) == 0
    out = capsys.readouterr().out
    assert "up to date" not in out and out.startswith(f"{run / 'cache'}: 81 sequences")
    assert cache_is_fresh(run)
    assert main(["probe", str(run), "--causal-points", "20"]) == 0
    assert load_probe_result(run) is not None


def test_a_cache_whose_record_misses_a_shard_is_not_fresh(run, capsys):
    build_cache(run, shard_size=30)
    manifest = Manifest(run)
    entries = manifest.entries()
    del entries["cache"]["files"]["cache/shard_00002.safetensors"]  # a record that cannot vouch for the shard
    write_json(manifest.path, entries)
    assert not cache_is_fresh(run)
    assert main(["cache", str(run)]) == 0
    assert "up to date" not in capsys.readouterr().out
    assert "cache/shard_00000.safetensors" in Manifest(run).entry("cache")["files"]
    assert main(["cache", str(run)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_a_shard_read_without_the_up_front_check_is_still_checked(run):
    build_cache(run, shard_size=30)
    shard = run / "cache" / "shard_00001.safetensors"
    flip_last_byte(shard)
    cache = cache_module.load_cache(run, check=False)  # as `ensure_cache` loads a cache it has just checked
    with pytest.raises(IntegrityError) as err:
        cache["blocks.0.hook_resid_post"]
    assert str(err.value) == (f"{shard} does not match the SHA-256 recorded in {run / 'manifest.json'} (corrupt or "
                              f"edited); rebuild it with `interp cache {run} --force`")


# ------------------------------------------------------------------ probes
def test_a_bit_flipped_probe_is_refused_when_read_and_refitted(run, capsys):
    assert main(["probe", str(run), "--causal-points", "20"]) == 0
    weights = run / "probe.safetensors"
    good = weights.read_bytes()
    flip_last_byte(weights)
    with pytest.raises(IntegrityError) as err:
        load_probe_weights(run)
    assert str(err.value) == (f"{weights} does not match the SHA-256 recorded in {run / 'manifest.json'} (corrupt "
                              f"or edited); refit the probes with `interp probe {run}`")
    assert load_probe_result(run) is None  # stale: `interp compare` fits the probes again
    assert main(["probe", str(run), "--causal-points", "20"]) == 0
    assert weights.read_bytes() == good and load_probe_result(run) is not None


# ------------------------------------------------------------------ checkpoints
CONFIG = ('[process]\nname = "mess3"\n\n[model]\nfamily = "fixed_attention"\nd_model = 8\nd_head = 8\n\n'
          '[train]\ncontext = 6\nsteps = 12\nbatch_size = 16\neval_sequences = 64\neval_every = 4\n'
          'checkpoint_every = 4\n')


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    (root / "tiny.toml").write_text(CONFIG)
    assert main(["train", str(root / "tiny.toml"), "--out", str(root / "run")]) == 0
    return root / "run"


def crashed_before_the_end(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A run killed while saving its step-12 checkpoint: it holds checkpoints 4 and 8 and no final weights."""
    (tmp_path / "tiny.toml").write_text(CONFIG)
    real_save = trainer_module.save_checkpoint

    def save_or_crash(run_dir, step, *args, **kwargs):
        if step == 12:
            raise Crash
        return real_save(run_dir, step, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(trainer_module, "save_checkpoint", save_or_crash)
        with pytest.raises(Crash):
            main(["train", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "run")])
    run_dir = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_0000004", "step_0000008"]
    return tmp_path / "tiny.toml", run_dir


@pytest.mark.parametrize("damage", ["flip model", "delete optimizer", "truncate state", "torn checksums"])
def test_resume_skips_a_corrupt_newest_checkpoint_and_ends_bit_identical(tmp_path, monkeypatch, capsys,
                                                                         uninterrupted, damage):
    config, run_dir = crashed_before_the_end(tmp_path, monkeypatch)
    newest = list_checkpoints(run_dir)[-1]
    if damage == "flip model":
        flip_last_byte(newest / "model.safetensors")
    elif damage == "delete optimizer":
        (newest / "optimizer.safetensors").unlink()
    elif damage == "truncate state":
        (newest / "state.json").write_bytes((newest / "state.json").read_bytes()[:-20])
    else:
        (newest / "checksums.json").write_text('{"model.safetensors": ')
    why = checkpoint_problem(newest)
    assert why is not None and str(newest) in why
    assert latest_intact_checkpoint(run_dir) == list_checkpoints(run_dir)[0]
    stale = run_dir / "checkpoints" / ".tmp_killed"  # a checkpoint a killed process was writing
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    capsys.readouterr()
    assert main(["train", str(config), "--out", str(run_dir), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"skipping checkpoint {newest}: " in err and "resuming tiny from step 4" in err
    assert not stale.exists()
    a, b = read_tensors(uninterrupted / "model.safetensors"), read_tensors(run_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    rows = [[(r["step"], r["eval_loss"]) for r in read_jsonl(d / "metrics.jsonl")] for d in (uninterrupted, run_dir)]
    assert rows[0] == rows[1] and [step for step, _ in rows[1]] == [0, 4, 8, 12]


def test_a_checkpoint_written_before_checksums_counts_as_intact_if_it_loads(tmp_path, monkeypatch, capsys,
                                                                           uninterrupted):
    config, run_dir = crashed_before_the_end(tmp_path, monkeypatch)
    for ckpt in list_checkpoints(run_dir):
        (ckpt / "checksums.json").unlink()
    newest = list_checkpoints(run_dir)[-1]
    assert latest_intact_checkpoint(run_dir) == newest
    assert main(["train", str(config), "--out", str(run_dir), "--resume"]) == 0
    assert "resuming tiny from step 8" in capsys.readouterr().err
    a, b = read_tensors(uninterrupted / "model.safetensors"), read_tensors(run_dir / "model.safetensors")
    assert all(a[k].equal(b[k]) for k in a)


def test_an_unfinished_run_loads_its_newest_intact_checkpoint(tmp_path, monkeypatch):
    _, run_dir = crashed_before_the_end(tmp_path, monkeypatch)
    older, newest = list_checkpoints(run_dir)
    flip_last_byte(newest / "model.safetensors")
    with pytest.raises(IntegrityError, match="model.safetensors does not match the SHA-256 recorded in .*checksums"):
        load_model(newest)
    model, _ = load_model(run_dir)
    expected = read_tensors(older / "model.safetensors")
    assert all(v.equal(expected[k]) for k, v in model.state_dict().items() if k in expected)
    flip_last_byte(older / "optimizer.safetensors")
    with pytest.raises(IntegrityError, match="every checkpoint in .* is corrupt or incomplete; retrain with --force"):
        load_model(run_dir)


# ------------------------------------------------------------------ temporary folders
def test_an_interrupted_cache_build_leaves_no_temporary_folder(run, capsys, monkeypatch):
    build_cache(run)
    before = snapshot(run)
    calls = []
    real_write = cache_module.write_tensors

    def write_then_interrupt(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the first shard, after data.safetensors
            raise KeyboardInterrupt
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(cache_module, "write_tensors", write_then_interrupt)
    assert main(["cache", str(run), "--force"]) == 130
    assert len(calls) == 2
    assert snapshot(run) == before  # the old cache, and nothing else
    assert not [p for p in run.iterdir() if p.name.startswith(".cache")]

    def fail(path, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module, "write_tensors", fail)
    with pytest.raises(OSError, match="No space left"):
        build_cache(run)
    assert snapshot(run) == before
    assert not [p for p in run.iterdir() if p.name.startswith(".cache")]


def test_a_killed_build_s_temporary_folders_are_removed_by_the_next_and_a_live_one_is_kept(run, capsys):
    killed = run / ".cache.tmp_killed"
    (killed / "nested").mkdir(parents=True)
    (killed / "data.safetensors").write_bytes(b"x" * 1000)
    swapped = run / ".cache.old_killed" / "cache"
    swapped.mkdir(parents=True)
    (swapped / "cache.json").write_text("{}")
    mine = run / ".cache_notes"  # not a name the cache build uses
    mine.mkdir()
    with temporary_folder(run, ".cache.tmp_") as live:  # another build, still running
        assert main(["cache", str(run)]) == 0
        assert live.is_dir()
    assert "left by an interrupted build" in capsys.readouterr().err
    assert not killed.exists() and not swapped.parent.exists() and mine.is_dir()
    assert cache_is_fresh(run)
