"""What the ``videobench`` and ``customvideox`` command lines share: exit codes, errors, logging, the group."""

from __future__ import annotations

import logging
import sys
from typing import Callable, NoReturn

import click

EXIT_CASE_FAILURES = 1  # some case/clip failed; everything else was written
EXIT_SETUP_ERROR = 2  # nothing ran: missing weights or data, bad options
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); everything finished before it is kept

OWN_LOGGERS = ("videobench", "customvideox", "baselines")


def fail(message: str) -> NoReturn:
    """Print one red ``error:`` line and exit with :data:`EXIT_SETUP_ERROR`."""
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(EXIT_SETUP_ERROR)


def configure_logging(verbose: bool) -> None:
    """Our own loggers at INFO (DEBUG with ``-v``); third-party libraries only from WARNING on."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


class _Group(click.Group):
    """A group whose Ctrl-C exits with :data:`EXIT_INTERRUPTED` (not 1, which means "some case failed") and whose
    full disk is one ``error: no space left on device: PATH`` line (exit 2)."""

    def invoke(self, ctx: click.Context):
        from mediaio.atomic import DiskFullError

        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.secho("interrupted: finished outputs are kept; run the same command again to resume", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except DiskFullError as error:  # any atomic write: the destination kept its previous content
            fail(str(error))


def command_group(func: Callable[[], None]) -> click.Group:
    """A click group with ``-h``, ``-v/--verbose`` (logging set up before any command) and ``--version``."""

    @click.group(cls=_Group, name=func.__name__, help=func.__doc__,
                 context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
    @click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
    @click.version_option(package_name="videobench-customvideox")
    def group(verbose: bool) -> None:
        configure_logging(verbose)
        func()

    return group
