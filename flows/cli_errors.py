"""How the CLI ends when something goes wrong: one line on stderr and an exit code.

Config errors exit 2; operational errors (see :mod:`tasks.preflight`) exit 1, with the
traceback only under ``--verbose``; a bug keeps its traceback; SIGTERM / SIGINT exit
128 + the signal without waiting for worker threads.
"""

from __future__ import annotations

import os
import signal
import sys

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from tasks import preflight
from tasks.config import ConfigError

err_console = Console(stderr=True)
verbose = False   # set by the CLI's --verbose


def fail(message: str, code: int) -> typer.Exit:
    """Print ``message`` as one line on stderr (no markup, no wrapping); the exit to raise."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def check_writable(lake: str, source: str | None = None) -> None:
    """Fail fast, in one line, when the lake (and the source) cannot be used."""
    try:
        preflight.check_lake(lake)
        if source is not None:
            preflight.check_source(source)
    except preflight.OperationalError as err:
        if verbose:
            raise
        raise fail(f"error: {err}", 1) from err


def existing_lake(root: str):
    """The lake at ``root`` for a command that only reads it; one line and exit 1 when no lake
    is there (a mistyped ``--lake`` must not answer "0 rows", nor create one)."""
    from tasks.lake import Lake

    lake = Lake(root)
    if not lake.exists():
        raise fail(f"error: no lake at {root} (check --lake / LONGREWARD_LAKE; a run writes "
                   "one)", 1)
    return lake


class OneLineErrors(TyperGroup):
    """The command group that turns failures into one line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except ConfigError as err:
            raise fail(f"config error: {err}", 2) from err
        except Exception as err:
            message = preflight.explain(err)
            if message is None or verbose:
                raise
            raise fail(f"error: {message}  (--verbose shows the traceback)", 1) from err
        except BaseException as err:
            signum = stop_signal(err)
            if signum is None:
                raise
            # The run's own `finally` blocks have run (its temporary API is stopped); worker
            # threads may still wait on calls in flight: abandon them (every write is atomic,
            # every finished call cached) instead of joining them at exit.
            fail(f"stopped by {signal.Signals(signum).name}: calls in flight abandoned; "
                 "rerun to finish (no finished call is paid twice)", 128 + signum)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signum)


def stop_signal(err: BaseException) -> int | None:
    """The signal behind SIGINT's KeyboardInterrupt or Prefect's TerminationSignal (its name
    is checked so that commands that never touch Prefect do not import it)."""
    if isinstance(err, KeyboardInterrupt):
        return signal.SIGINT
    if type(err).__name__ == "TerminationSignal":
        return int(getattr(err, "signal", signal.SIGTERM))
    return None
