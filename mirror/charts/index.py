"""A chart repository's index.yaml: parsed defensively, selected from, rewritten for nodes.

The upstream index is input from the internet: its size is capped before parsing, it is
loaded with yaml's safe loader, and only the entries of wanted charts are looked at, each
copied under a node budget (a YAML alias bomb never expands). Scalars stay strings (no int,
float or timestamp resolution): `version: 1.10` is not 1.1, and `created` round-trips as the
RFC 3339 text helm wrote, which helm's Go types parse again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import yaml

from mirror.charts import semver
from mirror.charts.config import SAFE_SEGMENT_RE, SAFE_VERSION_RE
from mirror.charts.errors import ChartSyncError
from mirror.charts.repos import ChartRepo, WantedChart

MAX_INDEX = 32 * 1024 * 1024  # ingress-nginx's index is ~1 MiB, big public ones ~20 MiB
MAX_ENTRY_NODES = 20_000  # YAML nodes copied per chart version
MAX_DEPTH = 32
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_KEPT_TAGS = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:null", "tag:yaml.org,2002:merge")

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _IndexLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Safe loader resolving only null, bool and merge keys implicitly."""


_IndexLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag in _KEPT_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True)
class ChartVersion:
    """One version of one chart to mirror."""

    name: str
    version: str
    url: str  # absolute upstream URL of the tarball
    digest: str  # sha256, hex
    entry: dict[str, Any]  # the index entry (bounded copy), urls rewritten on publish

    @property
    def file(self) -> str:
        # Our own name, not upstream's basename: GitHub release URLs all end in the same
        # few names, and a hostile basename never reaches the file system.
        return f"{self.name}-{self.version}.tgz"

    @property
    def label(self) -> str:
        return f"{self.name}-{self.version}"


def load_yaml(body: bytes, what: str, repo: str, url: str) -> Any:
    if len(body) > MAX_INDEX:
        raise ChartSyncError(repo, f"{what} larger than {MAX_INDEX} bytes", url)
    try:
        return yaml.load(body, Loader=_IndexLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ChartSyncError(repo, f"{what} is not valid YAML{where}: {problem}", url) from None


def parse_entries(body: bytes, repo: str, url: str) -> dict[str, Any]:
    """The `entries` mapping of an index.yaml; ChartSyncError naming the repo otherwise."""
    doc = load_yaml(body, "index.yaml", repo, url)
    if not isinstance(doc, dict):
        raise ChartSyncError(
            repo, f"index.yaml is not a chart repository index (top level is {_kind(doc)})", url
        )
    entries = doc.get("entries")
    if not isinstance(entries, dict):
        raise ChartSyncError(repo, "index.yaml has no 'entries' mapping", url)
    return entries


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "empty"}.get(
        type(value), type(value).__name__
    )


def bounded_copy(value: Any, budget: list[int], depth: int = 0) -> Any:
    """A plain copy (dict/list/str/bool/None) spending one unit of `budget` per node."""
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise ValueError("entry too large or too deeply nested")
    if isinstance(value, dict):
        return {str(k): bounded_copy(v, budget, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [bounded_copy(v, budget, depth + 1) for v in value]
    if isinstance(value, datetime):  # an explicit !!timestamp
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
        return stamp.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


def tarball_url(repo: str, index_url: str, entry: dict[str, Any], label: str) -> str:
    """The absolute http(s) URL of a version's tarball (its first `urls` item, as helm)."""
    urls = entry.get("urls")
    if not isinstance(urls, list) or not urls or not isinstance(urls[0], str):
        raise ChartSyncError(repo, f"{label}: no 'urls' in index.yaml", index_url)
    raw = urls[0].strip()
    if "\\" in raw or any(c.isspace() or not c.isprintable() for c in raw):
        raise ChartSyncError(repo, f"{label}: refusing url {raw[:80]!r}", index_url)
    # `..` would walk out of the repository on its host: refused, also percent-encoded.
    if any(seg in ("..", ".") for seg in unquote(urlsplit(raw).path).split("/")):
        raise ChartSyncError(repo, f"{label}: refusing url {raw[:80]!r} ('..' in path)", index_url)
    absolute = urljoin(index_url, raw)
    parts = urlsplit(absolute)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ChartSyncError(
            repo, f"{label}: refusing url {raw[:80]!r} (only http and https)", index_url
        )
    return absolute


def _version_entry(repo: str, index_url: str, name: str, raw: Any) -> ChartVersion | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("version"), str):
        return None
    version = raw["version"]
    label = f"{name}-{version}"
    if not SAFE_VERSION_RE.match(version) or ".." in version:
        raise ChartSyncError(repo, f"{name}: refusing version {version[:80]!r}", index_url)
    try:
        entry = bounded_copy(raw, [MAX_ENTRY_NODES])
    except (ValueError, RecursionError):
        raise ChartSyncError(repo, f"{label}: index entry too large", index_url) from None
    digest = entry.get("digest")
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest.lower()):
        raise ChartSyncError(repo, f"{label}: no sha256 'digest' in index.yaml", index_url)
    url = tarball_url(repo, index_url, entry, label)
    return ChartVersion(name, version, url, digest.lower(), entry)


def select(repo: ChartRepo, entries: dict[str, Any]) -> list[ChartVersion]:
    """Every wanted version, in config order; ChartSyncError naming what is missing."""
    chosen: list[ChartVersion] = []
    for wanted in repo.charts:
        chosen += _select_chart(repo, entries, wanted)
    return chosen


def _select_chart(repo: ChartRepo, entries: dict[str, Any], wanted: WantedChart) -> list[Any]:
    name = wanted.name
    if not SAFE_SEGMENT_RE.match(name):
        raise ChartSyncError(repo.key, f"{name}: not a plain chart name", repo.index_url)
    raw = entries.get(name)
    if not isinstance(raw, list) or not raw:
        raise ChartSyncError(repo.key, f"{name}: no such chart in index.yaml", repo.index_url)
    by_version: dict[str, Any] = {}
    for item in raw[:100_000]:
        if isinstance(item, dict) and isinstance(item.get("version"), str):
            by_version.setdefault(item["version"], item)
    missing = [v for v in wanted.versions if v not in by_version]
    if missing:
        raise ChartSyncError(
            repo.key,
            f"{name}: version {', '.join(missing)} not in index.yaml",
            repo.index_url,
        )
    latest = newest(by_version, wanted.newest)
    if wanted.newest and not latest:
        raise ChartSyncError(
            repo.key,
            f"{name}: no release version in index.yaml (name versions exactly)",
            repo.index_url,
        )
    picked = list(wanted.versions) + [v for v in latest if v not in wanted.versions]
    found = [_version_entry(repo.key, repo.index_url, name, by_version[v]) for v in picked]
    return [version for version in found if version is not None]


def newest(by_version: dict[str, Any], count: int) -> list[str]:
    """The newest `count` releases by SemVer precedence. Pre-releases and versions that are
    not SemVer are skipped, as helm skips them without --devel; name those exactly."""
    releases: list[tuple[semver.Version, str]] = []
    for text in by_version:
        try:
            parsed = semver.parse(text)
        except semver.NotSemver:
            continue
        if not parsed.prerelease:
            releases.append((parsed, text))
    releases.sort(key=lambda pair: pair[0].key(), reverse=True)
    return [text for _parsed, text in releases[:count]]


def render(repo: ChartRepo, versions: list[ChartVersion], base_url: str, generated: str) -> bytes:
    """index.yaml for nodes: only the mirrored versions, their urls on this mirror."""
    entries: dict[str, list[dict[str, Any]]] = {}
    for version in versions:
        entry = dict(version.entry)
        entry["urls"] = [f"{base_url}/charts/{repo.key}/{version.file}"]
        entries.setdefault(version.name, []).append(entry)
    for items in entries.values():
        items.sort(key=_sort_key, reverse=True)  # newest first, as helm writes them
    doc = {"apiVersion": "v1", "entries": entries, "generated": generated}
    text = yaml.safe_dump(doc, sort_keys=True, default_flow_style=False, allow_unicode=True)
    return text.encode("utf-8")


def _sort_key(entry: dict[str, Any]) -> tuple[int, Any]:
    try:
        return (1, semver.parse(str(entry.get("version"))).key())
    except semver.NotSemver:
        return (0, ())


def published_entries(body: bytes) -> list[tuple[str, str, str]]:
    """(name, version, file) of every entry of a published (our own) index.yaml."""
    try:
        doc = yaml.load(body, Loader=_IndexLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        return []
    entries = doc.get("entries") if isinstance(doc, dict) else None
    found = []
    for name, items in entries.items() if isinstance(entries, dict) else ():
        for item in items if isinstance(items, list) else ():
            urls = item.get("urls") if isinstance(item, dict) else None
            if isinstance(urls, list) and urls and isinstance(urls[0], str):
                file = urls[0].rsplit("/", 1)[-1]
                if SAFE_VERSION_RE.match(file) and file.endswith(".tgz"):
                    found.append((str(name), str(item.get("version")), file))
    return found


def published_files(body: bytes) -> set[str]:
    """The tarball names a published index.yaml names: the previous generation."""
    return {file for _name, _version, file in published_entries(body)}
