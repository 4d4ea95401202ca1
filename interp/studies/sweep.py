"""Sweeps: a grid of run configs (process parameters x model config x seeds), run, skipped when done, aggregated.

``interp sweep runs/<sweep>.toml``::

    name = "sweep_mess3"
    seeds = [0, 1, 2]

    [grid]                       # dotted keys into the run config; the sweep is their product x seeds
    "process.params.x" = [0.05, 0.15]
    "model.d_model" = [32, 64]

    [process]                    # the base run config, as in runs/<name>.toml (without name and seed)
    name = "mess3"
    params = { a = 0.6 }
    [model]
    family = "transformer"
    [train]
    steps = 1500

    [slurm]                      # only for --executor slurm: submitit's parameters, passed through
    timeout_min = 60

writes ``runs/<sweep>/sweep.json`` (the resolved sweep and its points), ``runs/<sweep>/runs/<point>/`` (one
run folder per point, named like ``x=0.05_d_model=32_seed=0``), ``results.json`` and ``results.md`` (one row
per run, and mean / standard deviation over seeds per grid point) and the figure ``sweep.png`` / ``.pdf``
(``interp.figures.sweep``). A point whose run is trained and probed is skipped; a failed one is reported
(non-zero exit) and retried by the next call, resuming from its last checkpoint.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from interp.config import ConfigError, check_folder_name, load, load_config, to_dict
from interp.io import read_json, write_json
from interp.models.configs import ModelConfig
from interp.rundir import PROBE, RESULT, RESULTS_JSON, RESULTS_MD, SWEEP, SWEEP_RUNS, adopt, writer
from interp.studies.jobs import done, init_worker, run_jobs, train_and_probe
from interp.training.runconfig import ProcessConfig, RunConfig, TrainConfig, check_fits, run_config_from_dict

EXECUTORS = ("pool", "slurm", "local", "debug")  # pool: our process pool; the rest: submitit's executors
METRICS = ("relative_loss", "probe_r2", "eval_loss", "optimal_loss")


class SweepError(ValueError, RuntimeError):
    """Some runs of the sweep failed (the others are kept; the next call retries the failed ones). A ValueError, so
    that the command line reports it in one line without importing this module first."""


@dataclass(frozen=True)
class SweepPoint:
    name: str  # the run folder's name
    values: dict  # grid key -> value
    seed: int
    config: RunConfig


@dataclass(frozen=True)
class SweepConfig:
    """A grid of run configs: the base run (process, model, train) with every combination of the grid's values,
    each on every seed. ``points`` is derived from the rest."""

    name: str  # the sweep's folder name; the TOML file's stem when left out
    process: ProcessConfig  # the base run config, as in runs/<name>.toml (without name and seed)
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    seeds: tuple[int, ...] = (0,)  # every grid point runs on each
    grid: dict = field(default_factory=dict)  # dotted key -> list of values, in the file's order
    slurm: dict = field(default_factory=dict)  # submitit's parameters, for --executor slurm only
    points: tuple[SweepPoint, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        check_folder_name(self.name)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {list(self.seeds)!r}")
        for i, seed in enumerate(self.seeds):
            if seed < 0:
                raise ValueError(f"seeds[{i}] must be >= 0, got {seed}")
        for key, values in self.grid.items():
            # every part a Python name (fields and process parameters are): the key names the run folders
            parts = key.split(".")
            if parts[0] not in ("process", "model", "train") or len(parts) < 2 or not all(map(str.isidentifier, parts)):
                raise ValueError(f"grid key {key!r} must name a field of process, model or train "
                                 f"(e.g. 'process.params.x', 'model.d_model', 'train.lr')")
            if key == "model.family":
                raise ValueError("grid key 'model.family': sweep one family per sweep (the fields differ)")
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid.{key!r} must be a non-empty list, got {values!r}")
            if len({_format(v) for v in values}) != len(values):
                raise ValueError(f"grid.{key!r} lists a value twice: {values!r}")
        object.__setattr__(self, "points", tuple(self._points()))

    @property
    def keys(self) -> list[str]:
        return list(self.grid)

    def to_dict(self) -> dict:
        return {**to_dict(self), "process": self.process.to_dict()}

    def _points(self):
        """Every point is a valid run config or the error names it."""
        labels = _labels(list(self.grid))
        base = {"process": to_dict(self.process), "model": to_dict(self.model), "train": to_dict(self.train)}
        for combo in itertools.product(*self.grid.values()):
            values = dict(zip(self.grid, combo))
            for seed in self.seeds:
                tree = copy.deepcopy(base)
                for key, value in values.items():
                    _set(tree, key, value)
                run_name = "_".join([f"{labels[k]}={_format(v)}" for k, v in values.items()] + [f"seed={seed}"])
                try:
                    cfg = run_config_from_dict({"name": run_name, "seed": seed, **tree})
                except ConfigError as err:
                    raise ValueError(f"point {run_name}: {err}") from err
                yield SweepPoint(run_name, values, seed, cfg)


# ----------------------------------------------------------------------------- config
def _set(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"grid key {dotted!r}: {part} is not a table in the base config")
    node[leaf] = value


def _format(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(value))


def _labels(keys: list[str]) -> dict[str, str]:
    """The short name of every grid key in run names: its last part, or the whole key where that clashes."""
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k.replace(".", "-")) for k, s in zip(keys, last)}


def sweep_config_from_dict(data: dict) -> SweepConfig:
    """Validate a parsed sweep TOML (or the config saved in sweep.json) into its points."""
    return load(SweepConfig, data)


def load_sweep_config(path: str | Path) -> SweepConfig:
    cfg = load_config(path, SweepConfig)
    check_fits(path, [p.config for p in cfg.points])
    return cfg


def quick_sweep_config(cfg: SweepConfig) -> SweepConfig:
    """The same sweep at small sizes, to try it end to end before the real one (``interp sweep --quick``).

    What changes: the name gains ``_quick`` (so its folder is another); only the first seed runs; the base train
    table is cut to quick sizes (``interp.pipeline.pipeline.quick_train``: at most 60 steps, batches of at most 128,
    at most 512 held-out sequences), and so are grid values of those keys (a value that becomes another's is kept
    once). The grid, the process and the model are the sweep's own."""
    from interp.pipeline.pipeline import QUICK_CAPS, QUICK_SUFFIX, quick_train

    data = cfg.to_dict()
    data["name"] = cfg.name + QUICK_SUFFIX
    data["seeds"] = list(cfg.seeds[:1])
    data["train"] = quick_train(data["train"])
    grid = {}
    for key, values in cfg.grid.items():
        field_name = key.removeprefix("train.")
        if key.startswith("train.") and field_name in QUICK_CAPS:
            values = list(dict.fromkeys(min(v, QUICK_CAPS[field_name]) if type(v) is int else v for v in values))
        grid[key] = values
    data["grid"] = grid
    return sweep_config_from_dict(data)


# ----------------------------------------------------------------------------- results
def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return mean, std


def run_row(point: SweepPoint, run_dir: Path) -> dict | None:
    """The numbers of one finished run (None while it is not trained and probed)."""
    if not done(point.config, run_dir):
        return None
    from interp.interpret.analyse import ProbeResult
    from interp.training.trainer import TrainResult

    result = TrainResult.from_dict(read_json(run_dir / RESULT))
    probe = ProbeResult.from_dict(read_json(run_dir / PROBE))
    return {"run": point.name, **{k: point.values[k] for k in point.values}, "seed": point.seed,
            "relative_loss": result.relative_loss, "eval_loss": result.eval_loss,
            "optimal_loss": result.optimal_loss, "probe_r2": probe.best_r2, "probe_hook": probe.best_hook,
            "steps": result.steps, "train_seconds": result.train_seconds}


def aggregate(cfg: SweepConfig, root: Path, failed: dict[str, str] | None = None) -> dict:
    """Every point's row and, per grid point, the mean and standard deviation over its finished seeds."""
    rows, missing = [], []
    for p in cfg.points:
        row = run_row(p, root / SWEEP_RUNS / p.name)
        (rows.append(row) if row is not None else missing.append(p.name))
    groups = []
    for combo in itertools.product(*cfg.grid.values()):
        values = dict(zip(cfg.grid, combo))
        mine = [r for r in rows if all(r[k] == v for k, v in values.items())]
        group = {**values, "n_seeds": len(mine), "of_seeds": len(cfg.seeds)}
        for metric in METRICS:
            group[f"{metric}_mean"], group[f"{metric}_std"] = _mean_std([r[metric] for r in mine])
        groups.append(group)
    return {"sweep": cfg.name, "keys": cfg.keys, "seeds": list(cfg.seeds), "rows": rows, "groups": groups,
            "missing": missing, "failed": dict(failed or {})}


def _fmt(x, spec=".5f") -> str:
    return "-" if x is None else format(x, spec)


def format_markdown(res: dict) -> str:
    keys = res["keys"]
    lines = [f"# Sweep {res['sweep']}", "",
             f"{len(res['rows'])} of {len(res['rows']) + len(res['missing'])} runs finished; mean +- standard "
             f"deviation over seeds {res['seeds']}.", "",
             "| " + " | ".join(keys + ["seeds", "relative loss", "probe R^2", "eval loss", "optimal loss"]) + " |",
             "|" + "---|" * (len(keys) + 5)]
    for g in res["groups"]:
        cells = [str(g[k]) for k in keys] + [f"{g['n_seeds']}/{g['of_seeds']}"]
        for metric, spec in (("relative_loss", ".5f"), ("probe_r2", ".4f")):
            cells.append(f"{_fmt(g[metric + '_mean'], spec)} +- {_fmt(g[metric + '_std'], spec)}")
        cells += [_fmt(g["eval_loss_mean"]), _fmt(g["optimal_loss_mean"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Runs", "", "| run | relative loss | probe R^2 | probe hook | steps |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['run']} | {r['relative_loss']:.5f} | {r['probe_r2']:.4f} | {r['probe_hook']} | "
                     f"{r['steps']} |")
    for name in res["missing"]:
        why = res["failed"].get(name, "not run yet")
        lines.append(f"| {name} | - | - | {why} | - |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- executors
def _submitit_job(cfg_dict: dict, run_dir: str, device: str) -> str:
    import os

    init_worker(int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
    return train_and_probe(cfg_dict, run_dir, device)


def _run_submitit(jobs, folder: Path, cluster: str, params: dict, log) -> dict[str, BaseException]:
    try:
        import submitit
    except ImportError as err:
        raise ValueError("--executor slurm/local/debug needs submitit: pip install -e '.[slurm]'") from err
    executor = submitit.AutoExecutor(folder=folder, cluster=None if cluster == "slurm" else cluster)
    executor.update_parameters(**({"timeout_min": 60, "cpus_per_task": 1} | params))
    t0 = time.perf_counter()
    submitted = [(label, executor.submit(_submitit_job, *args)) for label, _, args in jobs]
    log(f"[{'submitit':<24}] {len(jobs)} jobs submitted ({cluster}), logs in {folder}")
    failures: dict[str, BaseException] = {}
    try:
        for label, job in submitted:
            try:
                log(f"[{label:<24}] {job.result()} ({time.perf_counter() - t0:.1f} s)")
            except Exception as err:  # noqa: BLE001 - reported; the other jobs still finish
                failures[label] = err
    except BaseException:
        for _, job in submitted:
            job.cancel(check=False)
        raise
    return failures


# ----------------------------------------------------------------------------- the sweep
class Sweep:
    """``Sweep(cfg, out_dir).run()`` -> the aggregated results (raises SweepError after writing them when
    some runs failed)."""

    def __init__(self, cfg: SweepConfig, out_dir: str | Path, *, workers: int = 2, executor: str = "pool",
                 device: str = "cpu", figure: bool = True, log: Callable[[str], None] = print):
        if workers < 0:
            raise ValueError(f"--workers must be >= 0, got {workers}")
        if executor not in EXECUTORS:
            raise ValueError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
        self.cfg, self.root = cfg, Path(out_dir)
        self.workers, self.executor, self.device, self.figure, self.log = workers, executor, device, figure, log

    def run_dir(self, point: SweepPoint) -> Path:
        return self.root / SWEEP_RUNS / point.name

    def jobs(self) -> list:
        """The points still to do (not trained and probed), as jobs."""
        return [(p.name, train_and_probe, (p.config.to_dict(), str(self.run_dir(p)), self.device))
                for p in self.cfg.points if not done(p.config, self.run_dir(p))]

    def run(self) -> dict:
        for point in self.cfg.points:
            point.config.check_fits()
        with writer(self.root):  # one sweep writes a folder at a time
            adopt(self.root, "sweep", SWEEP)
            return self._run()

    def _run(self) -> dict:
        cfg = self.cfg
        write_json(self.root / SWEEP, {"config": cfg.to_dict(), "points": [
            {"name": p.name, "values": p.values, "seed": p.seed, "config_hash": p.config.hash()} for p in cfg.points]})
        jobs = self.jobs()
        skipped = len(cfg.points) - len(jobs)
        self.log(f"[{'sweep':<24}] {len(cfg.points)} runs: {skipped} done already, {len(jobs)} to run")
        t0 = time.perf_counter()
        if self.executor == "pool":
            failures = run_jobs(jobs, workers=self.workers, log=self.log)
        else:
            failures = _run_submitit(jobs, self.root / "submitit", self.executor, cfg.slurm, self.log)
        seconds = time.perf_counter() - t0
        failed = {label: f"{type(err).__name__}: {err}" for label, err in failures.items()}
        res = aggregate(cfg, self.root, failed)
        res["seconds"] = {"ran": len(jobs), "wall": round(seconds, 2), "workers": self.workers,
                          "executor": self.executor}
        write_json(self.root / RESULTS_JSON, res)
        from interp.io import atomic_write_bytes

        atomic_write_bytes(self.root / RESULTS_MD, format_markdown(res).encode())
        if self.figure and res["rows"]:
            from interp.figures.sweep import make_sweep_figure

            paths = make_sweep_figure(res, self.root)
            self.log(f"[{'figure':<24}] -> {', '.join(str(p) for p in paths)}")
        self.log(f"[{'sweep':<24}] ran {len(jobs)} runs in {seconds:.1f} s; table -> {self.root / RESULTS_MD}")
        if failed:
            names = "; ".join(f"{k} ({v})" for k, v in failed.items())
            raise SweepError(f"{len(failed)} of {len(cfg.points)} runs failed: {names}. The others are kept; "
                             f"run the same command again to retry the failed ones")
        return res
