"""Figures of a recovery study: held-out excess NLL against fitting time, and recovery errors with spread.

    python analysis/recovery_figures.py runs/recovery_small [runs/recovery_paper_over ...] [--out DIR]

Each study folder must hold the recovery.json written by ``interp recover``. Writes recovery_nll_time.{png,pdf}
and recovery_errors.{png,pdf} into --out (default: the first study's folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from interp.io import read_json  # noqa: E402

COLOURS = {"belief_net": "tab:blue", "baum_welch_scaling": "tab:orange", "baum_welch_log": "tab:red",
           "spectral": "tab:green"}
METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None}}


def save(fig, out: Path, stem: str) -> None:
    for ext in ("png", "pdf"):
        fig.savefig(out / f"{stem}.{ext}", dpi=150, metadata=METADATA[ext])
    plt.close(fig)


def label(study: dict) -> str:
    h = study["config"]["hmm"]
    return f"S={h['n_states']}, V={h['n_tokens']}"


def nll_time(studies: list[dict], out: Path) -> None:
    fig, axes = plt.subplots(1, len(studies), figsize=(5 * len(studies), 3.8), squeeze=False)
    for ax, study in zip(axes[0], studies):
        for seed in study["seeds"]:
            true = seed["true_heldout_nll"]
            for method in ("belief_net", "baum_welch_scaling", "baum_welch_log"):
                if method not in seed["methods"]:
                    continue
                c = np.array(seed["methods"][method]["curve"])
                ax.plot(np.maximum(c[:, 0], 1e-3), np.maximum(c[:, 2] - true, 1e-5), color=COLOURS[method],
                        alpha=0.5, lw=1, label=method if seed is study["seeds"][0] else None)
        ax.axhline(study["config"]["epsilon"], color="k", ls=":", lw=1, label="epsilon")
        ax.set(xscale="log", yscale="log", xlabel="fitting time (s)", ylabel="held-out NLL - true (nats/token)",
               title=label(study))
        ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, out, "recovery_nll_time")


def errors(studies: list[dict], out: Path) -> None:
    """Per method and study: every seed's value (dots) and the median (bar)."""
    methods = []
    for study in studies:
        for seed in study["seeds"]:
            methods += [m for m in seed["methods"] if m not in methods]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    width = 0.8 / len(studies)
    for k, study in enumerate(studies):
        colour, labelled = f"C{k}", False
        for ax, key in zip(axes, ("excess_nll", "A_frobenius", "C_frobenius")):
            for i, m in enumerate(methods):
                vals = [s["methods"][m][key] for s in study["seeds"] if m in s["methods"] and key in s["methods"][m]]
                if not vals:
                    continue
                x = i + (k - (len(studies) - 1) / 2) * width
                ax.scatter(np.full(len(vals), x), vals, s=10, color=colour, alpha=0.6,
                           label=None if labelled else label(study))
                labelled = True
                ax.hlines(np.median(vals), x - width / 2, x + width / 2, color=colour)
    for ax, key in zip(axes, ("excess held-out NLL (nats/token)", "A Frobenius error", "C Frobenius error")):
        ax.set_xticks(np.arange(len(methods)), methods, rotation=60, ha="right", fontsize=7)
        ax.set_title(key, fontsize=9)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save(fig, out, "recovery_errors")


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
