"""The upstream mirror's index as a kind of content (mirror.content), synced first: one item,
the index of `upstream_mirror`, fetched with If-None-Match. The kinds after it plan from
what it stored (mirror.downstream.client)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mirror import state
from mirror.config import Config
from mirror.content.kind import Outcome, SyncRequest, configured_fetcher, outcome_fields
from mirror.downstream import client, document


@dataclass
class UpstreamMirrorRecord(state.Record):
    etag: str | None = None  # of the index kept in data_dir/state/downstream/
    repos: int | None = None
    images: int | None = None
    files: int | None = None


@dataclass(frozen=True)
class IndexItem:
    key: str  # the upstream mirror's base_url
    upstream: str  # its index URL


@dataclass(frozen=True)
class _Session:
    cfg: Config
    fetcher: Any


class UpstreamMirrorKind:
    name = client.KIND_NAME
    label = "upstream_mirror"
    record_type = UpstreamMirrorRecord
    gauges = {"repos": "Repos the upstream mirror lists", "images": "Images it lists"}

    def plan(self, cfg: Config, request: SyncRequest) -> Sequence[Any]:
        if cfg.upstream_mirror is None or request.repo_ids:
            return []
        return [IndexItem(cfg.upstream_mirror, client.index_url(cfg))]

    def workers(self, cfg: Config, items: Sequence[Any]) -> int:
        return 1

    @contextmanager
    def session(self, cfg: Config, dry_run: bool) -> Iterator[Any]:
        with configured_fetcher(cfg, parallel=1) as fetcher:
            yield _Session(cfg, fetcher)

    def sync_one(self, session: Any, item: Any, record: Any, request: SyncRequest) -> Outcome:
        cfg = session.cfg
        stored = client.load_stored(cfg)
        # Without a usable stored copy the ETag is worthless: ask for the whole document.
        body, etag = client.fetch(cfg, session.fetcher, record.etag if stored else None)
        if body is None:
            return Outcome(changed=False)
        if request.dry_run:
            document.parse(body)
            return Outcome(changed=True)
        index = client.store(cfg, body)
        record.etag = etag
        record.repos, record.images, record.files = (
            len(index.repos),
            len(index.images),
            len(index.files),
        )
        return Outcome(changed=True)

    def cleanup_failed(self, cfg: Config, item: Any, error: Exception) -> None:
        pass  # the stored index stays what the later kinds plan from

    def describe(self, cfg: Config, record: Any) -> dict[str, Any]:
        return {
            "key": record.key,
            "upstream": record.upstream,
            "repos": record.repos,
            "images": record.images,
            "files": record.files,
            **outcome_fields(record),
        }

    def gauge_values(self, record: Any) -> dict[str, float | None]:
        return {"repos": record.repos, "images": record.images}

    def status_line(self, record: Any) -> str:
        flag = "ok" if record.ok else "FAILED"
        line = (
            f"{record.key:40} {flag:6} repos={record.repos} images={record.images} "
            f"files={record.files} last_success={record.last_success or 'never'}"
        )
        if record.last_error:
            line += f"\n{'':40} last error: {record.last_error}"
        return line


KIND = UpstreamMirrorKind()
