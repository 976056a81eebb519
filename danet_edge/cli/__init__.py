"""The ``danet-edge`` command line: a thin Typer layer over the library.

Each command group lives in its own module with a ``register(app)`` function; this module
builds the app and turns ``DanetEdgeError`` into one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import importlib
import os
import sys

# Idle OpenMP threads sleep instead of spinning, unless the user chose: on a CPU shared with other
# work (decode threads, other jobs) PyTorch's spinning pool stalls 4-50x (measured: ResNet-18 DANet
# training at load ~4.7 on 2 cores, 0.26 img/s by default vs 1.16 img/s passive; the demo 455 s vs
# 45 s). Read once, when torch loads its OpenMP runtime, so it is set before any command imports torch.
if not os.environ.get("OMP_WAIT_POLICY"):
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import typer  # noqa: E402

from ..errors import DanetEdgeError  # noqa: E402

app = typer.Typer(
    name="danet-edge",
    help="DANet from training to a fast, checked TensorRT engine: train, eval, export, build, infer, check, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_COMMAND_MODULES = ("train", "export", "infer", "check")

for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _e:  # a command group not written yet
        if _e.name != f"{__name__}.{_name}":
            raise
        continue
    _mod.register(app)


@app.command()
def version() -> None:
    """Print the danet-edge version."""
    from .. import __version__

    typer.echo(f"danet-edge {__version__}")


def main() -> None:
    """Console entry point: one line on stderr and a non-zero exit for a user error, never a traceback."""
    try:
        app()
    except DanetEdgeError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
