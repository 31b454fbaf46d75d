"""One chart repository synced: fetch index.yaml -> select -> download (verified) -> publish.

Publish order keeps every node safe (as the yum publish does):
1. new tarballs are moved into data_dir/charts/<repo-name>/ (nothing old disappears);
2. index.yaml is written last, atomically (mirror.fsutil): a node never reads an index naming
   a tarball that is not there;
3. only then are tarballs removed, and only those named by neither the new index nor the one
   it replaced: a `helm` that read the previous index a moment before the switch still finds
   its tarball, until the next publish. The previous generation is read from the live
   index.yaml itself, so a crash between publish and saving state loses nothing.
A repo that fails anywhere (fetch, parse, a digest mismatch) publishes nothing: its previous
index and tarballs keep serving.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirror import fsutil, state
from mirror.charts.errors import ChartSyncError
from mirror.charts.index import (
    MAX_INDEX,
    ChartVersion,
    parse_entries,
    published_files,
    render,
    select,
)
from mirror.charts.repos import ChartRepo
from mirror.config import Config
from mirror.content.kind import options_for
from mirror.http import DownloadJob, Expected, FetchError, RequestOptions, file_matches

if TYPE_CHECKING:
    from mirror.http import Fetcher

MAX_TARBALL = 256 * 1024 * 1024  # a chart is kilobytes to a few MiB; caps a hostile upstream
INDEX = "index.yaml"


@dataclass
class ChartRecord(state.Record):
    """State of one chart repository (key: <repo-name>)."""

    spec: str | None = None  # sha256 of what was wanted (entries + base_url) when published
    etag: str | None = None  # of the upstream index.yaml published from
    last_modified: str | None = None
    index_sha256: str | None = None  # of the upstream index.yaml bytes
    generated: str | None = None  # `generated` of our index.yaml (kept while entries are)
    charts: list[dict[str, Any]] = field(default_factory=list)  # name, version, file, ...
    bytes: int | None = None  # of the published tarballs


@dataclass(frozen=True)
class SyncResult:
    changed: bool
    versions: tuple[ChartVersion, ...] = ()
    downloaded: tuple[str, ...] = ()  # files fetched this run
    warnings: tuple[str, ...] = ()  # image references in new tarballs that do not parse


def charts_root(cfg: Config) -> Path:
    """Where published chart repositories live (served as /charts/)."""
    return cfg.data_dir / "charts"


def staging_dir(cfg: Config, repo: ChartRepo) -> Path:
    return cfg.data_dir / ".staging" / "charts" / repo.key


def _spec(cfg: Config, repo: ChartRepo) -> str:
    return hashlib.sha256(f"{repo.spec()}|{cfg.base_url}".encode()).hexdigest()


def _options(cfg: Config, repo: ChartRepo) -> RequestOptions:
    """A chart repository of an upstream mirror is fetched trusting upstream_mirror_ca."""
    return options_for(cfg, repo.upstream, "charts")


def sync_repo(
    cfg: Config,
    fetcher: Fetcher,
    repo: ChartRepo,
    record: ChartRecord,
    dry_run: bool,
    known_index_sha256: str | None = None,
) -> SyncResult:
    """`known_index_sha256`: the upstream index.yaml's sha256 when already known (a
    downstream mirror's fresh index); equal to what was published from, nothing is fetched."""
    target = charts_root(cfg) / repo.key
    spec = _spec(cfg, repo)
    # Trust "unchanged upstream" only while what the record says is published is there.
    live = (target / INDEX).is_file() and all(
        (target / str(chart.get("file"))).is_file() for chart in record.charts
    )
    same = live and record.spec == spec
    if same and known_index_sha256 is not None and known_index_sha256 == record.index_sha256:
        return SyncResult(changed=False)
    headers: dict[str, str] = {}
    if same and record.etag:
        headers["If-None-Match"] = record.etag
    if same and record.last_modified:
        headers["If-Modified-Since"] = record.last_modified
    try:
        reply = fetcher.request(
            "GET", repo.index_url, _options(cfg, repo), headers=headers, limit=MAX_INDEX
        )
    except FetchError as exc:
        raise ChartSyncError(repo.key, f"index.yaml: {exc}", exc.url) from None
    if reply.status == 304 and same:
        return SyncResult(changed=False)
    if reply.status != 200:
        raise ChartSyncError(repo.key, f"index.yaml: HTTP {reply.status}", repo.index_url)
    body_sha = hashlib.sha256(reply.body).hexdigest()
    if same and body_sha == record.index_sha256:
        _remember(record, reply.headers, body_sha)  # same bytes, new validators: use them
        return SyncResult(changed=False)
    versions = select(repo, parse_entries(reply.body, repo.key, repo.index_url))
    _refuse_symlinks(cfg, repo, [target, staging_dir(cfg, repo)])
    jobs = _jobs(cfg, repo, versions, target)
    if dry_run:
        return SyncResult(changed=bool(jobs) or not same, versions=tuple(versions))
    _download(fetcher, repo, jobs)
    changed = publish(cfg, repo, versions, jobs, record, target) or bool(jobs)
    record.spec = spec
    _remember(record, reply.headers, body_sha)
    fetched = {job.dest.name for job in jobs}
    warnings: list[str] = []
    record.charts = [_summary(v, target, warnings if v.file in fetched else None) for v in versions]
    record.bytes = sum(int(c["size"]) for c in record.charts)
    return SyncResult(changed, tuple(versions), tuple(sorted(fetched)), tuple(warnings))


def _remember(record: ChartRecord, headers: dict[str, str], body_sha: str) -> None:
    record.etag = headers.get("etag")
    record.last_modified = headers.get("last-modified")
    record.index_sha256 = body_sha


def _summary(version: ChartVersion, target: Path, warnings: list[str] | None) -> dict[str, Any]:
    """What the record (and /api/status) says about one published version. Its images are
    found once here; a new tarball's unparsable references are warned about once, too."""
    from mirror.charts.images import scan_chart

    scanned = scan_chart(target / version.file, version.label)
    if warnings is not None:
        warnings += [w.removeprefix("charts:") for w in scanned.warnings]
    return {
        "images": sorted(dict.fromkeys(str(ref) for ref, _source in scanned.found)),
        "name": version.name,
        "version": version.version,
        "app_version": version.entry.get("appVersion"),
        "file": version.file,
        "digest": version.digest,
        "size": (target / version.file).stat().st_size,
        "source": version.url,
    }


def _jobs(
    cfg: Config, repo: ChartRepo, versions: list[ChartVersion], target: Path
) -> list[DownloadJob]:
    """Downloads still needed: neither published nor left verified in staging by a run
    that failed later."""
    staging = staging_dir(cfg, repo)
    jobs = []
    for version in versions:
        expected = Expected("sha256", version.digest)
        if file_matches(target / version.file, expected):
            continue
        job = DownloadJob(
            version.url,
            staging / version.file,
            expected,
            _options(cfg, repo),
            version.label,
            MAX_TARBALL,
        )
        jobs.append(job)
    return jobs


def _download(fetcher: Fetcher, repo: ChartRepo, jobs: list[DownloadJob]) -> None:
    pending = [job for job in jobs if not file_matches(job.dest, job.expected)]
    if pending:
        fsutil.ensure_dir(pending[0].dest.parent)
    failed = fetcher.download_many(pending)
    if failed:
        job, error = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise ChartSyncError(repo.key, f"{job.label}: {error}{more}", error.url)


def publish(
    cfg: Config,
    repo: ChartRepo,
    versions: list[ChartVersion],
    downloaded: list[DownloadJob],
    record: ChartRecord,
    target: Path,
) -> bool:
    """Tarballs in, index.yaml last, then prune; True when the served index changed."""
    staging = staging_dir(cfg, repo)
    fsutil.ensure_dir(target)
    # Only what this run verified: a leftover in staging may be an older build of a name.
    fsutil.durable_move_all((job.dest, target / job.dest.name) for job in downloaded)
    index_path = target / INDEX
    try:
        before = index_path.read_bytes()
    except FileNotFoundError:
        before = b""
    # Unchanged entries keep their `generated`, so an unchanged selection rewrites nothing.
    now = state.now_iso()
    body = render(repo, versions, cfg.base_url, record.generated or now)
    changed = body != before
    if changed:
        body = render(repo, versions, cfg.base_url, now)
        fsutil.atomic_write(index_path, body)
        record.generated = now
        _prune(target, {v.file for v in versions}, published_files(before))
    shutil.rmtree(staging, ignore_errors=True)
    return changed


def _prune(target: Path, new: set[str], previous: set[str]) -> None:
    """Remove tarballs neither generation names. A publish repeating the live set (e.g.
    after a crash past the switch) would lose the generation before it: skip that round."""
    if new == previous:
        return
    keep = new | previous
    removed = False
    for entry in target.iterdir():
        if entry.name.endswith(".tgz") and entry.name not in keep and not entry.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed = True
    if removed:
        fsutil.fsync_dir(target)


def _refuse_symlinks(cfg: Config, repo: ChartRepo, roots: list[Path]) -> None:
    """Nothing on or below the paths publish writes or prunes may be a symlink: moves and
    deletes through one would leave data_dir."""
    link = fsutil.first_symlink(cfg.data_dir, roots)
    if link is not None:
        raise ChartSyncError(repo.key, fsutil.symlink_refusal(link))
