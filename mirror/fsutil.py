"""The one way this project makes a file live on disk: temp file in the same directory, fsync,
rename, fsync the directory.

A rename without fsync can survive a power loss while the data it points at does not (an empty
repomd.xml after a crash is the classic result on ext4/xfs with delayed allocation). Every
writer of published files, state and configs goes through here.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TMP_PREFIX = "."  # temp files are hidden: never served, never listed
TMP_MARK = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Make the directory entry changes in `path` (creates, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """Where a new version of `path` is written before it is renamed into place."""
    return path.with_name(f"{TMP_PREFIX}{path.name}{TMP_MARK}{os.getpid()}")


def is_temp_name(name: str) -> bool:
    return name.startswith(TMP_PREFIX) and TMP_MARK in name


def durable_replace(src: Path, dest: Path, *, sync_src: bool = True) -> None:
    """Rename `src` over `dest` so that after a crash `dest` is either the old or the new file,
    complete. `sync_src=False` when the caller already fsynced the file's data."""
    if sync_src:
        fsync_file(src)
    os.replace(src, dest)
    fsync_dir(dest.parent)
    if src.parent != dest.parent:
        fsync_dir(src.parent)


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` atomically and durably (readers see old or new, never a mix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644 if mode is None else mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        durable_replace(tmp, path, sync_src=False)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_text(path: Path, text: str, mode: int | None = None) -> None:
    atomic_write(path, text.encode("utf-8"), mode)
