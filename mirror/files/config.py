"""The `files:` entries of mirror.yaml, validated once (mirror.config.Config.files).

Every entry becomes a file under `data_dir/files/<path>` served at `/files/<path>`, so `path`
is checked as strictly as a repo id: relative, no `..`, no hidden or empty segments, no
backslash, nothing a shell or nginx would read specially. URLs are http(s) only (libcurl is
told the same for redirects, mirror.http.configure).
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import unquote, urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

# 2 GiB: bigger than any tool tarball a cluster needs (cni-plugins ~50 MB, helm ~17 MB), small
# enough that an upstream that never ends the body cannot fill the disk.
DEFAULT_MAX_SIZE = 2 << 30
MAX_PATH = 1024
DISCOVER_SUFFIXES = (".yaml", ".yml", ".json")
# One segment of a published path: starts with a letter, digit or '_' (never '.', so no
# hidden file and no '..'), then a conservative set nginx and shells take literally.
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._~+@:=,-]*$")
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$|^\[[0-9A-Fa-f:]+\](?::[0-9]{1,5})?$")


def check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if "@" in parts.netloc:  # credentials belong in ~/.netrc (libcurl reads it), not here
        raise ValueError("must not contain credentials (use ~/.netrc)")
    if not _HOST_RE.match(parts.netloc):
        raise ValueError("must be http(s)://HOST[:PORT]/PATH")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must not contain spaces or control characters")
    return value


def check_path(value: str) -> str:
    """A safe relative path below data_dir/files (the rules above); returned unchanged."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_PATH:
        raise ValueError(f"longer than {MAX_PATH} characters")
    if "\\" in value:
        raise ValueError("must not contain a backslash")
    if value.startswith("/"):
        raise ValueError("must be a relative path (no leading '/')")
    segments = value.split("/")
    if any(s in ("..", ".") for s in segments):
        raise ValueError("must not contain '..' or '.' segments")
    for segment in segments:
        if not _SEGMENT_RE.match(segment):
            raise ValueError(
                f"segment {segment!r}: letters, digits and ._~+@:=,- only, "
                "not starting with '.' (no hidden files, no empty segments)"
            )
    if value.endswith(".part"):  # partial downloads are never served under that suffix
        raise ValueError("must not end in .part")
    return value


def default_path(url: str) -> str:
    """host + URL path: https://get.helm.sh/helm.tar.gz -> get.helm.sh/helm.tar.gz."""
    parts = urlsplit(url)
    return f"{parts.netloc}{unquote(parts.path)}"


class FileEntry(BaseModel):
    """One `files:` entry (README "Files")."""

    # extra="forbid": an unknown key is a typo until proven otherwise (as in mirror.config).
    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    sha256: str | None = None
    sha256_url: str | None = None
    path: str = ""  # "" = default_path(url), filled in by the validator below
    discover_images: bool | None = None  # None = by suffix (.yaml/.yml/.json)
    max_size: int = Field(default=DEFAULT_MAX_SIZE, ge=1)

    @field_validator("url", "sha256_url")
    @classmethod
    def _check_urls(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value)

    @field_validator("sha256")
    @classmethod
    def _check_sha256(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256_RE.match(value):
            raise ValueError("must be 64 hex digits")
        return None if value is None else value.lower()

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        return check_path(value)

    @model_validator(mode="after")
    def _fill_defaults(self) -> FileEntry:
        if self.sha256 and self.sha256_url:
            raise ValueError("give sha256 or sha256_url, not both")
        path = self.path
        if not path:
            path = default_path(self.url)
            try:
                check_path(path)
            except ValueError as exc:
                raise ValueError(f"path {path!r} (made from the URL): {exc}; set 'path'") from None
        # Frozen model: the defaults are filled in once, here, so every reader sees them.
        object.__setattr__(self, "path", path)
        if self.discover_images is None:
            object.__setattr__(self, "discover_images", path.lower().endswith(DISCOVER_SUFFIXES))
        return self

    @property
    def key(self) -> str:  # the state record's key (mirror.content.kind.Item)
        return self.path

    @property
    def upstream(self) -> str:
        return self.url

    @property
    def discover(self) -> bool:
        return bool(self.discover_images)


def _unique_paths(entries: tuple[FileEntry, ...]) -> tuple[FileEntry, ...]:
    """No two entries publish the same path, and none is a directory of another."""
    paths = sorted(entry.path for entry in entries)
    for before, after in zip(paths, paths[1:], strict=False):
        if before == after:
            raise ValueError(f"path {before!r} is used by two entries")
        if after.startswith(before + "/"):
            raise ValueError(f"path {before!r} is a file and also a directory of {after!r}")
    return entries


# The type of Config.files: the entries plus the checks across them.
FileEntries = Annotated[tuple[FileEntry, ...], AfterValidator(_unique_paths)]
