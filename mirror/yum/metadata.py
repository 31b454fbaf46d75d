"""Stages 1-3 of a repo sync: fetch repomd.xml, fetch and verify each metadata file, parse primary.

Nothing here writes outside the staging directory it is given, and every path taken from
upstream metadata goes through `safe_relpath` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import createrepo_c as cr

from mirror.errors import RepoSyncError, UnsafePathError
from mirror.http import (
    Expected,
    Fetcher,
    FetchError,
    RequestOptions,
    UnsupportedChecksum,
    new_hash,
)

REPOMD = "repodata/repomd.xml"


@dataclass(frozen=True)
class MetadataRecord:
    type: str
    href: str
    checksum_type: str
    checksum: str
    size: int | None

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
    path = staging / REPOMD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(repomd)
    try:
        parsed = cr.Repomd(str(path))
    except Exception as exc:  # createrepo_c raises its own error type with the parser message
        raise RepoSyncError(repo, f"repomd.xml does not parse: {exc}") from None
    records = []
    for rec in parsed.records:
        href = str(safe_relpath(repo, rec.location_href))
        if rec.location_base:
            raise UnsafePathError(repo, f"refusing metadata hosted elsewhere ({rec.location_base})")
        _check_checksum_type(repo, rec.checksum_type, href)
        records.append(
            MetadataRecord(rec.type, href, rec.checksum_type, rec.checksum, rec.size or None)
        )
    if not any(r.type == "primary" for r in records):
        raise RepoSyncError(repo, "repomd.xml lists no primary metadata")
    return tuple(records)


def fetch_metadata_files(
    repo: str,
    meta: UpstreamMetadata,
    fetcher: Fetcher,
    opts: RequestOptions,
) -> None:
    """Stage 2: every file repomd.xml lists, checked against its size and checksum."""
    for record in meta.records:
        url = join_url(meta.baseurl, record.href)
        try:
            fetcher.download(url, meta.path(record), record.expected, opts)
        except FetchError as exc:
            raise RepoSyncError(repo, f"metadata {record.type}: {exc}", exc.url) from None


def parse_packages(repo: str, meta: UpstreamMetadata) -> list[PackageRef]:
    """Stage 3: stream primary.xml(.gz/.xz/.zst) through createrepo_c's parser."""
    record = meta.record("primary")
    assert record is not None  # parse_repomd guarantees it
    packages: list[PackageRef] = []
    problems: list[str] = []

    def on_package(pkg: cr.Package) -> None:
        if pkg.location_base:
            problems.append(f"package {pkg.nevra()} is hosted elsewhere ({pkg.location_base})")
            return
        href = pkg.location_href or ""
        try:
            safe_relpath(repo, href)
            _check_checksum_type(repo, pkg.checksum_type, href)
        except UnsafePathError:
            problems.append(f"package {pkg.name}: refusing unsafe location href {href!r}")
            return
        except RepoSyncError as exc:
            problems.append(f"package {pkg.name}: {exc}")
            return
        packages.append(
            PackageRef(
                name=pkg.name,
                epoch=pkg.epoch or "0",
                version=pkg.version,
                release=pkg.release,
                arch=pkg.arch,
                href=href,
                checksum_type=pkg.checksum_type,
                checksum=pkg.pkgId,
                size=int(pkg.size_package),
            )
        )

    try:
        cr.xml_parse_primary(str(meta.path(record)), pkgcb=on_package, do_files=0)
    except Exception as exc:
        raise RepoSyncError(repo, f"primary metadata does not parse: {exc}") from None
    if problems:
        raise UnsafePathError(
            repo, problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        )
    return packages
