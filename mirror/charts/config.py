"""The `charts:` entries of mirror.yaml (issue 9, part 3), validated where the config loads.

charts:
  - repo: https://kubernetes.github.io/ingress-nginx   # a classic chart repo (index.yaml)
    name: ingress-nginx
    versions: ["4.11.3"]     # exact versions, or
    newest: 2                # the newest N releases (SemVer order)
    repo_name: ingress-nginx # optional: the directory under /charts/
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Both end up in file and directory names under data_dir/charts/ and in URLs nodes fetch.
SAFE_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SAFE_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


def _safe_segment(value: str) -> str:
    if not SAFE_SEGMENT_RE.match(value) or ".." in value:
        raise ValueError("must be a plain name (letters, digits, ._-; no '/', no '..')")
    return value


class ChartEntry(BaseModel):
    # extra="forbid": an unknown key is a typo until proven otherwise.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    repo: str
    name: str
    versions: tuple[str, ...] | None = None
    newest: int | None = Field(default=None, ge=1, le=1000)
    repo_name: str | None = None

    @field_validator("repo")
    @classmethod
    def _check_repo(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s):// URL of a chart repository")
        # index.yaml is fetched at <repo>/index.yaml: a query or fragment cannot be kept.
        if parts.query or parts.fragment or any(c.isspace() for c in value):
            raise ValueError("must be a plain http(s) URL (no query, fragment or spaces)")
        return value.rstrip("/")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _safe_segment(value)

    @field_validator("repo_name")
    @classmethod
    def _check_repo_name(cls, value: str | None) -> str | None:
        return None if value is None else _safe_segment(value)

    @field_validator("versions")
    @classmethod
    def _check_versions(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must list at least one version")
        for version in value:
            if not SAFE_VERSION_RE.match(version):
                raise ValueError(f"{version[:80]!r} is not a chart version")
        return value

    @model_validator(mode="after")
    def _one_selector(self) -> ChartEntry:
        if (self.versions is None) == (self.newest is None):
            raise ValueError("give exactly one of 'versions' and 'newest'")
        return self

    @property
    def default_repo_name(self) -> str:
        """The last non-empty path segment of the repo URL, else its host."""
        parts = urlsplit(self.repo)
        segments = [s for s in parts.path.split("/") if s]
        return segments[-1] if segments else (parts.hostname or "")
