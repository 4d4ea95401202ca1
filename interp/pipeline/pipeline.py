"""The main job: every stage of the lab on one process, from training to the figure set.

``interp run [runs/<pipeline>.toml]`` (``make run`` runs the embedded default, Mess3(0.15, 0.6)) writes

    runs/<name>/pipeline.json       the resolved pipeline config
    runs/<name>/models/<family>/    trained run folders, each with its activation cache and probes
    runs/<name>/construction/       the scaled-vector-addition construction as a hand-set run folder
    runs/<name>/geometry/<key>/     the geometry model trained on other processes (figure F8), and
    runs/<name>/geometry/<key>_learner/   the [geometry.learner] model that learns each of them
    runs/<name>/recovery/           the recovery study (recovery.json)
    runs/<name>/compare/            compare.json, compare.md
    runs/<name>/summary.json        the headline numbers
    runs/<name>/manifest.json       per pipeline stage (compare, figures): the fingerprint of its inputs, the
                                    hashes of its files and its last time (each run folder keeps its own)

and draws the figure set into ``runs/<name>/figures/`` (``[figures] out`` or ``--figures`` to choose; the embedded
default of ``interp run`` draws into ``paper_figs/``). ``interp run --quick`` runs the same pipeline at small
sizes (:func:`quick_config`) into ``runs/<name>_quick/``. A stage whose inputs did not change and whose
outputs are intact is reused; an interrupted training resumes from its last checkpoint (bit-identical),
an interrupted recovery study from its last finished seed. Independent stages run in a pool of spawned
worker processes with one thread each, so the results do not depend on how the work was scheduled.
"""

from __future__ import annotations

import re
import time
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Literal

from interp.config import (check_folder_name, check_relative_path, inherits, load, load_config, shared, tag_from_key,
                           to_dict)
from interp.io import fingerprint, read_json, sha256_file, write_json
from interp.models.configs import ModelConfig
from interp.rundir import (COMPARE_JSON, COMPARE_MD, COMPARE_STAGE, CONSTRUCTION, FIGURES_STAGE, PIPELINE,
                           RECOVERY, RESULT, SUMMARY, Manifest, PipelineLayout, adopt, recorded_outputs, writer)
from interp.studies.jobs import probed, run_jobs, train_and_probe, trained
from interp.studies.recovery import RecoveryConfig
from interp.training.runconfig import ProcessConfig, RunConfig, TrainConfig, check_fits

FAMILY_ORDER = ("transformer", "fixed_attention", "ssm", "belief_net")

DEFAULT_CONFIG = "default.toml"  # package data: the pipeline of `make run` and of `interp run` with no file
DEFAULT_FIGURES = "paper_figs"  # where `interp run` with no file draws (the tracked figure set); no other pipeline


class StageError(ValueError, RuntimeError):
    """A stage of the pipeline failed (the others ran; their outputs are kept for the next run). A ValueError, so
    that the command line reports it in one line without importing this module first."""


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ModelEntry:
    """``[models.<family>]``: one model trained on the pipeline's process."""

    model: ModelConfig = tag_from_key()  # its family defaults to the table's name
    train: TrainConfig = inherits("train")  # the pipeline's [train], this table's keys overriding it


@dataclass(frozen=True)
class ConstructionConfig:
    """The scaled-vector-addition construction, as a hand-set run."""

    decay: Literal["analytic", "fitted"] = "analytic"  # lambda from the HMM, or by least squares


@dataclass(frozen=True)
class GeometryLearner:
    """``[geometry.learner]``: a model that learns the geometry processes (F8 shows it beside the contrast)."""

    model: ModelConfig
    train: TrainConfig = inherits("train")  # the pipeline's [train], this table's keys overriding it


LEARNER_SUFFIX = "_learner"  # a learner's run folder: geometry/<label's slug>_learner


@dataclass(frozen=True)
class GeometryProcess:
    """One process the geometry model is trained on."""

    label: str  # its name in figures and summary.json (slugged, it names the run folder)
    name: str  # a registered process (see ``interp processes``)
    params: dict = field(default_factory=dict)
    learner: GeometryLearner | None = None  # this process's own learner, in place of [geometry.learner]


@dataclass(frozen=True)
class GeometryConfig:
    """Figure F8: the belief geometry of other processes inside the same kind of model."""

    model: str = "transformer"  # which [models] entry is trained on each process (the contrast)
    steps: int | None = None  # its train.steps there (None: the entry's own)
    processes: tuple[GeometryProcess, ...] = ()
    learner: GeometryLearner | None = None  # a model that learns each process (none: the contrast alone)

    def __post_init__(self):
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        labels = [p.label for p in self.processes]
        slugs = [_slug(label) for label in labels]  # each names a run folder: two alike would share one
        for i, label in enumerate(labels):
            if labels.index(label) != i or not slugs[i]:
                raise ValueError(f"processes[{i}]: label {label!r} is empty or used twice")
            if slugs.index(slugs[i]) != i:
                raise ValueError(f"processes[{i}]: label {label!r} names the same folder ({slugs[i]!r}) as "
                                 f"{labels[slugs.index(slugs[i])]!r}")
        for i, p in enumerate(self.processes):  # a learner's folder is <slug>_learner
            if self.learner_of(p) is not None and slugs[i] + LEARNER_SUFFIX in slugs:
                other = labels[slugs.index(slugs[i] + LEARNER_SUFFIX)]
                raise ValueError(f"processes[{i}]: the learner of {p.label!r} would share the folder "
                                 f"{slugs[i] + LEARNER_SUFFIX!r} with {other!r}")

    def learner_of(self, process: GeometryProcess) -> GeometryLearner | None:
        """The model that learns ``process``: its own learner table, else [geometry.learner] (None: no learner)."""
        return process.learner if process.learner is not None else self.learner


@dataclass(frozen=True)
class FiguresConfig:
    # the folder the figure set is written to (relative to where `interp run` runs); None: <pipeline folder>/figures
    out: str | None = None

    def __post_init__(self):
        if self.out is not None:  # --figures on the command line is the user's and is not checked
            check_relative_path(self.out, "out")


@dataclass(frozen=True)
class PipelineConfig:
    """Every stage of the lab on one process. ``runs``, ``geometry_runs`` and ``learner_runs`` (the run configs
    of the trained models) are derived from the rest."""

    name: str  # the pipeline's folder name; the TOML file's stem when left out
    process: ProcessConfig  # the data of every model and of the construction
    models: dict[str, ModelEntry]  # family -> its model, trained in that order
    seed: int = 0  # every run's seed
    train: TrainConfig = shared("train", default=TrainConfig())  # shared by every model (see ModelEntry)
    construction: ConstructionConfig = ConstructionConfig()
    geometry: GeometryConfig = GeometryConfig()
    recovery: RecoveryConfig | None = None  # the recovery study, or none
    figures: FiguresConfig = FiguresConfig()
    runs: dict[str, RunConfig] = field(init=False, repr=False, compare=False)  # family -> run config
    geometry_runs: dict[str, RunConfig] = field(init=False, repr=False, compare=False)  # label -> run config
    learner_runs: dict[str, RunConfig] = field(init=False, repr=False, compare=False)  # label -> its learner's

    def __post_init__(self):
        check_folder_name(self.name)
        if self.seed < 0:  # refused here, not as every model's error
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not self.models:
            raise ValueError("models must hold at least one [models.<family>] table")
        for family, entry in self.models.items():
            if entry.model.family != family:
                raise ValueError(f"models.{family}.model.family must be {family!r} (the table's name), "
                                 f"got {entry.model.family!r}")
        runs = {family: self._run(family, f"models.{family}", entry, self.process)
                for family, entry in self.models.items()}
        contexts = {cfg.train.context for cfg in runs.values()}
        if len(contexts) != 1:
            raise ValueError(f"every model must use the same train.context, got {sorted(contexts)}")
        geo, geometry, learners = self.geometry, {}, {}
        if geo.processes and geo.model not in self.models:
            raise ValueError(f"geometry.model must name one of the [models] tables ({', '.join(self.models)}), "
                             f"got {geo.model!r}")
        for i, p in enumerate(geo.processes):
            entry = self.models[geo.model]
            if geo.steps is not None:
                entry = replace(entry, train=replace(entry.train, steps=geo.steps))
            # the pipeline's module is imported for these too: it may register them
            process = ProcessConfig(p.name, p.params, self.process.module)
            geometry[p.label] = self._run(_slug(p.label), f"geometry.processes[{i}]", entry, process)
            learner = geo.learner_of(p)
            if learner is not None:
                where = f"geometry.processes[{i}].learner" if p.learner is not None else "geometry.learner"
                learners[p.label] = self._run(_slug(p.label) + LEARNER_SUFFIX, where,
                                              ModelEntry(learner.model, learner.train), process)
        object.__setattr__(self, "runs", runs)
        object.__setattr__(self, "geometry_runs", geometry)
        object.__setattr__(self, "learner_runs", learners)

    def _run(self, name: str, where: str, entry: ModelEntry, process: ProcessConfig) -> RunConfig:
        try:
            return RunConfig(name=name, seed=self.seed, process=process, model=entry.model, train=entry.train)
        except ValueError as err:
            # the shared process's parameters are the pipeline's own key
            own = process is self.process and str(err).startswith("process.")
            raise ValueError(str(err) if own else f"{where}: {err}") from None

    @property
    def context(self) -> int:
        return next(iter(self.runs.values())).train.context

    def to_dict(self) -> dict:
        return {**to_dict(self), "process": self.process.to_dict()}


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def pipeline_config_from_dict(data: dict) -> PipelineConfig:
    """Validate a parsed pipeline TOML (or a saved pipeline.json); errors name the key."""
    return load(PipelineConfig, data)


def default_pipeline_config() -> PipelineConfig:
    """The embedded default pipeline (``interp/pipeline/default.toml``, installed with the package)."""
    from importlib.resources import files

    return pipeline_config_from_dict(tomllib.loads(files(__package__).joinpath(DEFAULT_CONFIG).read_text()))


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    cfg = load_config(path, PipelineConfig)
    check_fits(path, [*cfg.runs.values(), *cfg.geometry_runs.values(), *cfg.learner_runs.values()])
    return cfg


# ----------------------------------------------------------------------------- quick mode
QUICK_SUFFIX = "_quick"  # a quick pipeline's (or sweep's) name, and so its folder: runs/<name>_quick/
QUICK_STEPS = 60  # training steps of every model (and the geometry models) in a quick pipeline
QUICK_CAPS = {"steps": QUICK_STEPS, "batch_size": 128, "eval_sequences": 512, "dataset_size": 4096}
QUICK_PROBE_SEQUENCES = 4096  # a quick pipeline's context is cut until its exhaustive evaluation set is this small
QUICK_MIN_CONTEXT = 4


def quick_train(train: dict) -> dict:
    """A train table (``TrainConfig.to_dict()``) at quick sizes: :data:`QUICK_CAPS` as upper bounds, evaluated
    four times, one checkpoint at the end, warm-up at most a tenth of the steps."""
    out = {**train, **{key: min(train[key], cap) for key, cap in QUICK_CAPS.items()}}
    steps = out["steps"]
    return {**out, "eval_every": max(1, steps // 4), "checkpoint_every": steps,
            "warmup_steps": min(train["warmup_steps"], steps // 10)}


def quick_config(cfg: PipelineConfig) -> PipelineConfig:
    """The same pipeline at small sizes, to try a config end to end before the real run (``interp run --quick``).

    What changes: the name gains ``_quick`` (so its folder is another) and the figures go into that folder's
    ``figures/`` (``figures.out`` is dropped); every model, the geometry models included, trains at
    :func:`quick_train` sizes (at most :data:`QUICK_STEPS` steps, batches of at most 128, at most 512 held-out
    sequences, a fixed dataset of at most 4096 sequences); the context is cut (to no less than
    :data:`QUICK_MIN_CONTEXT`) until the process has at most :data:`QUICK_PROBE_SEQUENCES` sequences of that length,
    which are the points the activation caches, probes, compare stage and figures run over (every sequence, weighted
    by its probability; the caches hold one token fewer, the positions trained); a process with more tokens is sampled,
    20000 sequences, as in the real run); the recovery study runs its first seed only, on at most 200 training and
    100 held-out sequences, the Belief Net for at most 40 steps with one restart, Baum-Welch for at most 20
    iterations, an ablation's restarts at most 2. The process, the models' shapes and every other choice are the
    config's own (the config itself was checked when it was loaded)."""
    data = cfg.to_dict()
    data["name"] = cfg.name + QUICK_SUFFIX
    data["figures"] = {**data["figures"], "out": None}
    context, n_tokens = cfg.context, cfg.process.build().n_tokens
    while context > QUICK_MIN_CONTEXT and n_tokens**context > QUICK_PROBE_SEQUENCES:
        context -= 1
    data["train"] = {**quick_train(data["train"]), "context": min(data["train"]["context"], context)}
    for entry in data["models"].values():
        entry["train"] = {**quick_train(entry["train"]), "context": context}
    if data["geometry"]["steps"] is not None:
        data["geometry"]["steps"] = min(data["geometry"]["steps"], QUICK_STEPS)
    geo = data["geometry"]
    for learner in [geo["learner"], *(p["learner"] for p in geo["processes"])]:
        if learner is not None:
            learner["train"] = {**quick_train(learner["train"]), "context": min(learner["train"]["context"], context)}
    rec = data.get("recovery")
    if rec is not None:
        rec["seeds"] = rec["seeds"][:1]
        rec["data"] = {**rec["data"], "n_train": min(rec["data"]["n_train"], 200),
                       "n_heldout": min(rec["data"]["n_heldout"], 100)}
        bn = rec["belief_net"]
        rec["belief_net"] = {**bn, "max_steps": min(bn["max_steps"], 40), "eval_every": min(bn["eval_every"], 10),
                             "restarts": 1}
        rec["baum_welch"] = {**rec["baum_welch"], "max_iter": min(rec["baum_welch"]["max_iter"], 20)}
        rec["ablation"] = {**rec["ablation"], "restarts": min(rec["ablation"]["restarts"], 2)}
    return pipeline_config_from_dict(data)


# ----------------------------------------------------------------------------- layout
FIGURES_FOLDER = "figures"  # a pipeline's own figure folder, inside its folder


def figures_folder(cfg: PipelineConfig, root: str | Path) -> Path:
    """Where a pipeline draws its figures unless told otherwise: its ``figures.out``, else its own folder's
    ``figures/`` (only the embedded default pipeline of ``interp run`` draws into paper_figs)."""
    return Path(cfg.figures.out) if cfg.figures.out is not None else Path(root) / FIGURES_FOLDER


def drawn_figures_folder(root: str | Path) -> Path | None:
    """Where the pipeline in ``root`` last drew its figures, as its manifest records them (None if never)."""
    import os

    rec = Manifest(Path(root)).entry(FIGURES_STAGE)
    index = [f for f in (rec or {}).get("files", {}) if f.rsplit("/", 1)[-1] == "index.md"]
    return Path(os.path.normpath(Path(root) / index[0])).parent if index else None


def figure_inputs(cfg: PipelineConfig, root: Path):
    """What the figure scripts read, from a pipeline's folder (only the parts that exist)."""
    lay = PipelineLayout(Path(root))
    models = {f: lay.model(f) for f in FAMILY_ORDER if f in cfg.runs}
    geometry = {label: lay.geometry(c) for label, c in cfg.geometry_runs.items()}
    learners = {label: lay.geometry(c) for label, c in cfg.learner_runs.items()}
    return dict(models=models, construction=lay.construction if (lay.construction / RESULT).exists() else None,
                geometry=geometry, geometry_learners=learners,
                recovery=lay.recovery if (lay.recovery / RECOVERY).exists() else None,
                compare=lay.compare if (lay.compare / COMPARE_JSON).exists() else None)


# ----------------------------------------------------------------------------- figures
def figure_fingerprint() -> str:
    """The figure modules' sources and the plotting library's version."""
    import matplotlib

    import interp.figures

    folder = Path(interp.figures.__file__).parent
    return fingerprint({"matplotlib": matplotlib.__version__,
                        "sources": {p.name: sha256_file(p) for p in sorted(folder.glob("*.py"))}})


def draw_figures(inputs: dict, out_dir: Path, *, command: str, only: list[str] | None = None,
                 log: Callable[[str], None] = lambda msg: None) -> list[str]:
    """Every figure (or those in ``only``, e.g. ["F2", "F8"]) into ``out_dir``; the names of the files written
    (index.md included). ``log`` gets a line per figure."""
    from interp.figures.paper import FigureInputs, make_figures

    written = make_figures(FigureInputs(**inputs), Path(out_dir), command=command, only=only, log=log)
    names = {Path(p).name for paths in written.values() for p in paths}
    return sorted(names | {"index.md"})


# ----------------------------------------------------------------------------- fingerprints
def _file_sha(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def _run_state(run_dir: Path) -> dict:
    """What later stages read of a run (its model, result, cache and probes), as its manifest records them."""
    return {"path": str(run_dir), "outputs": recorded_outputs(run_dir)}


# ----------------------------------------------------------------------------- jobs (run in workers)
def _construct_and_probe(process: dict, context: int, decay: str, run_dir: str, device: str) -> str:
    import shutil

    from interp.interpret.analyse import build_construction_run, construction_inputs, probe_run

    run_dir, done = Path(run_dir), []
    if not Manifest(run_dir).is_fresh(CONSTRUCTION, construction_inputs(process, context, decay)):
        shutil.rmtree(run_dir, ignore_errors=True)
        res = build_construction_run(process, context, run_dir, decay=decay)
        done.append(f"built (lambda {res['construction']['decay']:.4f}, relative loss {res['relative_loss']:.6f})")
    if not probed(run_dir):
        out = probe_run(run_dir, device=device)
        done.append(f"probed (R^2 {out.best_r2:.4f} at {out.best_hook})")
    return ", ".join(done)


def _recovery_seed(cfg_dict: dict, seed: int, out_dir: str) -> str:
    from interp.studies.recovery import recovery_config_from_dict, run_recovery_seed

    res = run_recovery_seed(recovery_config_from_dict(cfg_dict), seed, out_dir)
    return "fitted " + ", ".join(sorted(res.methods))


_SECONDS_PER_STEP = {"transformer": 0.025, "fixed_attention": 0.012, "ssm": 0.015, "belief_net": 0.01}


def _estimated_seconds(job) -> float:
    """A rough single-thread cost, to start the longest stages first (so two workers finish together)."""
    stage, fn, args = job
    if fn is train_and_probe:
        cfg = args[0]
        model = cfg["model"]
        per_step = _SECONDS_PER_STEP.get(model["family"], 0.02)
        if model["family"] == "transformer":  # per layer and batch of 512 (a 2-layer d_model 32 learner at 256: 0.02)
            per_step *= model.get("n_layers", 1) * cfg["train"]["batch_size"] / 512
        return cfg["train"]["steps"] * per_step + 20
    return 40 if fn is _recovery_seed else 20


# ----------------------------------------------------------------------------- the pipeline
class Pipeline:
    """``Pipeline(cfg, out_dir, figures_dir).run()`` -> the PipelineSummary."""

    def __init__(self, cfg: PipelineConfig, out_dir: str | Path, figures_dir: str | Path | None = None, *,
                 device: str = "cpu", workers: int = 2, figures: bool = True,
                 log: Callable[[str], None] = print):
        if workers < 0:
            raise ValueError(f"--workers must be >= 0, got {workers}")
        self.cfg, self.lay = cfg, PipelineLayout(Path(out_dir))
        self.figures_dir = Path(figures_dir) if figures_dir is not None else figures_folder(cfg, out_dir)
        self.device, self.workers, self.figures, self.log = device, workers, figures, log
        self.manifest = Manifest(self.lay.root)  # the pipeline's own stages; each run folder keeps its own

    # -------------------------------------------------------------- bookkeeping
    def _say(self, stage: str, what: str, seconds: float | None = None) -> None:
        took = "" if seconds is None else f" ({seconds:.1f} s)"
        self.log(f"[{stage:<24}] {what}{took}")

    # -------------------------------------------------------------- stages
    def jobs(self) -> list[tuple[str, Callable, tuple]]:
        """The independent stages still to do, longest first (each reuses whatever part is done)."""
        cfg, lay, dev = self.cfg, self.lay, self.device
        jobs = []
        for family, run in cfg.runs.items():
            d = lay.model(family)
            if not (trained(run, d) and probed(d)):
                jobs.append((f"model {family}", train_and_probe, (run.to_dict(), str(d), dev)))
        for run in [*cfg.geometry_runs.values(), *cfg.learner_runs.values()]:
            d = lay.geometry(run)
            if not (trained(run, d) and probed(d)):
                jobs.append((f"geometry {run.name}", train_and_probe, (run.to_dict(), str(d), dev)))
        from interp.interpret.analyse import construction_inputs

        proc = cfg.process.to_dict()  # its module only when it has one: the construction's fingerprint is kept
        built = Manifest(lay.construction).is_fresh(CONSTRUCTION,
                                                    construction_inputs(proc, cfg.context, cfg.construction.decay))
        if not (built and probed(lay.construction)):
            jobs.append(("construction", _construct_and_probe,
                         (proc, cfg.context, cfg.construction.decay, str(lay.construction), dev)))
        if cfg.recovery is not None:
            from interp.studies.recovery import seed_done

            for seed in cfg.recovery.seeds:
                if not seed_done(cfg.recovery, seed, lay.recovery):
                    jobs.append((f"recovery seed {seed}", _recovery_seed,
                                 (cfg.recovery.to_dict(), seed, str(lay.recovery))))
        return sorted(jobs, key=lambda job: -_estimated_seconds(job))

    def _run_jobs(self, jobs) -> None:
        failures = run_jobs(jobs, workers=self.workers, log=self.log)
        if failures:
            stage, err = next(iter(failures.items()))
            more = f" (and {len(failures) - 1} more failed stages)" if len(failures) > 1 else ""
            raise StageError(f"stage {stage!r} failed: {type(err).__name__}: {err}{more}") from err

    def _recovery(self) -> None:
        from interp.studies.recovery import run_recovery

        t0 = time.perf_counter()
        out = run_recovery(self.cfg.recovery, self.lay.recovery)
        s = out["summary"]
        parts = [f"{m} {st['n_recovered']}/{st['n_seeds']}" for m, st in s.items() if m != "speedup"]
        self._say("recovery", "within epsilon: " + ", ".join(parts), time.perf_counter() - t0)

    def _compare_dirs(self) -> list[Path]:
        return [self.lay.model(f) for f in FAMILY_ORDER if f in self.cfg.runs] + [self.lay.construction]

    def _compare(self) -> None:
        from interp.interpret.analyse import compare_runs

        dirs = self._compare_dirs()
        inputs = {"runs": [_run_state(d) for d in dirs]}
        if self.manifest.is_fresh(COMPARE_STAGE, inputs):
            self._say("compare", "reused")
            return
        t0 = time.perf_counter()
        self.manifest.forget(COMPARE_STAGE)
        compare_runs(dirs, self.lay.compare, device=self.device)
        self.manifest.record(COMPARE_STAGE, inputs, [self.lay.compare / COMPARE_JSON, self.lay.compare / COMPARE_MD],
                             seconds=round(time.perf_counter() - t0, 2))
        self._say("compare", f"{len(dirs)} runs -> {self.lay.compare / COMPARE_MD}", time.perf_counter() - t0)

    def _figures(self) -> None:
        cfg = self.cfg
        inputs = figure_inputs(cfg, self.lay.root)
        run_dirs = [*inputs["models"].values(), *inputs["geometry"].values(), *inputs["geometry_learners"].values()]
        if inputs["construction"] is not None:
            run_dirs.append(inputs["construction"])
        depends = {"runs": [_run_state(d) for d in run_dirs],
                   "files": [_file_sha(self.lay.root / SUMMARY), _file_sha(self.lay.compare / COMPARE_JSON),
                             _file_sha(self.lay.recovery / RECOVERY)],
                   "scripts": figure_fingerprint(), "out": str(self.figures_dir.resolve())}
        if self.manifest.is_fresh(FIGURES_STAGE, depends):
            self._say("figures", "reused")
            return
        t0 = time.perf_counter()
        self.manifest.forget(FIGURES_STAGE)
        written = draw_figures(inputs, self.figures_dir, command=self.command,
                               log=self.log)  # its lines carry the stage's prefix
        self.manifest.record(FIGURES_STAGE, depends, [self.figures_dir / name for name in written],
                             seconds=round(time.perf_counter() - t0, 2))
        self._say("figures", f"{len(written)} files -> {self.figures_dir}", time.perf_counter() - t0)

    command = "interp run"

    def run(self) -> PipelineSummary:
        for run in [*self.cfg.runs.values(), *self.cfg.geometry_runs.values(), *self.cfg.learner_runs.values()]:
            run.check_fits()
        with writer(self.lay.root):  # one pipeline writes a folder at a time
            adopt(self.lay.root, "pipeline", PIPELINE)
            return self._run()

    def _run(self) -> PipelineSummary:
        t_all = time.perf_counter()
        root = self.lay.root
        saved = root / PIPELINE
        if saved.is_file():
            try:  # read back through the config class: an older file's shape is no change
                same = pipeline_config_from_dict(read_json(saved)) == self.cfg
            except ValueError:
                same = False
            if not same:
                self.log(f"[{'config':<24}] {saved} differs from this config: stages whose inputs changed are redone")
        write_json(saved, self.cfg.to_dict())
        if self.cfg.recovery is not None:
            from interp.studies.recovery import prepare_study

            try:
                prepare_study(self.cfg.recovery, self.lay.recovery)
            except (FileExistsError, ValueError):  # another study's (or a corrupt) folder: this pipeline owns it
                prepare_study(self.cfg.recovery, self.lay.recovery, force=True)
        jobs = self.jobs()
        geometry = [*self.cfg.geometry_runs.values(), *self.cfg.learner_runs.values()]
        done = ({f"model {f}" for f in self.cfg.runs} | {f"geometry {c.name}" for c in geometry}
                | {"construction"}) - {s for s, _, _ in jobs}
        for stage in sorted(done):
            self._say(stage, "reused (trained and probed)" if stage != "construction" else "reused")
        self._run_jobs(jobs)
        if self.cfg.recovery is not None:
            self._recovery()
        self._compare()
        t0 = time.perf_counter()
        summary = build_summary(self.cfg, root)
        write_json(root / SUMMARY, summary.to_dict())
        self._say("summary", f"-> {root / SUMMARY}", time.perf_counter() - t0)
        if self.figures:
            self._figures()
        self.log(f"[{'done':<24}] {self.cfg.name} in {time.perf_counter() - t_all:.1f} s")
        return summary


# ----------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class PipelineSummary:
    """The headline numbers of a finished pipeline, as ``summary.json`` holds them (losses in nats/token;
    numbers that could not be computed are None)."""

    name: str
    process: dict  # name, params (defaults included), label, n_states, n_tokens
    context: int
    optimal_loss: float  # the exact Bayesian predictor's expected loss, mean over positions 1..L-1
    optimal_loss_note: str
    optimal_loss_per_position: list[float]
    entropy_rate: float
    models: dict[str, dict]  # family -> its run's losses, probe and causal scores (and family extras)
    construction: dict  # the scaled-vector-addition construction: decays, R^2, losses, hand-set model
    attention: dict | None  # the transformer's (and the fixed-attention model's) best head, if trained
    geometry: dict[str, dict]  # label -> the geometry model's loss and probe on that process (and its learner's)
    recovery: dict | None = None  # the recovery study's methods, when it ran (the key is absent otherwise)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.recovery is None:
            del out["recovery"]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "PipelineSummary":
        return cls(**data)


def _attention_row(row: dict | None) -> dict | None:
    if not row or not row.get("attention"):
        return None
    head = row["attention"][0]
    fit = head.get(f"exclude_{head.get('best_exclude', 0)}", {})
    return {"hook": head["hook"], "head": head["head"], "fixedness": head["mean_std"],
            "position_share": head["position_share"], "decay_fitted": fit.get("decay"),
            "decay_fit_r2": fit.get("r2"), "decay_fit_excludes": head.get("best_exclude"),
            "current_weight": head.get("current_weight"), "previous_weight": head.get("previous_weight")}


def build_summary(cfg: PipelineConfig, root: str | Path) -> PipelineSummary:
    """The headline numbers of a finished pipeline, from its compare.json, run folders and recovery.json."""
    from interp.hmm import entropy_rate, optimal_loss
    from interp.interpret.analyse import ProbeResult, _nan_to_none, process_label
    from interp.training.trainer import TrainResult

    lay = PipelineLayout(Path(root))
    compare = read_json(lay.compare / "compare.json")
    hmm = cfg.process.build()
    L = cfg.context
    opt = optimal_loss(hmm, L, seed=0)
    rows = {r["path"]: r for r in compare["runs"]}
    first = next(iter(cfg.runs.values()))
    label = process_label(first)
    summary = {
        "name": cfg.name,
        "process": {"name": hmm.name, "params": dict(hmm.params), "label": label,
                    "n_states": hmm.n_states, "n_tokens": hmm.n_tokens},
        "context": L,
        "optimal_loss": float(opt.per_position[1:].mean()),
        "optimal_loss_note": "expected cross-entropy of the exact Bayesian predictor, mean over positions 1..L-1 "
                             "(what a model predicts from at least one token), nats/token",
        "optimal_loss_per_position": [float(v) for v in opt.per_position],
        "entropy_rate": entropy_rate(hmm, seed=0).value,
        "models": {},
    }
    for family in FAMILY_ORDER:
        if family not in cfg.runs:
            continue
        d = lay.model(family)
        row = rows[str(d)]
        result = TrainResult.read(d)
        entry = {"run": str(d), "relative_loss": row["relative_loss"], "eval_loss": result.eval_loss,
                 "probe_r2": row["probe_r2"], "probe_hook": row["probe_hook"],
                 "probe_r2_all_layers": row["probe_r2_all_layers"], "probe_r2_shuffled": row["probe_r2_shuffled"],
                 "causal_kl_before": row["causal"]["kl_target_before"],
                 "causal_kl_after": row["causal"]["kl_target_after"],
                 "train_steps": result.steps}
        if row.get("belief_net"):
            entry["belief_net"] = {k: v for k, v in row["belief_net"].items() if k != "perm"}
        if row.get("ssm"):
            s = row["ssm"][0]
            entry["ssm"] = {"leading_eigenvalues": s.get("leading"),
                            "effective_decay": s.get("effective", {}).get("decay")}
        summary["models"][family] = entry
    k = compare["construction"][label]
    crow = rows.get(str(lay.construction))
    summary["construction"] = {
        "lambda_analytic": k.get("lambda_analytic"), "lambda_fitted": k.get("lambda_fitted"),
        "r2_analytic": k.get("r2_analytic"), "r2_analytic_readout": k.get("r2_analytic_readout"),
        "r2_fitted": k.get("r2_fitted"), "relative_loss_analytic": k.get("relative_loss_analytic"),
        "relative_loss_fitted": k.get("relative_loss_fitted"),
        "hand_set_model": None if crow is None else {"run": str(lay.construction),
                                                    "relative_loss": crow["relative_loss"],
                                                    "relative_loss_exact_readout": read_json(
                                                        lay.construction / "result.json")["relative_loss_exact_readout"],
                                                    "probe_r2": crow["probe_r2"], "probe_hook": crow["probe_hook"]},
    }
    att = _attention_row(rows.get(str(lay.model("transformer"))))
    if att is not None:
        att["decay_analytic"] = k.get("lambda_analytic")
        fixed = _attention_row(rows.get(str(lay.model("fixed_attention"))))
        att["fixed_attention"] = fixed
    summary["attention"] = att
    def geometry_row(run) -> dict:
        d = lay.geometry(run)
        probe = ProbeResult.from_dict(read_json(d / "probe.json"))
        return {"run": str(d), "process": process_label(run), "relative_loss": TrainResult.read(d).relative_loss,
                "probe_r2": probe.best_r2, "probe_hook": probe.best_hook,
                "probe_r2_all_layers": probe.all_layers.get("r2")}

    geo = {}
    for glabel, run in cfg.geometry_runs.items():
        geo[glabel] = geometry_row(run)
        if glabel in cfg.learner_runs:
            learner = cfg.learner_runs[glabel]
            geo[glabel]["learner"] = {**geometry_row(learner), "model": learner.model.to_dict(),
                                      "train_steps": learner.train.steps}
    summary["geometry"] = geo
    if cfg.recovery is not None and (lay.recovery / "recovery.json").is_file():
        rec = read_json(lay.recovery / "recovery.json")["summary"]
        methods = {}
        for m, st in rec.items():
            if m == "speedup":
                continue
            methods[m] = {"n_recovered": st["n_recovered"], "n_seeds": st["n_seeds"],
                          **{key: st[key]["mean"] for key in ("excess_nll", "A_frobenius", "C_frobenius")
                             if key in st}}
        summary["recovery"] = {"seeds": list(cfg.recovery.seeds), "epsilon": cfg.recovery.epsilon,
                               "methods": methods, "belief_net_speedup": rec["speedup"]}
    return PipelineSummary.from_dict(_nan_to_none(summary))
