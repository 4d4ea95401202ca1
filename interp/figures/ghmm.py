"""The belief geometry of a generalised HMM beside a trained model's probe predictions.

    python -m interp.figures.ghmm runs/post_quantum_tf --out runs/post_quantum_tf/figures

Left: every distinct belief of the run's process reachable within its context length (the mixed-state
presentation), marker area by probability. A GHMM's beliefs have entries of any sign and lie in the plane
``eta @ w = 1``, not in a simplex, so both panels are drawn in that plane, on the first two components of a
weighted PCA of the exact beliefs (for three states they span the plane: nothing is lost). Dashed lines mark where
a token's next-token probability ``eta T[x] w`` is 0: a belief beyond one would give that token a negative
probability. Right: the best hook's linear-probe predictions for held-out (sequence, position) points, projected
the same way and coloured by their true belief. An HMM's run draws the same way (``w`` = ones).

Writes ``ghmm_geometry.png`` and ``.pdf`` (byte-identical across calls, through :func:`style.save`) and an
``index.md`` whose caption names the run, its relative loss and the probe's R^2. The run needs its probes
(``interp probe RUN``), which also build the activation cache.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from interp.figures import style  # sets the Agg backend
from interp.figures.paper import N_POINTS, SEED, _draw_exact, _draw_points, exact_geometry, weighted_pca
from interp.io import read_json

STEM = "ghmm_geometry"
_FLAT = 1e-9  # a principal component with less than this share of the variance is round-off off the plane


@dataclass(frozen=True)
class PlaneProjection:
    """Beliefs drawn in their plane ``eta @ w = 1``: coordinates along the first two weighted principal components
    of the exact beliefs; colour from the components that carry variance (up to three), each stretched to fill
    [0, 1] over the exact beliefs. The interface of :class:`interp.figures.paper.Projection` that its drawing
    helpers use."""

    mean: torch.Tensor  # [S]
    comps: torch.Tensor  # [k, S], k <= 3
    share: torch.Tensor  # [k] share of the variance
    lo: torch.Tensor  # [c] colour stretch over the exact beliefs, c <= 3 components
    hi: torch.Tensor

    @staticmethod
    def fit(beliefs: torch.Tensor, weight: torch.Tensor) -> "PlaneProjection":
        S = beliefs.shape[1]
        if S < 3:
            raise ValueError(f"a plane figure needs at least 3 states, the process has {S}")
        mean, comps, share = weighted_pca(beliefs, weight, k=min(3, S))
        c = max(int((share > _FLAT).sum()), 1)
        feats = (beliefs.double() - mean) @ comps[:c].T
        return PlaneProjection(mean, comps, share, feats.min(0).values, feats.max(0).values)

    def xy(self, b: torch.Tensor) -> np.ndarray:
        return ((b.double() - self.mean) @ self.comps[:2].T).numpy()

    def colours(self, b: torch.Tensor) -> np.ndarray:
        feats = (b.double() - self.mean) @ self.comps[:len(self.lo)].T
        c = ((feats - self.lo) / (self.hi - self.lo).clamp_min(1e-12)).clamp(0, 1)
        if c.shape[1] < 3:
            c = torch.cat([c, torch.full((c.shape[0], 3 - c.shape[1]), 0.5, dtype=c.dtype)], 1)
        return c.numpy()

    def limits(self, *xys: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
        """(xlim, ylim) of a square view holding every point of ``xys``."""
        pts = np.concatenate([np.asarray(xy, dtype=float).reshape(-1, 2) for xy in xys])
        lo, hi = pts.min(0), pts.max(0)
        centre, half = (lo + hi) / 2, max((hi - lo).max() / 2, 1e-6) * 1.1
        return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)

    def decorate(self, ax, lims) -> None:
        ax.set_xlabel(f"PC1 of the plane ({100 * float(self.share[0]):.0f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * float(self.share[1]):.0f}%)")
        ax.set_xlim(*lims[0])
        ax.set_ylim(*lims[1])
        ax.set_aspect("equal", adjustable="box")

    def describe(self) -> str:
        pct = " and ".join(f"{100 * float(s):.1f}%" for s in self.share[:2])
        return (f"the plane eta . w = 1, on the first two components of a weighted PCA of the exact beliefs ({pct} "
                f"of their variance)")

    def zero_lines(self, emission: torch.Tensor) -> list[tuple[int, np.ndarray, float]]:
        """(token, a, b) with ``a . (x, y) + b = 0`` where ``eta @ emission[:, token]`` is 0 in plot coordinates;
        tokens whose probability does not vary along the drawn plane are left out."""
        E = emission.double().cpu()
        out = []
        for x in range(E.shape[1]):
            a = (self.comps[:2] @ E[:, x]).numpy()
            if np.abs(a).max() > 1e-12:
                out.append((x, a, float(self.mean @ E[:, x])))
        return out


def _heldout_predictions(probe, weights: dict[str, torch.Tensor], cache, k: int = N_POINTS):
    """(predicted beliefs [k, S], true beliefs [k, S]) of the best hook's probe at ``k`` (sequence, position) rows of
    the probe's held-out sequences, drawn without replacement by sequence weight (seed :data:`SEED`), as F2 and F8
    draw them."""
    from interp.interpret.probes import split_by_sequence

    n, L = cache.tokens.shape
    _, test = split_by_sequence(n, probe.split.get("test_fraction", 0.2),
                                torch.Generator().manual_seed(probe.split.get("seed", 0)))
    w = cache.weight[test].double().repeat_interleave(L)
    k = min(k, int((w > 0).sum()))
    idx = torch.multinomial(w, k, replacement=False, generator=torch.Generator().manual_seed(SEED)).sort().values
    seq, pos = test[idx // L], idx % L
    hook = probe.best_hook
    x = cache[hook][seq, pos].reshape(len(seq), -1).double()
    cache.release(hook)
    pred = x @ weights[f"{hook}.coef"].double().T + weights[f"{hook}.intercept"].double()
    return pred, cache.beliefs[seq, pos].double()


def draw(run: str | Path, out_dir: str | Path, *, command: str) -> list[Path]:
    """Draw the figure of ``run`` into ``out_dir`` with its ``index.md``; return the PNG and PDF paths."""
    from interp.hmm import GHMM
    from interp.interpret.analyse import load_probe_result, load_probe_weights, process_label
    from interp.interpret.cache import load_cache
    from interp.rundir import RESULT
    from interp.training.checkpoint import load_model

    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"no run folder at {run}")
    if not (run / RESULT).is_file():
        raise FileNotFoundError(f"{run / RESULT} does not exist: is the run finished?")
    probe = load_probe_result(run)
    if probe is None:
        raise ValueError(f"{run}: no up-to-date probe.json; run `interp probe {run}` first")
    _, cfg = load_model(run)
    hmm = cfg.process.build()
    result = read_json(run / RESULT)
    cache = load_cache(run)
    pred, true = _heldout_predictions(probe, load_probe_weights(run), cache)
    b, w, n_distinct = exact_geometry(hmm, cfg.train.context)
    proj = PlaneProjection.fit(b, w)
    lims = proj.limits(proj.xy(b), proj.xy(pred))
    label, L = process_label(cfg), cfg.train.context
    r2, rel = probe.best_r2, result["relative_loss"]
    with style.figure_style():
        fig, axes = plt.subplots(1, 2, figsize=(7.6, 4.0), layout="constrained")
        _draw_exact(axes[0], proj, b, w, scale=40.0, lims=lims)
        _draw_points(axes[1], proj, pred, true, lims)
        for ax in axes:
            for x, a, c in proj.zero_lines(hmm.emission_matrix):
                # two points of a . p + c = 0: the foot of the normal from the origin and one step along the line
                p0 = -c * a / (a @ a)
                ax.axline(tuple(p0), tuple(p0 + np.array([-a[1], a[0]])), color="0.6", lw=0.7, ls="--", zorder=0)
        axes[0].set_title(f"{label}: exact beliefs\n{n_distinct} distinct within {L} tokens")
        axes[1].set_title(f"probe at {probe.best_hook}\nheld-out $R^2$ = {r2:.3f}, relative loss {rel:.4f}")
        paths = style.save(fig, out_dir, STEM)
    kind = "generalised HMM" if isinstance(hmm, GHMM) else "HMM"
    caption = (
        f"Left: every distinct belief of the {kind} {label} reachable within {L} tokens (the context length; "
        f"mixed-state presentation, {n_distinct} beliefs), drawn on {proj.describe()}; a point's area grows with the "
        f"square root of its probability (averaged over depths 0-{L}), its colour is its position in the plane. "
        f"Dashed: where a token's next-token probability eta T[x] w is 0 (beyond one it would be negative). Right: "
        f"the linear probe of the best hook ({probe.best_hook}) predicting the belief from the activations of "
        f"{len(pred)} (sequence, position) points drawn by probability from the probe's held-out sequences, "
        f"projected the same way and coloured by their TRUE belief. Run `{run}` ({cfg.model.family}, "
        f"{result['steps']} steps): relative loss {rel:.6f}, held-out probe R^2 {r2:.4f} (pooled over belief "
        f"coordinates, probability-weighted; shuffled control {probe.hooks[probe.best_hook]['shuffled_r2']:.4f}).")
    index = (f"# Generalised-HMM belief geometry\n\n![{STEM}]({STEM}.png)\n\n{caption}\n\nMade by `{command}`. "
             f"Files: [{STEM}.png]({STEM}.png), [{STEM}.pdf]({STEM}.pdf).\n")
    style.write_bytes(Path(out_dir) / "index.md", index.encode())
    return paths


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m interp.figures.ghmm",
                                description="Draw a run's exact (G)HMM belief geometry beside its probe predictions.")
    p.add_argument("run", type=Path, help="a trained and probed run folder (interp train, interp probe)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    args = p.parse_args(argv)
    command = "python -m interp.figures.ghmm " + shlex.join(argv)
    try:
        paths = draw(args.run, args.out, command=command)
    except (ValueError, FileNotFoundError) as err:
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 2
    print(", ".join(str(path) for path in paths))
    print(f"-> {args.out / 'index.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
