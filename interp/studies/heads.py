"""The head-count rule against trained models (``interp study runs/heads.toml``, kind "heads").

Each run is an attention-only transformer with some number of heads on some process. Per process the rule
(:func:`interp.hmm.heads.head_count` over the positions the run is trained on,
:func:`interp.interpret.cache.evaluation_length` of its context, so lags up to context - 2) predicts p heads; the
outcome agrees with it when every model with at least p heads comes within ``margin`` (``[options] margin``,
default 0.05) of the learnable gap of the best such model, and every model with fewer heads falls short of that
best by more than ``margin``. The gap is the gap fraction ``(loss - optimal) / (unigram - optimal)``, comparable
across processes (docs/construction.md, "How many heads").

The first-order construction says how much a missing head should cost: on each process's evaluation set, the gap
fraction of the multi-head construction with the predicted heads, and for a model with fewer heads that of the best
subset of as many of its heads (:func:`first_order_gaps`). Where that predicted shortfall is below the margin the
margin cannot see it, and such a row is "not testable at this margin" rather than an agreement or a miss.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import torch

from interp.hmm.heads import HeadCount, head_count, keep_heads
from interp.io import read_json
from interp.rundir import PROBE, RESULT

MARGIN = 0.05  # default share of the learnable gap that separates "worse" from "as good"
UNTESTABLE = "not testable at this margin"
COLUMNS = ["run", "process", "predicted heads", "reason", "model heads", "relative loss", "gap fraction",
           "first-order gap", "predicted shortfall", "probe R^2", "enough heads", "agrees"]


_OPTIONS = ("margin",)


def check_config(cfg) -> None:
    """Refuse, when the study is loaded, options this analysis cannot use and runs that are not transformers."""
    unknown = sorted(set(cfg.options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"options.{unknown[0]}: unknown option for kind heads (expected one of "
                         f"{', '.join(_OPTIONS)})")
    margin = cfg.options.get("margin", MARGIN)
    if not isinstance(margin, (int, float)) or isinstance(margin, bool):
        raise ValueError(f"options.margin must be a number, got {margin!r}")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"options.margin must lie in [0, 1), got {margin}")
    for name, run in cfg.run_configs().items():
        if run.model.family != "transformer":
            raise ValueError(f"runs.{name}: the heads study compares transformers, got family {run.model.family!r}")


def _label(process) -> str:
    return f"{process.name}({', '.join(f'{k}={v}' for k, v in process.params.items())})"


def short_reason(reason: str) -> str:
    """The reason's first clause (before its parenthesised eigenvalues), for the table; table.json keeps it whole."""
    return reason.split(" (", 1)[0]


def first_order_gaps(hmm, heads: HeadCount, tokens: torch.Tensor) -> dict[int, float]:
    """Gap fraction ``(loss - optimal) / (unigram - optimal)`` on ``tokens`` [n, L] of the first-order construction
    with h = 0..n_heads heads: h = n_heads is the multi-head construction; fewer heads keep the best subset of h of
    its heads, their weights unchanged. That is an upper bound on the best h-head first-order loss, not the optimum
    (other matrices and weights might do better). ``optimal``: the exact filter's loss on these tokens."""
    from interp.hmm import forward_filter, unigram_loss
    from interp.interpret.construction import multihead_beliefs, next_token_loss

    optimal = float(-forward_filter(hmm, tokens, return_beliefs=False).log_normalizers[:, 1:].mean())
    unigram = unigram_loss(hmm)

    def gap(subset) -> float:
        # beliefs at positions 0..L-2, the ones that predict a token (the heads are solved for them); the last
        # position predicts nothing, so next_token_loss never reads the copy that pads it
        b = multihead_beliefs(hmm, tokens[:, :-1], keep_heads(heads, subset))
        loss = next_token_loss(hmm, tokens, None, torch.cat([b, b[:, -1:]], 1))
        return (loss - optimal) / (unigram - optimal)

    return {h: min(gap(s) for s in combinations(range(heads.n_heads), h)) for h in range(heads.n_heads + 1)}


def verdicts(rows: list[dict], margin: float) -> None:
    """Fill ``enough heads`` and ``agrees`` in place: rows carry ``process``, ``predicted heads``, ``model heads``
    and ``gap fraction``, optionally ``predicted shortfall``. A process none of whose models has enough heads cannot
    be judged (agrees is None); a model with too few heads whose predicted shortfall is below ``margin`` is
    :data:`UNTESTABLE`."""
    for row in rows:
        enough = [r["gap fraction"] for r in rows
                  if r["process"] == row["process"] and r["model heads"] >= r["predicted heads"]]
        row["enough heads"] = "yes" if row["model heads"] >= row["predicted heads"] else "no"
        if not enough:
            row["agrees"] = None
            continue
        shortfall = row.get("predicted shortfall")
        if row["enough heads"] == "no" and shortfall is not None and shortfall < margin:
            row["agrees"] = UNTESTABLE
            continue
        worse = row["gap fraction"] > min(enough) + margin
        row["agrees"] = "yes" if worse == (row["enough heads"] == "no") else "no"


def analyse(cfg, run_dirs: dict[str, Path], out_dir: Path, *, device: str = "cpu", log=print) -> dict:
    """One row per run: the process's predicted head count and reason beside the model's heads, relative loss, gap
    fraction, the first-order construction's gap with as many heads (at most the predicted ones) and its predicted
    shortfall, best probe R^2 and whether the outcome agrees (module docstring); one figure (gap fraction against
    heads, per process, the prediction and the construction marked)."""
    from interp.hmm import sample
    from interp.interpret.analyse import ProbeResult
    from interp.interpret.cache import evaluation_length
    from interp.training.trainer import TrainResult

    margin = float(cfg.options.get("margin", MARGIN))  # checked by check_config
    rows, predictions, gaps = [], {}, {}
    for name, run in cfg.run_configs().items():
        label = _label(run.process)
        key = (label, run.train.context)
        if key not in predictions:  # a model trained at context L predicts from positions 0..L-2
            predictions[key] = head_count(run.process.build(), evaluation_length(run.train.context))
        hc = predictions[key]
        # the run's evaluation set, drawn as the trainer draws it (on the CPU)
        eval_key = (*key, run.train.eval_sequences, run.seeds()["eval"])
        if eval_key not in gaps:
            hmm = run.process.build()
            tokens = sample(hmm, run.train.eval_sequences, run.train.context, seed=run.seeds()["eval"])
            gaps[eval_key] = first_order_gaps(hmm, hc, tokens)
        construction = gaps[eval_key]
        result = TrainResult.from_dict(read_json(run_dirs[name] / RESULT))
        probe = ProbeResult.from_dict(read_json(run_dirs[name] / PROBE))
        h = min(run.model.n_heads, hc.n_heads)
        rows.append({"run": name, "process": label, "predicted heads": hc.n_heads, "reason": short_reason(hc.reason),
                     "model heads": run.model.n_heads, "relative loss": result.relative_loss,
                     "gap fraction": result.gap_fraction, "first-order gap": construction[h],
                     "predicted shortfall": construction[h] - construction[hc.n_heads] if h < hc.n_heads else None,
                     "probe R^2": probe.best_r2})
    verdicts(rows, margin)
    judged = [r for r in rows if r["agrees"] in ("yes", "no")]
    misses = [r["run"] for r in judged if r["agrees"] == "no"]
    notes = [f"Agreement: a model with fewer heads than predicted must fall short of the best model with enough "
             f"heads on the same process by more than {margin:g} of the learnable gap (gap fraction); one with "
             f"enough heads must come within {margin:g} of it.",
             "First-order gap: the multi-head construction's gap fraction on the run's evaluation set, with the "
             "predicted heads or, for a model with fewer, the best subset of as many of them (weights kept, others "
             "dropped; an upper bound on the best first-order loss with that many heads). Predicted shortfall: that "
             "minus the full construction's; below the margin the row is not testable at this margin.",
             f"{len(judged) - len(misses)} of {len(judged)} runs agree with the prediction"
             + (f"; misses: {', '.join(misses)} (see the reason column and docs/construction.md)" if misses else ".")]
    notes += [f"{r['run']}: {UNTESTABLE} ({margin:g}): with {r['model heads']} of {r['predicted heads']} heads the "
              f"construction falls short by only {r['predicted shortfall']:.4f} of the learnable gap (first-order gap "
              f"{r['first-order gap']:.4f} against {r['first-order gap'] - r['predicted shortfall']:.4f})"
              for r in rows if r["agrees"] == UNTESTABLE]
    notes.append("The reason column is the reason's first clause; table.json has it whole under "
                 "extra.predictions.")
    figures = _figure(rows, out_dir / "figures")
    extra = {"margin": margin, "predictions": {f"{label} @ context {ctx}": hc.to_dict()
                                               for (label, ctx), hc in predictions.items()},
             "first_order_gaps": {f"{label} @ context {ctx}, {n} sequences, seed {seed}": {str(h): g for h, g in
                                                                                         by_heads.items()}
                                  for (label, ctx, n, seed), by_heads in gaps.items()}}
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
            ax.plot([r["model heads"] for r in mine], [r["first-order gap"] for r in mine], "x--", color=colour,
                    lw=1.0)
            ax.axvline(mine[0]["predicted heads"], color=colour, ls=":", lw=1.0)
        ax.set_xlabel("heads in the model (dotted: predicted; x: first-order construction)")
        ax.set_ylabel("gap fraction (0: optimal, 1: unigram)")
        ax.set_xticks(sorted({r["model heads"] for r in rows}))
        ax.legend(loc="upper right")
        paths = save(fig, folder, "heads")
    return [p.name for p in paths]
