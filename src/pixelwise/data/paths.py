"""Paths and names that come from inside data files (COCO ``file_name``, list files, image ids) made safe.

A data file is input like any other: a COCO export whose ``file_name`` is ``../../x.png`` or ``/etc/x`` must
not make pixelwise read outside the dataset, and an image ``id`` of ``../x`` must not become part of a file
name it writes. Names are checked lexically (``..`` may not climb out, no absolute paths), without resolving
symbolic links: links the user placed in their own dataset folder lead where the user chose.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any


def inside(base: Path, name: str, start: Path | None = None) -> Path | None:
    """``name`` (relative to ``start``, a folder in ``base``; default ``base``) when it stays inside ``base``.

    None for an absolute path, a name that climbs out of ``base`` with '..', or an empty one. Backslashes count
    as separators (exports written on Windows use them), so '..\\x' cannot climb either.
    """
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        return None
    text = name.replace("\\", "/")
    if PurePosixPath(text).is_absolute() or PureWindowsPath(name).drive:
        return None
    parts: list[str] = list(start.relative_to(base).parts) if start is not None else []
    for part in PurePosixPath(text).parts:
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part != ".":
            parts.append(part)
    return base.joinpath(*parts) if parts else None


def outside_message(source: str, name: Any, base: Path) -> str:
    """One offender line: which entry of which file names a path outside which folder."""
    return f"{source}: '{name}' is not a path inside {base}"


def safe_key(value: Any) -> str:
    """A file-name-safe key for a value taken from data (an image id): a hash, never the value itself."""
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:20]
