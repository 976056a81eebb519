"""Progress bars for long steps: one home, off unless the command line turns them on.

Library code wraps its long loops in :func:`track` (calibration batches, export stages, engine build
phases, check images, bench entries, inference frames). Used as a library, nothing is drawn; the CLI
calls :func:`enable` unless ``-q`` is given, and bars go to stderr through ``rich`` only when stderr is
a terminal (CI logs and pipes stay clean).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["enable", "enabled", "track", "task"]

T = TypeVar("T")
_STATE = {"on": False}


def enable(on: bool = True) -> None:
    """Turn bars on (the CLI does this unless ``-q``); they still appear only on a terminal."""
    _STATE["on"] = bool(on)


def enabled() -> bool:
    return _STATE["on"] and sys.stderr.isatty()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items``, drawing a bar on stderr when enabled (``rich.progress.track``)."""
    if not enabled():
        yield from items
        return
    from rich.console import Console
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, console=Console(stderr=True),
                          transient=True)


@contextmanager
def task(description: str, total: int | None = None) -> Iterator[Any]:
    """A bar advanced by hand: ``with task("building", 10) as advance: advance(1)``; a no-op callable
    when disabled."""
    if not enabled():
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as prog:
        tid = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(tid, n)
