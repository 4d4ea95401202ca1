"""Strict loading of frozen config dataclasses from TOML or plain dicts: the one loader of every kind of config
(run, pipeline, sweep, recovery study).

Unknown keys, missing required keys and values of the wrong type are rejected with a message naming the key by
its dotted path (``train.lr``, ``models.ssm.train.steps``); a config read from a file prefixes it with the
file's path. Beyond plain fields the loader reads

- tagged unions: a union of dataclasses that share a ``Literal`` field (the tag, e.g. ``family``) picks the
  class by that field's value;
- ``dict[str, X]`` tables: each entry is read as ``X`` under its own dotted key;
- shared defaults: a field marked ``shared("train")`` supplies the missing keys of every deeper field marked
  ``inherits("train")`` (a pipeline's ``[train]`` under each ``[models.<family>].train``);
- the tag from the table's key: a union field marked ``tag_from_key()`` inside a ``dict[str, X]`` entry
  has that entry's key as its tag (which may be left out, as may the whole table).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

C = TypeVar("C")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending key (and the file it came from)."""


# ----------------------------------------------------------------------------- field markers
def shared(name: str, **kw):
    """A table whose keys are defaults for every deeper field marked ``inherits(name)``."""
    return dataclasses.field(metadata={"shared": name}, **kw)


def inherits(name: str, **kw):
    """A table whose missing keys come from the nearest enclosing ``shared(name)`` table."""
    return dataclasses.field(metadata={"inherits": name}, **kw)


def tag_from_key(**kw):
    """A tagged union whose tag is the key of the ``dict[str, X]`` entry holding it (and may be left out)."""
    return dataclasses.field(metadata={"tag_from_key": True}, **kw)


# ----------------------------------------------------------------------------- conversion
def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _tag(classes: list[type]) -> str | None:
    """The field every class in a union declares as a one-value Literal (its tag), if there is one."""
    if len(classes) < 2 or not all(dataclasses.is_dataclass(c) for c in classes):
        return None
    hints = [typing.get_type_hints(c) for c in classes]
    for name in hints[0]:
        if all(typing.get_origin(h.get(name)) is Literal and len(typing.get_args(h[name])) == 1 for h in hints):
            return name
    return None


def _convert(value: Any, tp, key: str, ctx: dict) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        classes = [a for a in args if a is not type(None)]
        tag = _tag(classes)
        if tag is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a table, got {type(value).__name__}")
            own = ctx.get("tag_from_key")
            if own is not None:
                if tag in value and value[tag] != own:
                    raise ConfigError(f"{key}.{tag} must be {own!r} (the table's name), got {value[tag]!r}")
                value = {tag: own, **value}
            options = {typing.get_args(typing.get_type_hints(c)[tag])[0]: c for c in classes}
            if tag not in value:
                raise ConfigError(f"missing required key {key}.{tag}")
            if value[tag] not in options:
                raise ConfigError(f"{key}.{tag} must be one of {', '.join(map(repr, options))}, got {value[tag]!r}")
            return from_dict(options[value[tag]], value, prefix=key, _ctx=ctx)
        errors = []
        for a in classes:
            try:
                return _convert(value, a, key, ctx)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key} must be one of {_type_name(tp)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key, _ctx=ctx)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return tuple(_convert(v, item, f"{key}[{i}]", ctx) for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {type(value).__name__}")
        args = typing.get_args(tp)
        if not args or args[1] is Any:
            return dict(value)
        return {k: _convert(v, args[1], f"{key}.{k}", {**ctx, "table_key": k}) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond float range (JSON allows any size)
            raise ConfigError(f"{key} must be a finite number, got {value!r}") from None
        if not math.isfinite(value):  # TOML's inf and nan literals
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ConfigError(f"{key} must be a {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp!r} at {key}")


def from_dict(cls: type[C], data: dict[str, Any], prefix: str = "", *, _ctx: dict | None = None) -> C:
    """Build the dataclass ``cls`` from ``data``, checking every key and type; errors name the dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    where = f"{prefix}." if prefix else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {where}{unknown[0]} (allowed: {', '.join(fields)})")
    ctx = {k: v for k, v in (_ctx or {}).items() if k != "tag_from_key"}
    table_key = ctx.pop("table_key", None)
    for name, f in fields.items():
        if "shared" in f.metadata and isinstance(data.get(name, {}), dict):
            ctx = {**ctx, "shared": {**ctx.get("shared", {}), f.metadata["shared"]: data.get(name, {})}}
    kwargs = {}
    for name, f in fields.items():
        value = data.get(name, dataclasses.MISSING)
        if value is dataclasses.MISSING and f.metadata.get("tag_from_key") and table_key is not None:
            value = {}  # the tag alone: every other field at its default
        base = ctx.get("shared", {}).get(f.metadata.get("inherits"))
        if base is not None and (value is dataclasses.MISSING or isinstance(value, dict)):
            value = {**base, **({} if value is dataclasses.MISSING else value)}
        if value is not dataclasses.MISSING:
            sub = {**ctx, "tag_from_key": table_key} if f.metadata.get("tag_from_key") else ctx
            kwargs[name] = _convert(value, hints[name], f"{where}{name}", sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {where}{name}")
    try:
        return cls(**kwargs)
    except ValueError as err:  # __post_init__ validation, its message relative to this table
        raise ConfigError(f"{where}{err}") from err


def to_dict(obj) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (tuples become lists; derived fields left out), ready for JSON or
    TOML, and read back to an equal config by :func:`from_dict`."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(obj)


# ----------------------------------------------------------------------------- files
def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or bad syntax gives one clear error naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except OSError as err:  # unreadable (permissions): still one line
        raise ConfigError(f"config file {path} cannot be read: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not a text file: {err}") from err


def load(cls: type[C], data: dict[str, Any], *, default_name: str | None = None) -> C:
    """``cls`` from a parsed dict (TOML or a saved JSON); ``name`` defaults to ``default_name`` when given."""
    if isinstance(data, dict) and "name" not in data and default_name is not None:
        data = {"name": default_name, **data}
    return from_dict(cls, data)


def load_config(path: str | Path, cls: type[C]) -> C:
    """The config class ``cls`` (a RunConfig, PipelineConfig, SweepConfig, RecoveryConfig) from the TOML at
    ``path``; ``name`` defaults to the file's stem, and every error names the file and the dotted key."""
    path = Path(path)
    data = read_toml(path)
    try:
        return load(cls, data, default_name=path.stem)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def check_folder_name(name, key: str = "name") -> str:
    """A config value that names a folder (a config's ``name``, a table key that becomes a folder): one path
    component that stays where it is put, so no '.', '..', separator, control character or leading '.'/'-'."""
    if (not isinstance(name, str) or not re.match(r"[A-Za-z0-9_]", name) or not name.isprintable()
            or any(sep in name for sep in ("/", "\\", os.sep, os.altsep) if sep)):
        raise ConfigError(f"{key} must be a folder name that starts with a letter, digit or '_' and holds no '/', "
                          f"'\\' or control character, got {name!r}")
    return name


def check_relative_path(path, key: str) -> str:
    """A path-valued config key (e.g. ``figures.out``): relative and without '..', so a config never writes
    outside the folder it is run from (a path given on the command line is the user's and is not checked)."""
    if not isinstance(path, str) or not path or not path.isprintable():
        raise ConfigError(f"{key} must be a non-empty relative path, got {path!r}")
    parts = re.split(r"[/\\]", path)
    if path.startswith(("/", "\\")) or Path(path).is_absolute():
        raise ConfigError(f"{key} must be a relative path (a config may not write elsewhere), got {path!r}")
    if ".." in parts:
        raise ConfigError(f"{key} must not contain '..' (a config may not write outside its folder), got {path!r}")
    return path
