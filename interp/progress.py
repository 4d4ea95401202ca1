"""Progress of the lab's long loops: a ``tqdm.auto`` bar where someone watches (a terminal, Jupyter), one log
line per item where output goes to a file (there, a bar would be a line of carriage returns per update)."""

from __future__ import annotations

import sys
from typing import Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")


def quiet(msg: str) -> None:
    """The ``log`` of a caller that wants no progress at all: no lines and no bars (e.g. worker processes)."""


def watched() -> bool:
    """stderr is a terminal, or this runs in a Jupyter kernel (whose stderr is no terminal but shows bars)."""
    if "ipykernel" in sys.modules:
        return True
    return sys.stderr is not None and sys.stderr.isatty()


def progress(items: Sequence[T], log: Callable[[str], None], what: str,
             label: Callable[[T], str] = str) -> Iterator[T]:
    """Each of ``items`` in turn, under a bar named ``what`` when :func:`watched`, else with one ``log`` line
    ``{what} i/n: {label(item)}`` as each starts. ``log=quiet`` gives neither."""
    if log is quiet:
        yield from items
        return
    if watched():
        from tqdm.auto import tqdm

        with tqdm(items, desc=what, leave=False, dynamic_ncols=True) as bar:
            for item in bar:
                bar.set_postfix_str(label(item))
                yield item
        return
    for i, item in enumerate(items, 1):
        log(f"{what} {i}/{len(items)}: {label(item)}")
        yield item
