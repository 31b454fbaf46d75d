"""The upstream mirror's index as B reads it: every value checked before anything uses it
(A is trusted to serve content, not to be well-formed)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from mirror.downstream.index import FORMAT

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Image:
    upstream: str
    mirrored: tuple[str, ...]
    digest: str


@dataclass(frozen=True)
class File:
    path: str
    sha256: str
    size: int | None


@dataclass(frozen=True)
class ChartRepo:
    repo_name: str
    index_sha256: str
    charts: tuple[tuple[str, str], ...]  # (name, version)


@dataclass(frozen=True)
class UpstreamIndex:
    repofile: str
    repos: dict[str, str]  # repo target key -> sha256 of A's repomd.xml
    registry: str
    registry_insecure: bool
    images: tuple[Image, ...]
    files: tuple[File, ...]
    charts: tuple[ChartRepo, ...] = ()


def _expect(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"{what}: expected {kind.__name__}")
    return value


def parse(body: bytes) -> UpstreamIndex:
    """ValueError naming the first thing wrong; every value is checked before it is used."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    _expect(doc, dict, "document")
    if doc.get("format") != FORMAT:
        raise ValueError(f"format {doc.get('format')!r}, this mirror reads format {FORMAT}")
    repos = _expect(doc.get("repos"), dict, "repos")
    for key, digest in repos.items():
        if not isinstance(digest, str) or not _SHA256_RE.match(digest):
            raise ValueError(f"repos[{key!r}]: not a sha256")
    registry = _expect(doc.get("registry"), dict, "registry")
    images = []
    for row in _expect(doc.get("images"), list, "images"):
        _expect(row, dict, "images[]")
        mirrored = tuple(_expect(row.get("mirrored"), list, "images[].mirrored"))
        digest = _expect(row.get("digest"), str, "images[].digest")
        if not mirrored or not all(isinstance(m, str) for m in mirrored):
            raise ValueError(f"images[{row.get('upstream')!r}].mirrored: no names")
        if not _DIGEST_RE.match(digest):
            raise ValueError(f"images[{row.get('upstream')!r}].digest: not sha256:<hex>")
        images.append(
            Image(_expect(row.get("upstream"), str, "images[].upstream"), mirrored, digest)
        )
    files = []
    for row in _expect(doc.get("files"), list, "files"):
        _expect(row, dict, "files[]")
        sha = _expect(row.get("sha256"), str, "files[].sha256")
        if not _SHA256_RE.match(sha):
            raise ValueError(f"files[{row.get('path')!r}].sha256: not a sha256")
        size = row.get("size")
        files.append(
            File(
                _expect(row.get("path"), str, "files[].path"),
                sha,
                size if isinstance(size, int) else None,
            )
        )
    return UpstreamIndex(
        charts=_parse_charts(doc.get("charts", [])),
        repofile=_expect(doc.get("repofile"), str, "repofile"),
        repos=dict(repos),
        registry=_expect(registry.get("url"), str, "registry.url"),
        registry_insecure=bool(registry.get("insecure", True)),
        images=tuple(images),
        files=tuple(files),
    )


def _parse_charts(rows: Any) -> tuple[ChartRepo, ...]:
    repos = []
    for row in _expect(rows, list, "charts"):
        _expect(row, dict, "charts[]")
        sha = _expect(row.get("index_sha256"), str, "charts[].index_sha256")
        if not _SHA256_RE.match(sha):
            raise ValueError(f"charts[{row.get('repo_name')!r}].index_sha256: not a sha256")
        charts = []
        for chart in _expect(row.get("charts"), list, "charts[].charts"):
            _expect(chart, dict, "charts[].charts[]")
            name = _expect(chart.get("name"), str, "charts[].charts[].name")
            charts.append((name, _expect(chart.get("version"), str, "charts[].charts[].version")))
        name = _expect(row.get("repo_name"), str, "charts[].repo_name")
        repos.append(ChartRepo(name, sha, tuple(charts)))
    return tuple(repos)
