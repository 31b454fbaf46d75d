"""What the sync records about one mirrored file (data_dir/state/files/<path>.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mirror.config import Config
from mirror.state import Record

FILES_DIR = "files"


def files_root(cfg: Config) -> Path:
    """Where mirrored files are published (served as /files/)."""
    return cfg.data_dir / FILES_DIR


@dataclass
class FileRecord(Record):
    size: int | None = None  # of the published copy
    sha256: str | None = None  # of the published copy
    # How the published copy was checked: "sha256" (pinned in the config), "sha256_url"
    # (the upstream's checksum file) or "first digest" (nothing to check against: the
    # digest seen first is kept in first_sha256 and any later change is reported).
    verified_by: str | None = None
    first_sha256: str | None = None
    # Set when the upstream content changed under an unpinned entry: "<when>: <old> -> <new>".
    # Stays until the entry is pinned (sha256/sha256_url), so status keeps showing it.
    changed_upstream: str | None = None
    # Validators of the upstream copy for the next conditional request.
    etag: str | None = None
    last_modified: str | None = None
    # Images found in the published copy (mirror.discover), and what they were found in:
    # "<sha256> <discovery version>", so an unchanged file is never parsed twice.
    images: list[str] = field(default_factory=list)
    image_warnings: list[str] = field(default_factory=list)
    discovered_from: str | None = None
