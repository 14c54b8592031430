"""Atomic file replacement: a reader sees the old file or the new one, never half of one.

Every writer in the package goes through here (or, for the phrase cache's streamed entries,
at least through :func:`fsync_dir`), so "temp file in the same directory, then os.replace"
is written once. ``durable=True`` also fsyncs the file before the rename and the directory
after it, so the new content survives a power cut, not just a crash of the process; each
caller says which one it needs.
"""

from __future__ import annotations

import logging
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Union

log = logging.getLogger(__name__)

__all__ = ["atomic_file", "atomic_write", "check_writable_dir", "fsync_dir", "temp_path"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def fsync_dir(path: Union[str, "os.PathLike[str]"]) -> bool:
    """Make renames and new names inside directory path durable; False when that failed.

    Best effort: some filesystems refuse fsync on a directory, and the rename still stands,
    so a failure is only logged (at debug level).
    """
    try:
        fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except OSError as exc:
        log.debug("cannot open %s to fsync it: %s", path, exc)
        return False
    try:
        os.fsync(fd)
    except OSError as exc:
        log.debug("cannot fsync %s: %s", path, exc)
        return False
    finally:
        os.close(fd)
    return True


def temp_path(path: Union[str, "os.PathLike[str]"]) -> Path:
    """A fresh hidden name next to path: same directory (so os.replace is atomic), unique per
    process and call (so two writers never share a temp file)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_file(path: Union[str, "os.PathLike[str]"], *, durable: bool) -> Iterator[BinaryIO]:
    """A binary file to fill that replaces path when the block ends without an exception.

    On any exception the temp file is removed and path is left as it was. With durable the
    file is fsynced before the rename and the directory after it.
    """
    path = Path(path)
    tmp = temp_path(path)
    fh = open(tmp, "xb")
    try:
        try:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        finally:
            fh.close()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write(path: Union[str, "os.PathLike[str]"], data: bytes, *, durable: bool) -> None:
    """Replace path with data atomically (see :func:`atomic_file`); raises OSError."""
    with atomic_file(path, durable=durable) as fh:
        fh.write(data)


def check_writable_dir(path: Union[str, "os.PathLike[str]"]) -> None:
    """Create directory path (and its parents, 0700) if missing, then replace and remove a probe
    file in it with :func:`atomic_write`: exactly what the state writers do, so `doctor` can
    tell before the daemon does that they would fail. Raises OSError."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    probe = directory / f".probe-{os.getpid()}"
    atomic_write(probe, b"ok", durable=False)
    os.unlink(probe)
