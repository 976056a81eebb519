"""Shared CLI helpers: the two consoles and the verbosity every command follows (``-v`` / ``-q``)."""
from __future__ import annotations

from typing import Any, Optional

from ..core.errors import ConfigError

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


def opt(cfg: Any, name: str, *decls: str, **kw: Any) -> Any:
    """A Typer option whose default and help are field ``name`` of config ``cfg`` (``Config.default`` and
    ``Config.help``): the one place both are written. ``cfg`` is a config class, or an instance when the default
    is that instance's (``TrainConfig().model``: a ResNet-18, not ``ModelConfig``'s ResNet-50)."""
    import typer

    cls = cfg if isinstance(cfg, type) else type(cfg)
    default = cls.default(name) if isinstance(cfg, type) else getattr(cfg, name)
    return typer.Option(default, *decls, help=cls.help(name), **kw)


def check_outputs(**paths: Any) -> None:
    """Refuse, before any work, an output path that cannot be written (``core.utils.ensure_output_dir`` /
    ``ensure_output_file``): keyword = the option's name (``out``, ``report``: folders; ``json``, ``plot``: files).

    Raises:
        ConfigError: one line naming the option and the path.
    """
    from ..core.utils import ensure_output_dir, ensure_output_file

    for key, path in paths.items():
        if path is None:
            continue
        if key in ("out", "report"):
            ensure_output_dir(path, f"--{key}")
        else:
            ensure_output_file(path, f"--{key}")
