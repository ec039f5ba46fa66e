"""Terminal output for humans: progress bars (rich). Nothing here on a non-TTY."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .model import escape_controls


@contextlib.contextmanager
def ingest_progress(show: bool) -> Iterator[Callable[[Any, int], None] | None]:
    """Yield a ``progress(live_session, nbytes)`` callback drawing one bar, or None."""
    if not show:
        yield None
        return
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.fields[camera]}[/] {task.fields[file]}", justify="left"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("spool", total=None, camera="", file="")

        def update(live: Any, _n: int) -> None:
            # the fields are rich markup: a camera's names are escaped for the terminal and for it
            bar.update(task, total=live.total_bytes or None, completed=live.spooled_bytes,
                       camera=escape(escape_controls(live.serial)),
                       file=escape(escape_controls(live.current or "")[-40:]))

        yield update
