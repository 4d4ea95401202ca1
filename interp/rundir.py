"""Where outputs live on disk, and whether an output is up to date.

A run folder (``runs/<name>/``; a model trained by interp.training, or the hand-set construction)::

    config.json          {"config": the resolved config, "config_hash": its fingerprint}
    metrics.jsonl        one line per evaluation (training only)
    checkpoints/step_NNNNNNN/   model.safetensors, model.json, optimizer.safetensors, state.json
    model.safetensors, model.json, result.json   the finished model, its config, its numbers
    cache/               the activation cache: cache.json, data.safetensors, shard_NNNNN.safetensors
    probe.json, probe.safetensors   belief probes
    manifest.json        what each output above was made from (below)

A pipeline folder holds ``pipeline.json``, ``summary.json``, ``models/<family>/``, ``construction/``,
``geometry/<run>/``, ``recovery/`` and ``compare/`` (:class:`PipelineLayout`); a sweep folder ``sweep.json``,
``runs/<point>/``, ``results.json`` and ``results.md``; a recovery study ``config.json``,
``seeds/seed_NNNN.json`` and ``recovery.json``. Every such folder keeps its own ``manifest.json``.

Is an output up to date? Its inputs (a config hash, a weights' SHA-256, the states of the runs it reads)
are reduced to a fingerprint (:func:`interp.io.fingerprint`), and when the output is written the folder's
manifest records, under the output's name, that fingerprint and the SHA-256 of each file written::

    {"probe": {"fingerprint": "...", "inputs": {...}, "files": {"probe.json": "<sha256>", ...}}, ...}

The output is fresh when its record exists, the fingerprint of its inputs now is the recorded one, and every
recorded file exists with the recorded bytes; anything else (new inputs, a missing, truncated or edited file,
no record at all) means it is made again.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from interp.io import fingerprint, read_json, sha256_file, write_json

# ----------------------------------------------------------------------------- a run folder
CONFIG = "config.json"
METRICS = "metrics.jsonl"
RESULT = "result.json"
MODEL = "model.safetensors"
MODEL_META = "model.json"
CHECKPOINTS = "checkpoints"
OPTIMIZER = "optimizer.safetensors"  # in a checkpoint, beside MODEL and MODEL_META
STATE = "state.json"  # in a checkpoint: step, RNG state, optimiser scalars
CHECKPOINT_PREFIX = "step_"
CACHE = "cache"
CACHE_META = "cache.json"  # inside CACHE
CACHE_DATA = "data.safetensors"  # inside CACHE
PROBE = "probe.json"
PROBE_WEIGHTS = "probe.safetensors"
MANIFEST = "manifest.json"

# names of outputs in a manifest
TRAINING, ACTIVATIONS, PROBES, CONSTRUCTION = "train", "cache", "probe", "construction"

# ----------------------------------------------------------------------------- pipelines, sweeps, studies
PIPELINE = "pipeline.json"
SUMMARY = "summary.json"
COMPARE_JSON, COMPARE_MD = "compare.json", "compare.md"
COMPARE_STAGE, FIGURES_STAGE = "compare", "figures"
SWEEP = "sweep.json"
SWEEP_RUNS = "runs"
RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
RECOVERY = "recovery.json"
SEEDS = "seeds"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:07d}"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def seed_file(out_dir: str | Path, seed: int) -> Path:
    """Where a recovery study keeps one seed's result."""
    return Path(out_dir) / SEEDS / f"seed_{seed:04d}.json"


def seed_output(seed: int) -> str:
    """A recovery seed's name in its study's manifest."""
    return f"seed {seed}"


@dataclass(frozen=True)
class PipelineLayout:
    root: Path

    def model(self, family: str) -> Path:
        return self.root / "models" / family

    @property
    def construction(self) -> Path:
        return self.root / "construction"

    def geometry(self, cfg) -> Path:
        return self.root / "geometry" / cfg.name

    @property
    def recovery(self) -> Path:
        return self.root / "recovery"

    @property
    def compare(self) -> Path:
        return self.root / "compare"


# ----------------------------------------------------------------------------- config.json
def write_config(folder: str | Path, config: dict) -> None:
    """``config.json``: the config and its fingerprint (a RunConfig's ``hash()``)."""
    write_json(Path(folder) / CONFIG, {"config": config, "config_hash": fingerprint(config)})


def read_config(folder: str | Path) -> dict:
    """The config saved in ``folder/config.json`` (folders written before it was wrapped hold it bare)."""
    data = read_json(Path(folder) / CONFIG)
    if isinstance(data, dict) and set(data) == {"config", "config_hash"}:
        return data["config"]
    return data


def training_inputs(cfg) -> dict:
    """What a finished training depends on: its whole RunConfig, through its hash."""
    return {"config_hash": cfg.hash()}


# ----------------------------------------------------------------------------- manifest
class Manifest:
    """``folder/manifest.json``: per output, the fingerprint of its inputs and the SHA-256 of its files.

    Several processes may record into one folder at once (recovery seeds in a pool): each update
    reads, changes and rewrites the file under an exclusive lock on the folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST

    def entries(self) -> dict:
        """Every record (none when the file is missing or unreadable: then nothing is fresh)."""
        try:
            data = read_json(self.path)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def entry(self, name: str) -> dict | None:
        rec = self.entries().get(name)
        return rec if isinstance(rec, dict) else None

    def stale_reason(self, name: str, inputs: Any) -> str | None:
        """Why output ``name`` is not up to date for ``inputs``; None when it is."""
        rec = self.entry(name)
        if rec is None:
            return f"{self.path} has no record of {name!r}"
        if rec.get("fingerprint") != fingerprint(inputs):
            return f"{name!r} was made from other inputs ({_changed(rec.get('inputs'), inputs)})"
        files = rec.get("files")
        if not isinstance(files, dict):
            return f"{self.path}: the record of {name!r} lists no files (corrupt?)"
        for rel, sha in files.items():
            path = self.folder / rel
            if not path.is_file():
                return f"{path} is missing"
            if sha256_file(path) != sha:
                return f"{path} changed after it was written"
        return None

    def is_fresh(self, name: str, inputs: Any) -> bool:
        return self.stale_reason(name, inputs) is None

    def record(self, name: str, inputs: Any, files: Iterable[str | Path], **extra) -> None:
        """Output ``name`` was just written from ``inputs``: its ``files`` (paths as opened, usually inside the
        folder) are hashed now and kept relative to the folder. ``extra`` is kept beside it for the reader."""
        hashed = {}
        for path in map(Path, files):
            hashed[Path(os.path.relpath(path, self.folder)).as_posix()] = sha256_file(path)
        rec = {"fingerprint": fingerprint(inputs), "inputs": inputs, "files": hashed, **extra}
        with self._locked():
            entries = self.entries()
            entries[name] = rec
            write_json(self.path, entries)

    def forget(self, name: str) -> None:
        """Drop a record (before its output is rewritten, so a crash midway leaves it stale)."""
        with self._locked():
            entries = self.entries()
            if entries.pop(name, None) is not None:
                write_json(self.path, entries)

    @contextmanager
    def _locked(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # no advisory locks here: records from concurrent writers may be lost (and redone)
            yield
            return
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _changed(old: Any, new: Any) -> str:
    """Name what differs between recorded and current inputs (the keys of two dicts where possible)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if fingerprint(old.get(k)) != fingerprint(new.get(k)))
        if keys:
            return "; ".join(f"its {k} was {_short(old.get(k))}, now {_short(new.get(k))}" for k in keys)
    return "the inputs' fingerprint differs"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_fresh(folder: str | Path, name: str, inputs: Any) -> bool:
    """Whether output ``name`` of ``folder`` is up to date for ``inputs`` (see :class:`Manifest`)."""
    return Manifest(folder).is_fresh(name, inputs)


def record(folder: str | Path, name: str, inputs: Any, files: Iterable[str | Path], **extra) -> None:
    Manifest(folder).record(name, inputs, files, **extra)


def recorded_outputs(folder: str | Path) -> dict:
    """A folder's outputs as its manifest records them (fingerprint and file hashes of each): what a later stage
    that reads them depends on."""
    return {name: {"fingerprint": rec.get("fingerprint"), "files": rec.get("files")}
            for name, rec in Manifest(folder).entries().items() if isinstance(rec, dict)}
