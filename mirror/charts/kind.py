"""Helm chart repositories as a kind of content (mirror.content): one item per chart
repository (`<repo-name>`, all its wanted charts), synced by mirror.charts.sync."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mirror.charts.sync import ChartRecord
from mirror.config import Config
from mirror.content.kind import Outcome, SyncRequest, configured_fetcher, outcome_fields
from mirror.errors import LocalDiskError
from mirror.progress import human_bytes

if TYPE_CHECKING:
    from mirror.http import Fetcher


@dataclass(frozen=True)
class ChartSession:
    cfg: Config
    fetcher: Fetcher


# One published chart version in /api/status ("charts"[].charts[]).
_CHART_FIELDS = ("name", "version", "app_version", "file", "digest", "size", "source", "images")


class ChartKind:
    name = "charts"
    label = "chart"
    record_type = ChartRecord
    gauges = {
        "versions": "Chart versions published",
        "bytes": "Bytes of chart tarballs published",
    }
    # Planned again under the lock: an upstream mirror's index fetched by this run may
    # bring chart repositories (mirror.downstream).
    plan_after_earlier_kinds = True

    def discovered_images(self, cfg: Config) -> list[tuple[Any, str]]:
        """(ImageRef, source) of every image referenced by what this kind mirrored: the
        images kind mirrors them too (mirror.images.sources)."""
        from mirror.charts.images import discovered_images

        return discovered_images(cfg)

    def plan(self, cfg: Config, request: SyncRequest) -> Sequence[Any]:
        if request.repo_ids:  # `--repo ID` narrows the sync to those yum repos
            return []
        from mirror.charts.repos import chart_repos

        if cfg.upstream_mirror is not None:  # and the upstream mirror's chart repositories
            from mirror.downstream.client import with_upstream_charts

            return chart_repos(with_upstream_charts(cfg))
        return chart_repos(cfg)

    def workers(self, cfg: Config, items: Sequence[Any]) -> int:
        return 1  # in order; each repo downloads cfg.download_workers tarballs at once

    @contextmanager
    def session(self, cfg: Config, dry_run: bool) -> Iterator[Any]:
        with configured_fetcher(cfg) as fetcher:
            yield ChartSession(cfg, fetcher)

    def sync_one(self, session: Any, item: Any, record: Any, request: SyncRequest) -> Outcome:
        from mirror.charts.sync import sync_repo
        from mirror.downstream.client import chart_index_sha256

        known = chart_index_sha256(session.cfg, item.key, item.upstream, request)
        result = sync_repo(
            session.cfg, session.fetcher, item, record, request.dry_run, known_index_sha256=known
        )
        if not request.dry_run:
            record.fingerprint = record.index_sha256
        return Outcome(changed=result.changed, warnings=result.warnings, detail=result)

    def cleanup_failed(self, cfg: Config, item: Any, error: Exception) -> None:
        from mirror.charts.sync import staging_dir

        # Verified tarballs stay in staging for the next run; on a full disk they are what
        # keeps it full.
        if isinstance(error, LocalDiskError):
            shutil.rmtree(staging_dir(cfg, item), ignore_errors=True)

    def describe(self, cfg: Config, record: Any) -> dict[str, Any]:
        return {
            "key": record.key,
            "repo_name": record.key,
            "upstream": record.upstream,
            "index_url": f"{cfg.base_url}/charts/{record.key}/index.yaml",
            "charts": [{k: chart.get(k) for k in _CHART_FIELDS} for chart in record.charts],
            "versions": len(record.charts),
            "bytes": record.bytes,
            **outcome_fields(record),
        }

    def gauge_values(self, record: Any) -> dict[str, float | None]:
        return {"versions": float(len(record.charts)), "bytes": record.bytes}

    def status_line(self, record: Any) -> str:
        flag = "ok" if record.ok else "FAILED"
        size = human_bytes(record.bytes) if record.bytes is not None else "-"
        names = ", ".join(f"{c.get('name')}-{c.get('version')}" for c in record.charts) or "-"
        line = (
            f"chart repo {record.key:29} {flag:6} versions={len(record.charts):<4} "
            f"size={size:>10} last_success={record.last_success or 'never'}  {names}"
        )
        if record.last_error:
            line += f"\n{'':40} last error: {record.last_error}"
        return line


KIND = ChartKind()
