"""Independent jobs of the pipeline and of sweeps: one run trained and probed, and a process pool to run many.

A job is ``(label, fn, args)`` with ``fn`` a module-level function (so a spawned worker can import it) that
returns a one-line report. :func:`run_jobs` runs them in-process (``workers=0``) or in a pool of spawned
workers with one thread each, so a result does not depend on how the work was scheduled. A worker that dies
(killed, out of memory) breaks the pool; the jobs it took down are resubmitted to a fresh pool, and a job
that takes down its worker ``max_attempts`` times is reported as failed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from interp.rundir import CONFIG, TRAINING, Manifest, read_config, training_inputs
from interp.training.runconfig import RunConfig, run_config_from_dict

Job = tuple[str, Callable, tuple]


class WorkerDied(RuntimeError):
    """The worker process running a job ended without a result (killed, or out of memory)."""


# ----------------------------------------------------------------------------- state of one run folder
def trained(cfg: RunConfig, run_dir: Path) -> bool:
    """The folder's manifest records this config's finished training, its files intact."""
    return Manifest(run_dir).is_fresh(TRAINING, training_inputs(cfg))


def resumable(cfg: RunConfig, run_dir: Path) -> bool:
    """The folder holds a started run of this very config (only the step count may differ)."""
    if not (Path(run_dir) / CONFIG).is_file():
        return False
    try:
        old = run_config_from_dict(read_config(run_dir))
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return old.with_steps(1) == cfg.with_steps(1)


def probed(run_dir: Path) -> bool:
    """The folder's manifest records probes made from its current weights, their files intact."""
    from interp.interpret.analyse import load_probe_result

    try:
        return load_probe_result(Path(run_dir)) is not None
    except (OSError, ValueError):
        return False


def probeable(cfg: RunConfig) -> bool:
    """Probing needs the exact beliefs of a dense HMM or GHMM; runs on other data (block-sparse) only train."""
    from interp.hmm import GHMM, HMM

    return isinstance(cfg.process.build(), (HMM, GHMM))


def done(cfg: RunConfig, run_dir: Path) -> bool:
    return trained(cfg, run_dir) and (probed(run_dir) or not probeable(cfg))


# ----------------------------------------------------------------------------- job functions (run in workers)
def init_worker(threads: int = 1) -> None:
    import torch

    torch.set_num_threads(threads)


def train_and_probe(cfg_dict: dict, run_dir: str, device: str) -> str:
    """Train (or resume) the run into ``run_dir`` and probe it (if :func:`probeable`); whatever part is already
    done is reused."""
    from interp.interpret.analyse import probe_run
    from interp.training.trainer import Trainer

    cfg, run_dir = run_config_from_dict(cfg_dict), Path(run_dir)
    report = []
    if not trained(cfg, run_dir):
        exists = run_dir.exists() and any(run_dir.iterdir())
        resume = exists and resumable(cfg, run_dir)
        result = Trainer(cfg, run_dir, device=device, resume=resume, force=exists and not resume).run()
        report.append(f"{'resumed and ' if resume else ''}trained {result.steps} steps "
                      f"(relative loss {result.relative_loss:.5f})")
    if probeable(cfg) and not probed(run_dir):
        out = probe_run(run_dir, device=device)
        report.append(f"probed (R^2 {out.best_r2:.4f} at {out.best_hook})")
    return ", ".join(report) or "already done"


# ----------------------------------------------------------------------------- running many
def _say(log, label: str, what: str, seconds: float | None = None) -> None:
    took = "" if seconds is None else f" ({seconds:.1f} s)"
    log(f"[{label:<24}] {what}{took}")


def _tracked(marker: str, fn: Callable, args: tuple) -> str:
    """Run in a worker: leave a marker that the job started, so a pool that breaks can tell the jobs it was
    running from the ones still queued."""
    Path(marker).touch()
    return fn(*args)


def _pool(jobs: list[Job], workers: int, markers: Path, log, t0: float,
          failures: dict[str, BaseException]) -> tuple[list[Job], list[Job]]:
    """One pool over ``jobs``; returns the jobs lost to a broken pool: (those that had started, the rest)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    n = min(workers, len(jobs))
    lost: list[Job] = []
    with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=init_worker) as pool:
        futures = {pool.submit(_tracked, str(markers / str(i)), fn, args): (label, fn, args)
                   for i, (label, fn, args) in enumerate(jobs)}
        _say(log, "pool", f"{len(jobs)} jobs on {n} worker processes")
        try:
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    _say(log, job[0], fut.result(), time.perf_counter() - t0)
                except BrokenProcessPool:
                    lost.append(job)
                except Exception as err:  # noqa: BLE001 - reported to the caller; the other jobs still run
                    failures[job[0]] = err
        except BaseException:  # an interrupt: stop the workers now rather than after their jobs
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    index = {job[0]: i for i, job in enumerate(jobs)}
    started = [job for job in lost if (markers / str(index[job[0]])).exists()]
    for path in markers.iterdir():
        path.unlink()
    return started, [job for job in lost if job not in started]


def run_jobs(jobs: list[Job], *, workers: int, log: Callable[[str], None] = print,
             max_attempts: int = 2) -> dict[str, BaseException]:
    """Run every job; the failures by label (empty when all succeeded). An interrupt stops the workers at once
    (their runs keep their checkpoints) and propagates.

    A worker that dies breaks its pool: the jobs still queued go to a fresh pool as they are; of those that were
    running, a lone one is blamed (an attempt), several are rerun one at a time, where a death is unambiguous. A
    job that takes down its worker ``max_attempts`` times fails with :class:`WorkerDied`."""
    if workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    failures: dict[str, BaseException] = {}
    if workers == 0 or len(jobs) <= 1:  # one job: no pool to spawn
        for label, fn, args in jobs:
            t0 = time.perf_counter()
            _say(log, label, "running")
            try:
                _say(log, label, fn(*args), time.perf_counter() - t0)
            except Exception as err:  # noqa: BLE001 - reported to the caller; the other jobs still run
                failures[label] = err
        return failures

    import tempfile

    attempts = {label: 0 for label, _, _ in jobs}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="interp-jobs-") as tmp:
        markers = Path(tmp)

        def blame(job: Job) -> bool:
            """Count a death against ``job``; True while it may be tried again."""
            attempts[job[0]] += 1
            if attempts[job[0]] >= max_attempts:
                failures[job[0]] = WorkerDied(f"its worker process died {attempts[job[0]]} times")
                return False
            return True

        pending = list(jobs)
        while pending:
            started, queued = _pool(pending, workers, markers, log, t0, failures)
            if not started and not queued:
                break
            _say(log, "pool", f"a worker process died; {len(started)} running and {len(queued)} queued jobs "
                              f"are tried again")
            pending = list(queued)
            if len(started) == 1:
                pending += [job for job in started if blame(job)]
            for job in started if len(started) > 1 else []:  # alone, a death names its job
                while True:
                    lost, _ = _pool([job], 1, markers, log, t0, failures)
                    if not lost or not blame(job):
                        break
    return failures
