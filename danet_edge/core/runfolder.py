"""The run's hold on its output folder: one run a folder (:func:`run_lock`), what a killed run left
(:func:`remove_stale_temporaries`), and a step that may still reject what it wrote (:func:`previous_kept`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .fixednames import fixed_name_problem, open_fixed
from .utils import make_dirs, remove_empty

__all__ = ["LOCK_NAME", "run_lock", "remove_stale_temporaries", "previous_kept"]


#: The file a run holds its output folder with (:func:`run_lock`); it names the process while the run lasts.
LOCK_NAME = ".danet-edge.lock"


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike[str], command: str, option: str = "--out") -> Iterator[Path]:
    """Hold the output folder ``folder`` for one run: a second run into it (another process, or this one) is
    refused in one line instead of interleaving files. The lock is ``flock(2)`` on ``folder/.danet-edge.lock``,
    which names the process; the kernel drops it when the process ends, even on ``kill -9``, so a stale file
    never blocks the next run. The folder is created if missing, and removed again if the run left it empty.

    Args:
        folder: the run's output folder.
        command: what holds it, for the refusal (``"train"``).
        option: the option that named the folder, for the refusal.

    The lock file is opened without following a link and must be a regular file (``fixednames.open_fixed``).

    Raises:
        RunLocked: another run holds ``folder`` (the message names its process and command).
        ConfigError: the lock's name is taken by a link, a folder or another non-regular file, or the file cannot be
            written (an immutable file): one line, nothing created or changed outside ``folder``.
    """
    import fcntl
    import time

    from .errors import RunLocked

    folder = Path(folder)
    made = make_dirs(folder)
    lock = folder / LOCK_NAME
    while True:
        try:  # never through a link, and only a regular file: else one line, and nothing outside the folder made
            fd = open_fixed(lock, os.O_RDWR | os.O_CREAT, option)
        except BaseException:
            remove_empty(made)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another run"
            finally:
                os.close(fd)
            raise RunLocked(f"{option} {folder}: another run is writing there ({holder}); wait for it to end or "
                            "choose another folder") from None
        try:  # the file locked must still be the one at the path: a run that just ended unlinks it
            same = os.path.samestat(os.fstat(fd), os.lstat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    with contextlib.suppress(OSError):  # a full disk may refuse the words; the lock holds without them
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, danet-edge {command}, since {time.strftime('%H:%M:%S')}\n".encode())
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)
        remove_empty(made)  # only what the run left empty


@contextlib.contextmanager
def previous_kept(paths: Any) -> Iterator[None]:
    """For a step that writes several files (a graph and its sidecar) and may still reject them after writing
    (verification): the existing files among ``paths`` are renamed aside (``.<name>.prev.<random>.tmp``, a fresh
    name) for the block. When it succeeds they are deleted; when it raises, whatever the block wrote at ``paths`` is
    removed and the old files are renamed back, so a failed re-export loses nothing that was there before. (``kill -9`` inside the
    block leaves them aside; :func:`remove_stale_temporaries` removes them with the next run.)"""
    import tempfile

    paths = [Path(p) for p in paths]
    moved = {}
    for p in paths:
        if p.is_file() and not p.is_symlink():
            fd, aside_name = tempfile.mkstemp(prefix=f".{p.name}.prev.", suffix=".tmp", dir=p.parent)  # never planted
            os.close(fd)
            aside = Path(aside_name)
            os.replace(p, aside)
            moved[p] = aside
    try:
        yield
    except BaseException:
        for p in paths:
            if fixed_name_problem(p) is None and p.exists():  # what the block wrote (a regular file), never a folder
                p.unlink()
        for p, aside in moved.items():
            os.replace(aside, p)
        raise
    for aside in moved.values():
        aside.unlink(missing_ok=True)


def remove_stale_temporaries(folder: str | os.PathLike[str], names: Any) -> list[Path]:
    """Remove the temporary files ``utils.atomic_path`` leaves for ``names`` in ``folder`` when its process is
    killed (``.<name>.*.tmp``; ``kill -9`` runs no cleanup). Call it only while holding ``folder``
    (:func:`run_lock`): then no live run is writing them. Returns what was removed."""
    folder, gone = Path(folder), []
    for name in names:
        for tmp in folder.glob(f".{name}.*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                gone.append(tmp)
    return gone
