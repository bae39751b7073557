"""Rich progress shown on the console (stderr), quiet when not a terminal-friendly context."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
console = Console(stderr=True)


def make_progress(*extra: TextColumn, eta: bool = True) -> Progress:
    """A bar with counts, ``extra`` columns, elapsed time and (unless the caller shows its own) rich's ETA."""
    tail = [TextColumn("eta"), TimeRemainingColumn()] if eta else []
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        *tail,
        console=console,
        transient=False,
    )


def track(items: Iterable[T], total: int, label: str) -> Iterator[T]:
    """Iterate with a progress bar."""
    with make_progress() as progress:
        task = progress.add_task(label, total=total)
        for item in items:
            yield item
            progress.advance(task)
