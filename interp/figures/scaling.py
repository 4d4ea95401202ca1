"""The scaling study's figures: held-out NLL gap against the model's states, one line per variant; and against the
training step, one panel per state count."""

from __future__ import annotations

from pathlib import Path


def _line(row: dict) -> dict:
    """Dropout runs dotted with open markers: they often lie on their no-dropout twin, which stays visible."""
    if row["state dropout"] > 0:
        return {"ls": ":", "marker": "s", "ms": 5, "mfc": "none"}
    return {"ls": "-", "marker": "o", "ms": 3}


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
            ax.plot([r["n_states"] for r in mine], [r["gap"] for r in mine], color=f"C{i}", label=name,
                    **_line(mine[0]))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")  # trained gaps span decades below the chain of groups'
        ax.set_xlabel("model states (groups x states per group)")
        ax.set_ylabel("held-out NLL - true NLL (nats/token)")
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5))  # outside: the lines cross anywhere
        paths = save(fig, folder, "scaling")
    return [p.name for p in paths]


def gap_against_steps(rows: list[dict], folder: Path) -> list[str]:
    """Rows carry ``curve`` ((step, gap) at every evaluation) besides the keys of :func:`gap_against_states`.
    One panel per state count, one line per variant; the chain of groups (one state per group) dashed in each."""
    from interp.figures.style import figure_style, plt, save
    from interp.studies.scaling import variant

    chain = [r for r in rows if r["group_size"] == 1][:1]
    rows = [r for r in rows if r["group_size"] > 1 and r["curve"]]
    counts = sorted({r["n_states"] for r in rows})
    variants = list(dict.fromkeys(variant(r) for r in rows))
    if not counts:
        return []
    with figure_style():
        fig, axes = plt.subplots(1, len(counts), figsize=(3.0 * len(counts) + 2.2, 3.2), layout="constrained",
                                 sharey=True, squeeze=False)
        for ax, n in zip(axes[0], counts):
            for r in chain:
                steps, gaps = zip(*r["curve"])
                ax.plot(steps, gaps, "--", color="0.5", lw=1, label="groups alone (1 state per group)")
            for i, name in enumerate(variants):
                for r in (r for r in rows if r["n_states"] == n and variant(r) == name):
                    steps, gaps = zip(*r["curve"])
                    ax.plot(steps, gaps, color=f"C{i}", label=name, **_line(r))
            ax.set_yscale("log")
            ax.set_title(f"{n} model states")
            ax.set_xlabel("training step")
        axes[0][0].set_ylabel("held-out NLL - true NLL (nats/token)")
        handles, labels = axes[0][0].get_legend_handles_labels()
        for ax in axes[0][1:]:  # a variant missing from the first panel still gets its legend entry
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        axes[0][-1].legend(handles, labels, loc="center left", bbox_to_anchor=(1.02, 0.5))
        paths = save(fig, folder, "scaling_steps")
    return [p.name for p in paths]
