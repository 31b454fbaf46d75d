"""Sync one `files:` entry: ask upstream whether it changed, download, verify, publish.

- **One request when nothing changed.** A conditional HEAD with the validators recorded last
  time (If-None-Match / If-Modified-Since) answers 304; the published copy stays as it is.
  HEAD, not GET: a 200 to a conditional GET would bring the whole body into memory, while
  the download proper streams to disk (mirror.http.Fetcher.download_many).
- **Verified while streaming** against `sha256`, or the digest read from `sha256_url` (fetched
  only when the file is downloaded). Without either, the digest seen first is recorded and a
  later different one is reported as "changed upstream" (an Outcome warning and the record).
- **Published atomically.** The body goes to a hidden `.<name>.download.part` next to the
  final name (never served: hidden and .part files 404 in nginx and the app), is renamed to
  `.<name>.download` when it verifies, and then made live with fsutil.durable_replace. A
  failure anywhere leaves the previous copy served, untouched.
- **Bounded.** A body past the entry's `max_size` (2 GiB by default) is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from mirror import discover, fsutil, state
from mirror.config import Config
from mirror.content.kind import options_for
from mirror.errors import MirrorError
from mirror.files.config import FileEntry
from mirror.files.record import FileRecord, files_root
from mirror.http import DownloadJob, Expected, Fetcher, FetchError, RequestOptions

log = logging.getLogger("mirror")

CHECKSUM_FILE_LIMIT = 1 << 20  # a sha256sum file for a release lists a few dozen lines
_HASH_CHUNK = 1 << 20
_SUM_LINE = re.compile(r"^([0-9a-fA-F]{64})(?:\s+\*?(.+))?$")
_BSD_LINE = re.compile(r"^SHA256 \((.+)\) = ([0-9a-fA-F]{64})$")
FIRST_DIGEST = "first digest"


class FileSyncError(MirrorError):
    """One file could not be mirrored; its previously published copy is still served."""

    def __init__(self, path: str, message: str, url: str | None = None) -> None:
        where = f" ({url})" if url else ""
        super().__init__(f"file {path}: {message}{where}")
        self.path = path
        self.url = url


@dataclass(frozen=True)
class FileSession:
    cfg: Config
    fetcher: Fetcher


@dataclass(frozen=True)
class FileResult:
    changed: bool
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Upstream:
    """What the HEAD said: changed (or unknown) and the validators for next time."""

    unchanged: bool
    etag: str | None = None
    last_modified: str | None = None


def fingerprint(entry: FileEntry) -> str:
    """What the recorded validators and digest belong to: a different URL or checksum source
    must not be answered by a 304 for the old one."""
    return json.dumps([entry.url, entry.sha256, entry.sha256_url])


def published_path(cfg: Config, entry: FileEntry) -> Path:
    return files_root(cfg) / entry.path


def refuse_symlinks(cfg: Config, entry: FileEntry) -> None:
    """Nothing between data_dir and the published file may be a symlink: a planted link
    (`data/files/calico -> /etc`) would make the rename write outside data_dir."""
    link = fsutil.first_symlink(cfg.data_dir, [published_path(cfg, entry)])
    if link is not None:
        raise FileSyncError(entry.path, fsutil.symlink_refusal(link))


def sync_file(
    session: FileSession,
    entry: FileEntry,
    record: FileRecord,
    dry_run: bool,
    known_unchanged: bool = False,
) -> FileResult:
    """`known_unchanged`: upstream is known to hold what was published (a downstream
    mirror's fresh index says so); then upstream is not asked while the copy is intact."""
    cfg, fetcher = session.cfg, session.fetcher
    refuse_symlinks(cfg, entry)
    dest = published_path(cfg, entry)
    if known_unchanged and _published_matches(entry, record, dest):
        upstream = _Upstream(True, record.etag, record.last_modified)
    else:
        upstream = _ask_upstream(fetcher, entry, record, dest, _options(cfg, entry))
    if upstream.unchanged:
        return FileResult(False, tuple(_rescan(entry, record, dest)))
    if dry_run:
        return FileResult(True)
    checksum = entry.sha256 or (_checksum_from(fetcher, entry) if entry.sha256_url else None)
    staged = _download(fetcher, entry, dest, checksum, _options(cfg, entry))
    try:
        digest = checksum or sha256_of(staged)
        size = staged.stat().st_size
        warnings = _note_digest(entry, record, digest)
        # Same bytes as published (the record's digest, the live file's size): nothing to do.
        changed = digest != record.sha256 or _size_of(dest) != size
        if changed:
            fsutil.durable_replace(staged, dest)
        # else the live file keeps its mtime, and with it nginx's ETag and Last-Modified.
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
    record.fingerprint = fingerprint(entry)
    record.size, record.sha256 = size, digest
    record.etag, record.last_modified = upstream.etag, upstream.last_modified
    warnings += _rescan(entry, record, dest)
    return FileResult(changed, tuple(warnings))


def _options(cfg: Config, entry: FileEntry) -> RequestOptions:
    """A file of an upstream mirror is fetched trusting upstream_mirror_ca (if set)."""
    return options_for(cfg, entry.url, "files")


def _ask_upstream(
    fetcher: Fetcher,
    entry: FileEntry,
    record: FileRecord,
    dest: Path,
    opts: RequestOptions | None = None,
) -> _Upstream:
    """HEAD the URL, conditionally when the published copy is what the record describes."""
    headers: dict[str, str] = {}
    if _published_matches(entry, record, dest):
        if record.etag:
            headers["If-None-Match"] = record.etag
        if record.last_modified:
            headers["If-Modified-Since"] = record.last_modified
    try:
        reply = fetcher.request("HEAD", entry.url, opts or RequestOptions(), headers=headers)
    except FetchError as exc:
        raise FileSyncError(entry.path, str(exc), entry.url) from None
    if reply.status == 304 and headers:
        return _Upstream(True, record.etag, record.last_modified)
    if reply.status in (404, 410):
        raise FileSyncError(entry.path, f"HTTP {reply.status}", entry.url)
    if reply.status != 200:
        # Some servers refuse HEAD (405, or 403 on URLs signed for GET only): download
        # anyway, without validators, so every sync fetches the file again.
        log.debug(
            "file %s: HEAD answered %s; downloading without validators", entry.path, reply.status
        )
        return _Upstream(False)
    return _Upstream(False, reply.headers.get("etag"), reply.headers.get("last-modified"))


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() and not path.is_symlink() else None
    except OSError:
        return None


def _published_matches(entry: FileEntry, record: FileRecord, dest: Path) -> bool:
    if record.fingerprint != fingerprint(entry) or record.sha256 is None:
        return False
    return record.size is not None and _size_of(dest) == record.size


def parse_sha256sum(text: str, name: str) -> str | None:
    """The digest for `name` in a sha256sum (`HEX  name`, `HEX *name`) or BSD
    (`SHA256 (name) = HEX`) listing; a lone digest counts for any name."""
    entries: list[tuple[str, str | None]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := _SUM_LINE.match(line):
            listed = match[2].strip() if match[2] else None
            entries.append((match[1].lower(), listed))
        elif match := _BSD_LINE.match(line):
            entries.append((match[2].lower(), match[1]))
    if len(entries) == 1 and entries[0][1] is None:
        return entries[0][0]
    for digest, listed in entries:
        if listed is not None and PurePosixPath(listed).name == name:
            return digest
    return None


def _checksum_from(fetcher: Fetcher, entry: FileEntry) -> str:
    assert entry.sha256_url is not None
    try:
        body = fetcher.get_bytes(entry.sha256_url, RequestOptions(), limit=CHECKSUM_FILE_LIMIT)
    except FetchError as exc:
        raise FileSyncError(entry.path, f"sha256_url: {exc}", entry.sha256_url) from None
    name = PurePosixPath(unquote(urlsplit(entry.url).path)).name
    digest = parse_sha256sum(body.decode("utf-8", "replace"), name)
    if digest is None:
        raise FileSyncError(
            entry.path, f"sha256_url: no sha256 for {name!r} in it", entry.sha256_url
        )
    return digest


def staging_path(dest: Path) -> Path:
    """Hidden, next to the final name (same file system, so the rename is atomic)."""
    return dest.with_name(f".{dest.name}.download")


def _download(
    fetcher: Fetcher,
    entry: FileEntry,
    dest: Path,
    checksum: str | None,
    opts: RequestOptions | None = None,
) -> Path:
    staged = staging_path(dest)
    if checksum is None:
        # A .part left by an earlier run may hold bytes of an older upstream file; without a
        # checksum to catch the mix, never resume across runs.
        with contextlib.suppress(FileNotFoundError):
            staged.with_name(staged.name + ".part").unlink()
    fsutil.ensure_dir(dest.parent)
    expected = Expected("sha256" if checksum else None, checksum)
    opts = opts or RequestOptions()
    job = DownloadJob(entry.url, staged, expected, opts, entry.path, entry.max_size)
    failed = fetcher.download_many([job])
    if failed:
        raise FileSyncError(entry.path, str(failed[0][1]), entry.url)
    return staged


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _note_digest(entry: FileEntry, record: FileRecord, digest: str) -> list[str]:
    """Record how the copy was verified; an unpinned entry whose digest moved away from the
    first one seen is "changed upstream" (reported, still mirrored: upstream's file it is)."""
    if entry.sha256 or entry.sha256_url:
        record.verified_by = "sha256" if entry.sha256 else "sha256_url"
        record.first_sha256 = record.changed_upstream = None  # pinned: nothing to compare
        return []
    record.verified_by = FIRST_DIGEST
    if record.first_sha256 is None:
        record.first_sha256 = record.sha256 or digest
    if digest == record.first_sha256:  # also: changed back to what was first mirrored
        record.changed_upstream = None
        return []
    if digest == record.sha256:  # the change was reported when it arrived
        return []
    record.changed_upstream = f"{state.now_iso()}: sha256 {record.first_sha256} -> {digest}"
    return [
        f"changed upstream: sha256 was {record.first_sha256} when first mirrored, now {digest}"
        f" (set sha256: {digest} to accept it)"
    ]


def _rescan(entry: FileEntry, record: FileRecord, dest: Path) -> list[str]:
    """Images in the published copy, found once per content (mirror.discover)."""
    if not entry.discover:
        record.images, record.image_warnings, record.discovered_from = [], [], None
        return []
    key = f"{record.sha256} v{discover.DISCOVERY_VERSION}"
    if record.discovered_from == key:
        return []
    try:
        with dest.open("rb") as fh:  # at most one byte past the cap: a big tarball stays on disk
            data = fh.read(discover.MAX_MANIFEST + 1)
    except OSError as exc:
        raise FileSyncError(entry.path, f"cannot read the published copy: {exc.strerror}") from None
    found = discover.scan_manifest(data, entry.path, f"files:{entry.path}")
    record.images = [ref.upstream for ref in found.refs()]
    record.image_warnings = list(found.warnings)
    record.discovered_from = key
    return list(found.warnings)
