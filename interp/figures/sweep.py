"""The figure of a sweep: relative loss and belief-probe R^2 against the first grid key, spread over seeds.

    python -m interp.figures.sweep runs/sweep_mess3 [--out DIR]

Reads the results.json written by ``interp sweep`` and writes sweep.{png,pdf} (default: into the sweep folder).
One line per combination of the other grid keys: the mean over seeds with a bar of +- one standard deviation,
every seed drawn as a dot. A numeric first key is drawn on its own scale, any other by position.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt

from interp.figures import style  # sets the Agg backend
from interp.io import read_json

PANELS = (("relative_loss", "loss / optimal loss"), ("probe_r2", "belief probe $R^2$ (held out)"))


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def make_sweep_figure(res: dict, out: Path) -> list[Path]:
    keys = res["keys"]
    rows = res["rows"]
    if not keys:  # seeds only: one point per panel
        keys_x, others = [], []
    else:
        keys_x, others = keys[:1], keys[1:]
    xs = sorted({r[keys_x[0]] for r in rows}, key=lambda v: (str(type(v)), v)) if keys_x else [0]
    numeric = bool(keys_x) and _numeric(xs)
    pos = (lambda v: v) if numeric else (lambda v: xs.index(v) if keys_x else 0)
    combos = sorted({tuple(r[k] for k in others) for r in rows}, key=str)
    with style.figure_style():
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        for i, combo in enumerate(combos):
            mine = [r for r in rows if tuple(r[k] for k in others) == combo]
            label = ", ".join(f"{k.split('.')[-1]} = {v}" for k, v in zip(others, combo)) or None
            colour = f"C{i % 10}"
            for ax, (metric, ylabel) in zip(axes, PANELS):
                mx, my, sd = [], [], []
                for x in xs:
                    vals = [r[metric] for r in mine if not keys_x or r[keys_x[0]] == x]
                    if not vals:
                        continue
                    ax.scatter([pos(x)] * len(vals), vals, s=10, color=colour, alpha=0.45, linewidths=0)
                    mean = sum(vals) / len(vals)
                    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
                    mx.append(pos(x)), my.append(mean), sd.append(var ** 0.5)
                ax.errorbar(mx, my, yerr=sd, color=colour, marker="o", ms=4, capsize=3, lw=1.2,
                            label=label if ax is axes[0] else None)
                ax.set_ylabel(ylabel)
        for ax in axes:
            ax.set_xlabel(keys_x[0] if keys_x else "")
            if keys_x and not numeric:
                ax.set_xticks(range(len(xs)), [str(x) for x in xs])
            elif not keys_x:
                ax.set_xticks([])
        axes[0].axhline(1.0, color=style.family_colour("exact"), lw=0.8, ls="--")
        axes[1].axhline(1.0, color=style.family_colour("exact"), lw=0.8, ls="--")
        if any(c for c in combos if c):
            axes[0].legend(loc="best")
        n_seeds = len(res["seeds"])
        fig.suptitle(f"sweep {res['sweep']}: {len(rows)} runs, mean +- sd over {n_seeds} seed"
                     f"{'s' if n_seeds > 1 else ''} (dots: single seeds)")
        fig.tight_layout()
        return style.save(fig, out, "sweep")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", help="sweep folder (with results.json)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    try:
        res = read_json(Path(args.sweep) / "results.json")
    except (FileNotFoundError, ValueError) as err:
        print(f"sweep_figure: error: {err}", file=sys.stderr)
        return 2
    if not res["rows"]:
        print("sweep_figure: error: no finished runs in the sweep yet", file=sys.stderr)
        return 2
    out = Path(args.out or args.sweep)
    out.mkdir(parents=True, exist_ok=True)
    print("-> " + ", ".join(str(p) for p in make_sweep_figure(res, out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
