"""The one style of every stage's options, importable without PyTorch or ONNX.

Every stage's options are a dataclass deriving from :class:`Config`, defined in the stage's own folder
(``model/config.py``, ``train/config.py``, ``export/config.py``, ``check/config.py``, ``trt/plan.py``,
``infer/config.py``, ``bench/config.py``, ``deploy/``, ``demo.py``): its ``validate()`` raises
:class:`~danet_edge.core.errors.ConfigError` naming the option, ``__post_init__`` calls it (so an invalid
config cannot be built, nor made with ``dataclasses.replace``), and the stage function calls it again on
entry (dataclasses stay mutable). Checks that depend on the machine or the artifact (a CUDA device for
``--amp``, TensorRT's version in ``trt.plan.plan_build``, the checkpoint's output stride in ``export``)
belong to the stage, not to the config.

**Defaults in one place.** The command line takes every default from these classes with
:meth:`Config.default`, and the help of fields declared with :func:`option` from :meth:`Config.help` (no
instance is built, nothing heavy is imported), so ``--help`` and the library cannot disagree. The ``config`` modules import no PyTorch, ONNX or ONNX
Runtime, and the stage folders' ``__init__`` files import nothing.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .manifest import MAX_IMAGE_SIDE

__all__ = ["Config", "option", "check_range", "check_choice", "check_threads", "check_stride_multiple", "CALIB_DIR", "CALIB_IMAGES",
           "EXPORT_DIR", "MAX_CROP_SIDE"]

#: The project's default folders (relative to the working directory) and calibration draw, shared by
#: ``export``, ``calib fill`` and ``build --int8-calib``.
CALIB_DIR = Path("calib")
EXPORT_DIR = Path("export")
CALIB_IMAGES = 100
#: Largest training crop side (px); the memory a crop needs is checked against the machine when training starts.
MAX_CROP_SIDE = MAX_IMAGE_SIDE


def check_image_size(name: str, size: Any) -> None:
    """Raise ConfigError unless ``size`` is None or two integers ``(H, W)`` in 1..``MAX_IMAGE_SIDE`` px."""
    if size is None:
        return
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMAGE_SIDE
                                 for v in size):
        raise ConfigError(f"{name} must be two sizes H W in 1..{MAX_IMAGE_SIDE}, got {tuple(size)}")


def check_stride_multiple(name: str, size: Any, stride: int) -> None:
    """Raise ConfigError unless ``size`` is None or an ``(H, W)`` whose sides are multiples of the output stride
    ``stride`` (the one rule for every command that takes an export size: ``export``, ``import-official``)."""
    if size is None:
        return
    h, w = int(size[0]), int(size[1])
    if h % stride or w % stride:
        raise ConfigError(f"image size {h}x{w} is not divisible by the output stride {stride}: use e.g. {name} "
                          f"{max(stride, round(h / stride) * stride)} {max(stride, round(w / stride) * stride)}")


def check_range(name: str, value: Any, lo: float | None = None, hi: float | None = None,
                optional: bool = False, integer: bool = True) -> None:
    """Raise ConfigError unless ``value`` is a number (an int when ``integer``) in ``lo..hi`` (inclusive).

    ``optional`` lets None through. ``name`` is the option as the user typed it (``--batch``).
    """
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)) \
            or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    if lo is not None and hi is not None and not lo <= value <= hi:
        raise ConfigError(f"{name} must be in {lo}..{hi}, got {value}")
    if lo is not None and value < lo:
        raise ConfigError(f"{name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name} must be <= {hi}, got {value}")


def check_threads(name: str, value: int | None, lo: int = 1) -> None:
    """Raise ConfigError unless ``value`` (None lets through) is a thread count in ``lo..4 x the CPUs here``.

    A stage check (it depends on the machine): far more threads than cores only adds switching, and
    a count like 100000 made ONNX Runtime hang creating them.
    """
    import os

    check_range(name, value, lo, 4 * (os.cpu_count() or 1), optional=True)


def check_choice(name: str, value: Any, choices: tuple[str, ...] | list[str], optional: bool = False) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices`` (listed in the message)."""
    if value is None and optional:
        return
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


class Config:
    """Base of every stage's options: validated at construction, defaults readable without an instance."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError on a value that cannot work; the message names the option."""

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field ``name`` (a ``default_factory`` is called), for the command line's options."""
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name == name:
                if f.default is not MISSING:
                    return f.default
                if f.default_factory is not MISSING:
                    return f.default_factory()
                raise ConfigError(f"{cls.__name__}.{name} has no default")
        raise ConfigError(f"{cls.__name__} has no field {name!r}")

    @classmethod
    def help(cls, name: str) -> str:
        """The help text of field ``name`` (declared with :func:`option`): the command line's ``--help`` for it."""
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name == name:
                if "help" not in f.metadata:
                    raise ConfigError(f"{cls.__name__}.{name} has no help text")
                return str(f.metadata["help"])
        raise ConfigError(f"{cls.__name__} has no field {name!r}")

    @classmethod
    def from_options(cls, values: dict[str, Any], **extra: Any) -> Any:
        """Build the config from the command line's values: every key that names a field is taken (an Enum as
        its value, a list as a tuple), other keys are ignored; ``extra`` wins over ``values``."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        kw = {}
        for k, v in {**values, **extra}.items():
            if k not in names:
                continue
            if isinstance(v, Enum):
                v = v.value
            elif isinstance(v, list):
                v = tuple(x.value if isinstance(x, Enum) else x for x in v)
            kw[k] = v
        return cls(**kw)


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING) -> Field:  # noqa: A002
    """A config field with its command-line help text (``Config.help``): the one place both are written."""
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


