"""The one freshness mechanism: inputs -> fingerprint -> manifest; the hash helpers; config.json's one shape."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import shutil
import time

import pytest

from interp import rundir
from interp.io import fingerprint, read_json, sha256_file, write_json
from interp.rundir import Manifest
from interp.studies.jobs import probed, resumable, trained


def test_hash_helpers_match_hashlib_on_canonical_json(tmp_path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000  # several read blocks
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    obj = {"b": [1, 2.5, None], "a": {"y": "s", "x": True}}
    canonical = '{"a": {"x": true, "y": "s"}, "b": [1, 2.5, null]}'
    assert fingerprint(obj) == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert fingerprint(obj) == fingerprint(json.loads(json.dumps(obj)))  # key order is irrelevant


def test_a_remembered_digest_never_hides_a_change(tmp_path, monkeypatch):
    import interp.io as io

    monkeypatch.setattr(io, "_DIGESTS", {})
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 1000)
    sha256_file(path)
    assert io._DIGESTS == {}  # just written: a same-size rewrite could keep its timestamps, so not remembered
    monkeypatch.setattr(io, "_SETTLED_NS", -10**18)  # as if every file had been left alone long enough
    assert sha256_file(path) == hashlib.sha256(b"a" * 1000).hexdigest() and len(io._DIGESTS) == 1
    assert sha256_file(path) == hashlib.sha256(b"a" * 1000).hexdigest()  # reused
    for data in (b"a" * 999 + b"b", b"a" * 10):  # same size, then truncated: each write changes the ctime
        time.sleep(0.05)  # past the file system's timestamp tick (the real rule waits _SETTLED_NS)
        with open(path, "r+b") as f:
            f.truncate(0)
            f.write(data)
        assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_config_hash_is_the_fingerprint_of_the_config(runs):
    from interp.training.runconfig import run_config_from_dict

    saved = read_json(runs["ssm"] / rundir.CONFIG)
    cfg = run_config_from_dict(saved["config"])
    assert saved["config_hash"] == cfg.hash() == fingerprint(cfg.to_dict())


def write_output(folder, text: str = "out") -> list:
    (folder / "a.txt").write_text(text)
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "b.bin").write_bytes(text.encode() * 3)
    return [folder / "a.txt", folder / "sub" / "b.bin"]


def test_unchanged_inputs_and_files_are_fresh(tmp_path):
    m = Manifest(tmp_path)
    assert not m.is_fresh("out", {"k": 1})  # nothing recorded yet
    m.record("out", {"k": 1, "w": "abc"}, write_output(tmp_path), seconds=1.5)
    assert m.is_fresh("out", {"w": "abc", "k": 1})
    assert rundir.is_fresh(tmp_path, "out", {"k": 1, "w": "abc"})
    rec = read_json(tmp_path / rundir.MANIFEST)["out"]
    assert rec["files"] == {"a.txt": sha256_file(tmp_path / "a.txt"), "sub/b.bin": sha256_file(tmp_path / "sub" / "b.bin")}
    assert rec["fingerprint"] == fingerprint({"k": 1, "w": "abc"}) and rec["seconds"] == 1.5


def test_a_changed_input_makes_the_output_stale_and_names_it(tmp_path):
    m = Manifest(tmp_path)
    m.record("out", {"k": 1, "w": "abc"}, write_output(tmp_path))
    assert not m.is_fresh("out", {"k": 2, "w": "abc"})
    assert not m.is_fresh("out", {"k": 1})
    why = m.stale_reason("out", {"k": 1, "w": "abd"})
    assert "its w was 'abc', now 'abd'" in why and "its k" not in why


@pytest.mark.parametrize("damage", ["truncated", "edited", "same size", "deleted"])
def test_a_damaged_output_file_makes_it_stale(tmp_path, damage):
    m = Manifest(tmp_path)
    m.record("out", {"k": 1}, write_output(tmp_path, "some output"))
    path = tmp_path / "sub" / "b.bin"
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:-1])
    elif damage == "edited":
        path.write_bytes(data + b"x")
    elif damage == "same size":
        path.write_bytes(data[:-1] + b"!")
    else:
        path.unlink()
    assert not m.is_fresh("out", {"k": 1})
    assert str(path) in m.stale_reason("out", {"k": 1})
    if damage != "deleted":
        path.write_bytes(data)  # the recorded bytes back: fresh again
        assert m.is_fresh("out", {"k": 1})


def test_records_are_independent_and_forgotten_one_at_a_time(tmp_path):
    m = Manifest(tmp_path)
    files = write_output(tmp_path)
    m.record("one", {"k": 1}, files[:1])
    m.record("two", {"k": 2}, files[1:])
    m.forget("one")
    assert not m.is_fresh("one", {"k": 1}) and m.is_fresh("two", {"k": 2})
    (tmp_path / rundir.MANIFEST).write_text('{"two": ')  # a torn manifest: nothing is fresh, nothing crashes
    assert not m.is_fresh("two", {"k": 2}) and m.entries() == {}


def test_files_outside_the_folder_are_recorded_relative_to_it(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "f.png").write_bytes(b"png")
    m = Manifest(tmp_path / "root")
    m.record("figures", {"k": 1}, [tmp_path / "figs" / "f.png"])
    assert list(m.entry("figures")["files"]) == ["../figs/f.png"]
    assert m.is_fresh("figures", {"k": 1})
    (tmp_path / "figs" / "f.png").write_bytes(b"other")
    assert not m.is_fresh("figures", {"k": 1})


def _record_many(folder: str, worker: int) -> None:
    from pathlib import Path

    m = Manifest(folder)
    for i in range(20):
        path = Path(folder) / f"w{worker}_{i}.txt"
        path.write_text(f"{worker} {i}")
        m.record(f"w{worker}_{i}", {"i": i}, [path])


def test_concurrent_writers_lose_no_record(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    m = Manifest(tmp_path)
    assert len(m.entries()) == 60
    assert all(m.is_fresh(f"w{w}_{i}", {"i": i}) for w in range(3) for i in range(20))


def test_config_json_has_one_shape_and_bare_configs_are_still_read(tmp_path):
    rundir.write_config(tmp_path, {"name": "x", "seed": 3})
    assert read_json(tmp_path / rundir.CONFIG) == {"config": {"name": "x", "seed": 3},
                                                    "config_hash": fingerprint({"name": "x", "seed": 3})}
    assert rundir.read_config(tmp_path) == {"name": "x", "seed": 3}
    write_json(tmp_path / rundir.CONFIG, {"name": "x", "seed": 3})  # older folders
    assert rundir.read_config(tmp_path) == {"name": "x", "seed": 3}


# ------------------------------------------------------------------ a trained run
def test_a_training_is_fresh_until_its_config_or_files_change(runs, tmp_path):
    from dataclasses import replace

    from interp.training.runconfig import run_config_from_dict

    run = tmp_path / "run"
    shutil.copytree(runs["belief_net"], run, ignore=shutil.ignore_patterns("cache"))
    cfg = run_config_from_dict(rundir.read_config(run))
    assert trained(cfg, run) and resumable(cfg, run)
    longer = cfg.with_steps(cfg.train.steps + 1)
    assert not trained(longer, run) and resumable(longer, run)  # more steps: resumed, not reused
    assert not trained(replace(cfg, seed=cfg.seed + 1), run)
    result = (run / rundir.RESULT).read_bytes()
    (run / rundir.RESULT).write_bytes(result[: len(result) // 2])
    assert not trained(cfg, run)
    (run / rundir.RESULT).write_bytes(result)
    assert trained(cfg, run)
    (run / rundir.MODEL).unlink()
    assert not trained(cfg, run)


def test_probes_go_stale_when_the_probe_files_change(runs, tmp_path):
    from interp.interpret.analyse import load_probe_result, probe_run

    run = tmp_path / "run"
    shutil.copytree(runs["ssm"], run, ignore=shutil.ignore_patterns("cache"))
    assert not probed(run)
    out = probe_run(run, causal_points=20)
    assert probed(run) and load_probe_result(run) == out
    weights = (run / rundir.PROBE_WEIGHTS).read_bytes()
    (run / rundir.PROBE_WEIGHTS).write_bytes(weights[:-8])  # truncated weights: the probes are redone
    assert not probed(run) and load_probe_result(run) is None
