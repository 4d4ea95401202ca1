"""Shai et al. 2024 (NeurIPS), "Transformers represent belief state geometry in their residual stream": the
analysis of a reproduction study (``kind = "shai2024"``, ``runs/shai2024_mess3.toml``, ``runs/shai2024_rrxor.toml``).

One row per claim: what the paper reports (the study's ``[paper]`` table, in words: the paper shows figures, not
numbers we could match digit by digit) beside the lab's measured quantity and, where the study sets one
(``[options] aims``, keys those of :data:`AIMS`, also the ``[paper]`` keys of those rows), the aim and whether it
is met. The study has one run, the paper's model (:func:`check_config`). Per-layer and concatenated probes
(held-out R^2 and RMSE against the exact beliefs), the relative loss, and beyond-the-next-token separation; figures from
``interp.figures.shai2024``.
"""

from __future__ import annotations

from pathlib import Path

from interp.io import read_json
from interp.rundir import PROBE, RESULT

COLUMNS = ["quantity", "paper", "lab", "aim", "met"]
AIMS = {  # options.aims keys: (what the lab measures, compared how)
    "relative_loss": ("relative loss (eval / optimal)", "<="),
    "final_r2": ("final-layer probe R^2", ">="),
    "all_layers_r2": ("concatenated-layers probe R^2", ">="),
}


_OPTIONS = ("aims",)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_config(cfg) -> None:
    """Refuse, when the study is loaded, options this analysis cannot use and more than one run."""
    unknown = sorted(set(cfg.options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"options.{unknown[0]}: unknown option for kind shai2024 (expected one of "
                         f"{', '.join(_OPTIONS)})")
    aims = cfg.options.get("aims", {})
    if not isinstance(aims, dict):
        raise ValueError(f"options.aims must be a table of aim = number, got {aims!r}")
    unknown = sorted(set(aims) - set(AIMS))
    if unknown:
        raise ValueError(f"options.aims: unknown key {unknown[0]!r} (known: {', '.join(AIMS)})")
    for key, value in aims.items():
        if not _is_number(value):
            raise ValueError(f"options.aims.{key} must be a number, got {value!r}")
    if len(cfg.runs) != 1:
        raise ValueError(f"runs: a shai2024 study has one run, the paper's model, got {len(cfg.runs)} "
                         f"({', '.join(cfg.runs)})")


def _met(value, aim, op: str):
    if aim is None or value is None:
        return None
    return "yes" if (value <= aim if op == "<=" else value >= aim) else "no"


def _layer_label(hook: str) -> str:
    return hook.replace("blocks.", "layer ").replace(".hook_", " ").replace("hook_", "")


def analyse(cfg, run_dirs: dict[str, Path], out_dir: Path, *, device="cpu", log=print) -> dict:
    """The table of one reproduction: the study's one run is the paper's model."""
    from interp.figures import shai2024 as figures
    from interp.interpret.beyond import beyond_next_token

    name, run_dir = next(iter(run_dirs.items()))
    result, probe = read_json(run_dir / RESULT), read_json(run_dir / PROBE)
    paper, aims = cfg.paper, dict(cfg.options.get("aims", {}))  # checked by check_config
    hooks = probe["all_layers"]["hooks"]
    final = hooks[-1]
    measured = {"relative_loss": result["relative_loss"], "final_r2": probe["hooks"][final]["r2"],
                "all_layers_r2": probe["all_layers"]["r2"]}
    rows = [{"quantity": "model", "paper": paper.get("model"), "lab": _model_words(cfg.run_configs()[name])}]
    for key, (what, op) in AIMS.items():
        rows.append({"quantity": what, "paper": paper.get(key), "lab": measured[key], "aim": aims.get(key),
                     "met": _met(measured[key], aims.get(key), op)})
    for hook in hooks:
        s = probe["hooks"][hook]
        rows.append({"quantity": f"probe R^2 / RMSE, {_layer_label(hook)}", "paper": None,
                     "lab": f"{s['r2']:.4f} / {s['rmse']:.4f} (shuffled R^2 {s['shuffled_r2']:.3f})"})
    s = probe["all_layers"]
    rows.append({"quantity": "probe R^2 / RMSE, all layers concatenated", "paper": paper.get("all_layers_r2"),
                 "lab": f"{s['r2']:.4f} / {s['rmse']:.4f} (shuffled R^2 {s['shuffled_r2']:.3f})"})
    log(f"[{'shai2024':<24}] beyond the next token on {name}")
    beyond = beyond_next_token(run_dir, device=device)
    rows.append({"quantity": "beyond the next token: belief separation kept by the residual stream "
                             "(next-token probe's in brackets)", "paper": paper.get("beyond_next_token"),
                 "lab": _beyond_words(beyond)})
    log(f"[{'shai2024':<24}] figures")
    drawn = figures.draw_all(run_dir, out_dir / "figures", beyond=beyond)
    notes = [f"Run `{name}`: {result['steps']} steps; probes fitted on {probe['split']['test_fraction']:.0%}-held-out "
             f"sequences ({probe['evaluation_set']}); R^2 {probe['r2']}.",
             f"Paper: {paper.get('source', 'Shai et al. 2024')}. The paper reports figures, not these numbers: its "
             "column says what it shows."]
    notes += list(paper.get("notes", []))
    return {"title": f"{cfg.name}: {paper.get('title', 'Shai et al. 2024 reproduced')}", "columns": COLUMNS,
            "rows": rows, "notes": notes, "figures": drawn,
            "extra": {"measured": measured, "probe": {"hooks": probe["hooks"], "all_layers": probe["all_layers"]},
                      "beyond_next_token": beyond.to_dict()}}


def _model_words(run) -> str:
    m = run.model
    mlp = "attention-only" if m.attn_only else f"d_mlp {m.mlp_width}, {m.act_fn}"
    return (f"{m.n_layers} layers, {m.n_heads} head{'s' * (m.n_heads > 1)} of d_head {m.d_head}, d_model "
            f"{m.d_model}, {mlp}, normalization {m.normalization}, context {run.train.context}")


def _beyond_words(b) -> str:
    if b.n_groups == 0:
        return "no histories share a next-token distribution with different beliefs"
    return (f"{b.residual_share:.3f} ({b.next_token_share:.3f}) over {b.n_groups} groups of histories with equal "
            f"next-token distributions")
