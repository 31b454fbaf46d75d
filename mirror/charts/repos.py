"""From `charts:` entries to chart repositories, the items of the charts kind."""

from __future__ import annotations

from dataclasses import dataclass

from mirror.charts.config import SAFE_SEGMENT_RE, ChartEntry
from mirror.config import Config
from mirror.errors import ConfigError


@dataclass(frozen=True)
class WantedChart:
    name: str
    versions: tuple[str, ...]  # exact versions (union of every entry naming this chart)
    newest: int  # plus the newest N releases; 0: none


@dataclass(frozen=True)
class ChartRepo:
    """One upstream chart repository and every chart wanted from it: one item, one index."""

    key: str  # <repo-name>: the directory under data_dir/charts/ and the state key
    upstream: str  # the repo URL as configured (no trailing slash)
    charts: tuple[WantedChart, ...]

    @property
    def index_url(self) -> str:
        return f"{self.upstream}/index.yaml"

    def spec(self) -> str:
        """What is wanted, as text: a change (or a base_url change) forces a full sync."""
        wanted = ";".join(f"{c.name}={','.join(c.versions)}/{c.newest}" for c in self.charts)
        return f"{self.upstream}|{wanted}"


def _source(cfg: Config, index: int) -> str:
    return f"{cfg.config_path or 'config'}: charts[{index}]"


def chart_repos(cfg: Config) -> list[ChartRepo]:
    """Entries grouped by repo URL, each group named once; ConfigError on conflicts."""
    names: dict[str, str] = {}  # repo URL -> repo name
    explicit: dict[str, str] = {}  # repo URL -> repo_name some entry gave
    for index, entry in enumerate(cfg.charts):
        given = entry.repo_name
        if given and explicit.setdefault(entry.repo, given) != given:
            raise ConfigError(
                _source(cfg, index),
                f"repo_name {given!r} differs from {explicit[entry.repo]!r} given for the "
                "same repo",
            )
        names.setdefault(entry.repo, entry.default_repo_name)
    names.update(explicit)
    owners: dict[str, str] = {}
    for url, name in names.items():
        first = next(i for i, e in enumerate(cfg.charts) if e.repo == url)
        if not SAFE_SEGMENT_RE.match(name) or ".." in name:
            raise ConfigError(
                _source(cfg, first), f"repo {url}: cannot derive a repo name from it; set repo_name"
            )
        if name in owners:
            raise ConfigError(
                _source(cfg, first),
                f"repos {owners[name]} and {url} would both publish /charts/{name}/; "
                "set repo_name on one of them",
            )
        owners[name] = url
    return [
        ChartRepo(name, url, _wanted([e for e in cfg.charts if e.repo == url]))
        for url, name in names.items()
    ]


def _wanted(entries: list[ChartEntry]) -> tuple[WantedChart, ...]:
    merged: dict[str, tuple[list[str], int]] = {}
    for entry in entries:
        versions, newest = merged.get(entry.name, ([], 0))
        for version in entry.versions or ():
            if version not in versions:
                versions.append(version)
        merged[entry.name] = (versions, max(newest, entry.newest or 0))
    return tuple(WantedChart(name, tuple(v), n) for name, (v, n) in merged.items())
