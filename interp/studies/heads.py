"""The head-count rule against trained models (``interp study runs/heads.toml``, kind "heads").

Each run is an attention-only transformer with some number of heads on some process. Per process the rule
(:func:`interp.hmm.heads.head_count` at the run's context) predicts p heads; the outcome agrees with it when every
model with at least p heads comes within ``margin`` (``[options] margin``, default 0.05) of the learnable gap of
the best such model, and every model with fewer heads falls short of that best by more than ``margin``. The gap
is the gap fraction ``(loss - optimal) / (unigram - optimal)``, comparable across processes (docs/construction.md,
"How many heads").
"""

from __future__ import annotations

from pathlib import Path

from interp.hmm.heads import head_count
from interp.io import read_json
from interp.rundir import PROBE, RESULT

MARGIN = 0.05  # default share of the learnable gap that separates "worse" from "as good"
COLUMNS = ["run", "process", "predicted heads", "reason", "model heads", "relative loss", "gap fraction",
           "probe R^2", "enough heads", "agrees"]


def _label(process) -> str:
    return f"{process.name}({', '.join(f'{k}={v}' for k, v in process.params.items())})"


def verdicts(rows: list[dict], margin: float) -> None:
    """Fill ``enough heads`` and ``agrees`` in place: rows carry ``process``, ``predicted heads``, ``model heads``
    and ``gap fraction``. A process none of whose models has enough heads cannot be judged (agrees is None)."""
    for row in rows:
        enough = [r["gap fraction"] for r in rows
                  if r["process"] == row["process"] and r["model heads"] >= r["predicted heads"]]
        row["enough heads"] = "yes" if row["model heads"] >= row["predicted heads"] else "no"
        if not enough:
            row["agrees"] = None
            continue
        worse = row["gap fraction"] > min(enough) + margin
        row["agrees"] = "yes" if worse == (row["enough heads"] == "no") else "no"


def analyse(cfg, run_dirs: dict[str, Path], out_dir: Path, *, device: str = "cpu", log=print) -> dict:
    """One row per run: the process's predicted head count and reason beside the model's heads, relative loss, gap
    fraction, best probe R^2 and whether the outcome agrees (module docstring); one figure (gap fraction against
    heads, per process, the prediction marked)."""
    from interp.interpret.analyse import ProbeResult
    from interp.training.trainer import TrainResult

    margin = float(cfg.options.get("margin", MARGIN))
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"options.margin must lie in [0, 1), got {margin}")
    rows, predictions = [], {}
    for name, run in cfg.run_configs().items():
        if run.model.family != "transformer":
            raise ValueError(f"runs.{name}: the heads study compares transformers, got family {run.model.family!r}")
        label = _label(run.process)
        key = (label, run.train.context)
        if key not in predictions:
            predictions[key] = head_count(run.process.build(), run.train.context)
        hc = predictions[key]
        result = TrainResult.from_dict(read_json(run_dirs[name] / RESULT))
        probe = ProbeResult.from_dict(read_json(run_dirs[name] / PROBE))
        rows.append({"run": name, "process": label, "predicted heads": hc.n_heads, "reason": hc.reason,
                     "model heads": run.model.n_heads, "relative loss": result.relative_loss,
                     "gap fraction": result.gap_fraction, "probe R^2": probe.best_r2})
    verdicts(rows, margin)
    judged = [r for r in rows if r["agrees"] is not None]
    misses = [r["run"] for r in judged if r["agrees"] == "no"]
    notes = [f"Agreement: a model with fewer heads than predicted must fall short of the best model with enough "
             f"heads on the same process by more than {margin:g} of the learnable gap (gap fraction); one with "
             f"enough heads must come within {margin:g} of it.",
             f"{len(judged) - len(misses)} of {len(judged)} runs agree with the prediction"
             + (f"; misses: {', '.join(misses)} (see the reason column and docs/construction.md)" if misses else ".")]
    figures = _figure(rows, out_dir / "figures")
    extra = {"margin": margin, "predictions": {f"{label} @ context {ctx}": hc.to_dict()
                                               for (label, ctx), hc in predictions.items()}}
    return {"title": "The head-count rule: predicted heads against trained attention-only transformers",
            "columns": COLUMNS, "rows": rows, "notes": notes, "figures": figures, "extra": extra}


def _figure(rows: list[dict], folder: Path) -> list[str]:
    """Gap fraction against the number of heads, one line per process, its prediction as an open marker."""
    from interp.figures.style import figure_style, plt, save

    processes = list(dict.fromkeys(r["process"] for r in rows))
    with figure_style():
        fig, ax = plt.subplots(figsize=(5.0, 3.2), layout="constrained")
        for i, proc in enumerate(processes):
            mine = sorted((r for r in rows if r["process"] == proc), key=lambda r: r["model heads"])
            colour = f"C{i}"
            ax.plot([r["model heads"] for r in mine], [r["gap fraction"] for r in mine], "o-", color=colour,
                    label=f"{proc}: predicts {mine[0]['predicted heads']}")
            ax.axvline(mine[0]["predicted heads"], color=colour, ls=":", lw=1.0)
        ax.set_xlabel("heads in the model (dotted: predicted)")
        ax.set_ylabel("gap fraction (0: optimal, 1: unigram)")
        ax.set_xticks(sorted({r["model heads"] for r in rows}))
        ax.legend(loc="upper right")
        paths = save(fig, folder, "heads")
    return [p.name for p in paths]
