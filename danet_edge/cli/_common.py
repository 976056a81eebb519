"""Shared CLI helpers: the two consoles and the verbosity every command follows (``-v`` / ``-q``)."""
from __future__ import annotations

from rich.console import Console

console = Console(stderr=False)
err_console = Console(stderr=True)
STATE = {"verbosity": 0}  # -1 quiet, 0 normal, 1 verbose


def info(msg: str) -> None:
    """A progress / log line on stderr, unless ``-q``."""
    if STATE["verbosity"] >= 0:
        err_console.print(msg, markup=False, highlight=False, soft_wrap=True)


def verbose() -> bool:
    return STATE["verbosity"] > 0



def backend_names() -> list[str]:
    """The rows of the backend table (``runtime.backends.BACKEND_TABLE``), for a ``--backend`` choice."""
    from ..runtime.backends import BACKEND_TABLE

    return list(BACKEND_TABLE)
