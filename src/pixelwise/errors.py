"""Exceptions for problems with the user's input: the CLI prints them without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class PixelwiseError(Exception):
    """A problem the user can fix (bad data, bad config, missing file); the message says how."""


class ConfigError(PixelwiseError):
    """The configuration is invalid: unknown key, wrong type, unknown component name."""


class DataError(PixelwiseError):
    """The dataset cannot be trained or evaluated on as it is."""


def list_offenders(problem: str, offenders: Sequence[str], limit: int = 10) -> str:
    """Format ``problem`` followed by up to ``limit`` offending items and the total count.

    Args:
        problem: one line saying what is wrong, e.g. "mask size differs from its image".
        offenders: one line per offending file or item.
        limit: how many to show before summarising the rest.
    """
    shown = "\n".join(f"  - {o}" for o in offenders[:limit])
    rest = len(offenders) - limit
    more = f"\n  ... and {rest} more" if rest > 0 else ""
    return f"{problem} ({len(offenders)} file{'s' if len(offenders) != 1 else ''}):\n{shown}{more}"


def did_you_mean(name: str, valid: Iterable[str], n: int = 3, cutoff: float = 0.6, prefix: str = "") -> str:
    """'did you mean 'a', 'b'?' for the names in ``valid`` close to ``name`` (each shown with ``prefix``), or ''.

    The one place where pixelwise suggests names: config keys, component names, encoders, CLI settings.
    """
    close = difflib.get_close_matches(name.lower(), list(valid), n=n, cutoff=cutoff)
    return f"did you mean {', '.join(repr(prefix + c) for c in close)}?" if close else ""
