"""The scaling study's figure: held-out NLL gap against the model's states, one line per variant."""

from __future__ import annotations

from pathlib import Path


def gap_against_states(rows: list[dict], folder: Path) -> list[str]:
    """Rows carry ``n_states``, ``group_size``, ``gap``, ``parameterisation`` and ``state dropout``
    (interp.studies.scaling). Runs with one state per group (the chain of groups alone) are a dashed baseline."""
    from interp.figures.style import figure_style, plt, save
    from interp.studies.scaling import variant

    chain = [r for r in rows if r["group_size"] == 1]
    rows = [r for r in rows if r["group_size"] > 1]
    variants = list(dict.fromkeys(variant(r) for r in rows))
    with figure_style():
        fig, ax = plt.subplots(figsize=(7.0, 3.2), layout="constrained")
        for r in chain[:1]:
            ax.axhline(r["gap"], color="0.5", ls="--", lw=1, label="groups alone (1 state per group)")
        for i, name in enumerate(variants):
            mine = sorted((r for r in rows if variant(r) == name), key=lambda r: r["n_states"])
            ax.plot([r["n_states"] for r in mine], [r["gap"] for r in mine], "o-", color=f"C{i}", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("model states (groups x states per group)")
        ax.set_ylabel("held-out NLL - true NLL (nats/token)")
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5))  # outside: the lines cross anywhere
        paths = save(fig, folder, "scaling")
    return [p.name for p in paths]
