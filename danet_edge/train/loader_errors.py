"""Errors raised in DataLoader worker processes, unwrapped: PyTorch re-raises a worker's exception in the main
process with the worker's whole traceback as its message; the user gets the original one-line message."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


from ..core.errors import DanetEdgeError, DataError

__all__ = []


_WORKER_TRACEBACK = "in DataLoader worker process"


def _worker_errors(loader: Iterable[Any]) -> Iterator[Any]:
    """Iterate ``loader``, turning an error raised in a DataLoader worker back into its one line.

    PyTorch re-raises a worker's exception in the main process as the same type whose message is the
    whole worker traceback ("Caught DataError in DataLoader worker process 0. Original Traceback ...").
    A ``DanetEdgeError`` keeps its type (and exit code) with the worker's own message; any other error
    from reading the data (OSError, a decoder's error) becomes a ``DataError`` with its last line.
    """
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - re-raised unless it is a worker's wrapped error
            text = str(e)
            if _WORKER_TRACEBACK not in text:
                raise
            last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), text)
            kind = type(e)
            line = last
            for prefix in (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: "):
                if last.startswith(prefix):  # traceback's "module.Type: message"
                    line = last[len(prefix):]
                    break
            if isinstance(e, DanetEdgeError):
                raise type(e)(line) from None
            raise DataError(f"reading the training data: {last}") from None
        yield batch
