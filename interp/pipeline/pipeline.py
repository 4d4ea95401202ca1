"""The main job: every stage of the lab on one process, from training to the figure set.

``interp run [runs/<pipeline>.toml]`` (``make run`` runs the embedded default, Mess3(0.15, 0.6)) writes

    runs/<name>/pipeline.json       the resolved pipeline config
    runs/<name>/models/<family>/    trained run folders, each with its activation cache and probes
    runs/<name>/construction/       the scaled-vector-addition construction as a hand-set run folder
    runs/<name>/geometry/<key>/     the geometry model trained on other processes (figure F8)
    runs/<name>/recovery/           the recovery study (recovery.json)
    runs/<name>/compare/            compare.json, compare.md
    runs/<name>/summary.json        the headline numbers
    runs/<name>/stages.json         per stage: the fingerprint of its inputs and its last time

and regenerates the figure set (``paper_figs/`` by default). A stage whose inputs did not change and whose
outputs are intact is reused; an interrupted training resumes from its last checkpoint (bit-identical),
an interrupted recovery study from its last finished seed. Independent stages run in a pool of spawned
worker processes with one thread each, so the results do not depend on how the work was scheduled.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from interp.config import ConfigError, check_folder_name, load_named_config, reject_unknown_keys
from interp.io import read_json, write_json
from interp.pipeline.jobs import probed, run_jobs, train_and_probe, trained
from interp.training.runconfig import ProcessConfig, RunConfig, run_config_from_dict

FAMILY_ORDER = ("transformer", "fixed_attention", "ssm", "belief_net")
SUMMARY_FILE, STAGES_FILE, PIPELINE_FILE = "summary.json", "stages.json", "pipeline.json"

DEFAULT_CONFIG = "default.toml"  # package data: the pipeline of `make run` and of `interp run` with no file


class StageError(RuntimeError):
    """A stage of the pipeline failed (the others ran; their outputs are kept for the next run)."""


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class PipelineConfig:
    name: str
    process: ProcessConfig
    models: dict[str, RunConfig]  # family -> run config
    construction_decay: str
    geometry: dict[str, RunConfig]  # label -> run config of the geometry model on that process
    recovery: object | None  # interp.studies.recovery.RecoveryConfig
    figures_out: str
    raw: dict  # the validated input, saved as pipeline.json

    @property
    def context(self) -> int:
        return next(iter(self.models.values())).train.context


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def _table(data: dict, key: str, where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{key} must be a table, got {type(value).__name__}")
    return value


def pipeline_config_from_dict(data: dict) -> PipelineConfig:
    """Validate a parsed pipeline TOML; errors name the key."""
    from interp.studies.recovery import recovery_config_from_dict

    allowed = {"name", "seed", "process", "train", "models", "construction", "geometry", "recovery", "figures"}
    reject_unknown_keys(data, allowed)
    name = check_folder_name(data.get("name"))
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    process = _table(data, "process", "")
    shared_train = _table(data, "train", "")
    models_in = _table(data, "models", "")
    if not models_in:
        raise ConfigError("models must hold at least one [models.<family>] table")

    def run_config(run_name: str, where: str, entry: dict, proc: dict, steps: int | None = None) -> RunConfig:
        extra = sorted(set(entry) - {"model", "train"})
        if extra:
            raise ConfigError(f"{where}: unknown key {extra[0]} (allowed: model, train)")
        train = {**shared_train, **_table(entry, "train", f"{where}.")}
        if steps is not None:
            train["steps"] = steps
        try:
            return run_config_from_dict({"name": run_name, "seed": seed, "process": proc,
                                         "model": _table(entry, "model", f"{where}."), "train": train})
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None

    models = {}
    for family, entry in models_in.items():
        entry = _table(models_in, family, "models.")
        model = dict(_table(entry, "model", f"models.{family}."))
        model.setdefault("family", family)
        if model["family"] != family:
            raise ConfigError(f"models.{family}.model.family must be {family!r} (the table's name), "
                              f"got {model['family']!r}")
        models[family] = run_config(family, f"models.{family}", {**entry, "model": model}, process)
    contexts = {cfg.train.context for cfg in models.values()}
    if len(contexts) != 1:
        raise ConfigError(f"every model must use the same train.context, got {sorted(contexts)}")

    construction = _table(data, "construction", "")
    if sorted(set(construction) - {"decay"}):
        raise ConfigError(f"construction: unknown key {sorted(set(construction) - {'decay'})[0]} (allowed: decay)")
    decay = construction.get("decay", "analytic")
    if decay not in ("analytic", "fitted"):
        raise ConfigError(f"construction.decay must be 'analytic' or 'fitted', got {decay!r}")

    geo = _table(data, "geometry", "")
    if sorted(set(geo) - {"model", "steps", "processes"}):
        bad = sorted(set(geo) - {"model", "steps", "processes"})[0]
        raise ConfigError(f"geometry: unknown key {bad} (allowed: model, steps, processes)")
    geometry = {}
    if geo.get("processes"):
        base = geo.get("model", "transformer")
        if base not in models_in:
            raise ConfigError(f"geometry.model must name one of the [models] tables ({', '.join(models_in)}), "
                              f"got {base!r}")
        steps = geo.get("steps")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ConfigError(f"geometry.steps must be a positive integer, got {steps!r}")
        if not isinstance(geo["processes"], list):
            raise ConfigError("geometry.processes must be a list of tables")
        for i, p in enumerate(geo["processes"]):
            if not isinstance(p, dict) or not isinstance(p.get("label"), str) or "name" not in p:
                raise ConfigError(f"geometry.processes[{i}] needs a label and a process name, got {p!r}")
            label = p["label"]
            proc = {k: v for k, v in p.items() if k != "label"}
            if label in geometry or not _slug(label):
                raise ConfigError(f"geometry.processes[{i}]: label {label!r} is empty or used twice")
            entry = {**models_in[base], "model": {"family": base, **_table(models_in[base], "model", "")}}
            geometry[label] = run_config(_slug(label), f"geometry.processes[{i}]", entry, proc, steps)

    recovery = None
    if data.get("recovery"):
        try:
            recovery = recovery_config_from_dict({"name": "recovery", **_table(data, "recovery", "")})
        except ConfigError as err:
            raise ConfigError(f"recovery: {err}") from None
    figures = _table(data, "figures", "")
    if sorted(set(figures) - {"out"}) or not isinstance(figures.get("out", "paper_figs"), str):
        raise ConfigError("figures takes one key, out (a folder path)")
    return PipelineConfig(name=name, process=models[next(iter(models))].process, models=models,
                          construction_decay=decay, geometry=geometry, recovery=recovery,
                          figures_out=figures.get("out", "paper_figs"), raw=data)


def default_pipeline_config() -> PipelineConfig:
    """The embedded default pipeline (``interp/pipeline/default.toml``, installed with the package)."""
    from importlib.resources import files

    return pipeline_config_from_dict(tomllib.loads(files(__package__).joinpath(DEFAULT_CONFIG).read_text()))


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    return load_named_config(path, pipeline_config_from_dict)


# ----------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Layout:
    root: Path

    def model(self, family: str) -> Path:
        return self.root / "models" / family

    @property
    def construction(self) -> Path:
        return self.root / "construction"

    def geometry(self, cfg: RunConfig) -> Path:
        return self.root / "geometry" / cfg.name

    @property
    def recovery(self) -> Path:
        return self.root / "recovery"

    @property
    def compare(self) -> Path:
        return self.root / "compare"


def figure_inputs(cfg: PipelineConfig, root: Path):
    """What the figure scripts read, from a pipeline's folder (only the parts that exist)."""
    lay = Layout(Path(root))
    models = {f: lay.model(f) for f in FAMILY_ORDER if f in cfg.models}
    geometry = {label: lay.geometry(c) for label, c in cfg.geometry.items()}
    return dict(models=models, construction=lay.construction if (lay.construction / "result.json").exists() else None,
                geometry=geometry, recovery=lay.recovery if (lay.recovery / "recovery.json").exists() else None,
                compare=lay.compare if (lay.compare / "compare.json").exists() else None)


# ----------------------------------------------------------------------------- figures
def figure_fingerprint() -> str:
    """The figure modules' sources and the plotting library's version."""
    import matplotlib

    import interp.figures

    folder = Path(interp.figures.__file__).parent
    return _sha({"matplotlib": matplotlib.__version__,
                 "sources": {p.name: _file_sha(p) for p in sorted(folder.glob("*.py"))}})


def draw_figures(inputs: dict, out_dir: Path, *, command: str) -> list[str]:
    """Every figure into ``out_dir``; the names of the files written (index.md included)."""
    from interp.figures.paper import FigureInputs, make_figures

    written = make_figures(FigureInputs(**inputs), Path(out_dir), command=command)
    names = {Path(p).name for paths in written.values() for p in paths}
    return sorted(names | {"index.md"})


# ----------------------------------------------------------------------------- fingerprints
def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def _run_state(run_dir: Path) -> list:
    """What later stages read of a run: its config, weights and probes."""
    from interp.interpret.cache import run_fingerprint

    return [str(run_dir), run_fingerprint(run_dir), _file_sha(run_dir / "probe.json")]


# ----------------------------------------------------------------------------- jobs (run in workers)
def _construct_and_probe(process: dict, context: int, decay: str, run_dir: str, device: str) -> str:
    from interp.interpret.analyse import build_construction_run, probe_run

    run_dir, done = Path(run_dir), []
    marker = run_dir / "result.json"
    want = {"process": process, "context": context, "decay": decay}
    if not (marker.is_file() and read_json(marker).get("pipeline_inputs") == want):
        shutil.rmtree(run_dir, ignore_errors=True)
        res = build_construction_run(process, context, run_dir, decay=decay)
        write_json(marker, {**read_json(marker), "pipeline_inputs": want})
        done.append(f"built (lambda {res['construction']['decay']:.4f}, relative loss {res['relative_loss']:.6f})")
    if not probed(run_dir):
        out = probe_run(run_dir, device=device)
        done.append(f"probed (R^2 {out['best_r2']:.4f} at {out['best_hook']})")
    return ", ".join(done)


def _recovery_seed(cfg_dict: dict, seed: int, out_dir: str) -> str:
    from interp.studies.recovery import recovery_config_from_dict, run_recovery_seed

    res = run_recovery_seed(recovery_config_from_dict(cfg_dict), seed, out_dir)
    return "fitted " + ", ".join(sorted(res["methods"]))


_SECONDS_PER_STEP = {"transformer": 0.025, "fixed_attention": 0.012, "ssm": 0.015, "belief_net": 0.01}


def _estimated_seconds(job) -> float:
    """A rough single-thread cost, to start the longest stages first (so two workers finish together)."""
    stage, fn, args = job
    if fn is train_and_probe:
        cfg = args[0]
        return cfg["train"]["steps"] * _SECONDS_PER_STEP.get(cfg["model"]["family"], 0.02) + 20
    return 40 if fn is _recovery_seed else 20


# ----------------------------------------------------------------------------- the pipeline
class Pipeline:
    """``Pipeline(cfg, out_dir, figures_dir).run()`` -> the summary dict."""

    def __init__(self, cfg: PipelineConfig, out_dir: str | Path, figures_dir: str | Path | None = None, *,
                 device: str = "cpu", workers: int = 2, figures: bool = True,
                 log: Callable[[str], None] = print):
        if workers < 0:
            raise ValueError(f"--workers must be >= 0, got {workers}")
        self.cfg, self.lay = cfg, Layout(Path(out_dir))
        self.figures_dir = Path(figures_dir if figures_dir is not None else cfg.figures_out)
        self.device, self.workers, self.figures, self.log = device, workers, figures, log
        self.stages_path = self.lay.root / STAGES_FILE

    # -------------------------------------------------------------- bookkeeping
    def _stages(self) -> dict:
        try:
            return read_json(self.stages_path)
        except (OSError, ValueError):
            return {}

    def _record(self, stage: str, fingerprint: str | None, seconds: float) -> None:
        stages = self._stages()
        stages[stage] = {"fingerprint": fingerprint, "seconds": round(seconds, 2)}
        write_json(self.stages_path, stages)

    def _say(self, stage: str, what: str, seconds: float | None = None) -> None:
        took = "" if seconds is None else f" ({seconds:.1f} s)"
        self.log(f"[{stage:<24}] {what}{took}")

    # -------------------------------------------------------------- stages
    def jobs(self) -> list[tuple[str, Callable, tuple]]:
        """The independent stages still to do, longest first (each reuses whatever part is done)."""
        cfg, lay, dev = self.cfg, self.lay, self.device
        jobs = []
        for family, run in cfg.models.items():
            d = lay.model(family)
            if not (trained(run, d) and probed(d)):
                jobs.append((f"model {family}", train_and_probe, (run.to_dict(), str(d), dev)))
        for label, run in cfg.geometry.items():
            d = lay.geometry(run)
            if not (trained(run, d) and probed(d)):
                jobs.append((f"geometry {run.name}", train_and_probe, (run.to_dict(), str(d), dev)))
        proc = {"name": cfg.process.name, "params": dict(cfg.process.params)}
        want = {"process": proc, "context": cfg.context, "decay": cfg.construction_decay}
        marker = lay.construction / "result.json"
        try:
            built = marker.is_file() and read_json(marker).get("pipeline_inputs") == want
        except ValueError:
            built = False
        if not (built and probed(lay.construction)):
            jobs.append(("construction", _construct_and_probe,
                         (proc, cfg.context, cfg.construction_decay, str(lay.construction), dev)))
        if cfg.recovery is not None:
            from interp.studies.recovery import seed_path

            for seed in cfg.recovery.seeds:
                if not seed_path(lay.recovery, seed).is_file():
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
        return [self.lay.model(f) for f in FAMILY_ORDER if f in self.cfg.models] + [self.lay.construction]

    def _compare(self) -> None:
        from interp.interpret.analyse import compare_runs

        dirs = self._compare_dirs()
        fp = _sha([_run_state(d) for d in dirs])
        out = self.lay.compare / "compare.json"
        if self._stages().get("compare", {}).get("fingerprint") == fp and out.is_file():
            self._say("compare", "reused")
            return
        t0 = time.perf_counter()
        compare_runs(dirs, self.lay.compare, device=self.device)
        self._record("compare", fp, time.perf_counter() - t0)
        self._say("compare", f"{len(dirs)} runs -> {self.lay.compare / 'compare.md'}", time.perf_counter() - t0)

    def _figures(self) -> None:
        cfg = self.cfg
        inputs = figure_inputs(cfg, self.lay.root)
        run_dirs = [*inputs["models"].values(), *inputs["geometry"].values()]
        if inputs["construction"] is not None:
            run_dirs.append(inputs["construction"])
        fp = _sha({"runs": [_run_state(d) for d in run_dirs],
                   "files": [_file_sha(self.lay.root / SUMMARY_FILE), _file_sha(self.lay.compare / "compare.json"),
                             _file_sha(self.lay.recovery / "recovery.json")],
                   "scripts": figure_fingerprint(), "out": str(self.figures_dir.resolve())})
        rec = self._stages().get("figures", {})
        if rec.get("fingerprint") == fp and all((self.figures_dir / f).is_file() for f in rec.get("files", [])):
            self._say("figures", "reused")
            return
        t0 = time.perf_counter()
        written = draw_figures(inputs, self.figures_dir, command=self.command)
        stages = self._stages()
        stages["figures"] = {"fingerprint": fp, "seconds": round(time.perf_counter() - t0, 2),
                             "files": written}
        write_json(self.stages_path, stages)
        self._say("figures", f"{len(written)} files -> {self.figures_dir}", time.perf_counter() - t0)

    command = "interp run"

    def run(self) -> dict:
        t_all = time.perf_counter()
        root = self.lay.root
        saved = root / PIPELINE_FILE
        if saved.is_file():
            try:
                same = read_json(saved) == json.loads(json.dumps(self.cfg.raw))
            except ValueError:
                same = False
            if not same:
                self.log(f"[{'config':<24}] {saved} differs from this config: stages whose inputs changed are redone")
        write_json(saved, self.cfg.raw)
        if self.cfg.recovery is not None:
            from interp.studies.recovery import prepare_study

            try:
                prepare_study(self.cfg.recovery, self.lay.recovery)
            except (FileExistsError, ValueError):  # another study's (or a corrupt) folder: this pipeline owns it
                prepare_study(self.cfg.recovery, self.lay.recovery, force=True)
        jobs = self.jobs()
        done = ({f"model {f}" for f in self.cfg.models} | {f"geometry {c.name}" for c in self.cfg.geometry.values()}
                | {"construction"}) - {s for s, _, _ in jobs}
        for stage in sorted(done):
            self._say(stage, "reused (trained and probed)" if stage != "construction" else "reused")
        self._run_jobs(jobs)
        if self.cfg.recovery is not None:
            self._recovery()
        self._compare()
        t0 = time.perf_counter()
        summary = build_summary(self.cfg, root)
        write_json(root / SUMMARY_FILE, summary)
        self._say("summary", f"-> {root / SUMMARY_FILE}", time.perf_counter() - t0)
        if self.figures:
            self._figures()
        self.log(f"[{'done':<24}] {self.cfg.name} in {time.perf_counter() - t_all:.1f} s")
        return summary


# ----------------------------------------------------------------------------- summary
def _attention_row(row: dict | None) -> dict | None:
    if not row or not row.get("attention"):
        return None
    head = row["attention"][0]
    fit = head.get(f"exclude_{head.get('best_exclude', 0)}", {})
    return {"hook": head["hook"], "head": head["head"], "fixedness": head["mean_std"],
            "position_share": head["position_share"], "decay_fitted": fit.get("decay"),
            "decay_fit_r2": fit.get("r2"), "decay_fit_excludes": head.get("best_exclude"),
            "current_weight": head.get("current_weight"), "previous_weight": head.get("previous_weight")}


def build_summary(cfg: PipelineConfig, root: str | Path) -> dict:
    """The headline numbers of a finished pipeline, from its compare.json, run folders and recovery.json."""
    from interp.interpret.analyse import _nan_to_none, process_label
    from interp.hmm import entropy_rate, optimal_loss

    lay = Layout(Path(root))
    compare = read_json(lay.compare / "compare.json")
    hmm = cfg.process.build()
    L = cfg.context
    opt = optimal_loss(hmm, L, seed=0)
    rows = {r["path"]: r for r in compare["runs"]}
    first = next(iter(cfg.models.values()))
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
        if family not in cfg.models:
            continue
        d = lay.model(family)
        row = rows[str(d)]
        result = read_json(d / "result.json")
        entry = {"run": str(d), "relative_loss": row["relative_loss"], "eval_loss": result["eval_loss"],
                 "probe_r2": row["probe_r2"], "probe_hook": row["probe_hook"],
                 "probe_r2_all_layers": row["probe_r2_all_layers"], "probe_r2_shuffled": row["probe_r2_shuffled"],
                 "causal_kl_before": row["causal"]["kl_target_before"],
                 "causal_kl_after": row["causal"]["kl_target_after"],
                 "train_steps": result["steps"]}
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
    geo = {}
    for glabel, run in cfg.geometry.items():
        d = lay.geometry(run)
        probe = read_json(d / "probe.json")
        geo[glabel] = {"run": str(d), "process": process_label(run),
                       "relative_loss": read_json(d / "result.json")["relative_loss"],
                       "probe_r2": probe["best_r2"], "probe_hook": probe["best_hook"]}
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
    return _nan_to_none(summary)
