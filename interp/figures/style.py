"""The shared look of the lab's figures, and a save that writes the same bytes on every run.

    from interp.figures import style
    with style.figure_style():
        fig, ax = plt.subplots()
        ...
        paths = style.save(fig, out_dir, "f1_belief_simplex")   # f1_belief_simplex.png and .pdf

Byte-identical output: the Agg backend, no software or date metadata in the PNG or PDF, and
``SOURCE_DATE_EPOCH`` fixed (matplotlib derives the PDF's date and ID from it). Each file is written to a
temporary file in its folder and renamed into place, so a crash never leaves half a figure.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from interp.io import atomic_write_bytes  # noqa: E402

DPI = 150
FORMATS = ("png", "pdf")
METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None}}

# One colour per model family (and for the references drawn beside them), used by every figure.
FAMILY_COLOURS = {
    "transformer": "#1f77b4",
    "fixed_attention": "#ff7f0e",
    "ssm": "#2ca02c",
    "belief_net": "#d62728",
    "construction": "#9467bd",
    "exact": "#444444",
}
FAMILY_LABELS = {
    "transformer": "transformer",
    "fixed_attention": "fixed attention",
    "ssm": "linear SSM",
    "belief_net": "Belief Net",
    "construction": "construction",
    "exact": "exact",
}
# Recovery methods (interp recover): the Belief Net, Baum-Welch in two implementations, the spectral method.
METHOD_COLOURS = {"belief_net": "#d62728", "baum_welch_scaling": "#1f77b4", "baum_welch_log": "#9467bd",
                  "spectral": "#2ca02c"}

RC = {
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 7.5,
    "legend.frameon": False,
    "figure.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "lines.linewidth": 1.3,
    "lines.markersize": 4,
    "image.cmap": "viridis",
    "pdf.fonttype": 3,  # matplotlib's default; TrueType (42) embedding is slower (font subsetting)
    "svg.hashsalt": "interp",  # (SVG ids, should anyone save SVG)
}


def family_colour(family: str) -> str:
    return FAMILY_COLOURS.get(family, "#7f7f7f")


def family_label(family: str) -> str:
    return FAMILY_LABELS.get(family, family)


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """Apply the lab's rcParams inside the block (restored afterwards)."""
    with matplotlib.rc_context(RC):
        yield


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (the library's writer); return the path."""
    atomic_write_bytes(path, data)
    return Path(path)


def save(fig, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` into ``out_dir`` (created if needed), byte-identical across runs;
    close the figure; return the two paths."""
    os.environ.setdefault("SOURCE_DATE_EPOCH", "0")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for k, ext in enumerate(FORMATS):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=DPI, metadata=METADATA[ext])
            paths.append(write_bytes(out_dir / f"{stem}.{ext}", buf.getvalue()))
            if k == 0 and fig.get_layout_engine() is not None:
                # the first save placed the axes; the others reuse those positions instead of solving the
                # (constrained or tight) layout again, which is most of the time a figure takes
                fig.set_layout_engine("none")
    finally:
        plt.close(fig)
    return paths
