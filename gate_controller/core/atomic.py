"""Whole-file replacement that a reader (or a power loss) never sees half done."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["copy_atomic", "write_atomic"]


def write_atomic(path: Path, data: bytes, *, durable: bool) -> None:
    """Write ``data`` to ``path`` via a temporary file beside it and a rename.

    ``durable`` also fsyncs the file before the rename and the directory after it, so the new
    content survives a power loss once this returns (use it for the only copy of something).
    """
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    tmp.replace(path)
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def copy_atomic(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` via a temporary file beside it, fsynced before the rename."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, tmp)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(target)
