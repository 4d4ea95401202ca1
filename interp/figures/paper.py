"""The lab's figure set (F1-F8) from finished run folders, with an index.md of captions.

    python -m interp.figures.paper --transformer runs/mess3_tf1 --fixed-attention runs/mess3_fixed \\
        --ssm runs/mess3_ssm --belief-net runs/mess3_belief_net --construction runs/mess3_construction \\
        --geometry RRXOR=runs/rrxor_tf1 --geometry Z1R=runs/z1r_tf1 \\
        --geometry "Mess3(0.05, 0.85)=runs/mess3_sharp_tf1" --learner RRXOR=runs/shai2024_rrxor \\
        --recovery runs/recovery_small --compare runs/compare --out /tmp/figs

From Python (what ``interp figures`` and ``interp run`` call):

    make_figures(FigureInputs(models={...}, construction=..., geometry={...}, recovery=..., compare=...),
                 out_dir, command="...", only=["F1", "F4"])

Every figure is written as ``<stem>.png`` and ``<stem>.pdf`` through ``style.save`` (byte-identical across
calls); a figure whose inputs are missing is skipped and index.md says why. Scatter plots show a fixed,
probability-weighted subsample of held-out points (``torch.Generator`` seeded with :data:`SEED`), so the output
depends only on the run folders.

F1 f1_belief_simplex    exact belief simplex (mixed-state presentation) of the models' process
F2 f2_probe_geometry    probe predictions of every family and the construction beside the exact beliefs
F3 f3_attention         attention patterns (trained, fixed, construction) and their decay with distance
F4 f4_training_curves   relative loss - 1 against tokens and seconds
F5 f5_probe_r2          probe R^2 per hook and family, with the shuffled control
F6 f6_ssm_spectrum      the SSM's eigenvalues against the spectrum of Smat
F7 f7_recovery          Belief Net vs Baum-Welch vs spectral: excess NLL against time, recovery errors
F8 f8_other_processes   belief geometry of other processes: probe predictions of a model that learns each (the
                        learner) beside the 1-layer attention-only contrast, and the spectrum that explains it
"""

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import LogNorm

from interp.figures import recovery as recovery_figures
from interp.figures import style  # sets the Agg backend
from interp.io import read_json, read_jsonl, read_tensors

if TYPE_CHECKING:
    from interp.interpret.analyse import ProbeResult

FAMILIES = ("transformer", "fixed_attention", "ssm", "belief_net")
SEED = 0  # of every subsample drawn here
N_POINTS = 3000  # scatter points per panel (probe predictions)
MAX_MSP_POINTS = 30000  # exact beliefs drawn from the mixed-state presentation (the most probable ones)
SQRT3 = math.sqrt(3.0)
ALL_LAYERS = "all_layers"  # the probe on every residual hook concatenated (interp.interpret.analyse.CONCAT)

FIGURES = {  # key -> (file stem, title in index.md)
    "F1": ("f1_belief_simplex", "Exact belief simplex"),
    "F2": ("f2_probe_geometry", "Probe predictions against the exact belief geometry"),
    "F3": ("f3_attention", "Attention patterns and their decay with distance"),
    "F4": ("f4_training_curves", "Training curves"),
    "F5": ("f5_probe_r2", "Probe R^2 per hook and family"),
    "F6": ("f6_ssm_spectrum", "SSM eigenvalues against the spectrum of Smat"),
    "F7": ("f7_recovery", "Recovering the HMM: Belief Net, Baum-Welch, spectral"),
    "F8": ("f8_other_processes", "Belief geometry of other processes"),
}


@dataclass(frozen=True)
class FigureInputs:
    """The run folders the figures read.

    models: family -> run folder, keys among "transformer", "fixed_attention", "ssm", "belief_net";
    construction: the hand-set construction run (``interp.interpret.analyse.build_construction_run``) or None;
    geometry: label -> run folder of a model trained on another process (e.g. "RRXOR"): F8's contrast;
    geometry_learners: label -> run folder of a model that learns that process (F8 draws it above the contrast);
    recovery: folder with recovery.json (``interp recover``) or None;
    compare: folder with compare.json (``interp compare``) or None."""

    models: dict[str, Path] = field(default_factory=dict)
    construction: Path | None = None
    geometry: dict[str, Path] = field(default_factory=dict)
    geometry_learners: dict[str, Path] = field(default_factory=dict)
    recovery: Path | None = None
    compare: Path | None = None


class Skip(Exception):
    """The figure cannot be drawn from the inputs given (the message says why)."""


@dataclass
class Drawn:
    fig: object  # matplotlib Figure
    caption: str
    sources: list[Path]


# ----------------------------------------------------------------------------- reading runs
class _Runs:
    """Loads each run's config, result, probe and cache once per make_figures call."""

    def __init__(self, inputs: FigureInputs):
        self.inputs = inputs
        self._cfg, self._cache, self._probe, self._model, self._exact = {}, {}, {}, {}, {}
        self._compare: dict | None | bool = False

    @staticmethod
    def _need_dir(path: Path, what: str) -> Path:
        path = Path(path)
        if not path.is_dir():
            raise Skip(f"{what}: no folder at {path}")
        return path

    def config(self, run: Path):
        if run not in self._cfg:
            from interp.training.runconfig import run_config_from_dict

            path = self._need_dir(run, "run") / "config.json"
            if not path.is_file():
                raise Skip(f"{run}: no config.json")
            data = read_json(path)
            self._cfg[run] = run_config_from_dict(data["config"] if "process" not in data else data)
        return self._cfg[run]

    def hmm(self, run: Path):
        return self.config(run).process.build()

    def result(self, run: Path) -> dict:
        path = self._need_dir(run, "run") / "result.json"
        if not path.is_file():
            raise Skip(f"{run}: no result.json (is the run finished?)")
        return read_json(path)

    def cache(self, run: Path):
        if run not in self._cache:
            from interp.interpret.cache import load_cache

            try:
                self._cache[run] = load_cache(self._need_dir(run, "run"))
            except (FileNotFoundError, ValueError) as err:
                raise Skip(f"{run}: no usable activation cache ({err}); run `interp probe {run}`") from err
        return self._cache[run]

    def probe(self, run: Path) -> tuple["ProbeResult", dict[str, torch.Tensor]]:
        """probe.json (only if made from the run's current weights) and probe.safetensors."""
        if run not in self._probe:
            from interp.interpret.analyse import load_probe_result
            from interp.rundir import PROBE_WEIGHTS

            out = load_probe_result(self._need_dir(run, "run"))
            if out is None:
                raise Skip(f"{run}: no up-to-date probe.json; run `interp probe {run}`")
            self._probe[run] = (out, read_tensors(Path(run) / PROBE_WEIGHTS))
        return self._probe[run]

    def model(self, run: Path):
        if run not in self._model:
            from interp.training.checkpoint import load_model

            try:
                self._model[run] = load_model(self._need_dir(run, "run"))[0]
            except (FileNotFoundError, ValueError) as err:
                raise Skip(f"{run}: the model cannot be loaded ({err})") from err
        return self._model[run]

    def exact(self, run: Path) -> tuple[torch.Tensor, torch.Tensor, int]:
        """:func:`exact_geometry` of the run's process to its context length (computed once per process)."""
        cfg = self.config(run)
        key = (cfg.process.name, json.dumps(cfg.process.params, sort_keys=True), cfg.train.context)
        if key not in self._exact:
            self._exact[key] = exact_geometry(self.hmm(run), cfg.train.context)
        return self._exact[key]

    def compare(self) -> dict | None:
        if self._compare is False:
            path = None if self.inputs.compare is None else Path(self.inputs.compare) / "compare.json"
            self._compare = read_json(path) if path is not None and path.is_file() else None
        return self._compare

    def release(self) -> None:
        for cache in self._cache.values():
            cache.release()
        self._cache.clear()


def _models(inputs: FigureInputs) -> list[tuple[str, Path]]:
    """(family, run folder) in the fixed family order (unknown families after, sorted)."""
    order = [f for f in FAMILIES if f in inputs.models] + sorted(f for f in inputs.models if f not in FAMILIES)
    return [(f, Path(inputs.models[f])) for f in order]


def _probed(inputs: FigureInputs) -> list[tuple[str, Path]]:
    """The model families and the construction: every run whose probes the figures show."""
    out = _models(inputs)
    if inputs.construction is not None:
        out.append(("construction", Path(inputs.construction)))
    return out


def _reference_run(inputs: FigureInputs) -> Path:
    """The run whose process F1-F3 draw: the transformer's, else the first other model's, else the construction's
    (the first of them whose folder holds a config.json)."""
    runs = _probed(inputs)
    if not runs:
        raise Skip("no model runs given")
    for _, run in runs:
        if (run / "config.json").is_file():
            return run
    raise Skip("no model run folder with a config.json: " + ", ".join(str(r) for _, r in runs))


def _process_label(cfg) -> str:
    from interp.interpret.analyse import process_label

    return process_label(cfg)


def _compare_construction(runs: _Runs, cfg) -> dict | None:
    c = runs.compare()
    return None if c is None else c.get("construction", {}).get(_process_label(cfg))


def _fmt(x, spec=".4f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _src(paths) -> str:
    return ", ".join(f"`{p}`" for p in paths)


# ----------------------------------------------------------------------------- geometry helpers
def simplex_xy(b: torch.Tensor) -> np.ndarray:
    """[n, 3] beliefs -> [n, 2] barycentric plot coordinates (vertices (0,0), (1,0), (1/2, sqrt(3)/2))."""
    b = torch.as_tensor(b, dtype=torch.float64)
    return torch.stack([b[:, 1] + b[:, 2] / 2, b[:, 2] * SQRT3 / 2], 1).numpy()


def weighted_pca(x: torch.Tensor, w: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean [d], components [k, d], explained variance share [k]) of rows x [n, d] with weights w [n].
    Each component's sign is fixed (its largest-magnitude entry positive)."""
    x, w = x.double(), w.double() / w.sum()
    mean = w @ x
    xc = x - mean
    cov = (xc * w[:, None]).T @ xc
    evals, evecs = torch.linalg.eigh(cov)
    order = torch.argsort(evals, descending=True, stable=True)[:k]
    comps = evecs[:, order].T
    # the first entry within rounding of the largest magnitude: a plain argmax on a tie (e.g. (1, -1, 0) / sqrt 2)
    # would let the last bit pick the sign
    big = comps.abs() >= comps.abs().amax(1, keepdim=True) * (1 - 1e-9)
    sign = torch.sign(comps.gather(1, big.to(torch.uint8).argmax(1, keepdim=True)))
    return mean, comps * sign, evals[order].clamp_min(0) / evals.clamp_min(0).sum()


@dataclass(frozen=True)
class Projection:
    """How a process's beliefs are drawn: the simplex (3 states) or a weighted PCA (other sizes), and the
    colour of a belief (3 states: its coordinates as RGB; else its first three PCs), stretched to fill [0, 1]."""

    n_states: int
    mean: torch.Tensor | None
    comps: torch.Tensor | None
    share: torch.Tensor | None
    lo: torch.Tensor
    hi: torch.Tensor

    @staticmethod
    def fit(beliefs: torch.Tensor, weight: torch.Tensor) -> "Projection":
        S = beliefs.shape[1]
        mean = comps = share = None
        if S == 3:
            feats = beliefs.double()
        else:
            mean, comps, share = weighted_pca(beliefs, weight, k=min(3, S))
            feats = (beliefs.double() - mean) @ comps.T
        lo, hi = feats.min(0).values, feats.max(0).values
        return Projection(S, mean, comps, share, lo, hi)

    def xy(self, b: torch.Tensor) -> np.ndarray:
        if self.n_states == 3:
            return simplex_xy(b)
        return ((b.double() - self.mean) @ self.comps[:2].T).numpy()

    def colours(self, b: torch.Tensor) -> np.ndarray:
        feats = b.double() if self.n_states == 3 else (b.double() - self.mean) @ self.comps.T
        c = ((feats - self.lo) / (self.hi - self.lo).clamp_min(1e-12)).clamp(0, 1)
        if c.shape[1] < 3:
            c = torch.cat([c, torch.full((c.shape[0], 3 - c.shape[1]), 0.5, dtype=c.dtype)], 1)
        return c.numpy()

    def limits(self, *xys: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
        """(xlim, ylim) of a square view holding every point of ``xys`` (and the whole simplex, for 3 states;
        there, points further than 0.5 outside it are left out of view)."""
        pts = np.concatenate([np.asarray(xy, dtype=float).reshape(-1, 2) for xy in xys]) if xys else np.zeros((0, 2))
        if self.n_states == 3:
            pts = np.clip(pts, [-0.5, -0.5], [1.5, SQRT3 / 2 + 0.5])
            pts = np.concatenate([pts, [[0, 0], [1, 0], [0.5, SQRT3 / 2]]])
        lo, hi = pts.min(0), pts.max(0)
        centre, half = (lo + hi) / 2, max((hi - lo).max() / 2, 1e-6) * 1.1
        return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)

    def decorate(self, ax, lims=None) -> None:
        """Simplex outline and vertex labels (3 states) or PC axis labels; a square, equal-aspect view ``lims``
        (default: :meth:`limits` of nothing, i.e. the simplex; PCA panels must pass their own)."""
        if self.n_states == 3:
            tri = np.array([[0, 0], [1, 0], [0.5, SQRT3 / 2], [0, 0]])
            ax.plot(tri[:, 0], tri[:, 1], color="0.6", lw=0.8, zorder=0)
            for (x, y), name, ha in zip(tri[:3], ("state 0", "state 1", "state 2"), ("right", "left", "center")):
                ax.annotate(name, (x, y), xytext=(0, -3 if y == 0 else 3), textcoords="offset points", ha=ha,
                            va="top" if y == 0 else "bottom", fontsize=7, color="0.4")
            ax.set_axis_off()
        else:
            ax.set_xlabel(f"PC1 ({100 * float(self.share[0]):.0f}% of variance)")
            ax.set_ylabel(f"PC2 ({100 * float(self.share[1]):.0f}%)")
        xlim, ylim = lims if lims is not None else self.limits()
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal", adjustable="box")

    def describe(self) -> str:
        if self.n_states == 3:
            return "the 2-simplex in barycentric coordinates"
        pct = ", ".join(f"{100 * float(s):.0f}%" for s in self.share[:2])
        return (f"the first two principal components of the {self.n_states}-state beliefs (weighted PCA of the exact "
                f"beliefs; {pct} of their variance)")


def exact_geometry(hmm, depth: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(beliefs [m, S], weights [m], number of distinct beliefs): the mixed-state presentation to ``depth`` tokens,
    merged across depths (weight: mean reach probability over depths), the ``MAX_MSP_POINTS`` most probable kept."""
    from interp.hmm import mixed_state_presentation

    b, w = mixed_state_presentation(hmm, depth).distinct()
    n = b.shape[0]
    if n > MAX_MSP_POINTS:  # stable order: by weight, ties by index
        keep = torch.from_numpy(np.argsort(-w.numpy(), kind="stable")[:MAX_MSP_POINTS].copy())
        b, w = b[keep], w[keep]
    order = torch.from_numpy(np.argsort(w.numpy(), kind="stable").copy())  # most probable drawn last (on top)
    return b[order], w[order], n


def _draw_exact(ax, proj: Projection, b: torch.Tensor, w: torch.Tensor, *, scale: float = 30.0, lims=None) -> None:
    """Exact beliefs: colour by belief, marker area by probability (square root, so deep points stay visible)."""
    xy = proj.xy(b)
    size = 0.4 + scale * torch.sqrt(w / w.max()).numpy()
    ax.scatter(xy[:, 0], xy[:, 1], s=size, c=proj.colours(b), linewidths=0, rasterized=True)
    proj.decorate(ax, lims if lims is not None else proj.limits(xy))


def _draw_points(ax, proj: Projection, b: torch.Tensor, colour_by: torch.Tensor, lims) -> None:
    """Sampled points (beliefs or probe predictions) coloured by the true beliefs ``colour_by``; markers grow when
    few distinct points are drawn (processes with few reachable beliefs)."""
    xy = proj.xy(b)
    distinct = len(np.unique(np.round(xy, 4), axis=0))
    ax.scatter(xy[:, 0], xy[:, 1], s=1.5 if distinct > 300 else 8, c=proj.colours(colour_by), linewidths=0,
               alpha=1.0 if distinct > 300 else 0.5, rasterized=True)
    proj.decorate(ax, lims)


def heldout_sample(runs: _Runs, run: Path, k: int = N_POINTS) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence, position) indices of ``k`` rows of the probe's held-out sequences, drawn without replacement
    with probability proportional to the sequence weight (fixed seed)."""
    from interp.interpret.probes import split_by_sequence

    probe, _ = runs.probe(run)
    cache = runs.cache(run)
    n, L = cache.tokens.shape
    split = probe.split
    _, test = split_by_sequence(n, split.get("test_fraction", 0.2),
                                torch.Generator().manual_seed(split.get("seed", 0)))
    w = cache.weight[test].double().repeat_interleave(L)
    k = min(k, int((w > 0).sum()))
    idx = torch.multinomial(w, k, replacement=False, generator=torch.Generator().manual_seed(SEED)).sort().values
    return test[idx // L], idx % L


def probe_predictions(runs: _Runs, run: Path, k: int = N_POINTS, *,
                      hook: str | None = None) -> tuple[torch.Tensor, torch.Tensor, str, float]:
    """(predicted beliefs [k, S], true beliefs [k, S], hook, held-out R^2) of one probe (default: the best hook's;
    ``ALL_LAYERS``: every residual hook concatenated, in the order its probe was fitted) on a held-out sample (see
    :func:`heldout_sample`); a hook probe.json has no probe at is a one-line ValueError."""
    probe, weights = runs.probe(run)
    hook = probe.best_hook if hook is None else hook
    if hook != ALL_LAYERS and hook not in probe.hooks:
        raise ValueError(f"{run}: no probe at {hook!r} in probe.json (it has {', '.join(probe.hooks)}, {ALL_LAYERS})")
    cache = runs.cache(run)
    seq, pos = heldout_sample(runs, run, k)
    parts = []
    for h in probe.all_layers["hooks"] if hook == ALL_LAYERS else [hook]:  # in the order the probe was fitted
        parts.append(cache[h][seq, pos].reshape(len(seq), -1).double())
        cache.release(h)
    x = torch.cat(parts, -1)
    pred = x @ weights[f"{hook}.coef"].double().T + weights[f"{hook}.intercept"].double()
    r2 = probe.all_layers["r2"] if hook == ALL_LAYERS else probe.hooks[hook]["r2"]
    return pred, cache.beliefs[seq, pos].double(), hook, float(r2)


# ----------------------------------------------------------------------------- F1
def f1_belief_simplex(inputs: FigureInputs, runs: _Runs) -> Drawn:
    run = _reference_run(inputs)
    cfg = runs.config(run)
    L = cfg.train.context
    b, w, n_distinct = runs.exact(run)
    proj = Projection.fit(b, w)
    fig, ax = plt.subplots(figsize=(5.2, 4.8), layout="constrained")
    _draw_exact(ax, proj, b, w)
    shown = "" if n_distinct <= MAX_MSP_POINTS else f", the {MAX_MSP_POINTS} most probable shown"
    ax.set_title(f"{_process_label(cfg)}: beliefs after 0-{L} tokens\n({n_distinct} distinct{shown})")
    drawn = "all of them" if n_distinct <= MAX_MSP_POINTS else f"the {MAX_MSP_POINTS} most probable"
    caption = (f"Every distinct belief state of {_process_label(cfg)} reachable within {L} tokens (the context length; "
               f"mixed-state presentation, {n_distinct} beliefs, {drawn} drawn), on {proj.describe()}. A point's "
               f"colour is its belief read as RGB (each coordinate stretched to fill [0, 1]); its area grows with the "
               f"square root of its probability (averaged over depths 0-{L}).")
    return Drawn(fig, caption, [run])


# ----------------------------------------------------------------------------- F2
def f2_probe_geometry(inputs: FigureInputs, runs: _Runs) -> Drawn:
    ref = _reference_run(inputs)
    cfg = runs.config(ref)
    ref_label = _process_label(cfg)
    panels, missing, sources = [], [], []
    for family, run in _probed(inputs):
        try:
            if _process_label(runs.config(run)) != ref_label:
                raise Skip(f"{run} is on {_process_label(runs.config(run))}, not {ref_label}")
            panels.append((family, run, *probe_predictions(runs, run)))
            sources.append(run)
        except Skip as why:
            missing.append(f"{style.family_label(family)} ({why})")
    if not panels:
        raise Skip("no probed run: " + "; ".join(missing))
    true0 = panels[0][3]
    b, w, _ = runs.exact(ref)
    proj = Projection.fit(b, w)
    lims = proj.limits(proj.xy(true0), *(proj.xy(p[2]) for p in panels))
    n = len(panels) + 1
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.2 * rows), layout="constrained", squeeze=False)
    axes = axes.ravel()
    _draw_points(axes[0], proj, true0, true0, lims)
    axes[0].set_title(f"exact beliefs\n{ref_label}")
    parts = []
    for ax, (family, run, pred, true, hook, r2) in zip(axes[1:], panels):
        _draw_points(ax, proj, pred, true, lims)
        ax.set_title(f"{style.family_label(family)}\nheld-out $R^2$ = {r2:.3f} ({hook.split('.')[-1]})",
                     color=style.family_colour(family))
        parts.append(f"{style.family_label(family)} {r2:.4f} (`{hook}`)")
    for ax in axes[n:]:
        ax.set_axis_off()
    caption = (f"Linear-probe predictions of the belief state from each model's best hook, for {len(true0)} "
               f"(sequence, position) points drawn by probability from the probes' held-out sequences (the same "
               f"20% split the probes were scored on; seed {SEED}), on {proj.describe()}. Every point is coloured "
               f"by its TRUE belief (as in F1), so a faithful probe reproduces the colour gradient of the exact panel "
               f"(the true beliefs of the same points). Held-out R^2 (pooled, probability-weighted, from probe.json): "
               + "; ".join(parts) + ".")
    if missing:
        caption += " Not shown: " + "; ".join(missing) + "."
    return Drawn(fig, caption, sources)


# ----------------------------------------------------------------------------- F3
def _previous_token_profile(P: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lag t - s, weight / the row's weight on the previous token, whether the key is position 0) for every
    allowed entry of rows 1 <= t <= L - 1 of a [L, L] pattern: caches hold only the trained positions
    (:func:`interp.interpret.cache.evaluation_length`), so every row is a trained one."""
    P = P.double()
    lags, ratios, first = [], [], []
    for t in range(1, P.shape[0]):
        prev = float(P[t, t - 1])
        if prev <= 0:
            continue
        for s in range(t + 1):
            if P[t, s] > 0:
                lags.append(t - s)
                ratios.append(float(P[t, s]) / prev)
                first.append(s == 0)
    return np.array(lags, dtype=float), np.array(ratios), np.array(first, dtype=bool)


def f3_attention(inputs: FigureInputs, runs: _Runs) -> Drawn:
    from interp.interpret import attention as A
    from interp.interpret import construction as K

    ref = _reference_run(inputs)
    cfg, hmm = runs.config(ref), runs.hmm(ref)
    from interp.interpret.cache import evaluation_length

    L = evaluation_length(cfg.train.context)  # the trained positions, as cached
    comp = _compare_construction(runs, cfg) or {}
    lam_analytic = comp.get("lambda_analytic", K.analytic_decay(hmm))
    lam_fitted = comp.get("lambda_fitted")
    mats, notes, sources = [], [], []
    tf = inputs.models.get("transformer")
    if tf is not None:
        try:
            cache = runs.cache(Path(tf))
            hooks = [h for h in cache.hooks if "hook_pattern" in h]
            if not hooks:
                raise Skip(f"{tf}: the cache holds no attention pattern")
            P = cache[hooks[0]]
            fixed = A.fixedness(P, cache.weight)[0]
            mean = A.mean_pattern(P, cache.weight)[0]
            cache.release(hooks[0])
            heads = f", head 0 of {P.shape[1]}" if P.shape[1] > 1 else ""
            mats.append(("transformer", f"trained transformer\n(probability-weighted mean{heads})", mean))
            notes.append(f"Input dependence of the transformer's pattern (`{hooks[0]}`{heads}): the mean std of an "
                         f"entry across inputs is {fixed['mean_std']:.3f}, and position alone explains "
                         f"{100 * fixed['position_share']:.1f}% of the entries' variance")
            if getattr(runs.config(Path(tf)).model, "bos", False):
                notes.append("The transformer reads a BOS token first: its weight on BOS (the attention sink) is left "
                             "out of its pattern, whose rows so sum to less than 1 (the ratios below are unchanged)")
            sources.append(Path(tf))
        except Skip as why:
            notes.append(f"No transformer pattern ({why})")
    fx = inputs.models.get("fixed_attention")
    if fx is not None:
        try:
            with torch.no_grad():
                M = runs.model(Path(fx)).blocks[0].attn.pattern().detach().double()[:L, :L]
            mats.append(("fixed_attention", "fixed-attention model\n(its learned pattern M)", M))
            sources.append(Path(fx))
        except (Skip, FileNotFoundError, ValueError) as why:
            notes.append(f"No fixed-attention pattern ({why})")
    lam_c = lam_analytic if lam_analytic is not None else lam_fitted
    if lam_c is not None:
        which = "analytic" if lam_analytic is not None else "least-squares"
        mats.append(("construction", f"construction\n($\\lambda^{{t-s}}$, {which} $\\lambda$ = {lam_c:.3f})",
                     A.decay_pattern(lam_c, L)))
    else:
        notes.append(f"No construction pattern: Smat of {_process_label(cfg)} is not a scalar on zero-sum vectors "
                     f"and no compare.json gives a fitted lambda")
    if not any(family != "construction" for family, _, _ in mats):
        raise Skip("no trained attention pattern to draw (no transformer or fixed-attention run"
                   + (": " + "; ".join(notes) if notes else " given") + ")")
    sources.append(ref)
    fig = plt.figure(figsize=(10.5, 7.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.1])
    axes = top.subplots(1, len(mats), squeeze=False)[0]
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    norm = LogNorm(vmin=1e-3, vmax=1.0)
    image = None
    for ax, (family, title, P) in zip(axes, mats):
        shown = P.clone().numpy()
        shown[np.triu_indices(L, 1)] = np.nan
        image = ax.imshow(np.clip(shown, 1e-3, None), cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_title(title, color=style.family_colour(family))
        ax.set(xlabel="key position s", ylabel="query position t")
        ax.set_xticks(range(0, L, 2))
        ax.set_yticks(range(0, L, 2))
        ax.spines[:].set_visible(False)
    top.colorbar(image, ax=list(axes), shrink=0.85, label="attention weight (log scale)")
    ax = bottom.subplots(1, 1)
    fits = []
    offsets = np.linspace(-0.12, 0.12, len(mats))
    k = np.arange(0, L)
    for off, (family, _, P) in zip(offsets, mats):
        colour = style.family_colour(family)
        lags, ratio, first = _previous_token_profile(P)
        ax.scatter(lags[~first] + off, ratio[~first], s=7, color=colour, alpha=0.35, linewidths=0)
        ax.scatter(lags[first] + off, ratio[first], s=16, facecolors="none", edgecolors=colour, linewidths=0.8)
        gm = [math.exp(np.log(ratio[(lags == j) & ~first]).mean()) if ((lags == j) & ~first).any() else np.nan
              for j in k]
        ax.plot(k + off, gm, "o-", color=colour, ms=3.5, lw=1.2,
                label=f"{style.family_label(family)}: geometric mean over rows")
        desc = A.describe_head(P)
        e = desc["best_exclude"]
        fit = desc[f"exclude_{e}"]
        d = fit["decay"]
        if d is not None and math.isfinite(d):
            ax.plot(k[1:], d ** (k[1:] - 1.0), "--", color=colour, lw=1,
                    label=f"{style.family_label(family)}: fitted decay {d:.3f} (lags >= {e}, $R^2$ {fit['r2']:.2f})")
        fits.append(f"{style.family_label(family)}: decay {_fmt(d, '.3f')} fitted over lags >= {e} (log-space R^2 "
                    f"{_fmt(fit['r2'], '.2f')}), mean weight on the current token {desc['current_weight']:.3f} and on "
                    f"the previous one {desc['previous_weight']:.3f}")
    ax.scatter([], [], s=16, facecolors="none", edgecolors="0.4", label="entries of key position s = 0")
    for lam, name, ls in ((lam_analytic, "analytic", ":"), (lam_fitted, "least-squares", "-.")):
        if lam is not None:
            ax.plot(k[1:], lam ** (k[1:] - 1.0), ls, color="k", lw=1.3, label=f"$\\lambda^{{lag-1}}$, {name} "
                    f"$\\lambda$ = {lam:.3f}")
    ax.set(yscale="log", xlabel="distance t - s (lag)", ylabel="weight / the row's weight on the previous token",
           title=f"decay of attention with distance (query rows 1 to {L - 1})")
    ax.set_xticks(k)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    lam_text = (f"lambda analytic (Smat on zero-sum vectors) {_fmt(lam_analytic, '.3f')} and lambda fitted by least "
                f"squares to the exact beliefs {_fmt(lam_fitted, '.3f')}"
                + ("" if comp else " (no compare.json, so no fitted lambda)"))
    caption = (f"Attention patterns on {_process_label(cfg)}, context {cfg.train.context} (top; log colour scale, "
               f"white: masked): positions 0 to {L - 1}, the trained positions the cache holds (no training target "
               f"is predicted from the context's last position, so it is not cached). Bottom: every allowed entry "
               f"of query rows 1 to {L - 1} divided by its row's weight on the previous token, against the distance "
               f"t - s (hollow: key position 0, where trained patterns keep extra weight); lines: the geometric mean "
               f"over rows (key 0 left "
               f"out), the geometric decay fitted by `interp.interpret.attention.describe_head` to the whole pattern (dashed; "
               f"the numbers `interp compare` reports), and the construction's {lam_text}. " + "; ".join(fits)
               + ". " + ("; ".join(notes) + "." if notes else ""))
    if inputs.compare is not None and comp:
        sources.append(Path(inputs.compare))
    return Drawn(fig, caption, sources)


# ----------------------------------------------------------------------------- F4
FLOOR_F4 = 1e-6


def f4_training_curves(inputs: FigureInputs, runs: _Runs) -> Drawn:
    if not inputs.models:
        raise Skip("no model runs given")
    curves, missing, sources = [], [], []
    for family, run in _models(inputs):
        path = Path(run) / "metrics.jsonl"
        if not path.is_file():
            missing.append(f"{style.family_label(family)} (no {path})")
            continue
        rows = [r for r in read_jsonl(path) if r.get("relative_loss") is not None]
        if rows:
            curves.append((family, run, rows))
            sources.append(run)
    if not curves:
        raise Skip("no metrics.jsonl in any model run" + (": " + "; ".join(missing) if missing else ""))
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6), layout="constrained", sharey=True)
    below = False
    for family, run, rows in curves:
        colour = style.family_colour(family)
        y = np.array([r["relative_loss"] - 1.0 for r in rows], dtype=float)
        for ax, key, scale in ((axes[0], "tokens", 1e-6), (axes[1], "seconds", 1.0)):
            x = np.array([r[key] for r in rows], dtype=float) * scale
            ax.plot(x, np.maximum(y, FLOOR_F4), "o-", ms=2.5, color=colour, label=style.family_label(family))
            neg = y <= FLOOR_F4
            if neg.any():
                below = True
                ax.scatter(x[neg], np.full(neg.sum(), FLOOR_F4), marker="v", s=25, color=colour, zorder=3)
    con = None
    if inputs.construction is not None and (Path(inputs.construction) / "result.json").is_file():
        con = runs.result(Path(inputs.construction))["relative_loss"]
        for ax in axes:
            ax.axhline(con - 1.0, color=style.family_colour("construction"), ls="--", lw=1,
                       label=f"construction (hand-set), {con - 1:.1e}")
        sources.append(Path(inputs.construction))
    axes[0].set(yscale="log", xlabel="tokens seen (millions)", ylabel="relative loss - 1 (loss / optimal - 1)")
    axes[1].set(xlabel="wall-clock training time (s)")
    axes[0].legend()
    fig.suptitle("evaluation loss relative to the optimal predictor")
    finals = []
    for family, run, rows in curves:
        res = runs.result(run) if (Path(run) / "result.json").is_file() else {}
        finals.append(f"{style.family_label(family)} {rows[-1]['relative_loss']:.6f} after "
                      f"{rows[-1]['tokens'] / 1e6:.2f}M tokens in {rows[-1]['seconds']:.1f} s"
                      + (f" (result.json: {res['relative_loss']:.6f})" if "relative_loss" in res else ""))
    caption = ("Relative loss minus 1 at every evaluation during training (the model's next-token loss over the "
               "exact filter's loss on the same held-out sampled sequences, from metrics.jsonl), against tokens seen "
               "(left) and wall-clock seconds of training steps (right; evaluation and checkpointing not counted, "
               "as measured on the machine that trained each run). Final relative loss: " + "; ".join(finals) + "."
               + (f" Dashed: the hand-set construction, {con:.6f}." if con is not None else "")
               + (f" Triangles at {FLOOR_F4:g}: evaluations at or below the optimum (relative loss <= 1, within "
                  f"the evaluation's noise), which a log axis cannot show." if below else "")
               + (" Not shown: " + "; ".join(missing) + "." if missing else ""))
    return Drawn(fig, caption, sources)


# ----------------------------------------------------------------------------- F5
def _hook_key(hook: str) -> tuple[int, int, str]:
    if hook == "hook_embed":
        return (-1, 0, hook)
    if hook == "all_layers":
        return (10**6, 0, hook)
    parts = hook.split(".")
    layer = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0
    rank = {"hook_resid_pre": 0, "hook_state": 1, "hook_resid_post": 2}.get(parts[-1], 3)
    return (layer, rank, hook)


def f5_probe_r2(inputs: FigureInputs, runs: _Runs) -> Drawn:
    if not _probed(inputs):
        raise Skip("no model or construction runs given")
    rows, missing, sources = [], [], []
    for family, run in _probed(inputs):
        try:
            probe, _ = runs.probe(run)
        except Skip as why:
            missing.append(f"{style.family_label(family)} ({why})")
            continue
        sources.append(run)
        hooks = {**probe.hooks, "all_layers": probe.all_layers}
        for hook in sorted(hooks, key=_hook_key):
            rows.append((family, hook, hooks[hook]["r2"], hooks[hook]["shuffled_r2"], hook == probe.best_hook))
    if not rows:
        raise Skip("no probe.json: " + "; ".join(missing))
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(rows) + 1.3), layout="constrained")
    y, ticks, labels = 0.0, [], []
    prev = None
    for family, hook, r2, shuffled, best in rows:
        if prev is not None and family != prev:
            y += 0.6
        prev = family
        colour = style.family_colour(family)
        ax.barh(y, r2, height=0.7, color=colour, alpha=1.0 if best else 0.55)
        ax.plot([shuffled], [y], marker="D", ms=3.5, color="0.3", ls="none")
        ax.text(max(r2, 0) + 0.01, y, f"{r2:.3f}" + (" best" if best else "") + f"  (shuffled {shuffled:+.3f})",
                va="center", fontsize=6.5)
        ticks.append(y)
        labels.append(f"{style.family_label(family)}: {hook}")
        y += 1
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.6)
    ax.set(xlim=(min(-0.05, min(r[3] for r in rows) - 0.02), 1.3), xlabel="held-out $R^2$ of the linear probe",
           title="belief-state probes per hook (grey diamonds: shuffled-belief control)")
    ax.set_xticks(np.arange(0, 1.01, 0.2))
    best = "; ".join(f"{style.family_label(f)} {r2:.4f} at `{h}` (shuffled {s:+.4f})" for f, h, r2, s, b in rows if b)
    caption = ("Held-out R^2 (pooled over belief coordinates, probability-weighted, 20% of sequences held out) of a "
               "linear probe from each cached hook to the exact belief, per family; `all_layers` concatenates every "
               "residual hook. The control is the same probe refitted to beliefs shuffled among the "
               "training rows (grey diamonds). Best single hook: " + best + "."
               + (" Not shown: " + "; ".join(missing) + "." if missing else ""))
    return Drawn(fig, caption, sources)


# ----------------------------------------------------------------------------- F6
def f6_ssm_spectrum(inputs: FigureInputs, runs: _Runs) -> Drawn:
    from interp.interpret import construction as K

    run = inputs.models.get("ssm")
    if run is None:
        raise Skip("no SSM run given")
    run = Path(run)
    model = runs.model(run)
    cfg, hmm = runs.config(run), runs.hmm(run)
    compare_row = next((r for r in (runs.compare() or {}).get("runs", []) if r.get("family") == "ssm"
                        and Path(r.get("path", "")).resolve() == run.resolve()), None)
    ev = model.blocks[0].eigenvalues()
    share_source = None
    try:
        from interp.interpret.analyse import ssm_summary

        summary = ssm_summary(model, runs.cache(run), hmm, top=ev.shape[0])[0]
        share_source = "computed with `interp.interpret.analyse.ssm_summary`, as in compare.json"
    except Skip:
        summary = (compare_row or {}).get("ssm", [{}])[0]
        share_source = "from compare.json (leading modes only)" if summary.get("leading") else None
    shares = np.full(ev.shape[0], np.nan)
    for item in summary.get("leading", []):  # each listed mode to the closest eigenvalue not yet matched
        z = complex(*item["eigenvalue"])
        free = [i for i in range(ev.shape[0]) if np.isnan(shares[i])]
        i = min(free, key=lambda i: abs(complex(ev[i]) - z), default=None)
        if i is not None and abs(complex(ev[i]) - z) < 1e-6:
            shares[i] = item["share"]
    zs = K.zero_sum_operator_eigenvalues(hmm).numpy()
    full = torch.linalg.eigvals(hmm.transition_matrix.cpu()).to(torch.complex128).numpy()
    full = full[np.lexsort((np.round(full.imag, 12), -np.round(np.abs(full), 12)))]  # by modulus, then angle
    effective = (compare_row or {}).get("ssm", [{}])[0].get("effective", {}).get("decay")
    comp = _compare_construction(runs, cfg) or {}
    ev = ev.numpy()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3), layout="constrained", gridspec_kw={"width_ratios": [1, 1.2]})
    ax = axes[0]
    th = np.linspace(0, 2 * np.pi, 361)
    ax.plot(np.cos(th), np.sin(th), color="0.7", lw=0.8)
    ax.axhline(0, color="0.85", lw=0.6, zorder=0)
    ax.axvline(0, color="0.85", lw=0.6, zorder=0)
    size = 12 + 300 * np.nan_to_num(shares, nan=0.0)
    colour = style.family_colour("ssm")
    ax.scatter(ev.real, ev.imag, s=size, facecolors="none", edgecolors=colour, linewidths=1.2,
               label=f"SSM A ({len(ev)} modes; area: output-variance share)")
    ax.scatter(full.real, full.imag, marker="s", s=60, facecolors="none", edgecolors="k", linewidths=1,
               label="Smat, all eigenvalues (incl. 1)")
    ax.scatter(zs.real, zs.imag, marker="x", s=40, color="k", label="Smat on zero-sum vectors")
    if effective is not None:
        ax.scatter([effective], [0], marker="^", s=45, color="tab:purple", zorder=4,
                   label=f"effective decay of the probed belief: {effective:.3f}")
    ax.set(xlim=(-1.15, 1.15), ylim=(-1.15, 1.15), xlabel="Re", ylabel="Im", title="eigenvalues in the complex plane")
    ax.set_aspect("equal")
    ax.legend(fontsize=6.5, loc="lower left", bbox_to_anchor=(0, -0.02))
    ax = axes[1]
    order = np.argsort(-np.nan_to_num(shares, nan=-1), kind="stable")
    if np.isfinite(shares).any():
        ax.vlines(ev.real, 0, np.nan_to_num(shares), color=colour, lw=1.5)
        ax.scatter(ev.real, np.nan_to_num(shares), s=18, color=colour, zorder=3)
        for i in order[:4]:
            if np.isfinite(shares[i]):
                ax.annotate(f"{ev[i].real:+.3f}", (ev[i].real, shares[i]), xytext=(3, 3), textcoords="offset points",
                            fontsize=6.5)
    else:
        ax.scatter(ev.real, np.zeros(len(ev)), s=18, color=colour)
    for z in np.unique(np.round(zs.real, 9)):
        ax.axvline(z, color="k", ls=":", lw=1.2, label=f"Smat zero-sum eigenvalue {z:.3f}")
    if comp.get("lambda_fitted") is not None:
        ax.axvline(comp["lambda_fitted"], color="0.5", ls="-.", lw=1,
                   label=f"construction's least-squares $\\lambda$ {comp['lambda_fitted']:.3f}")
    if effective is not None:
        ax.axvline(effective, color="tab:purple", ls="--", lw=1, label=f"effective decay {effective:.3f}")
    ax.set(xlim=(-1.02, 1.02), xlabel="Re(eigenvalue)", ylabel="share of the layer's output variance",
           title="which modes the SSM reads from")
    ax.legend(fontsize=6.5, loc="upper left")
    fig.suptitle(f"linear SSM ({model.blocks[0].kind} transition) on {_process_label(cfg)}")
    top = [f"{complex(e).real:+.3f}{complex(e).imag:+.3f}i: {s:.2f}" if abs(complex(e).imag) > 1e-9
           else f"{complex(e).real:+.3f}: {s:.2f}" for e, s in zip(ev[order[:4]], shares[order[:4]]) if np.isfinite(s)]
    zs_text = ", ".join(f"{z.real:.3f}" + (f"{z.imag:+.3f}i" if abs(z.imag) > 1e-9 else "") for z in zs)
    full_text = ", ".join(f"{z.real:.3f}" + (f"{z.imag:+.3f}i" if abs(z.imag) > 1e-9 else "") for z in full)
    caption = (f"The learned transition eigenvalues of the 1-layer linear SSM ({len(ev)} modes, "
               f"{model.blocks[0].kind}) against Smat of {_process_label(cfg)}: its eigenvalues {full_text}, and on "
               f"zero-sum vectors (the subspace beliefs move in) {zs_text}. Marker area and the right panel: each "
               f"mode's share of the layer's output variance (var(h_i) ||C_i||^2 over the evaluation set; "
               f"{share_source or 'not available'}). Leading modes: " + ("; ".join(top) or "n/a") + "."
               + (f" Effective decay of a token's effect on the probed belief (from compare.json): {effective:.4f}."
                  if effective is not None else "")
               + (f" The construction's least-squares lambda: {comp['lambda_fitted']:.4f}."
                  if comp.get("lambda_fitted") is not None else ""))
    sources = [run] + ([Path(inputs.compare)] if compare_row is not None or comp else [])
    return Drawn(fig, caption, sources)


# ----------------------------------------------------------------------------- F7
def f7_recovery(inputs: FigureInputs, runs: _Runs) -> Drawn:
    if inputs.recovery is None:
        raise Skip("no recovery study given (recovery is None)")
    path = Path(inputs.recovery) / "recovery.json"
    if not path.is_file():
        raise Skip(f"no {path}")
    study = read_json(path)
    fig = plt.figure(figsize=(11, 7.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.1, 1])
    ax = top.subplots(1, 1)
    recovery_figures.draw_nll_time(ax, study)
    recovery_figures.draw_errors(bottom.subplots(1, 3), [study], by_method=True)
    summary = study.get("summary", {})
    parts = []
    for m in recovery_figures.methods_of([study]):
        s = summary.get(m, {})
        if not s:
            continue
        med = lambda key: _fmt(float(np.median([seed["methods"][m][key] for seed in study["seeds"]  # noqa: E731
                                                  if m in seed["methods"] and key in seed["methods"][m]])), ".2g") \
            if any(key in seed["methods"].get(m, {}) for seed in study["seeds"]) else "n/a"
        tte = s.get("time_to_epsilon", {})
        parts.append(f"{m}: recovered in {s.get('n_recovered', 'n/a')}/{s.get('n_seeds', 'n/a')} seeds, median "
                     f"excess NLL {med('excess_nll')}, A error {med('A_frobenius')}, C error {med('C_frobenius')}, "
                     f"mean time {_fmt(s.get('seconds', {}).get('mean'), '.2f')} s"
                     + (f", time to epsilon {_fmt(tte.get('mean'), '.2f')} s (mean of {tte.get('n')})"
                        if tte.get("n") else ""))
    cfg = study["config"]
    caption = (f"Recovering a random sparse HMM ({recovery_figures.label(study)}, {len(study['seeds'])} seeds, "
               f"{cfg['data']['n_train']} training sequences of length {cfg['data']['length']}): top, held-out NLL "
               f"minus the true model's against fitting time for each seed (lines: iterative fits; crosses: the "
               f"one-shot spectral method; dotted: epsilon = {cfg['epsilon']}); bottom, per method every seed's "
               f"excess held-out NLL and Frobenius errors of A and C after matching states (dots) with the median "
               f"(bar). " + "; ".join(parts) + ".")
    return Drawn(fig, caption, [Path(inputs.recovery)])


# ----------------------------------------------------------------------------- F8
def _model_label(model) -> str:
    if model.family != "transformer":
        return style.family_label(model.family)
    kind = "attention-only" if model.attn_only else f"standard ({model.normalization}, MLP)"
    heads = f"{model.n_heads} head{'s' if model.n_heads > 1 else ''}"
    return f"{model.n_layers}-layer {kind} transformer, {heads}" + (", BOS" if model.bos else "")


def _geometry_panel(runs: _Runs, run: Path, *, concat: bool) -> tuple:
    """(config, predictions, true beliefs, hook, R^2, relative loss) of a geometry run: its best hook's probe, or with
    ``concat`` the better of that and the concatenation of every residual hook."""
    cfg = runs.config(run)
    probe, _ = runs.probe(run)
    hook = ALL_LAYERS if concat and probe.all_layers.get("r2", -math.inf) > probe.best_r2 else None
    pred, true, hook, r2 = probe_predictions(runs, run, hook=hook)
    rel = runs.result(run).get("relative_loss") if (run / "result.json").is_file() else None
    return cfg, pred, true, hook, r2, rel


def _hook_words(hook: str) -> str:
    return "every layer concatenated" if hook == ALL_LAYERS else hook.split(".", 1)[-1] if hook.startswith(
        "blocks.") else hook


def f8_other_processes(inputs: FigureInputs, runs: _Runs) -> Drawn:
    if not inputs.geometry and not inputs.geometry_learners:
        raise Skip("no geometry runs given")
    roles = (("learner", inputs.geometry_learners), ("contrast", inputs.geometry))
    cols, missing, sources = [], [], []
    for label in dict.fromkeys([*inputs.geometry, *inputs.geometry_learners]):  # in the order given
        panels = {}
        for role, given in roles:
            if label not in given:
                continue
            run = Path(given[label])
            try:
                panels[role] = (run, *_geometry_panel(runs, run, concat=role == "learner"))
                sources.append(run)
            except Skip as why:
                missing.append(f"{label} {role} ({why})")
        if "learner" in panels and "contrast" in panels:
            a, b = (_process_label(panels[r][1]) for r in ("learner", "contrast"))
            if a != b:  # one column holds one process
                missing.append(f"{label} contrast ({panels['contrast'][0]} is on {b}, its learner on {a})")
                del panels["contrast"]
        if panels:
            cols.append((label, panels))
    if not cols:
        raise Skip("no usable geometry run: " + "; ".join(missing))
    shown = [role for role, given in roles if any(role in p for _, p in cols)]
    n, rows = len(cols), 1 + len(shown)
    fig, axes = plt.subplots(rows, n, figsize=(3.6 * n, 3.3 * rows), layout="constrained", squeeze=False)
    parts, reasons = [], []
    for j, (label, panels) in enumerate(cols):
        first = next(iter(panels.values()))
        run, cfg = first[0], first[1]
        hmm = runs.hmm(run)
        b, w, n_distinct = runs.exact(run)
        proj = Projection.fit(b, w)
        lims = proj.limits(proj.xy(b), *(proj.xy(p[2]) for p in panels.values()))
        _draw_exact(axes[0, j], proj, b, w, scale=40.0, lims=lims)
        axes[0, j].set_title(f"{label}: exact\n{n_distinct} beliefs within {cfg.train.context} tokens")
        words = []
        for i, role in enumerate(shown, start=1):
            ax = axes[i, j]
            if role not in panels:
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"no {role} run", ha="center", va="center", transform=ax.transAxes, color="0.4")
                continue
            run, rcfg, pred, true, hook, r2, rel = panels[role]
            _draw_points(ax, proj, pred, true, lims)  # the same view as the exact panel above
            ax.set_title(f"{role}: {_model_label(rcfg.model)}\n$R^2$ = {r2:.3f} ({_hook_words(hook)}), "
                         f"rel. loss {_fmt(rel, '.4f')}", fontsize=8)
            words.append(f"{role} ({_model_label(rcfg.model)}, {rcfg.train.steps} steps): relative loss "
                         f"{_fmt(rel, '.6f')}, probe R^2 {r2:.4f} at `{hook}`")
        parts.append(f"{label} ({_process_label(cfg)}, {hmm.n_states} states, {n_distinct} distinct beliefs, drawn "
                     f"on {proj.describe()}): " + "; ".join(words))
        from interp.hmm.heads import head_count
        from interp.interpret.cache import evaluation_length

        # a model trained at context L predicts from positions 0..L-2: lags up to L-2
        reasons.append(f"{label}: {head_count(hmm, evaluation_length(cfg.train.context)).reason}")
    caption = (f"Models trained on other processes. Top row: the exact belief geometry (mixed-state presentation to "
               f"the context length; colour: the belief, as RGB for 3 states or its first three principal components "
               f"otherwise; area: probability). Below, in the same view: linear-probe predictions for {N_POINTS} "
               f"held-out (sequence, position) points drawn by probability, coloured by their true belief, "
               + ("first from a model that learns the process (the learner; its probe on every layer's residual "
                  "stream concatenated when that beats its best single hook), then " if "learner" in shown else "")
               + "from the pipeline's 1-layer attention-only transformer (the contrast; best hook). "
               + "; ".join(parts) + ". Why the contrast fails where it does: one attention layer read out linearly "
               "writes at best the first-order (constrained) update, in which past tokens get position-dependent "
               "weights, and one softmax head's weights are non-negative. The head-count rule (`interp.hmm.heads`, "
               "docs/construction.md; over the lags of the trained positions) says what that update needs: "
               + "; ".join(reasons) + ". A process whose "
               "first-order update keeps no memory (RRXOR: its beliefs turn on the XOR of earlier tokens) is beyond "
               "any number of heads; one that needs more heads than the contrast has is beyond it."
               + (" Not shown: " + "; ".join(missing) + "." if missing else ""))
    return Drawn(fig, caption, sources)


DRAW = {"F1": f1_belief_simplex, "F2": f2_probe_geometry, "F3": f3_attention, "F4": f4_training_curves,
        "F5": f5_probe_r2, "F6": f6_ssm_spectrum, "F7": f7_recovery, "F8": f8_other_processes}


# ----------------------------------------------------------------------------- the set
def make_figures(inputs: FigureInputs, out_dir: str | Path, *, command: str,
                 only: list[str] | None = None, log: Callable[[str], None] = lambda msg: None) -> dict[str, list[Path]]:
    """Draw every figure (or those in ``only``, keys "F1".."F8") into ``out_dir`` and write ``out_dir/index.md``;
    ``log`` gets one line per figure, drawn or skipped.

    Returns key -> the files written (png, pdf); a skipped figure maps to [] and index.md says why. With ``only``,
    index.md keeps what an earlier index.md in ``out_dir`` says of the figures not redrawn (and its header).
    Calling it twice on the same inputs writes the same bytes."""
    keys = list(FIGURES) if only is None else list(only)
    unknown = [k for k in keys if k not in FIGURES]
    if unknown or not keys:
        what = f"unknown figure(s) {', '.join(map(repr, unknown))}" if unknown else "no figure named"
        raise ValueError(f"{what}; the figures are {', '.join(FIGURES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header, before = _index_entries(out_dir / "index.md") if only is not None else (None, {})
    runs = _Runs(inputs)
    written: dict[str, list[Path]] = {}
    entries: dict[str, str] = {}
    try:
        for key in FIGURES:
            stem, title = FIGURES[key]
            if key not in keys:
                entries[key] = before.get(key) or (f"## {key}: {title}\n\nNot drawn in this call (only "
                                                   f"{', '.join(keys)} were asked for).\n")
                continue
            t0 = time.perf_counter()
            try:
                with style.figure_style():
                    drawn = DRAW[key](inputs, runs)
                    written[key] = style.save(drawn.fig, out_dir, stem)
            except Skip as why:
                plt.close("all")
                written[key] = []
                entries[key] = f"## {key}: {title}\n\nNot drawn: {why}.\n"
                log(f"[{'figures':<24}] {key} {stem}: not drawn ({why})")
                continue
            log(f"[{'figures':<24}] {key} {stem}: drawn in {time.perf_counter() - t0:.1f} s")
            sources = list(dict.fromkeys(str(p) for p in drawn.sources))
            entries[key] = (f"## {key}: {title}\n\n![{key}]({stem}.png)\n\n{drawn.caption}\n\n"
                            f"Made by `{command}` from {_src(sources)}. Files: [{stem}.png]({stem}.png), "
                            f"[{stem}.pdf]({stem}.pdf).\n")
    finally:
        runs.release()
    index = ["# Figures", "", f"Made by `{command}`. Every figure is a PNG (shown) and a PDF; the numbers in the "
             f"captions are read from, or measured on, the run folders named under each.", ""]
    index = [header] if header is not None and before else index
    index += [entries[k] for k in FIGURES]
    style.write_bytes(out_dir / "index.md", "\n".join(index).encode())
    return written


def _index_entries(path: Path) -> tuple[str | None, dict[str, str]]:
    """The header and the per-figure entries of an index.md that :func:`make_figures` wrote (none if absent)."""
    import re

    if not path.is_file():
        return None, {}
    header, *parts = re.split(r"(?m)^(?=## F\d+: )", path.read_text())
    entries = {}
    for part in parts:
        key = part[3:].split(":", 1)[0]
        if key in FIGURES:
            entries[key] = part.rstrip("\n") + "\n"  # as written: one newline, the join adds the blank line
    return header.removesuffix("\n"), entries


def _label_path(text: str) -> tuple[str, Path]:
    label, sep, path = text.rpartition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"expected LABEL=RUN_DIR, got {text!r}")
    return label, Path(path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m interp.figures.paper", description="Draw the figure set F1-F8 and index.md from run "
                                "folders (a figure whose inputs are not given is skipped).")
    for family in FAMILIES:
        p.add_argument(f"--{family.replace('_', '-')}", type=Path, metavar="RUN_DIR",
                       help=f"run folder of the trained {family} model")
    p.add_argument("--construction", type=Path, metavar="RUN_DIR",
                   help="run folder of the hand-set construction (interp.interpret.analyse.build_construction_run)")
    p.add_argument("--geometry", type=_label_path, action="append", default=[], metavar="LABEL=RUN_DIR",
                   help="a model trained on another process (repeatable), e.g. RRXOR=runs/rrxor_tf1")
    p.add_argument("--learner", type=_label_path, action="append", default=[], metavar="LABEL=RUN_DIR",
                   help="a model that learns that process, drawn in F8 above its --geometry contrast (repeatable), "
                        "e.g. RRXOR=runs/shai2024_rrxor")
    p.add_argument("--recovery", type=Path, metavar="DIR", help="folder with recovery.json (interp recover)")
    p.add_argument("--compare", type=Path, metavar="DIR", help="folder with compare.json (interp compare)")
    p.add_argument("--only", default=None, help="comma-separated figure keys, e.g. F1,F4 (default: all)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    args = p.parse_args(argv)
    inputs = FigureInputs(
        models={f: getattr(args, f) for f in FAMILIES if getattr(args, f) is not None},
        construction=args.construction, geometry=dict(args.geometry), geometry_learners=dict(args.learner),
        recovery=args.recovery, compare=args.compare)
    only = None if args.only is None else [k.strip() for k in args.only.split(",") if k.strip()]
    command = "python -m interp.figures.paper " + shlex.join(argv)
    try:
        written = make_figures(inputs, args.out, command=command, only=only,
                               log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError) as err:
        print(f"figures.py: error: {err}", file=sys.stderr)
        return 2
    for key, paths in written.items():
        print(f"{key}: " + (", ".join(str(p) for p in paths) if paths else "skipped (see index.md)"))
    print(f"-> {Path(args.out) / 'index.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
