"""Files written atomically: a reader (or a crash) sees the old file or the new one, never half of one.

No torch here: prediction with an ONNX model writes its outputs through these too.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from pixelwise.errors import PixelwiseError


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask can only be read by setting it, which would race
    with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(path: Path) -> int:
    """The mode a file written at ``path`` should get: the replaced file's own, else what the umask gives."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then move ``tmp`` over ``path``: readers see the old file or the new one, never half.

    The file gets the permissions any other program's would (mkstemp's temporary file is private, 0600): those
    of the file it replaces, else 0666 less the umask.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise PixelwiseError(f"{path}: no space left on the device ({kept}); free some space and run "
                                     "again (an interrupted training run continues with --resume)") from None
            raise PixelwiseError(f"{path}: cannot be written ({e.strerror or e}; {kept})") from None
        raise


def check_new_file(path: Path, overwrite: bool = False, option: str = "--out") -> None:
    """Refuse an output file that is a folder, or one that exists unless ``overwrite``: a command never writes
    over a file it did not create unless told to (a mistyped --out may name a dataset image or a mask).
    Checked before the work, so nothing is computed for a write that would be refused."""
    if path.is_dir():
        raise PixelwiseError(f"{option} {path}: is a folder; give the path of a file to write")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise PixelwiseError(f"{option} {path}: the file exists and would be replaced; choose another {option}, "
                             "or pass --overwrite to replace it")


def check_out_dir(path: Path, option: str = "--out") -> None:
    """Refuse an output folder that exists as a file (it is created when missing)."""
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise PixelwiseError(f"{option} {path}: is a file, not a folder; give a folder (created if missing)")


def remove_stale_temp_files(folder: Path) -> None:
    """Delete temporary files a killed process left behind in ``folder`` (the finished files are intact)."""
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
