"""The protocol every kind of content implements; the runner does everything else."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from mirror.config import Config
from mirror.state import Record, now_iso

if TYPE_CHECKING:
    from mirror.http import Fetcher, RequestOptions


@dataclass(frozen=True)
class SyncRequest:
    """What the command line asked for."""

    dry_run: bool = False
    repo_ids: tuple[str, ...] = ()  # `--repo ID`: only these repos (and no other kind)
    # True for the plan made under the sync lock after the earlier kinds synced; the first
    # plan (validation, before the lock) must not run or cache anything (e.g. kubeadm).
    under_lock: bool = False
    # When the run began: a downstream mirror trusts only an index fetched since then
    # (mirror.downstream.client.fresh_index).
    started: str = field(default_factory=now_iso)


@dataclass(frozen=True)
class Outcome:
    """What sync_one did: `changed` when something was (or, in a dry run, would be) copied."""

    changed: bool
    warnings: tuple[str, ...] = field(default_factory=tuple)
    detail: Any = None  # the kind's own result, for its programmatic callers


@dataclass(frozen=True)
class PlanProblem:
    """Something wanted that cannot even be planned (e.g. a Kubernetes version neither the
    image table nor a mirrored kubeadm knows). A kind's plan returns it among its items; the
    runner fails the sync with `message` (one line) and writes no state for it."""

    key: str
    message: str

    @property
    def upstream(self) -> str:
        return ""


class Item(Protocol):
    @property
    def key(self) -> str: ...  # the state file's key, unique within the kind

    @property
    def upstream(self) -> str: ...  # where it comes from, for status and messages


class Kind(Protocol):
    @property
    def name(self) -> str: ...  # "repos": `--only repos`, state/repos/, /api/status "repos"

    @property
    def label(self) -> str: ...  # "repo": first word of every error ("repo kubernetes: ...")

    @property
    def record_type(self) -> type[Record]: ...

    @property
    def gauges(self) -> dict[str, str]: ...  # extra /metrics: "packages" -> mirror_repo_packages

    def plan(self, cfg: Config, request: SyncRequest) -> Sequence[Any]:
        """Everything wanted, validated (ConfigError on bad input, before the lock)."""
        ...

    def workers(self, cfg: Config, items: Sequence[Any]) -> int:
        """How many items sync at once (1: in order)."""
        ...

    def session(self, cfg: Config, dry_run: bool) -> AbstractContextManager[Any]:
        """Shared resources for one run (HTTP client, registry); MirrorError fails the kind."""
        ...

    def sync_one(self, session: Any, item: Any, record: Any, request: SyncRequest) -> Outcome:
        """Sync one item; set the kind's own fields of `record`; raise on failure."""
        ...

    def cleanup_failed(self, cfg: Config, item: Any, error: Exception) -> None:
        """After a failure: drop what a rerun cannot reuse (e.g. fetched metadata); on a
        local disk error (mirror.errors.LocalDiskError) also what only keeps the disk full."""
        ...

    def describe(self, cfg: Config, record: Any) -> dict[str, Any]:
        """One record for /api/status (its schema) and the status page."""
        ...

    def gauge_values(self, record: Any) -> dict[str, float | None]:
        """Values of `gauges` for one record (None: not known, left out)."""
        ...

    def status_line(self, record: Any) -> str:
        """One line of `mirror status`."""
        ...


def outcome_fields(record: Record) -> dict[str, Any]:
    """What every kind's `describe` row ends with: the sync outcome of the item."""
    return {
        "last_attempt": record.last_attempt,
        "last_success": record.last_success,
        "last_error": record.last_error,
        "duration_s": record.duration_s,
        "ok": record.ok,
    }


def configured_fetcher(cfg: Config, parallel: int | None = None) -> Fetcher:
    """The HTTP client a kind's session uses, tuned by the config (download_workers,
    http_timeout, http_retries)."""
    from mirror.http import Fetcher

    return Fetcher(
        parallel=parallel or cfg.download_workers,
        timeout=cfg.http_timeout,
        retries=cfg.http_retries,
    )


def options_for(cfg: Config, url: str, section: str) -> RequestOptions:
    """Request options for a URL of content: one under the upstream mirror's /<section>/
    (a downstream node's files and charts) is verified with upstream_mirror_ca."""
    from mirror.http import RequestOptions

    if cfg.upstream_mirror and url.startswith(f"{cfg.upstream_mirror}/{section}/"):
        return RequestOptions(ca_file=cfg.upstream_mirror_ca)
    return RequestOptions()
