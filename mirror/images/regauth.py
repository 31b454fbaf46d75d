"""Registry authentication: credentials from a containers-auth.json(5) file, the
`WWW-Authenticate` challenge, and Bearer tokens from the registry's token service.

- Basic challenge: the authfile's user:password, sent on every request to that registry.
- Bearer challenge (Docker Hub, quay.io, registry.k8s.io, a distribution registry with
  `auth: token`): GET realm?service=...&scope=repository:<path>:pull, with the authfile's
  credentials as Basic when there are any (anonymous otherwise); the token is kept per
  (registry, repository) until it expires.
Once a registry has challenged, later repositories get their token before the manifest
request, so each name costs one manifest request.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from mirror.errors import ConfigError
from mirror.http import Fetcher, FetchError, RequestOptions

DEFAULT_TOKEN_LIFETIME = 60.0  # the token spec's default when the reply names none
_EXPIRY_MARGIN = 10.0  # renew a little early: a token must not expire between check and use
_TOKEN_LIMIT = 1024 * 1024
_PARAM_RE = re.compile(r'\s*([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*,?')
_SCHEME_RE = re.compile(r"\s*([A-Za-z][\w-]*)\s+")
_DOCKER_HUB_KEYS = {"docker.io", "index.docker.io", "registry-1.docker.io"}


class AuthError(Exception):
    """Authentication failed; `url` says where, the message why."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(reason)
        self.url = url


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer" (lower case)
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """`Bearer realm="https://a/token",service="x",scope="y"` (several challenges may share
    one header: `Basic realm="r", Bearer realm="t"`) -> [Challenge, ...]."""
    found: list[Challenge] = []
    pos = 0
    while pos < len(header):
        m = _SCHEME_RE.match(header, pos)
        if not m:
            break
        scheme, pos = m[1].lower(), m.end()
        params: dict[str, str] = {}
        while (p := _PARAM_RE.match(header, pos)) and p.end() > pos:
            value = p[2] if p[2] is not None else p[3]
            params[p[1].lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = p.end()
        found.append(Challenge(scheme, params))
    return found


def _normalize_key(key: str) -> str:
    """Authfile keys: "quay.io", "quay.io/org/repo", or docker's legacy
    "https://index.docker.io/v1/"; docker.io under any of its names."""
    if "://" in key:
        key = key.split("://", 1)[1].split("/", 1)[0]  # legacy URL keys name a host only
    key = key.rstrip("/")
    host, sep, rest = key.partition("/")
    if host in _DOCKER_HUB_KEYS:
        host = "docker.io"
    return host + sep + rest


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def _default_authfiles() -> list[Path]:
    """Where skopeo looks when no --authfile is given (containers-auth.json(5))."""
    if os.environ.get("REGISTRY_AUTH_FILE"):
        return [Path(os.environ["REGISTRY_AUTH_FILE"])]
    home = Path(os.environ.get("HOME", "/root"))
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return [
        Path(runtime) / "containers/auth.json",
        home / ".config/containers/auth.json",
        home / ".docker/config.json",
    ]


def _decode(key: str, entry: object, source: str) -> Credentials | None:
    if not isinstance(entry, dict) or not entry.get("auth"):
        return None  # identitytoken-only entries: see AuthFile
    try:
        user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, TypeError):
        raise ConfigError(source, f"auths[{key!r}].auth is not base64 of user:password") from None
    return Credentials(user, password) if sep else None


class AuthFile:
    """Credentials per registry (and, more specific, per repository namespace)."""

    def __init__(self, path: Path | None) -> None:
        self._entries: dict[str, Credentials] = {}
        for candidate in [path] if path is not None else _default_authfiles():
            if path is None and not candidate.is_file():
                continue
            self._load(candidate)
            if path is None and self._entries:
                break

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read authfile: {exc.strerror}") from None
        except ValueError:
            raise ConfigError(str(path), "authfile is not JSON") from None
        auths = data.get("auths") if isinstance(data, dict) else None
        if not isinstance(auths, dict):
            return
        for key, entry in auths.items():
            creds = _decode(key, entry, str(path))
            if creds is not None:
                self._entries.setdefault(_normalize_key(key), creds)

    def lookup(self, registry: str, repository: str) -> Credentials | None:
        """The most specific entry: "host/ns/repo", then "host/ns", then "host"."""
        host = _normalize_key(registry)
        parts = [p for p in repository.split("/") if p]
        for n in range(len(parts), -1, -1):
            key = "/".join([host, *parts[:n]])
            if key in self._entries:
                return self._entries[key]
        return None


@dataclass
class _Token:
    value: str
    expires: float


class Authenticator:
    """Authorization headers for one sync run; thread-safe.

    `registry` names the registry for authfile lookups (the host as written in references,
    "docker.io" not "registry-1.docker.io"); `base` is the URL requests go to.
    """

    def __init__(self, fetcher: Fetcher) -> None:
        self._fetcher = fetcher
        self._lock = threading.Lock()
        self._challenges: dict[str, Challenge] = {}  # base -> the challenge it answered with
        self._tokens: dict[tuple[str, str], _Token] = {}

    def learn(self, base: str, header: str | None) -> Challenge | None:
        """Remember the challenge a registry answered with (the /v2/ ping or a 401)."""
        supported = [c for c in parse_challenges(header or "") if c.scheme in ("basic", "bearer")]
        # Bearer first: a registry offering both wants tokens from clients that can do them.
        supported.sort(key=lambda c: c.scheme != "bearer")
        if not supported:
            return None
        with self._lock:
            self._challenges[base] = supported[0]
        return supported[0]

    def headers(
        self, base: str, repository: str, creds: Credentials | None, opts: RequestOptions
    ) -> dict[str, str]:
        """What to send before any 401: nothing for a registry that has not challenged."""
        with self._lock:
            challenge = self._challenges.get(base)
            token = self._tokens.get((base, repository))
        if challenge is None:
            return {}
        if challenge.scheme == "basic":
            return {"Authorization": creds.basic()} if creds else {}
        if token is not None and token.expires > time.monotonic():
            return {"Authorization": f"Bearer {token.value}"}
        value = self._fetch_token(base, repository, challenge, creds, opts)
        return {"Authorization": f"Bearer {value}"}

    def forget(self, base: str, repository: str) -> None:
        """A token the registry refused (revoked, or the clock was off): get a new one."""
        with self._lock:
            self._tokens.pop((base, repository), None)

    def scoped_token(
        self,
        base: str,
        repository: str,
        challenge: Challenge,
        creds: Credentials | None,
        opts: RequestOptions,
        actions: str,
    ) -> str:
        """A token for other actions than pull ("pull,push", "delete": `mirror registry
        check`); not kept."""
        return self._fetch_token(base, repository, challenge, creds, opts, actions)

    def _fetch_token(
        self,
        base: str,
        repository: str,
        challenge: Challenge,
        creds: Credentials | None,
        opts: RequestOptions,
        actions: str = "pull",
    ) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthError(base, "Bearer challenge without a realm")
        query = {"scope": f"repository:{repository}:{actions}"}
        if challenge.params.get("service"):
            query["service"] = challenge.params["service"]
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        headers: Mapping[str, str] = {"Authorization": creds.basic()} if creds else {}
        started = time.monotonic()
        try:
            reply = self._fetcher.request("GET", url, opts, headers=headers, limit=_TOKEN_LIMIT)
        except FetchError as exc:
            raise AuthError(exc.url, f"token request failed: {exc}") from None
        if reply.status != 200:
            who = "credentials from the authfile" if creds else "anonymous access"
            raise AuthError(url, f"token service answered HTTP {reply.status} ({who})")
        try:
            doc = json.loads(reply.body)
            value = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            raise AuthError(url, "token service answered something that is not a token") from None
        if not isinstance(value, str) or not value:
            raise AuthError(url, "token service answered without a token")
        expires = started + max(lifetime - _EXPIRY_MARGIN, 1.0)
        if actions == "pull":  # the cache holds pull tokens only
            with self._lock:
                self._tokens[(base, repository)] = _Token(value, expires)
        return value
