"""The figures of the Shai et al. 2024 reproductions (``interp study runs/shai2024_*.toml``), from trained and probed
run folders (``interp train``, ``interp probe``).

    draw_fractal(run_dir, out_dir)        shai2024_fractal: Mess3's beliefs in the simplex beside the final
                                          residual stream's probe predictions
    draw_geometry(run_dir, out_dir)       shai2024_geometry: the exact beliefs (RRXOR: 36) beside the final layer's
                                          and the concatenated layers' probe predictions, on a PCA of the exact
                                          beliefs (the simplex for 3 states)
    draw_beyond(result, out_dir)          shai2024_beyond: per group of equal next-token distribution, the
                                          separation of its beliefs: exact, through the residual probe, through
                                          the next-token probe (:mod:`interp.interpret.beyond`)
    draw_all(run_dir, out_dir)            each of them that the run's process allows

Each writes ``<stem>.png`` and ``<stem>.pdf`` into ``out_dir`` through :func:`style.save` (byte-identical from the
same inputs), carries its caption under the panels, and returns the two file names. Points are drawn as F2 draws
them (:func:`interp.figures.paper.heldout_sample`: held-out sequences of the probes' split, by probability, fixed
seed) and coloured by their true belief with F1/F2's colouring.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from interp.figures import style  # sets the Agg backend
from interp.figures.paper import (FigureInputs, Projection, Skip, _draw_exact, _draw_points, _process_label, _Runs,
                                  probe_predictions)
from interp.interpret.analyse import CONCAT
from interp.interpret.beyond import BeyondResult, beyond_next_token

FRACTAL, GEOMETRY, BEYOND = "shai2024_fractal", "shai2024_geometry", "shai2024_beyond"
FRACTAL_POINTS = 20_000  # held-out points in the fractal panel (the fractal's fine structure needs many)
GEOMETRY_POINTS = 3_000


def _open(run_dir: Path) -> _Runs:
    """The run's loaders; a run without up-to-date probes or cache is a one-line error."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"no trained run at {run_dir} (no config.json)")
    runs = _Runs(FigureInputs(models={"transformer": run_dir}))
    try:
        runs.probe(run_dir)
        runs.cache(run_dir)
    except Skip as why:
        raise ValueError(str(why)) from None
    return runs


def final_residual_hook(hooks: list[str]) -> str:
    """The last ``hook_resid_post`` among ``hooks`` (forward order): the residual stream the unembedding reads."""
    post = [h for h in hooks if h.endswith("hook_resid_post")]
    if not post:
        raise ValueError(f"no hook_resid_post among {', '.join(hooks)}")
    return max(post, key=lambda h: int(h.split(".")[1]))


def _caption(fig, text: str, size: float = 7.0) -> None:
    """``text`` wrapped under the panels, in a strip the constrained layout leaves free (a supxlabel would upset
    the layout of equal-aspect panels)."""
    w_in, h_in = fig.get_size_inches()
    lines = textwrap.fill(text, int(w_in * 72 / (0.55 * size)))
    strip = (lines.count("\n") + 1) * size * 1.3 / (h_in * 72) + 0.02
    fig.get_layout_engine().set(rect=(0, strip, 1, 0.99 - strip))  # (a sliver at the top: titles are not clipped)
    fig.text(0.5, 0.01, lines, ha="center", va="bottom", fontsize=size)


def draw_fractal(run_dir: str | Path, out_dir: str | Path, *, hook: str | None = None,
                 n_points: int = FRACTAL_POINTS) -> list[str]:
    """Left: every belief of the run's 3-state process within its context (the mixed-state presentation, F1's
    drawing); right: the probe predictions at ``hook`` (default the final residual stream) for ``n_points``
    held-out points, in the same simplex, coloured by their true belief."""
    run_dir = Path(run_dir)
    runs = _open(run_dir)
    cfg, cache = runs.config(run_dir), runs.cache(run_dir)
    if cfg.process.build().n_states != 3:
        raise ValueError(f"{run_dir}: the simplex figure needs a 3-state process, {_process_label(cfg)} has "
                         f"{cfg.process.build().n_states}")
    hook = final_residual_hook(cache.hooks) if hook is None else hook
    pred, true, _, r2 = probe_predictions(runs, run_dir, n_points, hook=hook)
    b, w, n_distinct = runs.exact(run_dir)
    proj = Projection.fit(b, w)
    lims = proj.limits()
    L, label = cfg.train.context, _process_label(cfg)
    with style.figure_style():
        fig, axes = plt.subplots(1, 2, figsize=(7.6, 4.4), layout="constrained")
        _draw_exact(axes[0], proj, b, w, lims=lims)
        _draw_points(axes[1], proj, pred, true, lims)
        axes[0].set_title(f"{label}: exact beliefs\n{n_distinct} distinct within {L} tokens")
        axes[1].set_title(f"probe at {hook}\nheld-out $R^2$ = {r2:.3f}", color=style.family_colour("transformer"))
        shown = "" if n_distinct <= len(b) else f", the {len(b)} most probable drawn"
        _caption(fig, f"Left: the beliefs of {label} reachable within {L} tokens (mixed-state presentation, "
                      f"{n_distinct} beliefs{shown}; area grows with the square root of probability). Right: the "
                      f"linear probe's predicted beliefs from {hook} for {len(pred)} (sequence, position) points of held-out "
                      f"sequences drawn by probability. Both on {proj.describe()}; every point is coloured by its "
                      f"true belief read as RGB.")
        paths = style.save(fig, out_dir, FRACTAL)
    cache.release()
    return [p.name for p in paths]


def draw_geometry(run_dir: str | Path, out_dir: str | Path, *, n_points: int = GEOMETRY_POINTS) -> list[str]:
    """The exact beliefs of the run's process (RRXOR: 36) beside the final residual stream's and the concatenated
    layers' probe predictions for ``n_points`` held-out points, all projected on the first two principal
    components of the exact beliefs (weighted by probability; the simplex for 3 states), coloured by true belief."""
    run_dir = Path(run_dir)
    runs = _open(run_dir)
    cfg, cache = runs.config(run_dir), runs.cache(run_dir)
    final = final_residual_hook(cache.hooks)
    panels = []
    for h in (final, CONCAT):
        pred, true, _, r2 = probe_predictions(runs, run_dir, n_points, hook=h)
        panels.append((h, pred, true, r2))
    b, w, n_distinct = runs.exact(run_dir)
    proj = Projection.fit(b, w)
    lims = proj.limits(proj.xy(b), *(proj.xy(p[1]) for p in panels))
    L, label = cfg.train.context, _process_label(cfg)
    n_hooks = len(runs.probe(run_dir)[0].all_layers["hooks"])
    with style.figure_style():
        fig, axes = plt.subplots(1, 3, figsize=(10.2, 4.0), layout="constrained")
        _draw_exact(axes[0], proj, b, w, scale=40.0, lims=lims)
        axes[0].set_title(f"{label}: exact beliefs\n{n_distinct} distinct within {L} tokens")
        for ax, (hook, pred, true, r2) in zip(axes[1:], panels):
            _draw_points(ax, proj, pred, true, lims)
            name = f"all {n_hooks} residual streams concatenated" if hook == CONCAT else f"final layer ({hook})"
            ax.set_title(f"probe: {name}\nheld-out $R^2$ = {r2:.3f}", color=style.family_colour("transformer"))
        _caption(fig, f"Projection: {proj.describe()}; the probe predictions are projected by the same map. Left: "
                      f"the beliefs of {label} reachable within {L} tokens (mixed-state presentation; area grows with "
                      f"the square root of probability). Middle and right: linear-probe predictions of the belief for "
                      f"{len(panels[0][1])} (sequence, position) points of held-out sequences drawn by probability, "
                      f"from the final residual stream and from the residual streams of every layer concatenated; "
                      f"every point is coloured by its true belief (its first three principal components as RGB).")
        paths = style.save(fig, out_dir, GEOMETRY)
    cache.release()
    return [p.name for p in paths]


def draw_beyond(result: BeyondResult, out_dir: str | Path, *, label: str = "") -> list[str]:
    """Per group of equal next-token distribution (x: that distribution), the weighted mean distance between its
    beliefs: exact, and between the class means of the residual probe's and of the next-token probe's
    predictions. No figure (an empty list) when the process has no such group (Mess3: its emission matrix is
    invertible)."""
    groups = [g for g in result.groups if g.exact is not None]
    if not groups:
        return []
    x = np.arange(len(groups))
    series = [("exact beliefs", [g.exact for g in groups], style.family_colour("exact")),
              ("residual-stream probe", [g.residual for g in groups], style.family_colour("transformer")),
              ("next-token probe", [g.next_token_probe for g in groups], style.family_colour("construction"))]
    share = (f"the residual probe keeps {100 * result.residual_share:.1f}% of the exact separation, the next-token "
             f"probe {100 * result.next_token_share:.2g}%")
    with style.figure_style():
        fig, ax = plt.subplots(figsize=(max(4.8, 0.55 * len(groups) + 2.0), 3.6), layout="constrained")
        for k, (name, values, colour) in enumerate(series):
            ax.bar(x + (k - 1) * 0.27, values, width=0.27, color=colour, label=name)
        ax.set_xticks(x, ["(" + ", ".join(f"{p:.3g}" for p in g.next_token) + ")" for g in groups],
                      rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("next-token distribution shared by the group")
        ax.set_ylabel("mean distance between beliefs")
        ax.legend(loc="upper right")
        ax.set_title(f"{label + ': ' if label else ''}beyond the next token\n{share}")
        _caption(fig, f"{len(groups)} groups of histories with equal next-token distributions and two or more "
                      f"beliefs ({100 * result.mass:.1f}% of the probability over positions). Bars: the "
                      f"probability-weighted mean pairwise distance between the group's beliefs, exact and between "
                      f"the class means of two linear probes' predicted beliefs on held-out sequences: from the "
                      f"residual stream, and from the exact next-token distribution (which cannot separate them). "
                      f"Held-out R^2: residual probe {result.residual_r2:.3f}, next-token probe "
                      f"{result.next_token_r2:.3f}.")
        paths = style.save(fig, out_dir, BEYOND)
    return [p.name for p in paths]


def draw_all(run_dir: str | Path, out_dir: str | Path, *, beyond: BeyondResult | None = None) -> list[str]:
    """The fractal (3-state processes only), the geometry, and the beyond-the-next-token figure (when the process has
    such groups; ``beyond``: :func:`interp.interpret.beyond.beyond_next_token` of the run, computed if None)."""
    runs = _open(Path(run_dir))
    names = []
    if runs.hmm(Path(run_dir)).n_states == 3:
        names += draw_fractal(run_dir, out_dir)
    names += draw_geometry(run_dir, out_dir)
    return names + draw_beyond(beyond_next_token(run_dir) if beyond is None else beyond, out_dir,
                               label=_process_label(runs.config(Path(run_dir))))
