"""Disk use of what the mirror holds: per repo, the registry storage, files, charts.

One os.scandir walk per tree (file types from the directory read, never following a
symlink, like mirror.fsutil.walk) and one lstat per regular file, skipped for directories
unchanged since the last walk in this process (a status page polled by a web worker). Sizes
are allocated blocks (st_blocks) of regular files: what `du` counts, less the directories.
Measured on a tree of 60,000 packages in 60 directories, warm page cache, this machine:
~300-600 ms for the first walk (the lstats), ~40-70 ms for the next ones.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

from mirror.config import Config
from mirror.progress import human_bytes

# Per tree root: directory -> (its mtime_ns, when measured, bytes of the regular files
# directly in it). Every writer of data_dir renames files into place (mirror.fsutil;
# distribution moves finished uploads), which changes the directory's mtime: an unchanged
# directory needs no stat of its files. Entries expire anyway (a file rewritten in place),
# a directory changed in the last seconds is not cached (mtimes come from a coarse clock: a
# rename in the same tick as our read would leave the mtime as it was), and each walk keeps
# only the directories it saw, so removed trees leave nothing behind.
_Entries = dict[str, tuple[int, float, int]]
_CACHE: dict[str, _Entries] = {}
CACHE_SECONDS = 300.0
_RACY_NS = 2_000_000_000


def _dir_bytes(
    path: str, mtime_ns: int, old: _Entries, new: _Entries
) -> tuple[int, list[str]]:
    """Bytes of the regular files directly in `path` (from the cache when the directory is
    unchanged) and its subdirectories (never through a symlink)."""
    now = time.monotonic()
    cached = old.get(path)
    fresh = cached is not None and cached[0] == mtime_ns and now - cached[1] < CACHE_SECONDS
    total, subdirs = 0, []
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.path)
            elif not fresh and entry.is_file(follow_symlinks=False):
                try:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
                except FileNotFoundError:
                    continue
    if fresh:
        assert cached is not None
        new[path] = cached
        return cached[2], subdirs
    if time.time_ns() - mtime_ns > _RACY_NS:
        new[path] = (mtime_ns, now, total)
    return total, subdirs


def tree_bytes(root: Path) -> int:
    """Bytes allocated to the regular files below `root` (0 when it does not exist or is a
    symlink); what vanishes while walking is skipped."""
    key = str(root)
    old = _CACHE.get(key, {})
    new: _Entries = {}
    total, pending = 0, [key]
    while pending:
        path = pending.pop()
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                continue
            size, subdirs = _dir_bytes(path, st.st_mtime_ns, old, new)
        except (FileNotFoundError, NotADirectoryError):
            continue
        total += size
        pending += subdirs
    _CACHE[key] = new
    return total


def file_bytes(path: Path) -> int:
    try:
        return os.lstat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def _repo_keys(cfg: Config) -> list[str]:
    """Published repo targets, from the repo records (what `mirror status` lists)."""
    from mirror import state

    return [record.key for record in state.load_all(cfg.state_root, "repos")]


def _filesystem(path: Path) -> dict[str, int] | None:
    """Size and free space of the file system holding data_dir (None before it exists)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return {"total_bytes": st.f_blocks * st.f_frsize, "free_bytes": st.f_bavail * st.f_frsize}


def disk_use(cfg: Config) -> dict[str, Any]:
    """The "disk_use" section of /api/status and `mirror status --json` (schema in
    mirror/web/status_schema.json)."""
    started = time.monotonic()
    repos = {key: tree_bytes(cfg.repos_root.joinpath(*key.split("/"))) for key in _repo_keys(cfg)}
    registry = None
    if cfg.registry.embedded:
        registry = tree_bytes(cfg.data_dir / "registry" / "storage")
    files = tree_bytes(cfg.data_dir / "files")
    charts = tree_bytes(cfg.data_dir / "charts")
    return {
        "repos": repos,
        "repos_bytes": sum(repos.values()),
        "registry_bytes": registry,
        "files_bytes": files,
        "charts_bytes": charts,
        "filesystem": _filesystem(cfg.data_dir),
        "measured_in_ms": round((time.monotonic() - started) * 1000),
    }


def disk_use_lines(use: dict[str, Any]) -> list[str]:
    """`mirror status` lines for the disk_use section."""
    lines = ["disk use:"]
    for key, size in use["repos"].items():
        lines.append(f"  repo {key:35} {human_bytes(size):>10}")
    registry = use["registry_bytes"]
    shown = "-" if registry is None else human_bytes(registry)
    lines.append(f"  {'registry storage':40} {shown:>10}")
    lines.append(f"  {'files':40} {human_bytes(use['files_bytes']):>10}")
    lines.append(f"  {'charts':40} {human_bytes(use['charts_bytes']):>10}")
    fs = use["filesystem"]
    if fs is not None:
        free, size = human_bytes(fs["free_bytes"]), human_bytes(fs["total_bytes"])
        lines.append(f"  {'free on data_dir file system':40} {free:>10} of {size}")
    return lines


def metric_families(cfg: Config) -> list[Any]:
    """/metrics: mirror_disk_use_bytes{area=repos|registry|files|charts},
    mirror_repo_disk_use_bytes{repo=KEY}, mirror_data_dir_free_bytes (for disk alerts)."""
    from prometheus_client.core import GaugeMetricFamily

    use = disk_use(cfg)
    areas = GaugeMetricFamily(
        "mirror_disk_use_bytes", "Bytes on disk of what the mirror holds", labels=["area"]
    )
    for area in ("repos", "registry", "files", "charts"):
        if use[f"{area}_bytes"] is not None:
            areas.add_metric([area], float(use[f"{area}_bytes"]))
    repos = GaugeMetricFamily(
        "mirror_repo_disk_use_bytes", "Bytes on disk of a published repo target", labels=["repo"]
    )
    for key, size in use["repos"].items():
        repos.add_metric([key], float(size))
    families: list[Any] = [areas, repos]
    if use["filesystem"] is not None:
        free = GaugeMetricFamily(
            "mirror_data_dir_free_bytes", "Free bytes on the file system holding data_dir"
        )
        free.add_metric([], float(use["filesystem"]["free_bytes"]))
        families.append(free)
    return families
