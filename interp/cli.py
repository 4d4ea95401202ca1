"""The ``interp`` command line. Every failure ends in one ``interp: error: ...`` line, without a traceback.

Exit status 2 for bad input (flags, configs, paths that are missing or of the wrong kind); 1 for a file system
that refuses (read-only, full, permission denied), the line naming the path and the system's reason.
torch and the lab's modules are imported inside the commands, so that ``interp --help`` starts at once."""

from __future__ import annotations

import argparse
import ast
import errno
import math
import signal
import sys
import threading
import time
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    """Usage errors in the same one-line form as every other error."""

    def error(self, message: str):
        self.exit(2, f"interp: error: {message} (see `{self.prog} --help`)\n")


def _int_at_least(least: int):
    """The type of an integer flag that must be >= ``least`` (checked before any work starts)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
        return value

    return parse


def _real(ok, rule: str):
    """The type of a float flag: finite and ``ok(value)``, described by ``rule``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    return parse


def _parse_params(items: list[str]) -> dict:
    params = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param expects KEY=VALUE, got {item!r}")
        if key in params:
            raise ValueError(f"--param {key} is given twice")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = raw
        if isinstance(value, float) and not math.isfinite(value):  # 1e999 reads as inf
            raise ValueError(f"--param {key}={raw}: not a finite number")
        params[key] = value
    return params


def _device(name: str):
    """``--device`` as a torch device this machine has."""
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name!r}: the lab runs on cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps was asked for, but no MPS device is available")
    return dev


def _folder(args, path, flag: str | None = None) -> Path:
    """``path``, a folder the command writes: refused if it is a file. The first one is the command's target,
    named by a file-system error that names no path of its own (a full disk fails a write, not an open)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag + ' ' if flag else ''}{path} is a file, not a folder")
    if getattr(args, "target", None) is None:
        args.target = path
    return path


_WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_INPUT_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


def _os_error_line(err: OSError, target) -> str:
    """One line for a file-system error: the path (a rename's destination) and the system's reason."""
    if err.errno is None:  # raised by the lab with its own message
        return str(err)
    path = err.filename2 or err.filename
    reason = err.strerror or errno.errorcode.get(err.errno, str(err.errno))
    if path is None:
        return f"cannot write under {target}: {reason}" if target is not None else f"cannot write: {reason}"
    return f"{'cannot write' if err.errno in _WRITE_ERRNOS else 'cannot access'} {path}: {reason}"


def _fmt_vec(v) -> str:
    return "[" + ", ".join(f"{float(x):.4f}" for x in v) + "]"


def cmd_run(args) -> None:
    """The whole pipeline on one process (the embedded Mess3 default, or runs/<pipeline>.toml)."""
    from pathlib import Path

    from interp.pipeline.pipeline import (DEFAULT_FIGURES, QUICK_SUFFIX, Pipeline, default_pipeline_config,
                                          load_pipeline_config, quick_config)

    if args.config is None:
        cfg, root = default_pipeline_config(), Path("runs")
    else:
        _processes_beside(args.config)
        cfg, root = load_pipeline_config(args.config), Path(args.config).parent
    out = Path(args.out) if args.out else root / cfg.name
    figures = Path(args.figures) if args.figures else None
    if args.quick:  # every folder the same command would write, with _quick added: never the real run's
        cfg, out = quick_config(cfg), _quick_folder(out, QUICK_SUFFIX)
        figures = None if figures is None else _quick_folder(figures, QUICK_SUFFIX)
    elif args.config is None and figures is None:
        figures = Path(DEFAULT_FIGURES)  # the embedded default alone draws the tracked figure set
    _folder(args, out, "--out" if args.out else None)
    if figures is not None:
        _folder(args, figures, "--figures" if args.figures else None)
    _device(args.device)
    pipeline = Pipeline(cfg, out, figures, device=args.device, workers=args.workers, figures=not args.no_figures,
                        log=lambda msg: print(msg, flush=True))
    if args.quick:
        print(f"[{'quick':<24}] {cfg.name} at small sizes -> {out}, figures -> {pipeline.figures_dir}", flush=True)
    pipeline.run()


def _processes_beside(config: str) -> None:
    """A config's process module may sit beside it (``my_processes.py`` next to the TOML)."""
    from pathlib import Path

    from interp.hmm.processes import add_process_folder

    add_process_folder(Path(config).parent)


def _quick_folder(path, suffix: str):
    path = path.resolve() if path.name in ("", "..") else path  # "." or "..": name the folder itself
    return path.with_name(path.name + suffix)


def cmd_figures(args) -> None:
    """Redraw the figure set from a finished pipeline folder, without training anything."""
    from pathlib import Path

    from interp.io import read_json
    from interp.figures.paper import FIGURES
    from interp.hmm.processes import add_process_folder
    from interp.pipeline.pipeline import (draw_figures, drawn_figures_folder, figure_inputs, figures_folder,
                                          pipeline_config_from_dict)
    from interp.rundir import PIPELINE

    root = Path(args.run)
    if not (root / PIPELINE).is_file():
        raise FileNotFoundError(f"no pipeline folder at {root} (it has no {PIPELINE}); run `interp run` first")
    only = None
    if args.only is not None:
        only = [k.strip().upper() for k in args.only.split(",") if k.strip()]
        unknown = [k for k in only if k not in FIGURES]
        if unknown or not only:
            what = f"unknown figure {', '.join(map(repr, unknown))}" if unknown else "names no figure"
            raise ValueError(f"--only: {what}; the figures are {', '.join(FIGURES)}")
    add_process_folder(root.parent)  # a pipeline's process module sits beside its config, as its folder does
    cfg = pipeline_config_from_dict(read_json(root / PIPELINE))
    out = Path(args.out) if args.out else drawn_figures_folder(root) or figures_folder(cfg, root)
    _folder(args, out, "--out" if args.out else None)
    t0 = time.perf_counter()
    command = f"interp figures {root}" + ("" if only is None else f" --only {','.join(only)}")
    names = draw_figures(figure_inputs(cfg, root), out, command=command, only=only,
                         log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(f"{len(names)} files in {time.perf_counter() - t0:.1f} s -> {out}")


def cmd_describe(args) -> None:
    """Describe a process exactly: sampling check, MSP size, optimal loss per position, entropy rate."""
    import torch

    from interp import hmm as H
    from interp.hmm.processes import has_process

    _import_modules(args.module)
    if not has_process(args.process):
        raise ValueError(f"--process: unknown process {args.process!r}; known: {', '.join(H.list_processes())}"
                         + ("" if args.module else " (--module MODULE imports a module of yours that registers it)"))
    params = _parse_params(args.param)
    device = _device(args.device)
    try:
        hmm = H.get_process(args.process, **params).to(device)
    except ValueError as err:  # a process's own check may not name the parameter: the line does
        if not params:
            raise
        raise ValueError(f"--param {', '.join(f'{k}={v!r}' for k, v in params.items())}: {err}") from None
    label = f"{hmm.name}({', '.join(f'{k}={v}' for k, v in hmm.params.items())})"
    from interp.hmm.blocked import BlockedHMM

    if isinstance(hmm, BlockedHMM):
        return _describe_blocked(hmm, label, args)
    print(f"process   {label}: {hmm.n_states} states, {hmm.n_tokens} tokens; stationary pi = {_fmt_vec(hmm.pi)}")
    from interp.hmm.heads import head_count

    print(f"heads     first-order update at context {args.length}: {head_count(hmm, args.length).reason}")

    t0 = time.perf_counter()
    tokens = H.sample(hmm, args.samples, args.length, seed=args.seed)
    dt = time.perf_counter() - t0
    freq = torch.bincount(tokens.reshape(-1), minlength=hmm.n_tokens).double() / tokens.numel()
    expected = hmm.pi @ hmm.emission_matrix
    print(f"sample    {args.samples} x {args.length} tokens in {dt:.3f} s; "
          f"token frequencies {_fmt_vec(freq)} (stationary {_fmt_vec(expected)})")

    t0 = time.perf_counter()
    ll = H.log_likelihood(hmm, tokens)
    dt = time.perf_counter() - t0
    print(f"filter    exact beliefs of all {tokens.numel()} prefixes in {dt:.3f} s; "
          f"sample log-loss {-float(ll.sum()) / tokens.numel():.5f} nats/token")

    opt = H.optimal_loss(hmm, args.length, seed=args.seed)
    try:
        msp = H.mixed_state_presentation(hmm, min(args.length - 1, opt.n_exact - 1))
        sizes = torch.bincount(msp.depth).tolist()
        print(f"MSP       distinct beliefs per depth 0..{len(sizes) - 1}: {sizes}")
    except ValueError as err:
        print(f"MSP       not enumerated: {err}")

    rate = H.entropy_rate(hmm, seed=args.seed)
    uni = H.unigram_loss(hmm)
    print(f"\noptimal next-token loss (nats), position t predicts token t from tokens < t; log V = {math.log(hmm.n_tokens):.5f}")
    print(f"{'t':>4} {'optimal':>10} {'stderr':>9} {'gap to rate':>12}")
    for t, (v, se) in enumerate(zip(opt.per_position.tolist(), opt.stderr.tolist())):
        how = "exact" if t < opt.n_exact else f"{se:.1e}"
        print(f"{t:>4} {v:>10.6f} {how:>9} {v - rate.value:>12.2e}")
    print(f"\nentropy rate  {rate.value:.6f} +- {rate.stderr:.1e} nats/token (Monte Carlo over exact beliefs)")
    print(f"unigram loss  {uni:.6f} nats/token; learnable gap {uni - rate.value:.6f} nats/token")


def _describe_blocked(hmm, label: str, args) -> None:
    """What ``describe`` can say of a block-sparse process: its structure, sampling, its own filter's loss."""
    import torch

    print(f"process   {label}: {hmm.n_states} states in {hmm.n_groups} groups of {hmm.group_size}, {hmm.n_tokens} "
          f"tokens ({hmm.tokens_per_group} a group), {hmm.succ.shape[1]} successor groups each")
    t0 = time.perf_counter()
    tokens = hmm.sample(args.samples, args.length, seed=args.seed)
    dt = time.perf_counter() - t0
    seen = int((torch.bincount(tokens.reshape(-1), minlength=hmm.n_tokens) > 0).sum())
    print(f"sample    {args.samples} x {args.length} tokens in {dt:.3f} s; {seen} of {hmm.n_tokens} tokens seen")
    t0 = time.perf_counter()
    ll = hmm.log_likelihood(tokens)
    dt = time.perf_counter() - t0
    print(f"filter    the blocked filter over all {tokens.numel()} prefixes in {dt:.3f} s; sample log-loss "
          f"{-float(ll.sum()) / tokens.numel():.5f} nats/token; unigram loss {hmm.unigram_loss():.5f}")
    print("exact     optimal loss per position, MSP and head count: dense processes only (this one has "
          f"{hmm.n_states} states)")


def cmd_train(args) -> None:
    """Train one run from its TOML config into runs/<name>/."""
    from pathlib import Path

    from interp.training.runconfig import load_run_config
    from interp.training.trainer import Trainer

    _processes_beside(args.config)
    cfg = load_run_config(args.config)
    if args.steps is not None:  # >= 1: checked by the parser
        cfg = cfg.with_steps(args.steps)
    run_dir = Path(args.out) if args.out else Path(args.config).parent / cfg.name
    _folder(args, run_dir, "--out" if args.out else None)
    result = Trainer(cfg, run_dir, device=_device(args.device), resume=args.resume, force=args.force,
                     log=lambda msg: print(msg, file=sys.stderr, flush=True)).run()
    print(f"{cfg.name}: eval loss {result.eval_loss:.6f}, optimal {result.optimal_loss:.6f}, "
          f"relative {result.relative_loss:.6f}, gap fraction {result.gap_fraction:.4f}; "
          f"{result.steps} steps in {result.train_seconds:.1f} s -> {run_dir}")


def cmd_cache(args) -> None:
    """Cache a trained run's hooks over its evaluation set (reused when it is already up to date)."""
    from pathlib import Path

    from interp.interpret.cache import build_cache, cache_is_fresh
    from interp.rundir import CACHE

    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder at {run_dir}")
    _folder(args, run_dir)
    device = _device(args.device)
    if not args.force and cache_is_fresh(run_dir):
        print(f"{run_dir / CACHE}: up to date (use --force to rebuild)")
        return
    t0 = time.perf_counter()
    path = build_cache(run_dir, device=device, batch_size=args.batch_size,
                       log=lambda msg: print(msg, file=sys.stderr, flush=True))
    from interp.interpret.cache import load_cache

    cache = load_cache(run_dir)
    kind = "every sequence, weighted by probability" if cache.exhaustive else "sampled sequences"
    print(f"{path}: {cache.tokens.shape[0]} sequences x {cache.tokens.shape[1]} positions ({kind}); "
          f"hooks {', '.join(cache.hooks)}; {time.perf_counter() - t0:.1f} s")


def cmd_probe(args) -> None:
    """Fit belief probes on a run's cached hooks (building the cache if needed); write probe.json."""
    from pathlib import Path

    from interp.interpret.analyse import CONCAT, probe_run
    from interp.rundir import PROBE

    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder at {run_dir}")
    _folder(args, run_dir)
    out = probe_run(run_dir, test_fraction=args.test_fraction, ridge=args.ridge, seed=args.seed,
                    causal_points=args.causal_points, device=_device(args.device),
                    log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(f"{'hook':<28} {'R^2 test':>9} {'R^2 train':>9} {'RMSE':>8} {'dist':>8} {'shuffled':>9}")
    for name, sc in [*out.hooks.items(), (CONCAT, out.all_layers)]:
        dist = "-" if sc["simplex_distance"] is None else f"{sc['simplex_distance']:.4f}"  # None: a GHMM's beliefs
        print(f"{name:<28} {sc['r2']:>9.4f} {sc['r2_train']:>9.4f} {sc['rmse']:>8.4f} "
              f"{dist:>8} {sc['shuffled_r2']:>9.4f}")
    c = out.causal
    print(f"best hook {out.best_hook} (R^2 {out.best_r2:.4f}; {out.r2})")
    print(f"causal check at {c['hook']} over {c['n_points']} points: KL(HMM at target belief || model) "
          f"{c['kl_target_before']:.2e} before, {c['kl_target_after']:.2e} after the move, "
          f"{c['kl_target_random']:.2e} after a random move of the same size; closer at {c['share_closer']:.1%} "
          f"of points; R^2 of the change {c['change_r2']:.3f}")
    print(f"-> {run_dir / PROBE}")


def cmd_compare(args) -> None:
    """Compare runs: losses, probes, attention against the construction, SSM spectra, Belief Net recovery."""
    from pathlib import Path

    from interp.interpret.analyse import compare_runs
    from interp.rundir import COMPARE_JSON, COMPARE_MD

    if not args.runs:
        raise ValueError("give at least one run folder")
    out_dir = _folder(args, args.out, "--out")
    compare_runs([Path(r) for r in args.runs], out_dir, device=_device(args.device),
                 log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print((out_dir / COMPARE_MD).read_text())
    print(f"-> {out_dir / COMPARE_MD}, {out_dir / COMPARE_JSON}")


def cmd_construct(args) -> None:
    """Build the scaled-vector-addition construction as a hand-set TransformerLens run folder."""
    from pathlib import Path

    from interp.interpret.analyse import build_construction_run

    process = {"name": args.process, "params": _parse_params(args.param)}
    out = Path(args.out) if args.out else Path("runs") / f"{args.process}_construction"
    _folder(args, out, "--out" if args.out else None)
    res = build_construction_run(process, args.context, out, decay=args.decay)
    c = res["construction"]
    print(f"{out}: lambda = {c['decay']:.4f} ({c['decay_source']}); relative loss {res['relative_loss']:.6f} with its "
          f"linear read-out, {res['relative_loss_exact_readout']:.6f} read exactly; BOS token {c['bos_token']}")


def cmd_recover(args) -> None:
    """Belief Net against Baum-Welch and spectral learning on parameter recovery (runs/<name>.toml)."""
    from dataclasses import replace
    from pathlib import Path

    from interp.rundir import RECOVERY
    from interp.studies.recovery import load_recovery_config, run_recovery

    cfg = load_recovery_config(args.config)
    if args.seeds is not None:  # >= 1: checked by the parser
        cfg = replace(cfg, seeds=tuple(range(args.seeds)))
    if args.device != "cpu":
        _device(args.device)
        cfg = replace(cfg, device=args.device)
    out_dir = Path(args.out) if args.out else Path(args.config).parent / cfg.name
    _folder(args, out_dir, "--out" if args.out else None)
    out = run_recovery(cfg, out_dir, force=args.force, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    summary = out["summary"]
    print(f"{'method':<28} {'recovered':>9} {'excess NLL (mean +- std)':>26} {'A err':>15} {'C err':>15} {'seconds':>9}")
    for m, st in summary.items():
        if m == "speedup":
            continue
        ex, a, c, sec = (st.get(k, {}) for k in ("excess_nll", "A_frobenius", "C_frobenius", "seconds"))
        pm = lambda d: f"{d['mean']:.4f} +- {d['std']:.4f}" if d else "-"  # noqa: E731
        print(f"{m:<28} {st['n_recovered']:>4}/{st['n_seeds']:<4} {pm(ex):>26} {pm(a):>15} {pm(c):>15} "
              f"{sec.get('mean', float('nan')):>9.1f}")
    sp = summary["speedup"]
    if sp["n_reached"]:
        print(f"Belief Net reached Baum-Welch's final held-out NLL in {sp['n_reached']}/{sp['n_seeds']} seeds, "
              f"{sp['median']:.1f}x sooner (median; {sp['min']:.1f}x to {sp['max']:.1f}x)")
    else:
        print(f"Belief Net never reached Baum-Welch's final held-out NLL ({sp['n_seeds']} seeds)")
    print(f"-> {out_dir / RECOVERY}")


def cmd_bench(args) -> None:
    import torch

    from interp.bench.hmm import format_table, run_blocked_bench, run_filter_method_bench, run_hmm_bench
    from interp.bench.train import run_train_bench

    dev = str(_device(args.device))
    say = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    if args.suite in ("hmm", "all"):
        rows += run_hmm_bench(quick=args.quick, device=dev, progress=say)
    if args.suite in ("filter", "all"):
        rows += run_filter_method_bench(quick=args.quick, device=dev, progress=say)
    if args.suite in ("blocked", "all"):
        rows += run_blocked_bench(quick=args.quick, device=dev, progress=say)
    if args.suite in ("train", "all"):
        rows += run_train_bench(quick=args.quick, device=dev, progress=say)
    print(f"device: {dev} ({torch.get_num_threads()} threads)"
          + ("" if torch.cuda.is_available() else "; no CUDA device on this machine, GPU rows not run"))
    print(format_table(rows))


def _import_modules(modules: list[str]) -> None:
    """The user's modules of --module (each registers processes when imported)."""
    from interp.hmm.processes import import_process_module

    for module in modules:
        try:
            import_process_module(module)
        except ValueError as err:
            raise ValueError(f"--module: {err}") from None


def cmd_processes(args) -> None:
    import inspect

    from interp import hmm as H
    from interp.hmm.processes import _REGISTRY

    _import_modules(args.module)
    for name in H.list_processes():
        fn = _REGISTRY[name]
        sig = ", ".join(f"{p.name}={p.default!r}" for p in inspect.signature(fn).parameters.values())
        doc = ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        where = "" if fn.__module__ == "interp.hmm.processes" else f"  (from {fn.__module__})"
        print(f"{name}({sig}){where}\n    {doc}")

def cmd_sweep(args) -> None:
    """A grid of runs (process params x model config x seeds): run what is not done, aggregate, draw."""
    from pathlib import Path

    from interp.pipeline.pipeline import QUICK_SUFFIX
    from interp.studies.sweep import Sweep, load_sweep_config, quick_sweep_config

    _processes_beside(args.config)
    cfg = load_sweep_config(args.config)
    out = Path(args.out) if args.out else Path(args.config).parent / cfg.name
    if args.quick:  # the folder the same command would write, with _quick added: never the real sweep's
        cfg, out = quick_sweep_config(cfg), _quick_folder(out, QUICK_SUFFIX)
        print(f"[{'quick':<24}] {cfg.name} at small sizes -> {out}", flush=True)
    _folder(args, out, "--out" if args.out else None)
    _device(args.device)
    Sweep(cfg, out, workers=args.workers, executor=args.executor, device=args.device, figure=not args.no_figure,
          log=lambda msg: print(msg, flush=True)).run()


def cmd_study(args) -> None:
    """Several runs on one question (a reproduction, the head-count rule, the minimal-model chain): train and
    probe what is not done, then the study's table and figures."""
    from pathlib import Path

    from interp.pipeline.pipeline import QUICK_SUFFIX
    from interp.studies.study import Study, load_study_config, quick_study_config

    _processes_beside(args.config)
    cfg = load_study_config(args.config)
    out = Path(args.out) if args.out else Path(args.config).parent / cfg.name
    if args.quick:
        cfg, out = quick_study_config(cfg), _quick_folder(out, QUICK_SUFFIX)
        print(f"[{'quick':<24}] {cfg.name} at small sizes -> {out}", flush=True)
    _folder(args, out, "--out" if args.out else None)
    _device(args.device)
    Study(cfg, out, workers=args.workers, device=args.device, log=lambda msg: print(msg, flush=True)).run()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="interp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="the main job: train, cache, probe, compare, recover and draw the figure set")
    p.add_argument("config", nargs="?", default=None,
                   help="pipeline TOML (default: the embedded Mess3(0.15, 0.6) pipeline, into runs/mess3)")
    p.add_argument("--out", default=None, help="pipeline folder (default: runs/<name>/ beside the config)")
    p.add_argument("--figures", default=None, help="figure folder (default: the config's figures.out, else "
                   "<pipeline folder>/figures; paper_figs for the embedded default)")
    p.add_argument("--no-figures", action="store_true", help="stop before drawing the figures")
    p.add_argument("--quick", action="store_true", help="the whole pipeline at small sizes, under a minute, into "
                   "<folder>_quick (figures in <folder>_quick/figures): to try a config before the real run")
    p.add_argument("--workers", type=_int_at_least(0), default=2,
                   help="worker processes for independent stages (0: in process)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="a grid of runs (process params x model config x seeds), aggregated")
    p.add_argument("config", help="sweep TOML (runs/<sweep>.toml)")
    p.add_argument("--out", default=None, help="sweep folder (default: runs/<name>/ beside the config)")
    p.add_argument("--workers", type=_int_at_least(0), default=2,
                   help="worker processes of the local pool (0: in process)")
    p.add_argument("--executor", default="pool", choices=["pool", "slurm", "local", "debug"],
                   help="pool: the local process pool; slurm, local, debug: submitit's executors (extra [slurm])")
    p.add_argument("--no-figure", action="store_true", help="skip drawing sweep.png")
    p.add_argument("--quick", action="store_true", help="the sweep at small sizes on its first seed, into "
                   "<folder>_quick: to try it before the real one")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("study", help="a reproduction or study: several runs, one table (markdown + JSON), figures")
    p.add_argument("config", help="study TOML (runs/<study>.toml)")
    p.add_argument("--out", default=None, help="study folder (default: runs/<name>/ beside the config)")
    p.add_argument("--workers", type=_int_at_least(0), default=2,
                   help="worker processes for the runs (0: in process)")
    p.add_argument("--quick", action="store_true", help="the study at small sizes, into <folder>_quick: to try it "
                   "before the real one")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("figures", help="redraw the figure set from a finished pipeline folder")
    p.add_argument("run", nargs="?", default="runs/mess3", help="pipeline folder (default runs/mess3)")
    p.add_argument("--out", default=None, help="figure folder (default: where `interp run` drew this pipeline's "
                   "figures, else its figures.out, else <pipeline folder>/figures)")
    p.add_argument("--only", default=None, metavar="F2,F8", help="redraw only these figures (index.md keeps the "
                   "others' entries)")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("describe", help="a process exactly: sampling, MSP size, optimal loss per position")
    p.add_argument("--process", default="mess3", help="a registered process (see `interp processes`)")
    p.add_argument("--module", action="append", default=[], metavar="MODULE",
                   help="import a module of yours that registers processes (my_processes: from the Python path, "
                   "or my_processes.py in the current folder); repeatable")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="process parameter, repeatable (default for mess3: x=0.15 a=0.6)")
    p.add_argument("--length", type=_int_at_least(1), default=10, help="context length (tokens)")
    p.add_argument("--samples", type=_int_at_least(1), default=100_000, help="sequences to sample")
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("train", help="train a model from a run config (runs/<name>.toml)")
    p.add_argument("config", help="path to the run's TOML config")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=_int_at_least(1), default=None, help="override train.steps")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--force", action="store_true", help="delete an existing run folder first")
    p.add_argument("--out", default=None, help="run folder (default: runs/<name>/ beside the config)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cache", help="cache a trained run's activations over its evaluation set")
    p.add_argument("run", help="run folder (runs/<name>)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=_int_at_least(1), default=4096)
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("probe", help="fit linear probes from a run's activations onto the belief simplex")
    p.add_argument("run", help="run folder (runs/<name>)")
    p.add_argument("--test-fraction", type=_real(lambda v: 0 < v < 1, "in (0, 1)"), default=0.2,
                   help="share of sequences held out")
    p.add_argument("--ridge", type=_real(lambda v: v >= 0, "finite and >= 0"), default=0.0)
    p.add_argument("--seed", type=_int_at_least(0), default=0,
                   help="seed of the split, the shuffle control and the causal check")
    p.add_argument("--causal-points", type=_int_at_least(1), default=2000)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("compare", help="compare runs (writes compare.md and compare.json)")
    p.add_argument("runs", nargs="*", help="run folders")
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("construct", help="build the construction as a hand-set TransformerLens run folder")
    p.add_argument("--process", default="mess3")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--context", type=_int_at_least(1), default=10)
    p.add_argument("--decay", choices=("analytic", "fitted"), default="analytic")
    p.add_argument("--out", default=None, help="run folder (default runs/<process>_construction)")
    p.set_defaults(func=cmd_construct)

    p = sub.add_parser("recover", help="Belief Net vs Baum-Welch vs spectral learning on parameter recovery")
    p.add_argument("config", help="path to the study's TOML config (runs/<name>.toml)")
    p.add_argument("--seeds", type=_int_at_least(1), default=None, help="run seeds 0..N-1 instead of the config's")
    p.add_argument("--device", default="cpu", help="where the Belief Net trains (hmmlearn is CPU only)")
    p.add_argument("--force", action="store_true", help="discard an existing study folder")
    p.add_argument("--out", default=None, help="output folder (default runs/<name>/)")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("bench", help="sampler and filter against hmmlearn, training step times, matmul peak")
    p.add_argument("--suite", choices=("hmm", "filter", "blocked", "train", "all"), default="all")
    p.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("processes", help="list the registered processes and their parameters")
    p.add_argument("--module", action="append", default=[], metavar="MODULE",
                   help="import a module of yours that registers processes first; repeatable")
    p.set_defaults(func=cmd_processes)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed in one line
        return done.code if isinstance(done.code, int) else 0
    # SIGTERM (kill, a job scheduler's stop) as Ctrl-C: worker processes are stopped, not left running their jobs
    previous = (signal.signal(signal.SIGTERM, _interrupt)
                if threading.current_thread() is threading.main_thread() else None)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"interp: interrupted; `interp {args.command}` again resumes from what was saved", file=sys.stderr)
        return 130
    except ValueError as err:  # config and input errors, StageError and SweepError among them
        print(f"interp: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"interp: error: {_os_error_line(err, getattr(args, 'target', None))}", file=sys.stderr)
        return 2 if isinstance(err, _INPUT_ERRORS) else 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
