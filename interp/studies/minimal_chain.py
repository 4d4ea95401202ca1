"""The minimal-model chain (``interp study runs/minimal_chain.toml``, kind "minimal_chain").

The study's runs, in their TOML order, are the chain's trained steps, each simpler than the one before (4 layers ->
2 -> 1 -> attention-only -> no skip path -> no normalisation -> one fixed attention matrix); the analysis appends
the last step itself, the hand-set construction (not trained: :func:`interp.interpret.analyse.build_construction_run`,
into ``<study>/construction/``). One row per step: what changed from the step before (read off the two model
configs, or ``[options] labels``), relative loss, best probe R^2, the first attention head's fixedness and fitted
decay (:func:`interp.interpret.analyse.attention_summary`) and the constrained-update comparison of
:mod:`interp.interpret.constrained` (OV vectors and embeddings against ``v[x]``, the mean pattern against
``lambda^(t-s)``, first- and last-layer probes against the constrained and the exact beliefs).

``[options]``: ``decay`` ("analytic" or "fitted", the construction's lambda; default "analytic"), ``labels``
({run: text} replacing the derived "what changed").
"""

from __future__ import annotations

import shutil
from pathlib import Path

from interp.io import read_json
from interp.rundir import CONSTRUCTION, PROBE, RESULT, Manifest

CONSTRUCTION_RUN = "construction"  # the hand-set last step, a run folder inside the study folder
COLUMNS = ["step", "run", "what changed", "relative loss", "best probe R^2", "attention std", "position share",
           "fitted decay", "TV to lambda^k", "OV cosine", "embedding cosine", "first layer R^2 constrained",
           "first layer R^2 exact", "last layer R^2 constrained", "last layer R^2 exact"]
_OPTIONS = ("decay", "labels")
# How a change of one model key reads in the table (old, new -> words); other keys read "key: old -> new".
_PHRASES = {
    "n_layers": lambda a, b: f"{b} layer{'s' if b != 1 else ''} (was {a})",
    "attn_only": lambda a, b: "attention-only (no MLPs)" if b else "MLPs added",
    "skip": lambda a, b: "skip path added" if b else "no skip path",
    "normalization": lambda a, b: "no normalisation" if b == "none" else f"normalisation {b} (was {a})",
    "family": lambda a, b: "one fixed attention matrix" if b == "fixed_attention" else f"family {b} (was {a})",
}
# Keys whose change follows from another's (MLP settings vanish with the MLPs), not worth a word of their own.
_IMPLIED = {"d_mlp", "act_fn"}


def describe_change(before: dict | None, after: dict) -> str:
    """What differs between two model configs (``to_dict`` form), in words; ``before`` None: the chain's start."""
    if before is None:
        return "start"
    if before.get("family") != after.get("family"):
        return _PHRASES["family"](before.get("family"), after.get("family"))
    parts = []
    for key in [*before, *(k for k in after if k not in before)]:
        if key in _IMPLIED or before.get(key) == after.get(key):
            continue
        a, b = before.get(key), after.get(key)
        parts.append(_PHRASES[key](a, b) if key in _PHRASES and a is not None and b is not None
                     else f"{key}: {a} -> {b}")
    return ", ".join(parts) or "nothing"


def check_config(cfg) -> None:
    """Refuse, when the study is loaded, options this analysis cannot use and steps on other data."""
    _check(cfg)


def _check(cfg) -> tuple[dict, int, str, dict]:
    """(process dict, context, construction decay, labels): every run must share the study's data."""
    unknown = sorted(set(cfg.options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"options.{unknown[0]}: unknown option for kind minimal_chain (expected one of "
                         f"{', '.join(_OPTIONS)})")
    decay = cfg.options.get("decay", "analytic")
    if decay not in ("analytic", "fitted"):
        raise ValueError(f"options.decay must be 'analytic' or 'fitted', got {decay!r}")
    labels = cfg.options.get("labels", {})
    if not isinstance(labels, dict) or any(not isinstance(v, str) for v in labels.values()):
        raise ValueError("options.labels must be a table of run name = \"text\"")
    runs = cfg.run_configs()
    extra = sorted(set(labels) - set(runs) - {CONSTRUCTION_RUN})
    if extra:
        raise ValueError(f"options.labels.{extra[0]}: no such run")
    if CONSTRUCTION_RUN in runs:
        raise ValueError(f"runs.{CONSTRUCTION_RUN}: the name is kept for the hand-set last step; rename the run")
    first = next(iter(runs.values()))
    process, context = first.process.to_dict(), first.train.context
    for name, run in runs.items():
        if run.process.to_dict() != process or run.train.context != context:
            raise ValueError(f"runs.{name}: every step of the chain must use the same process and context as the "
                             f"first ({first.name})")
    return process, context, decay, labels


def _construct(process: dict, context: int, decay: str, run_dir: Path, device: str, log) -> None:
    """The hand-set construction as a probed run folder, rebuilt only when its inputs changed."""
    from interp.interpret.analyse import build_construction_run, construction_inputs, load_probe_result, probe_run

    if not Manifest(run_dir).is_fresh(CONSTRUCTION, construction_inputs(process, context, decay)):
        shutil.rmtree(run_dir, ignore_errors=True)
        res = build_construction_run(process, context, run_dir, decay=decay, name=CONSTRUCTION_RUN)
        log(f"[{'construction':<24}] built (lambda {res['construction']['decay']:.4f}, relative loss "
            f"{res['relative_loss']:.6f})")
    if load_probe_result(run_dir) is None:
        probe_run(run_dir, device=device)


def _first_head(attention: list[dict]) -> dict | None:
    """Head 0 of the first attention layer in :func:`attention_summary`'s rows."""
    for row in attention:
        if row["hook"].startswith("blocks.0.") and row["head"] == 0:
            return row
    return None


def step_row(run_dir: Path, *, step: int, name: str, change: str, device: str = "cpu", log=print) -> tuple[dict, dict]:
    """One row of the table and the full measurements behind it (for ``extra``)."""
    from interp.hmm import HMM
    from interp.interpret.analyse import attention_summary, ensure_cache
    from interp.interpret.constrained import analyse_constrained
    from interp.training.checkpoint import load_model

    result, probe = read_json(run_dir / RESULT), read_json(run_dir / PROBE)
    cache = ensure_cache(run_dir, device=device, log=log)
    _, cfg = load_model(run_dir, device=device)
    hmm = cfg.process.build()
    attention = attention_summary(cache, hmm) if any("hook_pattern" in h for h in cache.hooks) else []
    cache.release()
    constrained = analyse_constrained(run_dir, device=device, log=log) if isinstance(hmm, HMM) else None
    head = _first_head(attention)
    row = {"step": step, "run": name, "what changed": change, "relative loss": result["relative_loss"],
           "best probe R^2": probe["best_r2"]}
    if head is not None:
        fit = head[f"exclude_{head['best_exclude']}"]
        row.update({"attention std": head["mean_std"], "position share": head["position_share"],
                    "fitted decay": fit["decay"]})
    if constrained is not None:
        first_tv = [a.tv for a in constrained.attention if a.hook.startswith("blocks.0.") and a.head == 0]
        row["TV to lambda^k"] = first_tv[0] if first_tv else None
        row["OV cosine"] = constrained.ov[0].mean_cosine if constrained.ov else None
        row["embedding cosine"] = None if constrained.embedding is None else constrained.embedding.mean_cosine
        if constrained.layers:
            first, last = constrained.layers[0], constrained.layers[-1]
            row.update({"first layer R^2 constrained": first.r2_constrained, "first layer R^2 exact": first.r2_exact,
                        "last layer R^2 constrained": last.r2_constrained, "last layer R^2 exact": last.r2_exact})
    detail = {"best_hook": probe["best_hook"], "attention": attention,
              "constrained": None if constrained is None else constrained.to_dict(),
              "optimal_loss": result.get("optimal_loss")}
    return {c: row.get(c) for c in COLUMNS}, detail


def analyse(cfg, run_dirs: dict[str, Path], out_dir: Path, *, device: str = "cpu", log=print) -> dict:
    """The chain's table (module docstring) and one figure, ``chain.{png,pdf}``."""
    from interp.config import to_dict
    from interp.figures.chain import make_chain_figure
    from interp.interpret import construction as K

    process, context, decay, labels = _check(cfg)
    out_dir = Path(out_dir)
    construction_dir = out_dir / CONSTRUCTION_RUN
    _construct(process, context, decay, construction_dir, device, log)
    models = {name: to_dict(run.model) for name, run in cfg.run_configs().items()}  # every key, defaults too
    steps = [*((name, Path(d)) for name, d in run_dirs.items()), (CONSTRUCTION_RUN, construction_dir)]
    rows, details, before = [], {}, None
    for i, (name, run_dir) in enumerate(steps, start=1):
        if name == CONSTRUCTION_RUN:
            change = "the construction: hand-set weights, not trained"
        else:
            change = describe_change(before, models[name])
            before = models[name]
        log(f"[{'minimal_chain':<24}] step {i}: {name}")
        row, details[name] = step_row(run_dir, step=i, name=name, change=labels.get(name, change), device=device,
                                      log=log)
        rows.append(row)
    hmm = cfg.run_configs()[steps[0][0]].process.build()
    lam = K.analytic_decay(hmm)
    figures = make_chain_figure(rows, out_dir / "figures", analytic_decay=lam)
    notes = [
        "Relative loss: evaluation loss / optimal loss. Best probe R^2: held-out, the best single residual hook.",
        "Attention std, position share, fitted decay: the first layer's first head (mean std of each pattern entry "
        "across inputs; share of the pattern's variance that position explains; geometric fit of its mean pattern).",
        f"TV to lambda^k: mean total-variation distance per query row between that head's mean pattern and the "
        f"construction's lambda^(t-s) (lambda = {_fmt(details[steps[-1][0]]['constrained']['decay'])}; \"-\" "
        "for a negative lambda, whose signed pattern no attention can match).",
        "OV / embedding cosine: the first layer's token vectors mapped into belief space by the run's probe at the "
        "first attention output, centred over tokens, against the predicted v[x] (mean over tokens; no embedding "
        "cosine without a skip path, or where the embedding maps to ~0).",
        "First / last layer R^2: held-out probes onto the constrained (first-order) and the exact beliefs.",
    ]
    return {"title": "The minimal-model chain on " + _process_label(process), "columns": COLUMNS, "rows": rows,
            "notes": notes, "figures": figures,
            "extra": {"analytic_decay": lam, "construction_decay": decay, "steps": details}}


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _process_label(process: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in process.get("params", {}).items())
    return f"{process['name']}({params})"
