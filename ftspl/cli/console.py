"""The CLI's output channels: rich tables and progress on stdout/stderr, JSON on stdout.

Results go to stdout (a table, a summary line, or JSON). Everything else goes
to stderr in three kinds: :func:`error` (the command failed), :func:`warn` (a
problem: ``path: reason`` for a skipped file) and :func:`info` (progress and
status). Library modules log instead of printing; :func:`setup_logging` shows
their warnings, and with ``-v`` their info lines, each tagged with its level so
progress never reads as a warning.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from typing import Any, Iterator


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def error(message: str) -> None:
    """One line on stderr: the user's mistake, no traceback."""
    sys.stderr.write(f"error: {message}\n")


def warn(message: str) -> None:
    """A problem that did not stop the command, e.g. ``path: reason`` for a file that was skipped."""
    sys.stderr.write(f"{message}\n")


def info(message: str) -> None:
    """A progress or status line (stderr, so stdout stays the result)."""
    sys.stderr.write(f"{message}\n")


LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: bool) -> None:
    """Library logs on stderr: warnings always, info lines with ``-v``; each line names its level.

    Only the level is set when a handler already exists (a second ``-v`` after
    the subcommand, or a test harness that installed its own handler).
    """
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=LOG_FORMAT, stream=sys.stderr)
    if verbose:
        root.setLevel(logging.INFO)
    elif root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, sort_keys=False, default=str) + "\n")


def print_table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[str(x) for x in r])
    Console().print(table)


@contextmanager
def progress(enabled: bool = True) -> Iterator:
    """A rich progress bar on stderr; ``update(phase, done, total)`` drives it."""
    if not enabled or not sys.stderr.isatty():
        yield lambda phase, done, total: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield update
