"""Small shared helpers: atomic file writes, hashing, JSON."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .fixednames import check_fixed_names, fixed_name_problem, open_fixed

__all__ = ["atomic_path", "atomic_dir", "staged_files", "write_json", "sha256_file", "read_json", "ensure_output_dir",
           "ensure_output_file", "ensure_output_names", "disk_full", "storage_error", "free_bytes", "append_line",
           "make_dirs", "remove_empty"]

#: errno values of a write the file system refused for want of room (``write(2)``: ENOSPC, EDQUOT, EFBIG).
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: How libraries that hide the errno say it: the C library's text, and PyTorch's zip writer ("PytorchStreamWriter
#: failed writing file data/0: file write failed"), which ``torch.save`` raises as a RuntimeError.
_FULL_PHRASES = ("no space left on device", "disk quota exceeded", "file too large", "file write failed")


#: Below this many free bytes, a library's write error without an errno is taken for a full disk (PyTorch's zip
#: writer also says "unexpected pos 32576 vs 32470" or "basic_ios::clear: iostream error" when a write falls short).
_NEARLY_FULL = 1 << 20


def disk_full(error: BaseException, folder: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``error`` is a write the file system refused for want of room: an ``OSError`` with ENOSPC, EDQUOT
    or EFBIG, a library's error (PyTorch's ``RuntimeError``, ONNX Runtime's) saying so in its text, or, with
    ``folder`` (where the write went), such an error while that file system has less than 1 MiB free."""
    if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
        return True
    if isinstance(error, (OSError, RuntimeError)) or type(error).__module__.startswith("onnxruntime"):
        text = str(error).lower()
        if any(p in text for p in _FULL_PHRASES):
            return True
        if folder is not None:
            free = free_bytes(folder)
            return free is not None and free < _NEARLY_FULL
    return False


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Free bytes for an unprivileged writer on the file system holding ``path`` (or its nearest existing
    ancestor); None when it cannot be read."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def storage_error(path: str | os.PathLike[str], needed: int | None = None) -> Exception:
    """The one-line :class:`~.errors.StorageError` for a write of ``path`` the file system refused: the file, the
    free space there (MiB) and, when known, the space the write needed (MiB)."""
    from .errors import StorageError

    free = free_bytes(Path(path).parent)
    room = f"{free / 2**20:.1f} MiB free there" if free is not None else "free space unknown"
    need = f", about {needed / 2**20:.1f} MiB needed" if needed else ""
    return StorageError(f"{path}: no space left on the device ({room}{need}); not written: free some space or "
                        "write elsewhere")


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append ``line`` and a newline to ``path``; a failed write (a full disk) is cut back to the old end, so the
    file never holds half a line.

    Raises:
        StorageError: the file system refused the write.
        ConfigError: ``path`` is a link, a folder or not a regular file (``fixednames.open_fixed``).
    """
    path = Path(path)
    with os.fdopen(open_fixed(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab") as f:  # never through a link
        end = f.seek(0, os.SEEK_END)
        try:
            f.write((line + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:
            with contextlib.suppress(OSError):
                f.truncate(end)
            if disk_full(e):
                raise storage_error(path) from None
            raise


def make_dirs(folder: Path) -> list[Path]:
    """``folder.mkdir(parents=True, exist_ok=True)``, returning the folders it created, outermost first (for
    :func:`remove_empty`).

    Raises:
        ConfigError: ``folder`` or a folder above it is a broken link (no folder is made through it).
    """
    made = []
    p = folder.absolute()
    while not p.exists():
        if p.is_symlink():
            raise _config_error(f"{p}: is a broken link (to {os.readlink(p)}); no folder is made through it")
        made.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return made[::-1]


def remove_empty(made: list[Path]) -> None:
    """Remove the folders :func:`make_dirs` created, innermost first, as far as they are empty (a failed run
    leaves no empty folder behind)."""
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            break


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or exception inside the block leaves ``path`` as it was (old file kept, no half file).

    Args:
        needed: the bytes the write will take, when the caller knows (named in the full-disk error).

    Raises:
        StorageError: the file system refused the write (no space, a quota): one line, the file and the free space.
        ConfigError: ``path`` is a folder: a rename cannot replace it, nothing is written.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():  # a rename replaces a link (never follows it), not a folder
        raise _config_error(f"{path}: would be written there, but it is a folder; nothing was written")
    made = make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the final file gets the usual permissions
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except Exception as e:
            if disk_full(e, path.parent):
                tmp_path.unlink(missing_ok=True)  # the free space named is what the user has without it
                raise storage_error(path, needed) from None
            raise
        os.replace(tmp_path, path)
        made = []
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
        remove_empty(made)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the block succeeds it replaces ``path`` (an old folder is
    moved aside, the new one renamed in, the old one removed). An exception leaves the old folder as it was.

    Raises:
        OSError: the parent cannot be written (callers turn it into one line).
        ConfigError: ``path`` is a link or not a folder: it is not replaced (nor what a link points to).
    """
    out = Path(path)
    why = fixed_name_problem(out, folder=True)
    if why is not None:
        raise _config_error(f"{out}: {why}; not written")
    made = make_dirs(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        try:
            yield tmp
        except Exception as e:
            if disk_full(e, out.parent):
                shutil.rmtree(tmp, ignore_errors=True)
                raise storage_error(out) from None
            raise
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))  # a fresh name: none planted
            try:
                os.replace(out, old)
            except OSError:
                old.rmdir()
                raise
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
        made = []
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        remove_empty(made)


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


def _config_error(text: str) -> Exception:
    from .errors import ConfigError  # errors imports nothing; kept local so utils stays the bottom layer

    return ConfigError(text)


def _output_error(option: str, path: Path, why: str) -> Exception:
    return _config_error(f"{option} {path}: {why}")


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
            file among its parents, a broken link, or a place that cannot be written (read-only folder or file
            system).
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise _output_error(option, path, "is a file, not a folder")
        _probe_writable(path, option, path)
    elif path.is_symlink():  # mkdir cannot make the folder it names, nor would danet-edge make one through it
        raise _output_error(option, path, f"is a broken link (to {os.readlink(path)})")
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


def ensure_output_names(folder: str | os.PathLike[str], option: str, files: Any = (), folders: Any = (),
                        patterns: Any = ()) -> None:
    """Check, before any work, that the names a command will write in ``folder`` are free for it: each of
    ``files`` (and each entry matching a glob of ``patterns``) must be a regular file or absent, each of ``folders``
    a real folder or absent; a link there, whatever it points to, is refused (``fixednames.check_fixed_names``).

    Raises:
        ConfigError: one line naming the option, the folder and the name that is taken.
    """
    check_fixed_names(folder, option, files, folders, patterns)


@contextlib.contextmanager
def staged_files(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder inside ``folder`` for a set of files written together (a report and its
    pictures); when the block succeeds each file is renamed into ``folder`` (replacing one of the same name), else
    nothing in ``folder`` changes and the temporary folder is removed (``folder`` too when this made it).

    Raises:
        StorageError: the disk filled while the block wrote (named by ``folder``).
    """
    from .errors import StorageError

    folder = Path(folder)
    made = make_dirs(folder)
    tmp = Path(tempfile.mkdtemp(prefix=".staged.", dir=folder))
    try:
        try:
            yield tmp
        except Exception as e:
            if isinstance(e, StorageError) or disk_full(e, folder):
                shutil.rmtree(tmp, ignore_errors=True)
                raise storage_error(folder) from None
            raise
        for f in sorted(tmp.iterdir()):
            os.replace(f, folder / f.name)
        made = []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(made)
