"""Artefacts on disk: safetensors for tensors, JSON for everything else; every write is atomic.

A write goes to a temporary file in the same folder, is flushed and fsynced, then renamed
over the target, so a crash leaves either the old file or the new one, never half of one.
The two hashes every freshness check uses live here too: :func:`sha256_file` and :func:`fingerprint`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save


def _umask() -> int:
    """The process's umask, read without changing it where the kernel reports it (changing it, even for an
    instant, races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open`` would give a new file (mkstemp's are 0600: outputs others may read)."""
    return 0o666 & ~_umask()


def temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new temporary folder in ``parent`` (made whole and renamed into place by the caller) with the mode
    ``mkdir`` would give it, not mkdtemp's 0700."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


_DIGESTS: dict[tuple, str] = {}  # (device, inode, size, mtime, ctime) -> SHA-256, for files left alone
_SETTLED_NS = 2_000_000_000


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in blocks, so large caches do not sit in memory).

    A process that reads the same unchanged file again (the pipeline's compare and figure stages read every
    activation cache) reuses the digest. It is remembered only for a file whose last change is older than
    ``_SETTLED_NS``: a write within the file system's timestamp granularity of the previous one could leave
    size, mtime and ctime as they were (git's "racily clean" rule); any later write changes the ctime."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _SETTLED_NS:
        _DIGESTS[key] = h.hexdigest()
    return h.hexdigest()


def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-like object: SHA-256 of its canonical JSON (sorted keys; anything JSON
    cannot hold is written as ``str``), first 16 hex digits."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # POSIX; Windows has no such modes
            os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:  # a full disk names no file: name the one written
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (corrupt?): {err}") from err


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line (metrics logs: a torn last line is skipped by :func:`read_jsonl`)."""
    with open(path, "a") as f:
        f.write(json.dumps(obj, sort_keys=True) + "\n")
        f.flush()


def write_jsonl(path: str | os.PathLike, rows: list[Any]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash mid-write
    return rows


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(data, metadata=metadata))


def read_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    try:
        tensors = load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (corrupt?): {err}") from err
    return {k: v.to(device) for k, v in tensors.items()}
