"""Stages 1-3 of a repo sync: fetch repomd.xml, fetch and verify each metadata file, parse primary.

Nothing here writes outside the staging directory it is given, and every path taken from
upstream metadata goes through `safe_relpath` first. Metadata is hostile input: compressed
files are inflated here under a hard cap (`plain_metadata`) and screened by `XmlGuard` before
createrepo_c's parser sees them, since that parser crashes on a gzip bomb (SIGSEGV at 2 GB).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

import createrepo_c as cr

from mirror.errors import RepoSyncError, UnsafePathError
from mirror.http import (
    DownloadJob,
    Expected,
    Fetcher,
    FetchError,
    RequestOptions,
    UnsupportedChecksum,
    new_hash,
)

try:  # createrepo_c >= 1.0 writes .zst by default; without the module such repos are refused
    import zstandard
except ImportError:  # pragma: no cover - depends on the installation
    zstandard = None  # type: ignore[assignment]

REPOMD = "repodata/repomd.xml"
# Caps on what upstream metadata can make us hold. The largest real primary/filelists
# (Fedora everything) inflate to a few hundred MB; a text or tag longer than MAX_TOKEN does
# not occur in yum metadata and would make the parser buffer it whole.
MAX_OPEN_SIZE = 1 << 30
MAX_TOKEN = 32 << 20
MAX_PACKAGES = 1_000_000
_CHUNK = 1 << 20
PARSED_KINDS = ("primary", "filelists", "other")


@dataclass(frozen=True)
class MetadataRecord:
    type: str
    href: str
    checksum_type: str
    checksum: str
    size: int | None
    open_size: int | None = None  # inflated size, when repomd.xml declares it
    open_checksum_type: str | None = None
    open_checksum: str | None = None

    @property
    def expected(self) -> Expected:
        return Expected(self.checksum_type, self.checksum, self.size)


@dataclass(frozen=True)
class PackageRef:
    """What primary.xml says about one package: enough to plan, download and verify it."""

    name: str
    epoch: str
    version: str
    release: str
    arch: str
    href: str
    checksum_type: str
    checksum: str
    size: int

    @property
    def nevra(self) -> str:
        epoch = f"{self.epoch}:" if self.epoch not in ("", "0") else ""
        return f"{self.name}-{epoch}{self.version}-{self.release}.{self.arch}"

    @property
    def expected(self) -> Expected:
        return Expected(self.checksum_type, self.checksum, self.size)


@dataclass(frozen=True)
class UpstreamMetadata:
    baseurl: str
    repomd: bytes
    repomd_asc: bytes | None
    records: tuple[MetadataRecord, ...]
    staging: Path  # holds repodata/ as fetched and verified

    def record(self, kind: str) -> MetadataRecord | None:
        return next((r for r in self.records if r.type == kind), None)

    def path(self, record: MetadataRecord) -> Path:
        return self.staging / record.href


def safe_relpath(repo: str, href: str) -> PurePosixPath:
    """A relative path that stays inside the repo, or UnsafePathError.

    Refuses absolute paths, `..` components, URLs and backslashes: upstream metadata is
    input, and a hostile primary.xml must not make us write outside the data directory.
    """
    if not href or "://" in href or href.startswith(("/", "~")) or "\\" in href or "\0" in href:
        raise UnsafePathError(repo, f"refusing unsafe location href {href!r}")
    path = PurePosixPath(href)
    if any(part in ("..", "") for part in path.parts) or path.is_absolute():
        raise UnsafePathError(repo, f"refusing unsafe location href {href!r}")
    return path


def _check_checksum_type(repo: str, checksum_type: str, href: str) -> None:
    try:
        new_hash(checksum_type)
    except UnsupportedChecksum as exc:
        raise RepoSyncError(repo, f"{href}: {exc}") from None


def join_url(baseurl: str, href: str) -> str:
    return baseurl.rstrip("/") + "/" + href


# `<!` opens a DOCTYPE, ENTITY, ELEMENT or ATTLIST declaration unless it is a comment or
# CDATA. yum metadata never has a DTD, and refusing every declaration up front rules out
# entity expansion (billion laughs) and external entities whatever the parser would do.
_DECLARATION = re.compile(rb"<!(?!--|\[CDATA\[)")
_LOOKAHEAD = len(b"<![CDATA[") - 1  # bytes a split `<!` needs from the next chunk
_ENCODING = re.compile(rb"^<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']")
# Encodings in which the byte scan above sees what the parser sees (ASCII-compatible).
_ASCII_COMPATIBLE = {b"utf-8", b"utf8", b"us-ascii", b"ascii", b"iso-8859-1", b"latin1"}
_BOM = b"\xef\xbb\xbf"


class XmlGuard:
    """Screens an XML document chunk by chunk, before any parser sees it.

    Refuses what yum metadata never contains but a hostile upstream could send: a DTD
    (entity expansion, external entities), a non-ASCII-compatible encoding or a NUL byte
    (UTF-16/32 would hide the DTD from a byte scan), a first byte that is not markup, and a
    single text or tag longer than MAX_TOKEN. Memory is bounded by the chunk size, whatever
    the input size.
    """

    def __init__(self, repo: str, name: str, max_token: int = MAX_TOKEN) -> None:
        self.repo, self.name, self.max_token = repo, name, max_token
        self.size = 0
        self._tail = b""  # last bytes of the previous chunk, for a `<!` split across chunks
        self._tail_line = 1  # line number at the start of _tail
        self._since_lt = 0  # bytes since the last `<`: the length of the current token

    def refuse(self, what: str, line: int | None = None) -> RepoSyncError:
        where = f" (line {line})" if line else ""
        return RepoSyncError(self.repo, f"{self.name}: {what}{where}")

    def feed(self, chunk: bytes) -> None:
        for start in range(0, len(chunk), _CHUNK):
            self._feed(chunk[start : start + _CHUNK])

    def _feed(self, chunk: bytes) -> None:
        if not self.size:
            self._check_start(chunk)
        self.size += len(chunk)
        self._check_token(chunk)
        nul = chunk.find(b"\x00")
        if nul >= 0:  # never in UTF-8 XML; UTF-16/32 without a BOM would hide `<!` from us
            line = self._tail_line + self._tail.count(b"\n") + chunk.count(b"\n", 0, nul)
            raise self.refuse("refusing a NUL byte (XML in UTF-8 has none)", line)
        window = self._tail + chunk
        for match in _DECLARATION.finditer(window):
            if len(window) - match.start() <= _LOOKAHEAD:
                break  # decided once the next chunk (or finish) shows what follows
            line = self._tail_line + window.count(b"\n", 0, match.start())
            raise self.refuse(
                "refusing a DOCTYPE/ENTITY declaration (yum metadata never has one)", line
            )
        keep = max(0, len(window) - _LOOKAHEAD)
        self._tail_line += window.count(b"\n", 0, keep)
        self._tail = window[keep:]

    def _check_start(self, chunk: bytes) -> None:
        head = chunk.removeprefix(_BOM).lstrip()
        if not head.startswith(b"<"):
            raise self.refuse("is not XML (does not start with '<')", 1)
        declared = _ENCODING.match(head)
        if declared and declared.group(1).lower() not in _ASCII_COMPATIBLE:
            encoding = declared.group(1).decode()
            raise self.refuse(f"refusing XML encoding {encoding!r} (yum metadata is UTF-8)", 1)

    def _check_token(self, chunk: bytes) -> None:
        first = chunk.find(b"<")
        longest = self._since_lt + (len(chunk) if first < 0 else first)
        if first >= 0:
            self._since_lt = len(chunk) - chunk.rfind(b"<") - 1
        else:
            self._since_lt = longest
        if longest > self.max_token:
            line = self._tail_line + self._tail.count(b"\n")
            raise self.refuse(f"refusing a text or tag longer than {self.max_token} bytes", line)

    def finish(self) -> None:
        if not self.size:
            raise self.refuse("is empty")
        if _DECLARATION.search(self._tail):
            raise self.refuse(
                "refusing a DOCTYPE/ENTITY declaration (yum metadata never has one)",
                self._tail_line,
            )


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


_MAGIC = (
    (b"\x1f\x8b", "gz"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zst"),
    (b"\x00ZCK1", "zck"),
)
_DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # gzip.BadGzipFile, bz2's "Invalid data stream"
    EOFError,  # truncated stream
    lzma.LZMAError,
    zlib.error,
    *((zstandard.ZstdError,) if zstandard is not None else ()),
)


def compression_of(path: Path) -> str | None:
    """By magic bytes, as createrepo_c does: the file name is upstream's claim, not a fact."""
    with path.open("rb") as fh:
        head = fh.read(8)
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


@contextmanager
def _decompressed(repo: str, path: Path, href: str) -> Iterator[_Reader]:
    """A reader of the inflated bytes; each read(n) holds at most n bytes in memory."""
    kind = compression_of(path)
    if kind == "zck" or (kind == "zst" and zstandard is None):
        why = "zchunk" if kind == "zck" else "zstd (install the Python package 'zstandard')"
        raise RepoSyncError(repo, f"{href}: {why} compressed metadata is not supported")
    with ExitStack() as stack:
        raw = stack.enter_context(path.open("rb"))
        reader: _Reader = raw
        if kind == "gz":
            reader = stack.enter_context(gzip.GzipFile(fileobj=raw))
        elif kind == "bz2":
            reader = stack.enter_context(bz2.BZ2File(raw))
        elif kind == "xz":
            reader = stack.enter_context(lzma.LZMAFile(raw))
        elif kind == "zst":
            assert zstandard is not None
            zst = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            reader = stack.enter_context(zst)
        yield reader


def inflate(
    repo: str, record: MetadataRecord, src: Path, dest: Path, cap: int = MAX_OPEN_SIZE
) -> None:
    """Decompress `src` into `dest` (plain XML), streaming, refusing it as soon as it grows
    past its declared open-size (or `cap`), and checking open-checksum when declared."""
    limit = record.open_size if record.open_size is not None else cap
    if limit > cap:
        raise RepoSyncError(repo, f"{record.href}: declares open-size {limit}, over the cap {cap}")
    digest = None
    if record.open_checksum_type and record.open_checksum:
        _check_checksum_type(repo, record.open_checksum_type, record.href)
        digest = new_hash(record.open_checksum_type)
    guard = XmlGuard(repo, record.href)
    try:
        with _decompressed(repo, src, record.href) as reader, dest.open("wb") as out:
            while chunk := _read(repo, record.href, reader):
                if guard.size + len(chunk) > limit:
                    raise guard.refuse(_too_big(record, limit))
                guard.feed(chunk)
                if digest is not None:
                    digest.update(chunk)
                out.write(chunk)
        guard.finish()
        _check_open(repo, record, guard.size, digest.hexdigest() if digest else None)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _too_big(record: MetadataRecord, limit: int) -> str:
    if record.open_size is not None:
        return f"refusing: inflates beyond the open-size repomd.xml declares ({limit} bytes)"
    return f"refusing: inflates beyond {limit} bytes (repomd.xml declares no open-size)"


def _read(repo: str, href: str, reader: _Reader) -> bytes:
    try:
        return reader.read(_CHUNK)
    except _DECOMPRESS_ERRORS as exc:
        raise RepoSyncError(repo, f"{href}: does not decompress: {exc}") from None


def _check_open(repo: str, record: MetadataRecord, size: int, checksum: str | None) -> None:
    if record.open_size is not None and size != record.open_size:
        raise RepoSyncError(
            repo, f"{record.href}: inflates to {size} bytes, repomd.xml says {record.open_size}"
        )
    if checksum is not None and record.open_checksum and checksum != record.open_checksum.lower():
        raise RepoSyncError(
            repo,
            f"{record.href}: open-checksum mismatch: want {record.open_checksum}, got {checksum}",
        )


def plain_metadata(repo: str, meta: UpstreamMetadata, kind: str) -> Path:
    """The verified, inflated XML of metadata `kind` (primary, filelists or other), made once
    per sync in staging; hand this, never the compressed file, to createrepo_c's parsers
    (cr.xml_parse_*, cr.PackageIterator)."""
    if kind not in PARSED_KINDS:
        raise ValueError(f"not a parsed metadata kind: {kind!r}")
    record = meta.record(kind)
    if record is None:
        raise RepoSyncError(repo, f"repomd.xml lists no {kind} metadata")
    dest = meta.staging / ".plain" / f"{kind}.xml"  # not under repodata/: never published
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        inflate(repo, record, meta.path(record), dest)
    return dest


def fetch_repomd(
    repo: str, baseurls: tuple[str, ...], fetcher: Fetcher, opts: RequestOptions
) -> tuple[str, bytes]:
    """Stage 1: the first baseurl that answers wins (later ones are mirrors)."""
    errors = []
    for baseurl in baseurls:
        url = join_url(baseurl, REPOMD)
        try:
            return baseurl, fetcher.get_bytes(url, opts)
        except FetchError as exc:
            errors.append(f"{exc} ({exc.url})")
    raise RepoSyncError(repo, "cannot fetch repomd.xml: " + "; ".join(errors))


def parse_repomd(repo: str, repomd: bytes, staging: Path) -> tuple[MetadataRecord, ...]:
    guard = XmlGuard(repo, REPOMD)
    guard.feed(repomd)
    guard.finish()
    path = staging / REPOMD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(repomd)
    try:
        parsed = cr.Repomd(str(path))
    except Exception as exc:  # createrepo_c raises its own error type with the parser message
        raise RepoSyncError(repo, f"repomd.xml does not parse: {_one_line(exc)}") from None
    records = tuple(_record(repo, rec) for rec in parsed.records)
    if not any(r.type == "primary" for r in records):
        raise RepoSyncError(repo, "repomd.xml lists no primary metadata")
    return records


def _record(repo: str, rec: cr.RepomdRecord) -> MetadataRecord:
    href = str(safe_relpath(repo, rec.location_href or ""))
    if rec.location_base:
        raise UnsafePathError(repo, f"refusing metadata hosted elsewhere ({rec.location_base})")
    # Metadata lives in repodata/; anywhere else it would land among (or on) packages, and
    # repomd.xml itself is written by us, last.
    if not href.startswith("repodata/") or href in (REPOMD, REPOMD + ".asc"):
        raise UnsafePathError(repo, f"refusing metadata location href {href!r}")
    _check_checksum_type(repo, rec.checksum_type or "", href)
    open_size = rec.size_open if rec.size_open is not None and rec.size_open >= 0 else None
    return MetadataRecord(
        rec.type,
        href,
        rec.checksum_type,
        rec.checksum,
        rec.size or None,
        open_size,
        rec.checksum_open_type or None,
        rec.checksum_open or None,
    )


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:500]


def fetch_metadata_files(
    repo: str,
    meta: UpstreamMetadata,
    fetcher: Fetcher,
    opts: RequestOptions,
) -> None:
    """Stage 2: every file repomd.xml lists, checked against its size and checksum, all at
    once. A record without a size may not grow past MAX_OPEN_SIZE."""
    jobs = [
        DownloadJob(
            join_url(meta.baseurl, record.href),
            meta.path(record),
            record.expected,
            opts,
            label=record.type,
            limit=MAX_OPEN_SIZE,
        )
        for record in meta.records
    ]
    failures = fetcher.download_many(jobs)
    if failures:
        job, exc = failures[0]
        raise RepoSyncError(repo, f"metadata {job.label}: {exc}", exc.url)


class _PrimaryReader:
    """createrepo_c's per-package callback: keeps what we need, collects refusals."""

    def __init__(self, repo: str) -> None:
        self.repo = repo
        self.packages: list[PackageRef] = []
        self.problems: list[str] = []
        self.refused = 0
        self.abort: RepoSyncError | None = None  # raised in the callback, re-raised after

    def __call__(self, pkg: cr.Package) -> None:
        if len(self.packages) >= MAX_PACKAGES:
            self.abort = RepoSyncError(self.repo, f"primary lists over {MAX_PACKAGES} packages")
            raise self.abort
        problem = self._problem(pkg)
        if problem is None:
            self.packages.append(_package_ref(pkg))
            return
        self.refused += 1
        if len(self.problems) < 3:  # the count is enough for the rest; memory stays bounded
            self.problems.append(problem)

    def _problem(self, pkg: cr.Package) -> str | None:
        if pkg.location_base:
            return f"package {pkg.nevra()} is hosted elsewhere ({pkg.location_base})"
        href = pkg.location_href or ""
        try:
            path = safe_relpath(self.repo, href)
        except UnsafePathError:
            return f"package {pkg.name}: refusing unsafe location href {href!r}"
        if path.parts[0] == "repodata":
            return f"package {pkg.name}: refusing location href {href!r} inside repodata/"
        try:
            new_hash(pkg.checksum_type or "")
        except UnsupportedChecksum as exc:
            return f"package {pkg.name}: {exc}"
        if pkg.size_package is None or int(pkg.size_package) < 0:
            return f"package {pkg.name}: refusing size {pkg.size_package!r}"
        return None


def _package_ref(pkg: cr.Package) -> PackageRef:
    return PackageRef(
        name=pkg.name,
        epoch=pkg.epoch or "0",
        version=pkg.version,
        release=pkg.release,
        arch=pkg.arch,
        href=pkg.location_href,
        checksum_type=pkg.checksum_type,
        checksum=pkg.pkgId,
        size=int(pkg.size_package),
    )


def parse_packages(repo: str, meta: UpstreamMetadata) -> list[PackageRef]:
    """Stage 3: inflate primary under its caps, then stream it through createrepo_c."""
    path = plain_metadata(repo, meta, "primary")
    reader = _PrimaryReader(repo)
    try:
        cr.xml_parse_primary(str(path), pkgcb=reader, do_files=0)
    except Exception as exc:
        if reader.abort is not None:
            raise reader.abort from None
        record = meta.record("primary")
        href = record.href if record else "primary"
        reason = _one_line(exc).replace(f"'{path}' ", "")  # our staging path, not upstream's
        raise RepoSyncError(repo, f"primary metadata {href} does not parse: {reason}") from None
    if reader.problems:
        more = reader.refused - 1
        raise UnsafePathError(repo, reader.problems[0] + (f" (and {more} more)" if more else ""))
    return reader.packages
