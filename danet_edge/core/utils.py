"""Small shared helpers: atomic file writes, hashing, JSON."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_dir", "write_json", "sha256_file", "read_json", "ensure_output_dir", "ensure_output_file"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or exception inside the block leaves ``path`` as it was (old file kept, no half file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the final file gets the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the block succeeds it replaces ``path`` (an old folder is
    moved aside, the new one renamed in, the old one removed). An exception leaves the old folder as it was.

    Raises:
        OSError: the parent cannot be written (callers turn it into one line).
    """
    import shutil

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def read_json(path: str | os.PathLike[str], max_bytes: int = 16 * 2**20) -> Any:
    """Read a JSON file of at most ``max_bytes`` (untrusted input).

    Raises:
        FileNotFoundError, ValueError: missing, too large, not JSON, or nested too deeply for Python's parser
            (a ``RecursionError`` inside ``json``, e.g. ``[[[[...]]]]`` 100 000 levels deep).
    """
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{path}: {size} bytes is larger than the {max_bytes}-byte limit for a JSON file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to read") from None


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _output_error(option: str, path: Path, why: str) -> Exception:
    from .errors import ConfigError  # errors imports nothing; kept local so utils stays the bottom layer

    return ConfigError(f"{option} {path}: {why}")


def _probe_writable(folder: Path, option: str, path: Path) -> None:
    """Create and remove a temporary file in ``folder`` (an existing folder): the one honest writability test
    (permission bits lie for root, read-only mounts and ACLs)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".danet-edge-probe.", dir=folder)
    except OSError as e:
        where = "" if folder == path else f" (in {folder})"
        raise _output_error(option, path, f"cannot write there{where}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(tmp)


def _existing_ancestor(path: Path, option: str, target: Path) -> Path:
    """The nearest existing ancestor of ``path`` (which does not exist); refuses one that is not a folder."""
    parent = path.absolute().parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling link: mkdir would fail on it
            raise _output_error(option, target, f"{parent} is a broken link")
        parent = parent.parent
    if not parent.is_dir():
        raise _output_error(option, target, f"{parent} is a file, not a folder")
    return parent


def ensure_output_dir(path: str | os.PathLike[str], option: str) -> Path:
    """Check, before any work starts, that ``path`` can be an output folder; writes nothing that stays.

    ``path`` may exist (then it must be a folder) or not (then its nearest existing ancestor must be a folder:
    the stage creates the missing ones when it writes). Writability is proved by creating and removing a
    temporary file in ``path`` or that ancestor.

    Args:
        path: the folder a command will write into.
        option: the option as the user typed it (``"--out"``), named in the error.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ConfigError: one line naming ``option`` and ``path``: an existing file where a folder is wanted, a
            file among its parents, or a place that cannot be written (read-only folder or file system).
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise _output_error(option, path, "is a file, not a folder")
        _probe_writable(path, option, path)
    else:
        _probe_writable(_existing_ancestor(path, option, path), option, path)
    return path


def ensure_output_file(path: str | os.PathLike[str], option: str) -> Path:
    """Check, before any work starts, that ``path`` can be written as a file; writes nothing that stays.

    An existing file is fine (it is replaced atomically through :func:`atomic_path`, which needs its folder
    to be writable); an existing folder is not. A missing parent folder is fine when the nearest existing
    ancestor is a writable folder (the stage creates the rest).

    Args:
        path: the file a command will write.
        option: the option as the user typed it (``"--json"``), named in the error.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ConfigError: one line naming ``option`` and ``path``: an existing folder where a file is wanted, a
            file among its parents, or a folder that cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise _output_error(option, path, "is a folder, not a file")
    parent = path.absolute().parent
    if parent.is_dir():
        _probe_writable(parent, option, path)
    else:
        if parent.exists():
            raise _output_error(option, path, f"{parent} is a file, not a folder")
        _probe_writable(_existing_ancestor(parent, option, path), option, path)
    return path


def release_memory() -> None:
    """Give freed heap memory back to the operating system: ``gc.collect()``, then glibc's ``malloc_trim(0)``
    where there is one. After a large temporary (PyTorch's 4 GiB attention map while tracing), glibc keeps the
    freed pages in the process and the next large allocation (an ONNX Runtime session) stacks on top of them."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        pass
