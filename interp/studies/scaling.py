"""Scaling blocked Belief Nets (``interp study runs/scaling_hmm.toml``, kind "scaling"; issue 23).

Every run is a blocked Belief Net on block-sparse data (process ``blocked``): scalar or neural parameterisation,
with or without state dropout, at some states per group (``model.group_size``, the data's when left out). Per run:
its parameters, held-out NLL per token against the data HMM's own (the exact blocked filter's loss on the same
held-out sequences, ``optimal_loss`` in result.json), their gap, the seconds per training step, and the peak memory
of one training step (:func:`interp.training.memory.step_memory`, measured in a fresh process). A run with one
state per group (``group_size = 1``: the chain of groups alone, what the tokens say without any hidden state)
is the baseline: each other run's share of its gap closed says how much of the hidden state's information it
learned. Each run's gap at every evaluation (its metrics.jsonl) is drawn against the step, so a reader sees which
runs were still improving when they stopped. Block-sparse runs are trained, not probed (probing needs the dense beliefs;
:func:`interp.studies.jobs.probeable`).
"""

from __future__ import annotations

from pathlib import Path

from interp.io import read_json, read_jsonl
from interp.rundir import METRICS, RESULT

NOT_MEASURED = "not measured"
COLUMNS = ["run", "parameterisation", "hidden", "state dropout", "states", "parameters", "held-out NLL",
           "true NLL", "gap", "gap one evaluation earlier", "share of the group-chain gap closed", "s / step",
           "step memory (MB)"]


def check_config(cfg) -> None:
    """Refuse options (this analysis has none) and runs that are not blocked Belief Nets."""
    if cfg.options:
        raise ValueError(f"options.{sorted(cfg.options)[0]}: unknown option for kind scaling (it takes none)")
    for name, run in cfg.run_configs().items():
        if run.model.family != "blocked_belief_net":
            raise ValueError(f"runs.{name}: the scaling study compares blocked Belief Nets, got family "
                             f"{run.model.family!r}")


def variant(row: dict) -> str:
    """The line a row belongs to in the figure: parameterisation and dropout."""
    return f"{row['parameterisation']}, dropout {row['state dropout']:g}"


def analyse(cfg, run_dirs: dict[str, Path], out_dir: Path, *, device: str = "cpu", log=print) -> dict:
    """One row per run (module docstring), a note comparing parameters and step times, two figures (the gap
    against states, one line per variant; the gap against the training step, one panel per state count)."""
    from interp.figures.scaling import gap_against_states, gap_against_steps
    from interp.models.blocked_belief_net import parameter_count
    from interp.training.memory import step_memory
    from interp.training.trainer import TrainResult

    rows, structures = [], {}
    for name, run in cfg.run_configs().items():
        key = run.process.to_dict().__repr__()
        if key not in structures:
            structures[key] = run.process.build()
        hmm, model = structures[key], run.model
        k = hmm.group_size if model.group_size is None else model.group_size
        result = TrainResult.from_dict(read_json(run_dirs[name] / RESULT))
        rows.append({"run": name, "parameterisation": model.parameterisation,
                     "hidden": model.hidden if model.parameterisation == "neural" else None,
                     "state dropout": model.state_dropout, "states": f"{hmm.n_groups} x {k}",
                     "n_states": hmm.n_groups * k, "parameters": parameter_count(model, hmm),
                     "held-out NLL": result.eval_loss, "true NLL": result.optimal_loss,
                     "gap": result.eval_loss - result.optimal_loss,
                     "group_size": k, "s / step": result.train_seconds / max(result.steps, 1),
                     "curve": learning_curve(run_dirs[name])})
        earlier = rows[-1]["curve"][-2:-1]
        rows[-1]["gap one evaluation earlier"] = earlier[0][1] if earlier else None
        memory = step_memory(run, device)
        rows[-1]["step memory (MB)"] = NOT_MEASURED if memory is None else memory / 2**20
        log(f"{name}: gap {rows[-1]['gap']:.4f}, step memory {rows[-1]['step memory (MB)']}")
    chain = [r for r in rows if r["group_size"] == 1 and r["state dropout"] == 0]
    for r in rows:
        r["share of the group-chain gap closed"] = (1 - r["gap"] / chain[0]["gap"]) if chain else None
    notes = ["held-out NLL: nats per token on the run's held-out sequences; true NLL: the data HMM's exact "
             "(blocked filter) NLL on the same sequences; gap: their difference.",
             "share of the group-chain gap closed: 1 - gap / the gap of the run with one state per group (the chain "
             "of groups alone): 0 learns nothing the tokens' groups do not say, 1 is the true model"
             + ("." if chain else "; no such run here, so none is given."),
             "gap one evaluation earlier: the gap at the evaluation before the last (figure scaling_steps: every "
             "evaluation), to show whether a run was still improving when it stopped.",
             "s / step: result.json's train seconds over its steps (evaluation and checkpoints excluded), on the "
             "device the runs trained on; step memory: the peak of one training step (parameters, gradients, "
             "optimiser state, activations) in a fresh process on that device, batch and context as trained "
             f"({NOT_MEASURED} where the platform has no peak counter)."]
    notes += _comparisons(rows)
    figures = gap_against_states(rows, out_dir / "figures") + gap_against_steps(rows, out_dir / "figures")
    return {"title": "Scaling blocked Belief Nets: scalar against neural, with and without state dropout",
            "columns": COLUMNS, "rows": rows, "notes": notes, "figures": figures, "extra": {}}


def learning_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, held-out NLL - true NLL) at every evaluation the run logged, in step order (a step logged twice, by
    a resumed run, counts once: its last line)."""
    gaps = {int(r["step"]): r["eval_loss"] - r["optimal_loss"] for r in read_jsonl(run_dir / METRICS)
            if r.get("eval_loss") is not None and r.get("optimal_loss") is not None}
    return sorted(gaps.items())


def _comparisons(rows: list[dict]) -> list[str]:
    """Per state count: scalar over neural parameters, and the step time without dropout over with it."""
    out = []
    for n in sorted({r["n_states"] for r in rows}):
        mine = [r for r in rows if r["n_states"] == n]
        scalar = [r for r in mine if r["parameterisation"] == "scalar"]
        neural = [r for r in mine if r["parameterisation"] == "neural"]
        parts = []
        if scalar and neural:
            parts.append(f"{scalar[0]['parameters'] / min(r['parameters'] for r in neural):.1f}x fewer parameters "
                         "neural than scalar")
        for kind in ("scalar", "neural"):
            plain = [r["s / step"] for r in mine if r["parameterisation"] == kind and r["state dropout"] == 0]
            drop = [r["s / step"] for r in mine if r["parameterisation"] == kind and r["state dropout"] > 0]
            if plain and drop:
                parts.append(f"{kind} steps {plain[0] / drop[0]:.2f}x as fast with dropout")
        if parts:
            out.append(f"{n} states: " + "; ".join(parts) + ".")
    return out
