"""containers-registries.conf(5), read the way skopeo reads it, so that our manifest requests
go exactly where skopeo's copies go.

Supported: `[[registry]]` tables with `prefix` (defaults to `location`; `*.example.com`
wildcards), `location`, `insecure`, `blocked`, and `[[registry.mirror]]` entries with `location`,
`insecure` and `pull-from-mirror` (all / digest-only / tag-only), plus the older per-registry
`mirror-by-digest-only`. The longest matching prefix wins; the matched prefix of the reference
is replaced by `location` (c/image's rewriteReference). Drop-in files in the
`registries.conf.d` directories are merged over the main file by prefix, like c/image does;
the V1 format (`[registries.search]`...) and short-name aliases are not needed for fully
qualified references and are ignored.

No file configured: skopeo reads $HOME/.config/containers/registries.conf, else
/etc/containers/registries.conf; so do we.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirror.errors import ConfigError

DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"  # docker.io is a name, not a host that serves /v2/
SYSTEM_CONF = Path("/etc/containers/registries.conf")
SYSTEM_DROPINS = Path("/etc/containers/registries.conf.d")


@dataclass(frozen=True)
class Location:
    """One place a repository can be read from: `host` serves /v2/, `path` is the repository
    name there (what goes between /v2/ and /manifests/)."""

    host: str
    path: str
    insecure: bool = False
    ca_file: Path | None = None  # trust this CA (our registry's registry.ca_file)

    @property
    def endpoint(self) -> str:
        return DOCKER_HUB_ENDPOINT if self.host == DOCKER_HUB else self.host


@dataclass(frozen=True)
class _Mirror:
    location: str
    insecure: bool
    pull_from_mirror: str  # "all", "digest-only" or "tag-only"


@dataclass(frozen=True)
class _Registry:
    prefix: str
    location: str
    insecure: bool
    blocked: bool
    mirrors: tuple[_Mirror, ...]


class Blocked(Exception):
    """registries.conf says `blocked = true` for the matching prefix."""


def _split(name: str) -> Location:
    host, _, path = name.partition("/")
    return Location(host, path)


def _matches(repository: str, prefix: str) -> bool:
    if prefix.startswith("*."):
        host = repository.split("/", 1)[0]
        return host.endswith(prefix[1:])
    return repository == prefix or repository.startswith(prefix + "/")


@dataclass(frozen=True)
class RegistriesConf:
    registries: tuple[_Registry, ...] = ()

    def locations(self, repository: str, by_digest: bool) -> list[Location]:
        """Where to read `repository` ("host/path"), in the order skopeo tries them: mirrors
        first, the primary location last. Blocked: Blocked."""
        found = [r for r in self.registries if _matches(repository, r.prefix)]
        if not found:
            return [_split(repository)]
        reg = max(found, key=lambda r: len(r.prefix))
        if reg.blocked:
            raise Blocked(f"{repository} is blocked by registries.conf (prefix {reg.prefix!r})")
        # A wildcard prefix stands for the whole host of the reference.
        wildcard = reg.prefix.startswith("*.")
        matched = repository.split("/", 1)[0] if wildcard else reg.prefix
        rest = repository[len(matched) :]
        wanted = "digest-only" if by_digest else "tag-only"
        out = []
        for m in reg.mirrors:
            if m.pull_from_mirror in ("all", wanted):
                loc = _split(m.location.rstrip("/") + rest)
                out.append(Location(loc.host, loc.path, m.insecure))
        loc = _split((reg.location or matched).rstrip("/") + rest)
        out.append(Location(loc.host, loc.path, reg.insecure))
        return out


def _str(table: dict[str, Any], key: str, source: str) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(source, f"key {key!r} must be a string")
    return value


def _registry(table: dict[str, Any], source: str) -> _Registry:
    location = _str(table, "location", source)
    prefix = _str(table, "prefix", source) or location
    if not prefix:
        raise ConfigError(source, "a [[registry]] needs a prefix or a location")
    digest_only = bool(table.get("mirror-by-digest-only", False))
    mirrors = []
    for m in table.get("mirror") or []:
        mode = _str(m, "pull-from-mirror", source) or ("digest-only" if digest_only else "all")
        mirrors.append(_Mirror(_str(m, "location", source), bool(m.get("insecure")), mode))
    return _Registry(
        prefix,
        location,
        bool(table.get("insecure", False)),
        bool(table.get("blocked", False)),
        tuple(mirrors),
    )


def _read(path: Path) -> list[_Registry]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read registries.conf: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    tables = data.get("registry") or []
    if not isinstance(tables, list):
        raise ConfigError(str(path), "'registry' must be an array of tables ([[registry]])")
    return [_registry(t, str(path)) for t in tables]


def _dropin_dirs() -> list[Path]:
    home = Path(os.environ.get("HOME", "/root")) / ".config/containers/registries.conf.d"
    return [SYSTEM_DROPINS, home]


def load(path: Path | None) -> RegistriesConf:
    """The effective configuration: `path` (or the system default), then the drop-ins."""
    if path is None:
        user = Path(os.environ.get("HOME", "/root")) / ".config/containers/registries.conf"
        path = user if user.exists() else SYSTEM_CONF
        if not path.exists():
            return RegistriesConf()
    by_prefix = {r.prefix: r for r in _read(path)}
    for directory in _dropin_dirs():
        if directory.is_dir():
            for dropin in sorted(directory.glob("*.conf")):
                by_prefix.update({r.prefix: r for r in _read(dropin)})
    return RegistriesConf(tuple(by_prefix.values()))
