"""The CLI's output channels: rich tables and progress on stdout/stderr, JSON on stdout."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def error(message: str) -> None:
    """One line on stderr: the user's mistake, no traceback."""
    sys.stderr.write(f"error: {message}\n")


def warn(message: str) -> None:
    sys.stderr.write(f"{message}\n")


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
