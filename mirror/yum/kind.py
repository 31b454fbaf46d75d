"""Yum repositories as a kind of content (mirror.content): one item per repo target (a repo
id with its $releasever/$basearch values), synced by mirror.yum.sync."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mirror import state
from mirror.config import Config
from mirror.content.kind import Outcome, SyncRequest, configured_fetcher, outcome_fields
from mirror.errors import LocalDiskError
from mirror.progress import human_bytes

if TYPE_CHECKING:
    from mirror.http import Fetcher


@dataclass(frozen=True)
class RepoSession:
    cfg: Config
    fetcher: Fetcher


class RepoKind:
    name = "repos"
    label = "repo"
    record_type = state.RepoRecord
    gauges = {"packages": "Packages published", "bytes": "Bytes of packages published"}
    # Planned again under the lock: an upstream mirror's index fetched by this run may
    # bring repos (mirror.downstream).
    plan_after_earlier_kinds = True

    def plan(self, cfg: Config, request: SyncRequest) -> Sequence[Any]:
        from mirror.repofile import expand_targets, load_definitions, select_targets

        return select_targets(expand_targets(load_definitions(cfg), cfg), request.repo_ids)

    def workers(self, cfg: Config, items: Sequence[Any]) -> int:
        return 1  # in order; each repo downloads cfg.download_workers files at once

    @contextmanager
    def session(self, cfg: Config, dry_run: bool) -> Iterator[Any]:
        with configured_fetcher(cfg) as fetcher:
            yield RepoSession(cfg, fetcher)

    def sync_one(self, session: Any, item: Any, record: Any, request: SyncRequest) -> Outcome:
        from mirror.downstream.client import repo_unchanged
        from mirror.yum.sync import sync_target

        if repo_unchanged(session.cfg, item, record, request):
            return Outcome(changed=False)  # the upstream mirror's fresh index says so
        result = sync_target(session.cfg, item, session.fetcher, request.dry_run, record)
        if not request.dry_run:
            record.fingerprint = result.fingerprint
            record.packages = result.packages
            record.bytes = result.total_bytes
        return Outcome(changed=result.changed, detail=result)

    def cleanup_failed(self, cfg: Config, item: Any, error: Exception) -> None:
        from mirror.yum.sync import staging_dir

        # Metadata in staging is fetched anew by every run; packages stay for a resume...
        for leftover in ("meta", "generated"):
            shutil.rmtree(staging_dir(cfg, item) / leftover, ignore_errors=True)
        if isinstance(error, LocalDiskError):
            # ... except on a full disk, where staging is what keeps the disk full.
            shutil.rmtree(cfg.data_dir / ".staging", ignore_errors=True)

    def describe(self, cfg: Config, record: Any) -> dict[str, Any]:
        return {
            "key": record.key,
            "repo_id": record.key.split("/")[0],
            "upstream": record.upstream,
            "packages": record.packages,
            "bytes": record.bytes,
            **outcome_fields(record),
        }

    def gauge_values(self, record: Any) -> dict[str, float | None]:
        return {"packages": record.packages, "bytes": record.bytes}

    def status_line(self, record: Any) -> str:
        size = human_bytes(record.bytes) if record.bytes is not None else "-"
        flag = "ok" if record.ok else "FAILED"
        packages = record.packages if record.packages is not None else "-"
        line = (
            f"{record.key:40} {flag:6} packages={packages:<6} "
            f"size={size:>10} last_success={record.last_success or 'never'}"
        )
        if record.last_error:
            line += f"\n{'':40} last error: {record.last_error}"
        return line


KIND = RepoKind()
