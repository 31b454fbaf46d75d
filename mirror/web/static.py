"""Render every request-independent document into `<data_dir>/www/`, for nginx to serve.

`render_static(cfg)` runs at the end of `mirror sync` and when `mirror serve` starts. The tree
mirrors the URL space: `/repofiles/mirror.repo` is `<data_dir>/www/repofiles/mirror.repo`.
Each file is written with `mirror.fsutil.atomic_write` (a reader sees the old or the new file,
never a mix) and only when its content changed, so its mtime, and with it nginx's ETag and
Last-Modified, stay put while nothing changes. Files no longer rendered (a repo or registry
host dropped from the config) are removed. Requests with a query string, and any rendered
path missing here, are answered by the Flask app, which renders with the same code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from mirror.config import Config
from mirror.errors import ConfigError
from mirror.fsutil import atomic_write, is_stale_temp, is_temp_name
from mirror.repofile import RepoDefinition, load_definitions

log = logging.getLogger(__name__)
WWW_DIR = "www"


def static_root(cfg: Config) -> Path:
    return cfg.data_dir / WWW_DIR


def render_static(cfg: Config, definitions: list[RepoDefinition] | None = None) -> None:
    """(Re)write `<data_dir>/www/` from the config, the .repo definitions and sync state.

    A config problem in one document (e.g. a bad images.txt) skips the documents that need
    it, with a warning; the app then answers those paths with its error. Disk errors
    (ENOSPC, EROFS, ...) propagate: the caller decides whether they are fatal.
    """
    from mirror.web.documents import static_documents

    defs = load_definitions(cfg) if definitions is None else definitions
    root = static_root(cfg)
    try:
        docs = static_documents(cfg, defs)
    except ConfigError as exc:
        log.warning("node files not rendered: %s", exc)
        docs = {}
    wanted: set[Path] = set()
    for url_path, render in docs.items():
        body = _render_one(url_path, render)
        if body is None:
            continue
        target = root / url_path.lstrip("/")
        wanted.add(target)
        _write_if_changed(target, body.encode("utf-8"))
    _remove_stale(root, wanted)


def _render_one(url_path: str, render: Callable[[], str]) -> str | None:
    try:
        return render()
    except (ConfigError, ValueError) as exc:
        log.warning("%s not rendered: %s", url_path, exc)
        return None


def _write_if_changed(target: Path, data: bytes) -> None:
    try:
        old: os.stat_result | None = target.stat()
        if target.read_bytes() == data:
            return
    except OSError:
        old = None  # missing (or unreadable): write it
    atomic_write(target, data, 0o644)
    if old is not None:
        _new_validator(target, old)


def _new_validator(target: Path, old: os.stat_result) -> None:
    """nginx's ETag and Last-Modified are mtime in whole seconds plus size: a same-size change
    within the same second would look unchanged to a revalidating client (a 304 for stale
    content, e.g. images.txt whose digests changed). Move the mtime on by a second then."""
    new = target.stat()
    if new.st_size == old.st_size and int(new.st_mtime) <= int(old.st_mtime):
        os.utime(target, (new.st_atime, int(old.st_mtime) + 1))


def _remove_stale(root: Path, wanted: set[Path]) -> None:
    """Delete files under root that are not rendered any more (temp files of a crashed
    render included), then the directories that became empty."""
    if not root.is_dir():
        return
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        here = Path(dirpath)
        for name in filenames:
            path = here / name
            # A temp file of a live writer is another render in flight (sync ending while
            # serve starts): leave it to that writer's rename.
            if path not in wanted and (not is_temp_name(name) or is_stale_temp(path)):
                path.unlink(missing_ok=True)
        if here != root and not any(here.iterdir()):
            here.rmdir()
