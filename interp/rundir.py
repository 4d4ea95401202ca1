"""Where outputs live on disk, and whether an output is up to date.

A run folder (``runs/<name>/``; a model trained by interp.training, or the hand-set construction)::

    config.json          {"config": the resolved config, "config_hash": its fingerprint}
    metrics.jsonl        one line per evaluation (training only)
    checkpoints/step_NNNNNNN/   model.safetensors, model.json, optimizer.safetensors, state.json
    model.safetensors, model.json, result.json   the finished model, its config, its numbers
    cache/               the activation cache: cache.json, data.safetensors, shard_NNNNN.safetensors
    probe.json, probe.safetensors   belief probes
    manifest.json        what each output above was made from (below)
    .interp              the mark of a folder the lab made: ``--force`` empties no other folder

A pipeline folder holds ``pipeline.json``, ``summary.json``, ``models/<family>/``, ``construction/``,
``geometry/<run>/``, ``recovery/`` and ``compare/`` (:class:`PipelineLayout`); a sweep folder ``sweep.json``,
``runs/<point>/``, ``results.json`` and ``results.md``; a recovery study ``config.json``,
``seeds/seed_NNNN.json`` and ``recovery.json``. Every such folder keeps its own ``manifest.json`` and mark, and
one process at a time writes it (:func:`writer`).

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
MARKER = ".interp"  # {"kind": ...}: the lab made this folder, so --force may empty it
LOCK = ".lock"  # held while one process updates the manifest (several record into one folder at once)

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


# ----------------------------------------------------------------------------- ownership and one writer
class FolderBusyError(ValueError):
    """Another process is writing the folder."""


class NotOurFolderError(ValueError):
    """A folder the lab did not create (and so will not delete)."""


def claim(folder: str | Path, kind: str) -> Path:
    """Create ``folder`` if needed and mark it as made by the lab (a ``.interp`` file naming its kind): only
    a marked folder is ever emptied by ``--force``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MARKER).is_file():
        write_json(folder / MARKER, {"kind": kind})
    return folder


def adopt(folder: str | Path, kind: str, signature: str) -> Path:
    """:func:`claim` a folder for output of ``kind``, unless it already holds someone else's files: a non-empty
    folder is taken over only if it bears the mark or ``signature`` (the file an older version of the lab
    wrote there first, e.g. ``pipeline.json``)."""
    folder = Path(folder)
    if folder.is_dir() and not is_claimed(folder) and not (folder / signature).is_file():
        others = sorted(p.name for p in folder.iterdir() if p.name not in (LOCK, MARKER))
        if others:
            raise NotOurFolderError(f"{folder} holds files interp did not write ({others[0]!r}, ...); "
                                    "choose a new or empty folder")
    return claim(folder, kind)


def is_claimed(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def clear(folder: str | Path) -> None:
    """Empty a folder the lab made (``--force``); the folder itself stays, so the writer lock held on it stays.
    Refused for a folder without the mark, or one holding the current directory."""
    import shutil

    folder = Path(folder)
    if not folder.exists():
        return
    if not is_claimed(folder):
        raise NotOurFolderError(f"{folder} was not made by interp (it has no {MARKER} file); "
                                "refusing to delete it: choose another output folder or remove it yourself")
    here, target = Path.cwd().resolve(), folder.resolve()
    if here == target or target in here.parents:
        raise NotOurFolderError(f"refusing to delete {folder}: it holds the current directory")
    for child in folder.iterdir():
        if child.name == LOCK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


@contextmanager
def writer(folder: str | Path):
    """Hold ``folder``'s writer lock (an advisory lock on the folder itself, so nothing is written to take it)
    for the block: a second writer is refused at once. The kernel drops the lock when its process ends, so a
    crash leaves nothing stuck."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotOurFolderError(f"{folder} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: one writer is the user's care
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusyError(f"{folder} is in use by another interp process; wait for it to finish or stop "
                                  "it") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


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

    def verify(self, name: str, *paths: str | Path, remedy: str) -> None:
        """Check files read as part of output ``name`` against the SHA-256 its record holds; a mismatch raises
        :class:`IntegrityError` naming the file and ``remedy``. A file without a record (no manifest, an output
        never recorded, a file the record does not list) is not checked: there is nothing to check it against."""
        rec = self.entry(name)
        files = rec.get("files") if rec is not None else None
        if not isinstance(files, dict):
            return
        for path in map(Path, paths):
            sha = files.get(Path(os.path.relpath(path, self.folder)).as_posix())
            if sha is None:
                continue
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing (recorded in {self.path}); {remedy}")
            if sha256_file(path) != sha:
                raise IntegrityError(f"{path} does not match the SHA-256 recorded in {self.path} (corrupt or edited); "
                                     f"{remedy}")

    @contextmanager
    def _locked(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # no advisory locks here: records from concurrent writers may be lost (and redone)
            yield
            return
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)  # not the folder: its writer holds that
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


# ----------------------------------------------------------------------------- integrity and temporary folders
class IntegrityError(ValueError):
    """A recorded file no longer has the bytes its manifest (or checkpoint) recorded."""


@contextmanager
def temporary_folder(parent: str | Path, prefix: str):
    """A new folder ``parent/<prefix>XXXXXXXX`` to build an output in (the caller renames it into place), removed
    if the block raises. While the block runs this process holds an advisory lock on it, so
    :func:`remove_stale_temporaries` tells a folder still being built from one a killed process left."""
    from interp.io import temp_dir

    Path(parent).mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(parent, prefix)
    fd = _lock_folder(tmp, block=True)
    try:
        yield tmp
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)  # closing releases the lock


def remove_stale_temporaries(parent: str | Path, *prefixes: str) -> list[Path]:
    """Remove the folders ``parent/<prefix>*`` that no live process holds (left by a killed build); return them.
    Without advisory locks on this platform nothing is removed (a live build cannot be told apart)."""
    import shutil

    parent, removed = Path(parent), []
    if not parent.is_dir():
        return removed
    for path in sorted(parent.iterdir()):
        if not (path.is_dir() and not path.is_symlink() and path.name.startswith(prefixes)):
            continue
        fd = _lock_folder(path, block=False)
        if fd is None:
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _lock_folder(path: Path, *, block: bool) -> int | None:
    """An open descriptor holding an exclusive advisory lock on folder ``path``; None when it is held elsewhere,
    gone, or locks are not available here."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        return None
    return fd
