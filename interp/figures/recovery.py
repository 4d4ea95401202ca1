"""Figures of a recovery study: held-out excess NLL against fitting time, and recovery errors with spread.

    python -m interp.figures.recovery runs/recovery_small [runs/recovery_paper_over ...] [--out DIR]

Each study folder must hold the recovery.json written by ``interp recover``. Writes recovery_nll_time.{png,pdf}
and recovery_errors.{png,pdf} into --out (default: the first study's folder). The drawing functions
(:func:`draw_nll_time`, :func:`draw_errors`) take axes, so ``interp.figures.paper`` (F7) reuses them in one figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from interp.figures import style  # sets the Agg backend
from interp.io import read_json

CURVE_METHODS = ("belief_net", "baum_welch_scaling", "baum_welch_log")  # fitted iteratively: a curve each
ERROR_KEYS = {"excess_nll": "excess held-out NLL (nats/token)", "A_frobenius": "A Frobenius error",
              "C_frobenius": "C Frobenius error"}
FLOOR = 1e-5  # excess NLL is drawn on a log axis: values below (or at) zero sit here


def label(study: dict) -> str:
    h = study["config"]["hmm"]
    return f"S={h['n_states']}, V={h['n_tokens']}"


def labels(studies: list[dict]) -> list[str]:
    """Legend labels: the regime, with the study's name where two studies share a regime."""
    base = [label(s) for s in studies]
    return [f"{s['config']['name']} ({b})" if base.count(b) > 1 else b for s, b in zip(studies, base)]


def methods_of(studies: list[dict]) -> list[str]:
    """Every method that appears in any seed of any study, in first-seen order."""
    methods: list[str] = []
    for study in studies:
        for seed in study["seeds"]:
            methods += [m for m in seed["methods"] if m not in methods]
    return methods


def draw_nll_time(ax, study: dict) -> None:
    """One study: each seed's held-out NLL minus the true model's against fitting time (log-log), for the iterative
    methods; the one-shot spectral method as a point per seed."""
    first = study["seeds"][0]
    for seed in study["seeds"]:
        true = seed["true_heldout_nll"]
        for method in CURVE_METHODS:
            if method not in seed["methods"] or not seed["methods"][method].get("curve"):
                continue
            c = np.array(seed["methods"][method]["curve"], dtype=float)
            ax.plot(np.maximum(c[:, 0], 1e-3), np.maximum(c[:, 2] - true, FLOOR), color=style.METHOD_COLOURS[method],
                    alpha=0.5, lw=1, label=method if seed is first else None)
        spec = seed["methods"].get("spectral")
        if spec is not None and "excess_nll" in spec:
            ax.scatter([max(spec["seconds"], 1e-3)], [max(spec["excess_nll"], FLOOR)], marker="x", s=20,
                       color=style.METHOD_COLOURS["spectral"], label="spectral" if seed is first else None, zorder=3)
    ax.axhline(study["config"]["epsilon"], color="k", ls=":", lw=1, label="epsilon")
    ax.set(xscale="log", yscale="log", xlabel="fitting time (s)", ylabel="held-out NLL - true (nats/token)",
           title=f"{label(study)}, {len(study['seeds'])} seeds")
    ax.legend(fontsize=7)


def draw_errors(axes, studies: list[dict], *, by_method: bool = False) -> None:
    """Three axes (excess NLL, A and C errors): per method and study, every seed's value (dots) and the median (bar).

    Colours tell the studies apart, or the methods with ``by_method`` (then without a legend: one study reads best).
    A method with no value for a quantity (the spectral method estimates no A, C) is marked n/a."""
    methods = methods_of(studies)
    width = 0.8 / len(studies)
    names = labels(studies)
    for k, study in enumerate(studies):
        labelled = False
        for ax, key in zip(axes, ERROR_KEYS):
            for i, m in enumerate(methods):
                colour = style.METHOD_COLOURS.get(m.split("/")[0], "0.4") if by_method else f"C{k}"
                vals = [s["methods"][m][key] for s in study["seeds"] if m in s["methods"] and key in s["methods"][m]]
                x = i + (k - (len(studies) - 1) / 2) * width
                if not vals:
                    ax.annotate("n/a", (x, 0), xycoords=("data", "axes fraction"), xytext=(0, 4),
                                textcoords="offset points", ha="center", fontsize=7, color="0.5")
                    continue
                ax.scatter(np.full(len(vals), x), vals, s=10, color=colour, alpha=0.6,
                           label=None if labelled else names[k])
                labelled = True
                ax.hlines(np.median(vals), x - width / 2, x + width / 2, color=colour)
    for ax, title in zip(axes, ERROR_KEYS.values()):
        ax.set_xticks(np.arange(len(methods)), methods, rotation=45 if len(methods) > 4 else 20, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(methods) - 0.4)
        ax.set_title(title, fontsize=9)
    axes[0].set_yscale("log")
    if not by_method:
        axes[0].legend(fontsize=7)


def nll_time(studies: list[dict], out: Path) -> list[Path]:
    with style.figure_style():
        fig, axes = plt.subplots(1, len(studies), figsize=(5 * len(studies), 3.8), squeeze=False)
        for ax, study in zip(axes[0], studies):
            draw_nll_time(ax, study)
        fig.tight_layout()
        return style.save(fig, out, "recovery_nll_time")


def errors(studies: list[dict], out: Path) -> list[Path]:
    with style.figure_style():
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        draw_errors(axes, studies)
        fig.tight_layout()
        return style.save(fig, out, "recovery_errors")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    try:
        studies = [read_json(Path(s) / "recovery.json") for s in args.studies]
    except (FileNotFoundError, ValueError) as err:
        print(f"recovery_figures: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or args.studies[0])
    out.mkdir(parents=True, exist_ok=True)
    nll_time(studies, out)
    errors(studies, out)
    print(f"-> {out}/recovery_nll_time.png, recovery_errors.png (and .pdf)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
