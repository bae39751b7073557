"""The consoles pixelwise prints through (messages and progress bars on stderr, results on stdout).

Rich markup is off on both. Run, file, class and split names come from the user and often hold square
brackets (``runs/unet[final]``, ``img[1].png``): with markup on, rich reads them as style tags, so a message
loses part of a name or the command dies with a ``MarkupError``. Styles are given as spans of ``rich.text.Text``
(``styled``, ``notice``), so no user string is ever parsed; ``tests/test_markup.py`` scans the source for
anything that would turn markup back on. Control characters are shown as ``\\xNN``: an escape sequence in a
file name would otherwise clear, recolour or retitle the user's terminal.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

T = TypeVar("T")
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), *range(127, 160)] if c not in (9, 10)}  # tab, newline stay


def visible(text: str) -> str:
    """``text`` with control characters (ESC, CR, C1 codes, ...) written out as \\xNN."""
    return text.translate(_CONTROL)


class _Console(Console):
    """A console whose strings are shown as they are: control characters made visible (markup is off)."""

    def render_str(self, text: str, **kwargs) -> Text:  # type: ignore[override]
        return super().render_str(visible(text), **kwargs)


# emoji off as well: ':smile:' in a file name would be replaced by a picture
console = _Console(stderr=True, markup=False, emoji=False)
stdout = _Console(markup=False, emoji=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """One line of plain strings and (text, style) spans, e.g. ``styled(("done", "bold green"), " in 3s")``."""
    return Text.assemble(*(visible(p) if isinstance(p, str) else (visible(p[0]), p[1]) for p in parts))


def notice(label: str, message: str, style: str = "yellow", to: Console = console) -> None:
    """Print ``label: message`` with the label styled (note, warning, error, ...)."""
    to.print(styled((f"{label}:", style), " ", message))


def make_progress(*extra: TextColumn, eta: bool = True) -> Progress:
    """A bar with counts, ``extra`` columns, elapsed time and (unless the caller shows its own) rich's ETA."""
    tail = [TextColumn("eta", markup=False), TimeRemainingColumn()] if eta else []
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),  # descriptions name splits and files
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
        task = progress.add_task(visible(label), total=total)
        for item in items:
            yield item
            progress.advance(task)
