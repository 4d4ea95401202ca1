"""Studies: several runs on one question (a paper's reproduction, the head-count rule, the minimal-model chain),
trained and probed, then analysed into one table and its figures.

``interp study runs/<study>.toml``::

    name = "shai2024_mess3"
    kind = "shai2024"             # the analysis: the module interp.studies.<kind>
    seed = 0

    [process]                     # every run's data, unless a run gives its own [runs.<name>.process]
    name = "mess3"
    params = { x = 0.05, a = 0.85 }

    [train]                       # shared defaults; a run's own train table overrides them key by key
    context = 10
    steps = 3000

    [paper]                       # what the paper reports (free-form), shown beside the lab's numbers
    [options]                     # the analysis's own options (free-form)

    [runs.tf4]                    # one entry per run, trained in this order
    model = { family = "transformer", n_layers = 4, attn_only = false }

writes ``runs/<study>/study.json`` (the resolved config), ``runs/<study>/runs/<run>/`` (one run folder per
entry, as ``interp train`` and ``interp probe`` make them), ``table.md`` and ``table.json`` (the analysis's
table, with the seconds each stage took) and ``figures/``. A run already trained and probed is reused, a
started one resumes from its last checkpoint, and the analysis is redone every time (it is cheap).

An analysis module defines ``analyse(cfg, run_dirs, out_dir, *, device, log) -> dict`` returning ``title``,
``columns``, ``rows`` (dicts keyed by the columns), ``notes`` (lines under the table), ``figures`` (file names
it drew into ``out_dir / "figures"``) and ``extra`` (anything else, JSON-able); optionally ``check_config(cfg)``,
called when the study is loaded, which raises ValueError (one line naming the key) for options or runs the
analysis cannot use.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from interp.config import ConfigError, check_folder_name, inherits, load, load_config, shared, to_dict
from interp.io import atomic_write_bytes, write_json
from interp.models.configs import ModelConfig
from interp.rundir import SWEEP_RUNS, adopt, writer
from interp.studies.jobs import done, run_jobs, train_and_probe
from interp.training.runconfig import ProcessConfig, RunConfig, TrainConfig, check_fits

STUDY = "study.json"
TABLE_JSON = "table.json"
TABLE_MD = "table.md"
FIGURES = "figures"
KINDS = ("shai2024", "heads", "minimal_chain", "scaling")  # each an analysis module interp.studies.<kind>


class StudyError(ValueError, RuntimeError):
    """Some runs of the study failed (the others are kept; the next call retries the failed ones)."""


@dataclass(frozen=True)
class RunEntry:
    """``[runs.<name>]``: one model of the study."""

    model: ModelConfig
    train: TrainConfig = inherits("train")  # the study's [train], this table's keys overriding it
    process: ProcessConfig | None = None  # None: the study's [process]
    seed: int | None = None  # None: the study's seed


@dataclass(frozen=True)
class StudyConfig:
    name: str  # the study's folder name; the TOML file's stem when left out
    kind: str  # its analysis, one of KINDS
    process: ProcessConfig
    runs: dict[str, RunEntry]
    seed: int = 0
    train: TrainConfig = shared("train", default=TrainConfig())
    paper: dict = field(default_factory=dict)  # the paper's reported quantities, for the table
    options: dict = field(default_factory=dict)  # the analysis's own options

    def __post_init__(self):
        check_folder_name(self.name)
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not self.runs:
            raise ValueError("runs must hold at least one [runs.<name>] table")
        for name in self.runs:
            try:
                check_folder_name(name)
            except ValueError as err:
                raise ValueError(f"runs.{name}: {err}") from None
        self.run_configs()  # every run is valid, or the error names it
        # the analysis's own checks ([options], which runs it can read), so a bad option fails before training
        check = getattr(importlib.import_module(f"interp.studies.{self.kind}"), "check_config", None)
        if check is not None:
            check(self)

    def run_configs(self) -> dict[str, RunConfig]:
        out = {}
        for name, entry in self.runs.items():
            try:
                out[name] = RunConfig(name=name, process=entry.process or self.process, model=entry.model,
                                      train=entry.train, seed=self.seed if entry.seed is None else entry.seed)
            except ValueError as err:
                raise ValueError(f"runs.{name}: {err}") from None
        return out

    def to_dict(self) -> dict:
        out = {**to_dict(self), "process": self.process.to_dict()}
        runs = self.run_configs()
        for name, entry in self.runs.items():
            run = out["runs"][name]
            run["model"] = runs[name].to_dict()["model"]
            if entry.process is not None:
                run["process"] = entry.process.to_dict()
            else:
                del run["process"]
            if entry.seed is None:
                del run["seed"]
        return out


def study_config_from_dict(data: dict) -> StudyConfig:
    return load(StudyConfig, data)


def load_study_config(path: str | Path) -> StudyConfig:
    cfg = load_config(path, StudyConfig)
    check_fits(path, cfg.run_configs().values())
    return cfg


def quick_study_config(cfg: StudyConfig) -> StudyConfig:
    """The same study at small sizes (``interp study --quick``): the name gains ``_quick`` (so its folder is
    another) and every run trains at ``interp.pipeline.pipeline.quick_train`` sizes. Models, processes and the
    analysis are the study's own."""
    from interp.pipeline.pipeline import QUICK_SUFFIX, quick_train

    data = cfg.to_dict()
    data["name"] = cfg.name + QUICK_SUFFIX
    data["train"] = quick_train(data["train"])
    for run in data["runs"].values():
        run["train"] = quick_train(run["train"])
    return study_config_from_dict(data)


def format_markdown(res: dict) -> str:
    """The analysis's table as markdown, with its notes and the time each stage took."""

    def cell(x) -> str:
        if x is None:
            return "-"
        if isinstance(x, float):
            return f"{x:.4g}" if abs(x) < 1e-3 or abs(x) >= 1e4 else f"{x:.4f}"
        return str(x).replace("|", "\\|")

    cols = res["columns"]
    lines = [f"# {res['title']}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in cols) + " |" for row in res["rows"]]
    if res.get("notes"):
        lines += [""] + [f"- {note}" for note in res["notes"]]
    if res.get("figures"):
        lines += ["", "Figures: " + ", ".join(f"`{FIGURES}/{f}`" for f in res["figures"])]
    sec = res.get("seconds")
    if sec:
        runs = f"{sec['ran']} run{'s' * (sec['ran'] != 1)}"
        lines += ["", f"Time on this machine: training and probing {sec['runs']:.0f} s ({runs}), analysis "
                      f"{sec['analysis']:.0f} s."]
    return "\n".join(lines) + "\n"


class Study:
    """``Study(cfg, out_dir).run()`` -> the analysis's table (raises StudyError after keeping the finished runs
    when some failed; the analysis needs every run)."""

    def __init__(self, cfg: StudyConfig, out_dir: str | Path, *, workers: int = 2, device: str = "cpu",
                 log: Callable[[str], None] = print):
        if workers < 0:
            raise ValueError(f"--workers must be >= 0, got {workers}")
        self.cfg, self.root, self.workers, self.device, self.log = cfg, Path(out_dir), workers, device, log

    def run_dirs(self) -> dict[str, Path]:
        return {name: self.root / SWEEP_RUNS / name for name in self.cfg.runs}

    def run(self) -> dict:
        runs = self.cfg.run_configs()
        for run in runs.values():
            run.check_fits()
        with writer(self.root):
            adopt(self.root, "study", STUDY)
            return self._run(runs)

    def _run(self, runs: dict[str, RunConfig]) -> dict:
        cfg, dirs = self.cfg, self.run_dirs()
        write_json(self.root / STUDY, {"config": cfg.to_dict(),
                                       "runs": {name: run.hash() for name, run in runs.items()}})
        jobs = [(name, train_and_probe, (run.to_dict(), str(dirs[name]), self.device))
                for name, run in runs.items() if not done(run, dirs[name])]
        self.log(f"[{'study':<24}] {cfg.name} ({cfg.kind}): {len(runs)} runs, {len(runs) - len(jobs)} done "
                 f"already, {len(jobs)} to run")
        t0 = time.perf_counter()
        failures = run_jobs(jobs, workers=self.workers, log=self.log)
        t_runs = time.perf_counter() - t0
        if failures:
            names = "; ".join(f"{k} ({type(v).__name__}: {v})" for k, v in failures.items())
            raise StudyError(f"{len(failures)} of {len(runs)} runs failed: {names}. The others are kept; run the "
                             "same command again to retry the failed ones")
        module = importlib.import_module(f"interp.studies.{cfg.kind}")
        t0 = time.perf_counter()
        (self.root / FIGURES).mkdir(exist_ok=True)
        res = module.analyse(cfg, dirs, self.root, device=self.device, log=self.log)
        res = {"study": cfg.name, "kind": cfg.kind, **res,
               "seconds": {"runs": round(t_runs, 1), "ran": len(jobs),
                           "analysis": round(time.perf_counter() - t0, 1)}}
        write_json(self.root / TABLE_JSON, res)
        atomic_write_bytes(self.root / TABLE_MD, format_markdown(res).encode())
        self.log(f"[{'study':<24}] table -> {self.root / TABLE_MD}")
        return res
