"""The files a run makes by a fixed name inside its folder (the run lock, temporaries, caches, graphs and their
sidecars, report files, ``reference/``): never opened through a link, and regular files (or real folders) only.

A name the user cannot see being used is a name another user (or a careless ``ln -s``) can plant: a symbolic link
there would make the run write to the link's target, outside the folder. So every such name is looked at with
``lstat`` before any work (:func:`check_fixed_names`, :func:`fixed_name_problem`) and opened with ``O_NOFOLLOW``,
its kind checked again with ``fstat`` once open (:func:`open_fixed`, :func:`read_fixed`). Anything but a regular
file (a link, a folder, a FIFO, a device) is refused in one ``ConfigError`` line (exit 2) naming the option, the
folder and the name; nothing outside the folder is created or changed. Files written by rename
(``utils.atomic_path``) replace a link instead of following it; they are checked before work all the same.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

__all__ = ["fixed_name_problem", "check_fixed_names", "open_fixed", "read_fixed", "is_regular_file"]

_KINDS = ((stat.S_ISLNK, "a symbolic link (danet-edge writes its own files there, never through a link)"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"))


def _kind_problem(mode: int, folder: bool) -> str | None:
    """Why a file of ``mode`` cannot be what a run writes by a fixed name (a regular file, or a real folder when
    ``folder``), or None."""
    for test, what in _KINDS:
        if test(mode):
            return f"is {what}: remove it"
    if folder:
        return None if stat.S_ISDIR(mode) else "is a file, not a folder"
    if stat.S_ISDIR(mode):
        return "is a folder"
    return None if stat.S_ISREG(mode) else "is not a regular file: remove it"


def fixed_name_problem(path: str | os.PathLike[str], folder: bool = False) -> str | None:
    """Why ``path`` (not followed if a link) cannot be written by the run as a regular file (a folder when
    ``folder``), or None when it is one or does not exist."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot be looked at ({e.strerror or e})"
    return _kind_problem(st.st_mode, folder)


def is_regular_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` itself (a link not followed) is a regular file: a cache read back must be one."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _refusal(option: str, path: Path, why: str) -> Exception:
    from .errors import ConfigError

    why = {"is a folder": "would be written there, but it is a folder",
           "is a file, not a folder": "would be written there as a folder, but it is a file"}.get(why, why)
    return ConfigError(f"{option} {path.parent}: {path.name} {why}")


def check_fixed_names(folder: str | os.PathLike[str], option: str, files: Iterable[str] = (),
                      folders: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
    """Check, before any work, the names a run will make in ``folder``: each of ``files`` and each entry matching
    one of ``patterns`` (globs: caches named after a graph not made yet) must be a regular file or absent, each of
    ``folders`` a real folder or absent; no link, whatever it points to.

    Raises:
        ConfigError: one line naming ``option``, the folder and the name, and what is there instead.
    """
    folder = Path(folder)
    named = [(folder / n, False) for n in files] + [(folder / n, True) for n in folders]
    if folder.is_dir():
        named += [(p, False) for pattern in patterns for p in sorted(folder.glob(pattern))]
    for path, is_folder in named:
        why = fixed_name_problem(path, is_folder)
        if why is not None:
            raise _refusal(option, path, why)


def open_fixed(path: str | os.PathLike[str], flags: int, option: str = "--out", mode: int = 0o644) -> int:
    """``os.open(path, flags)`` for a file a run makes by a fixed name in its folder: a link is not followed
    (``O_NOFOLLOW``), a FIFO does not block (``O_NONBLOCK``), and what was opened must be a regular file
    (``fstat``); opened for writing (written in place: the lock, an appended log), it must have no other hard link,
    whose file outside the folder the write would change too. Returns the descriptor (the caller closes it).

    Raises:
        ConfigError: ``path`` is a link (dangling or not), a folder, not a regular file, hard-linked (for writing),
            or cannot be opened (permission, an immutable file, a read-only file system): one line naming
            ``option`` and the file.
    """
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        why = fixed_name_problem(path) if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO) else None
        raise _refusal(option, path, why or f"cannot be opened ({e.strerror or e}): danet-edge writes it there; "
                       "make it writable or remove it") from None
    st = os.fstat(fd)
    why = _kind_problem(st.st_mode, False)
    if why is None and flags & (os.O_WRONLY | os.O_RDWR) and st.st_nlink > 1:  # written in place: its data only
        why = f"has {st.st_nlink - 1} other hard link(s) (a file elsewhere shares its data): remove it"
    if why is not None:
        os.close(fd)
        raise _refusal(option, path, why)
    return fd


def read_fixed(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of a file the run wrote by a fixed name and reads back (a cache): opened as :func:`open_fixed`
    does, at most ``max_bytes``.

    Raises:
        ValueError: a link, a folder, not a regular file, unreadable, or larger than ``max_bytes`` (the caller
            does not use it).
    """
    from .errors import ConfigError

    try:
        fd = open_fixed(path, os.O_RDONLY)
    except ConfigError as e:
        raise ValueError(str(e).split(": ", 1)[-1]) from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path}: larger than the {max_bytes}-byte limit")
    return data
