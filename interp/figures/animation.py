"""The interpolation animation: Mess3(x, a) along a path in its parameters, the exact belief geometry beside the
construction's beliefs and a trained model's probe predictions, frame by frame.

    python -m interp.figures.animation runs/animation.toml [--out DIR] [--workers N] [--no-train]

``runs/animation.toml`` is a sweep config (``interp.studies.sweep``: the trained frames, a grid over
``process.params.x`` and/or ``process.params.a``) plus an ``[animation]`` table::

    [animation]
    path = [[0.05, 0.85], [0.05, 0.6], [0.45, 0.6]]   # keypoints (x, a), joined by straight segments
    frames_per_segment = 4                              # frames from one keypoint to the next
    fps = 3

The command runs the sweep (points already trained and probed are skipped), then writes into the sweep's folder
(default ``runs/<name>/``) ``animation.gif`` (matplotlib's PillowWriter), the contact sheet ``animation_sheet.png``
/ ``.pdf`` (the trained frames and the path's keypoints) and ``animation.json`` (every frame's parameters, title
and numbers). Every sweep point must be a frame of the path; a frame at a finished point is *trained* (its third
panel shows the probe predictions of that point's first seed), every other frame is *constructed* (exact beliefs
and construction only), and its title says which. Each panel shows the 2-simplex: the exact beliefs of the
mixed-state presentation within the context (F1's drawing), the construction's beliefs
(:func:`interp.interpret.construction.construction_beliefs` with the analytic decay where there is one, else
:func:`fit_construction`'s fitted decay: the title says which) and the probe predictions (F2's drawing), the last
two on points of the evaluation set drawn by probability with a fixed seed. The output depends only on the run
folders: the GIF's frames are rendered with fixed settings and Pillow writes no timestamp.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch

from interp.config import ConfigError, from_dict, load, read_toml
from interp.figures import style  # sets the Agg backend
from interp.figures.paper import (N_POINTS, SEED, SQRT3, FigureInputs, Projection, _draw_exact, _draw_points, _Runs,
                                  exact_geometry, probe_predictions)
from interp.io import write_json

if TYPE_CHECKING:
    from interp.studies.sweep import SweepConfig

GIF = "animation.gif"
SHEET = "animation_sheet"
FRAMES_JSON = "animation.json"
GIF_DPI = 80  # the GIF's frames are screen-sized; the contact sheet uses the lab's DPI
PARAMS = ("x", "a")
MATCH_TOL = 1e-9  # a sweep point is at a frame when both parameters agree to this
MARGIN = 0.2  # the view reaches this far outside the simplex (a first-order construction can leave it)


@dataclass(frozen=True)
class AnimationOptions:
    """``[animation]``: the path through Mess3's (x, a) and how it is shown."""

    path: tuple[tuple[float, ...], ...]  # keypoints [x, a], at least two
    frames_per_segment: int = 4  # frames from one keypoint up to (not including) the next
    fps: int = 3
    n_points: int = N_POINTS  # construction and probe points per panel

    def __post_init__(self):
        if len(self.path) < 2:
            raise ValueError(f"path must list at least two [x, a] keypoints, got {len(self.path)}")
        for i, point in enumerate(self.path):
            if len(point) != 2:
                raise ValueError(f"path[{i}] must be [x, a], got {list(point)!r}")
        if self.frames_per_segment < 1:
            raise ValueError(f"frames_per_segment must be >= 1, got {self.frames_per_segment}")
        if self.fps < 1:
            raise ValueError(f"fps must be >= 1, got {self.fps}")
        if self.n_points < 1:
            raise ValueError(f"n_points must be >= 1, got {self.n_points}")


@dataclass(frozen=True)
class AnimationConfig:
    sweep: SweepConfig  # the trained frames (the file without its [animation] table)
    options: AnimationOptions


@dataclass(frozen=True)
class Frame:
    """One frame: Mess3(x, a); ``point`` the sweep point at these parameters (None: none is), ``run`` its run
    folder when that run is trained and probed (None: the frame is constructed)."""

    index: int
    x: float
    a: float
    point: str | None = None
    run: Path | None = None

    @property
    def trained(self) -> bool:
        return self.run is not None


# ----------------------------------------------------------------------------- config
def animation_config_from_dict(data: dict, *, default_name: str | None = None) -> AnimationConfig:
    """A parsed animation TOML: the sweep config with an ``[animation]`` table; checks that the sweep is over Mess3's
    x and a and that every one of its points is a frame of the path."""
    from interp.hmm.processes import get_process
    from interp.studies.sweep import SweepConfig

    data = dict(data)
    if "animation" not in data:
        raise ConfigError("missing required key animation (the [animation] table with the path)")
    options = from_dict(AnimationOptions, data.pop("animation"), prefix="animation")
    sweep = load(SweepConfig, data, default_name=default_name)
    if sweep.process.name != "mess3":
        raise ConfigError(f"process.name must be 'mess3' (the animation moves Mess3's x and a), got "
                          f"{sweep.process.name!r}")
    for key in sweep.grid:
        if key not in ("process.params.x", "process.params.a"):
            raise ConfigError(f"grid key {key!r}: the animation's grid may only move process.params.x and "
                              f"process.params.a (one trained run per frame)")
    for i, (x, a) in enumerate(options.path):
        try:
            get_process("mess3", x=x, a=a)
        except ValueError as err:
            raise ConfigError(f"animation.path[{i}]: {err}") from None
    cfg = AnimationConfig(sweep, options)
    frames = plan_frames(cfg)
    for p in sweep.points:
        # by parameters: frames name only a point's first seed, later seeds sit at the same (x, a)
        x, a = _point_params(p)
        if not any(abs(f.x - x) <= MATCH_TOL and abs(f.a - a) <= MATCH_TOL for f in frames):
            raise ConfigError(f"sweep point {p.name} (x={x!r}, a={a!r}) is not a frame of animation.path; "
                              f"put it on the path or change frames_per_segment")
    return cfg


def load_animation_config(path: str | Path) -> AnimationConfig:
    """The animation config at ``path`` (its name defaults to the file's stem); errors name the file."""
    path = Path(path)
    try:
        return animation_config_from_dict(read_toml(path), default_name=path.stem)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _point_params(point) -> tuple[float, float]:
    params = point.config.process.params
    missing = [k for k in PARAMS if k not in params]
    if missing:
        raise ConfigError(f"process.params must give {missing[0]} (directly or through the grid): every frame is "
                          f"Mess3(x, a)")
    return float(params["x"]), float(params["a"])


def plan_frames(cfg: AnimationConfig) -> tuple[Frame, ...]:
    """The path's frames in order (``frames_per_segment`` per segment, then the last keypoint), each at the sweep
    point it meets (its parameters then the point's exact values; a point's first seed)."""
    keys = [np.asarray(p, dtype=np.float64) for p in cfg.options.path]
    n = cfg.options.frames_per_segment
    xs = [k0 + (k1 - k0) * (j / n) for k0, k1 in zip(keys, keys[1:]) for j in range(n)] + [keys[-1]]
    first_seed = cfg.sweep.seeds[0]
    points = [(p, _point_params(p)) for p in cfg.sweep.points if p.seed == first_seed]
    frames = []
    for i, (x, a) in enumerate(xs):
        x, a, name = float(x), float(a), None
        for p, (px, pa) in points:
            if abs(px - x) <= MATCH_TOL and abs(pa - a) <= MATCH_TOL:
                x, a, name = px, pa, p.name
                break
        frames.append(Frame(i, x, a, name))
    return tuple(frames)


def resolve_frames(cfg: AnimationConfig, root: str | Path) -> tuple[Frame, ...]:
    """:func:`plan_frames` with each frame's run folder where the sweep's run there is trained and probed."""
    from interp.rundir import SWEEP_RUNS
    from interp.studies.jobs import done

    configs = {p.name: p.config for p in cfg.sweep.points}
    out = []
    for f in plan_frames(cfg):
        run = None if f.point is None else Path(root) / SWEEP_RUNS / f.point
        out.append(Frame(f.index, f.x, f.a, f.point, run if run is not None and done(configs[f.point], run) else None))
    return tuple(out)


# ----------------------------------------------------------------------------- one frame's data
@dataclass(frozen=True)
class FrameData:
    frame: Frame
    n_frames: int
    context: int
    exact: torch.Tensor  # [m, 3] distinct beliefs within the context (mixed-state presentation)
    exact_weight: torch.Tensor  # [m]
    n_distinct: int
    decay: float
    decay_kind: str  # "analytic" (1 - 3x) or "fitted"
    construction: torch.Tensor  # [k, 3] construction beliefs at sampled (sequence, position) points
    construction_true: torch.Tensor  # [k, 3] their exact beliefs
    construction_r2: float  # pooled weighted R^2 over the whole evaluation set
    probe: torch.Tensor | None = None  # [k, 3] probe predictions of the trained run (None: constructed)
    probe_true: torch.Tensor | None = None
    probe_hook: str | None = None
    probe_r2: float | None = None


def frame_title(frame: Frame, n_frames: int) -> str:
    """The frame's title: its parameters and whether it is trained (which run) or constructed."""
    head = f"frame {frame.index + 1}/{n_frames}: Mess3(x = {frame.x:.4g}, a = {frame.a:.4g})"
    if frame.trained:
        return f"{head}, trained (run {frame.point})"
    return f"{head}, constructed (exact beliefs and construction only)"


def construction_title(data: FrameData) -> str:
    how = "analytic decay 1 - 3x" if data.decay_kind == "analytic" else "fitted decay"
    return f"construction\n{how} = {data.decay:.3f}, $R^2$ = {data.construction_r2:.3f}"


def frame_data(frame: Frame, n_frames: int, context: int, n_points: int, runs: _Runs | None = None) -> FrameData:
    """Exact beliefs, the construction (analytic decay where Mess3 has one, else fitted to the exact beliefs) on a
    probability-weighted sample of the evaluation set's (sequence, position) points (the ``evaluation_length``
    trained positions a run's cache holds, with its evaluation seed), and, for a trained frame, the run's best
    probe on its held-out sample (:func:`interp.figures.paper.probe_predictions`)."""
    from interp import hmm as H
    from interp.interpret.cache import evaluation_length, evaluation_set
    from interp.interpret.construction import analytic_decay, construction_beliefs, fit_construction
    from interp.interpret.metrics import pooled_r2

    hmm = H.get_process("mess3", x=frame.x, a=frame.a)
    b, w, n_distinct = exact_geometry(hmm, context)
    if frame.trained:
        runs = runs if runs is not None else _Runs(FigureInputs())
    # the positions and sequences the run's probes cover, so the construction's numbers compare with the probe's
    length = evaluation_length(context)
    ev = evaluation_set(hmm, length, seed=runs.config(frame.run).seeds()["eval"] if frame.trained else 0)
    true = H.beliefs(hmm, ev.tokens)
    decay = analytic_decay(hmm)
    if decay is not None:
        pred, kind = construction_beliefs(hmm, ev.tokens, decay=decay), "analytic"
    else:
        fit = fit_construction(ev.tokens, true, ev.weight, n_tokens=hmm.n_tokens)
        pred, decay, kind = fit.predict(ev.tokens), fit.decay, "fitted"
    row_w = ev.weight[:, None].expand(-1, length)
    r2 = pooled_r2(true, pred, row_w)
    flat_w = row_w.reshape(-1)
    k = min(n_points, int((flat_w > 0).sum()))
    idx = torch.multinomial(flat_w, k, replacement=False, generator=torch.Generator().manual_seed(SEED)).sort().values
    seq, pos = idx // length, idx % length
    data = dict(frame=frame, n_frames=n_frames, context=context, exact=b, exact_weight=w, n_distinct=n_distinct,
                decay=float(decay), decay_kind=kind, construction=pred[seq, pos], construction_true=true[seq, pos],
                construction_r2=float(r2))
    if frame.trained:
        p, t, hook, pr2 = probe_predictions(runs, frame.run, n_points)
        data.update(probe=p, probe_true=t, probe_hook=hook, probe_r2=pr2)
    return FrameData(**data)


def frame_record(data: FrameData) -> dict:
    """What animation.json keeps of a frame."""
    f = data.frame
    return {"index": f.index, "x": f.x, "a": f.a, "trained": f.trained, "point": f.point,
            "title": frame_title(f, data.n_frames), "decay": data.decay, "decay_kind": data.decay_kind,
            "construction_r2": data.construction_r2, "probe_hook": data.probe_hook, "probe_r2": data.probe_r2,
            "n_distinct_beliefs": data.n_distinct}


# ----------------------------------------------------------------------------- drawing
def _limits(frames: list[FrameData]):
    """One square view for every frame: the simplex, widened (by at most ``MARGIN``) for points outside it."""
    proj = Projection.fit(frames[0].exact, frames[0].exact_weight)
    xys = [proj.xy(d.construction) for d in frames] + [proj.xy(d.probe) for d in frames if d.probe is not None]
    pts = np.clip(np.concatenate(xys), -MARGIN, [1 + MARGIN, SQRT3 / 2 + MARGIN])
    return proj.limits(pts)


def draw_panels(axes, data: FrameData, lims, *, exact_scale: float = 12.0) -> None:
    """Exact beliefs | construction | probe predictions (or a note that the frame is constructed) on ``axes``."""
    proj = Projection.fit(data.exact, data.exact_weight)
    _draw_exact(axes[0], proj, data.exact, data.exact_weight, scale=exact_scale, lims=lims)
    axes[0].set_title(f"exact beliefs\n{data.n_distinct} distinct within {data.context} tokens",
                      color=style.family_colour("exact"), fontsize=8)
    _draw_points(axes[1], proj, data.construction, data.construction_true, lims)
    axes[1].set_title(construction_title(data), color=style.family_colour("construction"), fontsize=8)
    if data.probe is not None:
        _draw_points(axes[2], proj, data.probe, data.probe_true, lims)
        axes[2].set_title(f"trained model's probe\n{data.probe_hook}: held-out $R^2$ = {data.probe_r2:.3f}",
                          color=style.family_colour("transformer"), fontsize=8)
    else:
        proj.decorate(axes[2], lims)
        axes[2].set_title("no trained run here\n(constructed frame)", color="0.5", fontsize=8)


def _frame_figure():
    fig, axes = plt.subplots(1, 3, figsize=(9.0, 3.7))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.8, wspace=0.04)
    return fig, axes


def write_gif(frames: list[FrameData], out_dir: Path, fps: int) -> Path:
    """Every frame into ``out_dir / animation.gif`` (PillowWriter writes a temporary file in the folder, copied
    into place atomically)."""
    from matplotlib.animation import PillowWriter

    lims = _limits(frames)
    path = out_dir / GIF
    fd, tmp = tempfile.mkstemp(prefix=".animation.", suffix=".gif", dir=out_dir)
    os.close(fd)
    try:
        with style.figure_style():
            fig, axes = _frame_figure()
            gif = PillowWriter(fps=fps)
            gif.setup(fig, tmp, dpi=GIF_DPI)
            try:
                for data in frames:
                    for ax in axes:
                        ax.cla()
                    draw_panels(axes, data, lims, exact_scale=8.0)
                    colour = style.family_colour("transformer") if data.frame.trained else "0.25"
                    fig.suptitle(frame_title(data.frame, data.n_frames), color=colour)
                    gif.grab_frame()
                gif.finish()
            finally:
                plt.close(fig)
        style.write_bytes(path, Path(tmp).read_bytes())  # the library's atomic writer (and file mode)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def sheet_frames(frames: list[FrameData], frames_per_segment: int) -> list[FrameData]:
    """The contact sheet's rows: the path's keypoints and every trained frame, in path order."""
    keep = {d.frame.index for d in frames if d.frame.trained or d.frame.index % frames_per_segment == 0}
    return [d for d in frames if d.frame.index in keep]


def write_sheet(frames: list[FrameData], out_dir: Path, frames_per_segment: int) -> list[Path]:
    """The contact sheet: one row per :func:`sheet_frames` frame under its title."""
    rows = sheet_frames(frames, frames_per_segment)
    lims = _limits(frames)
    with style.figure_style():
        fig = plt.figure(figsize=(8.4, 3.3 * len(rows)))
        for sub, data in zip(fig.subfigures(len(rows), 1, squeeze=False)[:, 0], rows):
            axes = sub.subplots(1, 3)
            sub.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.8, wspace=0.04)
            draw_panels(axes, data, lims)
            colour = style.family_colour("transformer") if data.frame.trained else "0.25"
            sub.suptitle(frame_title(data.frame, data.n_frames), color=colour)
        return style.save(fig, out_dir, SHEET)


def make_animation(cfg: AnimationConfig, root: str | Path, *, log=print) -> list[Path]:
    """Draw the GIF, the contact sheet and animation.json from the sweep folder ``root`` (the sweep's finished
    runs give the trained frames; the others are constructed)."""
    from interp.rundir import SWEEP, adopt, writer

    root = Path(root)
    with writer(root):  # one writer of the sweep's folder at a time
        adopt(root, "sweep", SWEEP)
        return _make_animation(cfg, root, log)


def _make_animation(cfg: AnimationConfig, root: Path, log) -> list[Path]:
    frames = resolve_frames(cfg, root)
    context = cfg.sweep.train.context
    runs = _Runs(FigureInputs())
    data = []
    try:
        for f in frames:
            data.append(frame_data(f, len(frames), context, cfg.options.n_points, runs))
            log(f"[{'frame':<24}] {frame_title(f, len(frames))}")
    finally:
        runs.release()
    paths = [write_gif(data, root, cfg.options.fps), *write_sheet(data, root, cfg.options.frames_per_segment)]
    write_json(root / FRAMES_JSON, {"sweep": cfg.sweep.name, "fps": cfg.options.fps, "context": context,
                                    "frames": [frame_record(d) for d in data]})
    return [*paths, root / FRAMES_JSON]


# ----------------------------------------------------------------------------- command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m interp.figures.animation", description=__doc__.splitlines()[0])
    p.add_argument("config", help="animation TOML (runs/animation.toml): a sweep config with an [animation] table")
    p.add_argument("--out", default=None, help="the sweep's folder (default: runs/<name>/ beside the config)")
    p.add_argument("--workers", type=int, default=2, help="training processes for the sweep (0: in this one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-train", action="store_true",
                   help="draw from the runs already finished (the others' frames are constructed)")
    args = p.parse_args(argv)
    try:
        cfg = load_animation_config(args.config)
        out = Path(args.out) if args.out else Path(args.config).parent / cfg.sweep.name
        if not args.no_train:
            from interp.studies.sweep import Sweep

            Sweep(cfg.sweep, out, workers=args.workers, device=args.device,
                  log=lambda msg: print(msg, flush=True)).run()
        paths = make_animation(cfg, out, log=lambda msg: print(msg, flush=True))
    except (ValueError, FileNotFoundError) as err:
        print(f"animation: error: {err}", file=sys.stderr)
        return 2
    print("-> " + ", ".join(str(path) for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
