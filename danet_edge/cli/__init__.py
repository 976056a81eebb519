"""The ``danet-edge`` command line: a thin Typer layer over the library.

Each command lives in its own module (named after it) with a ``register(app)`` function; this module
builds the app and turns ``DanetEdgeError`` into one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Any

# Idle OpenMP threads sleep instead of spinning, unless the user chose: on a CPU shared with other
# work (decode threads, other jobs) PyTorch's spinning pool stalls 4-50x (measured: ResNet-18 DANet
# training at load ~4.7 on 2 cores, 0.26 img/s by default vs 1.16 img/s passive; the demo 455 s vs
# 45 s). Read once, when torch loads its OpenMP runtime, so it is set before any command imports torch.
if not os.environ.get("OMP_WAIT_POLICY"):
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import typer  # noqa: E402

from ..core.errors import DanetEdgeError  # noqa: E402

app = typer.Typer(
    name="danet-edge",
    help="DANet from training to a fast, checked TensorRT engine: train, eval, export, build, infer, check, bench.",
    epilog="Exit codes: 0 ok, 1 a check failed, 2 usage, 3 bad input file, 4 missing package, 5 a stage failed, "
           "130 interrupted. -v / -q may also follow the command.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: no "<bool>" beside flags, pipes and narrow terminals read well
)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"danet-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail (TensorRT's verbose log for build)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only results and errors: no progress bars or notes."),
    show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit."),
) -> None:
    """DANet from training to a fast, checked TensorRT engine."""
    from ..core import progress
    from ._common import STATE

    if verbose and quiet:
        raise typer.BadParameter("-v and -q contradict each other")
    STATE["verbosity"] = 1 if verbose else -1 if quiet else 0
    progress.enable(not quiet)

#: One module per command (``register(app)`` in each), in the order ``--help`` lists them.
_COMMAND_MODULES = ("train", "eval", "import_official", "calib", "export", "cost", "build", "infer", "check", "bench",
                    "deploy", "demo")

for _name in _COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(app)


@app.command()
def version() -> None:
    """Print the danet-edge version."""
    from .. import __version__

    typer.echo(f"danet-edge {__version__}")


class _CommandInterrupted(Exception):
    """Ctrl-C inside a command, carried past Typer (which turns a KeyboardInterrupt into a silent exit 130)
    to :func:`main`, which prints its message (what was kept) and exits 130."""


def _interrupt_line(error: KeyboardInterrupt) -> str:
    """The one line for Ctrl-C: the stage's own (``errors.Interrupted``: what train, export or infer kept), else
    ``interrupted``."""
    from ..core.errors import Interrupted

    return str(error) if isinstance(error, Interrupted) and str(error) else "interrupted"


def _report_interrupts(callback):
    """Wrap a command's callback so that Ctrl-C inside it reaches :func:`main` with what was kept."""
    import functools

    @functools.wraps(callback)  # Typer reads the options from the wrapped signature
    def run(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except KeyboardInterrupt as e:
            raise _CommandInterrupted(_interrupt_line(e)) from None

    return run


for _info in app.registered_commands:
    _info.callback = _report_interrupts(_info.callback)


_GLOBAL_FLAGS = {"-v", "--verbose", "-q", "--quiet"}


def _click_kind(error: BaseException) -> str | None:
    """``"help"``, ``"usage"`` or ``"other"`` for one of click's exceptions (Typer's own or the click package's,
    told apart by class name so either works), None for anything else."""
    names = {c.__name__ for c in type(error).__mro__}
    if "NoArgsIsHelpError" in names:
        return "help"
    if "UsageError" in names:
        return "usage"
    return "other" if "ClickException" in names else None


def _usage_line(error: Exception) -> str:
    """One line for a usage error (unknown command or option, a missing argument, a bad choice), with where to
    look: ``error: No such option: --bogus; see 'danet-edge train --help'``."""
    message = " ".join(error.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
    ctx = getattr(error, "ctx", None)
    hint = f"; see '{ctx.command_path} --help'" if ctx is not None and getattr(ctx, "command_path", None) else ""
    return f"error: {message}{hint}"


def main() -> None:
    """Console entry point: one line on stderr and a non-zero exit for a user error, never a traceback
    (a missing optional package, e.g. PyTorch for ``train`` on a device install, is exit code 4; a usage error
    such as an unknown option is exit code 2; a full disk is exit code 5).

    ``-v`` / ``-q`` are accepted before or after the command name (``danet-edge infer -q ...``).
    """
    argv = sys.argv[1:]
    if any(a in _GLOBAL_FLAGS for a in argv):
        cut = argv.index("--") if "--" in argv else len(argv)
        flags = [a for a in argv[:cut] if a in _GLOBAL_FLAGS]
        argv = flags + [a for a in argv[:cut] if a not in _GLOBAL_FLAGS] + argv[cut:]
        sys.argv[1:] = argv
    previous = _terminate_like_ctrl_c()
    try:
        _run()
    finally:
        for sig, handler in previous.items():  # in-process callers (tests, notebooks) get theirs back
            signal.signal(sig, handler)


def _run() -> None:
    """:func:`main`'s body: the app, and every way it can end as one line and an exit code."""
    try:
        code = app(standalone_mode=False)  # click's errors come here, to be one line like every other error
        if code == 130:  # Ctrl-C outside a command's body: Typer returns 130 without a word
            typer.echo("interrupted", err=True)
        sys.exit(code if isinstance(code, int) else 0)
    except _CommandInterrupted as e:  # Ctrl-C: what was kept, exit 130
        typer.echo(str(e), err=True)
        sys.exit(130)
    except DanetEdgeError as e:
        typer.echo("error: " + " ".join(str(e).splitlines()), err=True)  # one line even if a value held a newline
        sys.exit(e.exit_code)
    except ImportError as e:  # an optional package a stage imports at module level (torch for train / export)
        from ..core.optional import missing_dependency

        missing = missing_dependency(e)
        if missing is None:
            raise
        typer.echo(f"error: {missing}", err=True)
        sys.exit(missing.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        kind = _click_kind(e)
        if kind == "help":  # ``danet-edge`` alone: the help, as asked
            typer.echo(e.format_message())  # type: ignore[attr-defined]
            sys.exit(0)
        if kind == "usage":
            typer.echo(_usage_line(e), err=True)
            sys.exit(2)
        if kind == "other":
            typer.echo("error: " + " ".join(e.format_message().split()), err=True)  # type: ignore[attr-defined]
            sys.exit(int(getattr(e, "exit_code", 1)))
        if _abort(e):  # click's Abort: Ctrl-C at a prompt
            typer.echo("interrupted", err=True)
            sys.exit(130)
        from ..core.utils import disk_full, storage_error

        if disk_full(e):  # a write outside utils.atomic_path (a library's own file): still one line, exit 5
            where = getattr(e, "filename", None)
            err = storage_error(where) if where else None
            typer.echo(f"error: {err}" if err else "error: no space left on the device; free some space or write "
                       "elsewhere", err=True)
            sys.exit(5)
        raise


def _terminate_like_ctrl_c() -> dict[int, Any]:
    """``kill`` (SIGTERM) and a closed terminal (SIGHUP) stop a command the way Ctrl-C does: Python's default for
    them ends the process at once, leaving an overlay video without its index (unplayable), a half epoch
    unsaved and no word of what was kept. As a ``KeyboardInterrupt`` each stage closes its outputs and says what
    it kept (exit 130). ``kill -9`` cannot be caught: the temporary files it leaves are removed by the next run.
    Returns the handlers replaced, to restore."""
    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            try:
                previous[sig] = signal.signal(sig, interrupt)
            except (ValueError, OSError):  # not the main thread, or a platform without it
                pass
    return previous


def _abort(error: BaseException) -> bool:
    return any(c.__name__ == "Abort" for c in type(error).__mro__)
