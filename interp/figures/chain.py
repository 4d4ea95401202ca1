"""The minimal-model chain's figure: each step of the chain (study kind "minimal_chain") in four panels.

    (a) relative loss   (b) probe R^2: best hook, first layer onto the constrained and the exact beliefs
    (c) how fixed the first head's attention is (std across inputs)   (d) its fitted decay against lambda

Drawn by :func:`interp.studies.minimal_chain.analyse` into ``<study>/figures/chain.{png,pdf}`` (byte-identical
from the same runs: :func:`interp.figures.style.save`).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt

from interp.figures import style  # sets the Agg backend

STEM = "chain"


def _values(rows: list[dict], column: str) -> list[float]:
    return [math.nan if r.get(column) is None else float(r[column]) for r in rows]


def make_chain_figure(rows: list[dict], out: Path, *, analytic_decay: float | None) -> list[str]:
    """Draw the figure from the study's table rows; return the file names written into ``out``."""
    x = list(range(len(rows)))
    names = [f"{r['step']}. {r['run']}" for r in rows]
    trained = style.family_colour("transformer")
    built = style.family_colour("construction")
    colours = [built if r["run"] == "construction" else trained for r in rows]
    with style.figure_style():
        fig, axes = plt.subplots(2, 2, figsize=(9.0, 6.0), sharex=True, layout="constrained")
        ax = axes[0, 0]
        ax.bar(x, [v - 1.0 for v in _values(rows, "relative loss")], color=colours)
        ax.set_ylabel("relative loss - 1")
        ax.set_title("(a) loss above the optimum")

        ax = axes[0, 1]
        for column, label, marker in (("best probe R^2", "best hook", "o"),
                                      ("first layer R^2 constrained", "first layer, constrained beliefs", "s"),
                                      ("first layer R^2 exact", "first layer, exact beliefs", "^")):
            ax.plot(x, _values(rows, column), marker=marker, label=label)
        ax.set_ylabel("held-out probe $R^2$")
        ax.set_title("(b) belief probes")
        ax.legend(loc="lower left")

        ax = axes[1, 0]
        ax.bar(x, _values(rows, "attention std"), color=colours)
        ax.set_ylabel("pattern std across inputs")
        ax.set_title("(c) first head: how input-independent")

        ax = axes[1, 1]
        ax.plot(x, _values(rows, "fitted decay"), "o-", color=trained, label="fitted to the mean pattern")
        if analytic_decay is not None:
            ax.axhline(analytic_decay, color=style.family_colour("exact"), lw=0.8, ls="--",
                       label=f"$\\lambda = {analytic_decay:.3f}$")
        ax.set_ylabel("geometric decay")
        ax.set_title("(d) first head: decay of the mean pattern")
        ax.legend(loc="best")
        for ax in axes[1]:
            ax.set_xticks(x, names, rotation=35, ha="right")
        fig.suptitle("The minimal-model chain (purple: the hand-set construction, not trained)")
        return [p.name for p in style.save(fig, out, STEM)]
