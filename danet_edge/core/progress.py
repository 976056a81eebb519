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

__all__ = ["enable", "enabled", "track", "task", "phases"]

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


def _bar() -> Any:
    """The one bar layout: description, bar, elapsed time, on stderr, cleared when done."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)


@contextmanager
def task(description: str, total: int | None = None) -> Iterator[Any]:
    """A bar advanced by hand: ``with task("building", 10) as advance: advance(1)``; a no-op callable
    when disabled."""
    if not enabled():
        yield lambda n=1: None
        return
    with _bar() as prog:
        tid = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(tid, n)


@contextmanager
def phases() -> Iterator[Any]:
    """Bars for nested phases (TensorRT's builder): yields ``sink(event, phase, value)`` with events
    ``"start"`` (value: steps), ``"step"`` (value: step index) and ``"finish"``; None when disabled."""
    if not enabled():
        yield None
        return
    with _bar() as prog:
        tasks: dict[str, Any] = {}

        def sink(event: str, phase: str, value: int) -> None:
            if event == "start":
                tasks[phase] = prog.add_task(phase, total=max(value, 1))
            elif event == "step" and phase in tasks:
                prog.update(tasks[phase], completed=value + 1)
            elif event == "finish" and phase in tasks:
                prog.remove_task(tasks.pop(phase))

        yield sink
