"""The one runner: every kind's items synced, recorded, reported the same way.

For each kind (in mirror.content.KINDS order) and each of its planned items: load the item's
record, call `kind.sync_one`, record success or the error (one line starting with the kind's
label and the item's key), save the record, log a summary per kind. A failing item does not
stop the others. A local disk error (disk full, read-only, ...) does: every later item shares
data_dir, so each is reported "not attempted" instead of failing the same way.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from mirror import state
from mirror.config import Config
from mirror.content.kind import Kind, PlanProblem, SyncRequest
from mirror.errors import EXIT_SYNC_FAILED, LocalDiskError, LockedError, MirrorError
from mirror.progress import progress_for
from mirror.retry import local_reason

log = logging.getLogger("mirror")


@dataclass(frozen=True)
class ItemResult:
    kind: str
    key: str
    changed: bool = False
    error: str | None = None  # one line, "<label> <key>: <reason>"
    exit_code: int = 0
    detail: Any = None  # Outcome.detail


@contextmanager
def sync_lock(cfg: Config) -> Iterator[None]:
    """One sync at a time per data directory; a second one fails at once, touching nothing."""
    lock = FileLock(str(cfg.data_dir / ".sync.lock"))
    try:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:  # a filelock Timeout is an OSError too: it must come first
        raise LockedError(
            f"another mirror sync is running (lock held on {cfg.data_dir / '.sync.lock'}); "
            "try again later"
        ) from None
    except OSError as exc:  # a full or read-only data_dir is a sync failure (exit 1)
        reason = local_reason(exc)
        if reason is None:
            raise
        where = exc.filename or cfg.data_dir
        raise MirrorError(f"{reason} under data_dir ({where}); nothing was synced") from None
    try:
        yield
    finally:
        lock.release()


def as_error(cfg: Config, kind: Kind, key: str, exc: BaseException) -> MirrorError:
    """Any failure of one item as a MirrorError whose text starts "<label> <key>: "."""
    from mirror.http import LocalWriteError

    prefix = f"{kind.label} {key}: "
    if isinstance(exc, MirrorError):
        if str(exc).startswith(prefix):
            return exc
        wrapped = MirrorError(prefix + str(exc))
        wrapped.exit_code = exc.exit_code
        return wrapped
    error, where = (exc.error, exc.path) if isinstance(exc, LocalWriteError) else (exc, None)
    if isinstance(error, OSError):
        reason = local_reason(error)
        if reason is not None and _under_data_dir(cfg, error, where):
            return LocalDiskError(kind.label, key, reason, str(where or error.filename or ""))
        shown = where or error.filename or "?"
        return MirrorError(f"{prefix}{error.strerror or error} ({shown})")
    return MirrorError(f"{prefix}{exc}")


# Errors that, without a file name, can only be about where we write (data_dir); a "permission
# denied" without one is more likely a program we could not run.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


def _under_data_dir(cfg: Config, error: OSError, where: Path | None) -> bool:
    """A local disk error stops every later item only when it is about data_dir: ENOSPC in
    /tmp (gpg, rpmkeys scratch) or EACCES on /usr/bin/skopeo are that item's problem."""
    path = where or (Path(error.filename) if error.filename else None)
    if path is None:
        return error.errno in _WRITE_ERRNOS
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(cfg.data_dir))


class _Run:
    """One `mirror sync`: state shared by the items of every kind."""

    def __init__(self, cfg: Config, request: SyncRequest) -> None:
        self.cfg = cfg
        self.request = request
        self.disk_error: LocalDiskError | None = None

    def item(self, kind: Kind, session: Any, item: Any) -> ItemResult:
        if self.disk_error is not None:
            message = (
                f"{kind.label} {item.key}: not attempted: {self.disk_error.reason} under data_dir"
            )
            log.error("%s", message)
            return ItemResult(kind.name, item.key, error=message, exit_code=EXIT_SYNC_FAILED)
        if isinstance(item, PlanProblem):
            log.error("%s", item.message)
            return ItemResult(kind.name, item.key, error=item.message, exit_code=EXIT_SYNC_FAILED)
        cfg, started = self.cfg, time.monotonic()
        record = state.load(cfg.state_root, kind.name, item.key)
        record.upstream = item.upstream
        record.last_attempt = state.now_iso()
        try:
            outcome = kind.sync_one(session, item, record, self.request)
        except Exception as exc:  # every failure of one item is that item's, named
            error = as_error(cfg, kind, item.key, exc)
            log.error("%s", error)
            record.last_error = str(error)
            result = ItemResult(kind.name, item.key, error=str(error), exit_code=error.exit_code)
            kind.cleanup_failed(cfg, item, error)
            if isinstance(error, LocalDiskError):
                self.disk_error = error
        else:
            for warning in outcome.warnings:
                log.warning("%s %s: %s", kind.label, item.key, warning)
            record.last_success = state.now_iso()
            record.last_error = None
            result = ItemResult(kind.name, item.key, outcome.changed, detail=outcome.detail)
        record.duration_s = round(time.monotonic() - started, 3)
        if not self.request.dry_run:
            self._save(kind, record)
        return result

    def _save(self, kind: Kind, record: state.Record) -> None:
        try:
            state.save(self.cfg.state_root, kind.name, record)
        except OSError as exc:  # the previous state file stays intact (atomic write)
            log.error("%s %s: state not saved: %s", kind.label, record.key, exc.strerror or exc)

    def kind(self, kind: Kind, items: Sequence[Any]) -> list[ItemResult]:
        try:
            with kind.session(self.cfg, self.request.dry_run) as session:
                return self._items(kind, session, items)
        except MirrorError as exc:  # e.g. no skopeo, registry down: every item alike
            log.error("%s: %s", kind.name, exc)
            return [ItemResult(kind.name, "", error=f"{kind.name}: {exc}", exit_code=exc.exit_code)]

    def _items(self, kind: Kind, session: Any, items: Sequence[Any]) -> list[ItemResult]:
        workers = kind.workers(self.cfg, items)
        if workers <= 1:
            return [self.item(kind, session, item) for item in items]
        progress = progress_for(kind.name, len(items), 0)
        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=kind.name) as pool:
                futures = [pool.submit(self.item, kind, session, item) for item in items]
                results = []
                for item, future in zip(items, futures, strict=True):
                    results.append(future.result())
                    progress.item_done(item.key)
                return results
        finally:
            progress.close()


def run_items(
    cfg: Config, kind: Kind, session: Any, items: Sequence[Any], request: SyncRequest
) -> list[ItemResult]:
    """Items of one kind with a session the caller opened (and the lock the caller holds)."""
    return _Run(cfg, request)._items(kind, session, items)


def run(
    cfg: Config, planned: Sequence[tuple[Kind, Sequence[Any]]], request: SyncRequest
) -> list[ItemResult]:
    """Sync every planned item of every kind, results in order. The caller holds sync_lock."""
    results: list[ItemResult] = []
    runner = _Run(cfg, request)
    for kind, items in planned:
        if getattr(kind, "plan_after_earlier_kinds", False) and not request.dry_run:
            # Planned again now that the kinds before it synced: images found in files and
            # charts mirrored by this very run belong to this run (the first plan validated).
            try:
                items = kind.plan(cfg, replace(request, under_lock=True))
            except MirrorError as exc:
                log.error("%s: %s", kind.name, exc)
                error = f"{kind.name}: {exc}"
                results.append(ItemResult(kind.name, "", error=error, exit_code=exc.exit_code))
                continue
        if items:
            kind_results = runner.kind(kind, items)
            log_summary(kind.name, kind_results)
            results += kind_results
    return results


def log_summary(kind: str, results: Sequence[ItemResult]) -> None:
    ok = [r for r in results if not r.error]
    changed = sum(1 for r in ok if r.changed)
    log.info(
        "%s: %d ok (%d changed, %d unchanged), %d failed",
        kind,
        len(ok),
        changed,
        len(ok) - changed,
        len(results) - len(ok),
    )
