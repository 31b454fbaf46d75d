"""Digests and manifests straight from the registry API (distribution spec), so comparing an
image costs one small request per name instead of one skopeo process.

- `HEAD /v2/<name>/manifests/<ref>` with every manifest type in `Accept` answers the digest in
  `Docker-Content-Digest`; no body moves, and Docker Hub does not count a HEAD against its pull
  rate limit. A registry that names no digest on HEAD is asked with GET, and the digest is the
  sha256 of the body (what skopeo --preserve-digests stores).
- GET when the document itself is needed (the index, to pick one platform, or to list its
  platforms).
- Upstream references are redirected by registries.conf exactly where skopeo's copy will read
  them (mirror.images.registries_conf): mirrors first, then the primary location.
- Each registry is pinged once per run (`GET /v2/`, as docker clients do): that picks http or
  https for `insecure` ones and learns its auth challenge, so even the first repository of a
  token registry costs one manifest request (mirror.images.regauth).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from mirror.errors import ImageSyncError
from mirror.http import DownloadJob, Expected, Fetcher, FetchError, Reply, RequestOptions
from mirror.images.manifest import ACCEPT, digest_of
from mirror.images.refs import BadReference, ImageRef, parse_reference
from mirror.images.regauth import Authenticator, AuthError, AuthFile
from mirror.images.registries_conf import Blocked, Location, RegistriesConf

MANIFEST_LIMIT = 4 * 1024 * 1024  # distribution refuses manifests larger than this
_MISSING_CODES = {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"}
_MANIFEST_PATH_RE = re.compile(r"^[a-z]+://[^/]+/v2/(.+)/manifests/[^/?]+")
_REASONS = {401: "unauthorized", 403: "access denied", 404: "manifest unknown"}


@dataclass(frozen=True)
class Manifest:
    digest: str
    body: bytes | None  # None for a HEAD answer
    url: str


class _Missing(Exception):
    """The registry answered: no such repository, tag or digest."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(reason)
        self.url = url
        self.reason = reason


class _Failed(Exception):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(reason)
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class _Base:
    url: str  # "https://registry-1.docker.io"
    opts: RequestOptions


def _origin(url: str) -> str:
    """ "https://host:port/v2/..." -> "https://host:port"."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _repository_in(url: str) -> str | None:
    """The repository name in a manifest URL (after a redirect it may differ from ours)."""
    m = _MANIFEST_PATH_RE.search(url)
    return m[1] if m else None


def _error_codes(reply: Reply) -> set[str]:
    """Error codes of the spec's error body (some registries say NAME_UNKNOWN with a 400)."""
    if not 400 <= reply.status < 500 or not reply.body:
        return set()
    try:
        errors = json.loads(reply.body).get("errors") or []
        return {str(e.get("code")) for e in errors if isinstance(e, dict)}
    except (ValueError, AttributeError):
        return set()


def _error_text(reply: Reply) -> str:
    """The registry's own words from an error body (`{"errors": [{"code", "message"}]}`)."""
    reason = _REASONS.get(reply.status, "unexpected answer")
    try:
        errors = json.loads(reply.body).get("errors") or []
        messages = [str(e.get("message") or e.get("code")) for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError):
        messages = []
    if messages:
        reason = "; ".join(dict.fromkeys(m.strip() for m in messages if m.strip()))
    return f"{reason} (HTTP {reply.status})"


error_text = _error_text  # for mirror.images.regcheck


class RegistryAPI:
    """Manifest digests of upstream tags and of our copies, for one sync run; thread-safe.

    `fetcher` makes the requests (with its retries); `probe` (no retries, short timeout) only
    pings /v2/, where a failure just means "try the other scheme".
    """

    def __init__(
        self,
        fetcher: Fetcher,
        probe: Fetcher,
        *,
        registries_conf: RegistriesConf,
        upstream_auth: AuthFile,
        local_url: str,
        local_tls_verify: bool,
        local_auth: AuthFile,
        local_ca_file: Path | None = None,
        upstream_cas: Mapping[str, Path] | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._probe = probe
        self._conf = registries_conf
        self._upstream_auth = upstream_auth
        self._local_url = local_url
        self._local_tls = local_tls_verify
        self._local_auth = local_auth
        self._local_ca = local_ca_file
        # host -> CA for upstream registries verified with a CA of their own (a downstream
        # mirror's upstream_mirror_ca for its upstream mirror's registry); others: the system's
        self._upstream_cas = dict(upstream_cas or {})
        self._auth = Authenticator(fetcher)
        self._bases: dict[tuple[str, bool, bool, Path | None], _Base] = {}
        self._locks: dict[tuple[str, bool, bool, Path | None], threading.Lock] = {}
        self._lock = threading.Lock()

    # -- upstream ------------------------------------------------------------------------

    def upstream(self, ref: ImageRef, reference: str, *, body: bool = False) -> Manifest:
        """The manifest `reference` (tag or digest) of `ref`'s repository upstream: digest only
        (HEAD) unless `body`. ImageSyncError naming the url when no location has it."""
        image = ref.upstream
        try:
            locations = self._conf.locations(ref.repository, reference.startswith("sha256:"))
        except Blocked as exc:
            raise ImageSyncError(image, str(exc)) from None
        failure: _Missing | _Failed | None = None
        for loc in locations:  # mirrors first; the primary location's error is the one shown
            loc = replace(loc, ca_file=self._upstream_cas.get(loc.host))
            try:
                return self._manifest(loc, reference, body, self._upstream_auth, prefer_http=False)
            except (_Missing, _Failed) as exc:
                failure = exc
        assert failure is not None  # locations() always names at least the primary
        raise ImageSyncError(image, f"{failure.url}: {failure.reason}")

    def upstream_ca(self, ref: ImageRef) -> Path | None:
        """The CA `ref`'s repository is verified with where skopeo's copy (always by digest)
        reads it, for --src-cert-dir; None: the system trust."""
        try:
            locations = self._conf.locations(ref.repository, True)
        except Blocked:
            return None
        found = [self._upstream_cas.get(loc.host) for loc in locations]
        return next((ca for ca in found if ca is not None), None)

    # -- our registry --------------------------------------------------------------------

    def local_digest(self, name: str, image: str) -> str | None:
        """The digest `name` ("<registry.url>/<host>/<path>:<tag>" or "...@sha256:...") has in
        our registry; None when the repository or tag does not exist there."""
        try:
            ref = parse_reference(name)
        except BadReference as exc:
            raise ImageSyncError(image, f"bad name in our registry {name!r}: {exc}") from None
        if ref.host != self._local_url:
            raise ImageSyncError(image, f"{name} is not in our registry {self._local_url}")
        loc = Location(ref.host, ref.path, insecure=not self._local_tls, ca_file=self._local_ca)
        reference = ref.digest or ref.tag or "latest"
        try:
            return self._manifest(loc, reference, False, self._local_auth, prefer_http=True).digest
        except _Missing:
            return None
        except _Failed as exc:
            raise ImageSyncError(
                image, f"checking {name} in our registry: {exc.url}: {exc.reason}"
            ) from None

    # -- our registry's repositories, for `mirror prune` ------------------------------------
    # By repository path ("docker.io/library/nginx") under local_url: tag lists, manifests
    # by tag or digest, deletes by digest (distribution 2.8 deletes manifests by digest only;
    # every tag naming that digest goes with it).

    def _local(self, method: str, repository: str, suffix: str) -> Reply:
        loc = Location(
            self._local_url, repository, insecure=not self._local_tls, ca_file=self._local_ca
        )
        base = self._base(loc, True)
        url = f"{base.url}/v2/{repository}/{suffix}"
        try:
            return self._authorized(method, url, base, loc, self._local_auth)
        except _Failed as exc:
            raise self._local_error(repository, f"{exc.url}: {exc.reason}") from None

    def _local_error(self, repository: str, message: str) -> ImageSyncError:
        return ImageSyncError(f"{self._local_url}/{repository}", message)

    def local_tags(self, repository: str) -> list[str]:
        """Every tag of `repository` in our registry ([] when it has no such repository)."""
        reply = self._local("GET", repository, "tags/list")
        if reply.status == 404 or _error_codes(reply) & _MISSING_CODES:
            return []
        if reply.status != 200:
            raise self._local_error(repository, f"listing tags: {_error_text(reply)}")
        try:
            tags = json.loads(reply.body).get("tags") or []
        except (ValueError, AttributeError):
            raise self._local_error(repository, "listing tags: not a tag list") from None
        return sorted(str(t) for t in tags)

    def local_manifest(self, repository: str, reference: str) -> Manifest | None:
        """The manifest a tag or digest names in our registry, with its body; None when
        there is none."""
        reply = self._local("GET", repository, f"manifests/{reference}")
        if reply.status == 404 or _error_codes(reply) & _MISSING_CODES:
            return None
        if reply.status != 200:
            raise self._local_error(repository, f"reading {reference}: {_error_text(reply)}")
        return Manifest(digest_of(reply.body), reply.body, reply.url)

    def delete_local(self, repository: str, digest: str) -> bool:
        """DELETE manifest `digest` from our registry; False when it was already gone."""
        reply = self._local("DELETE", repository, f"manifests/{digest}")
        if reply.status in (200, 202):
            return True
        if reply.status == 404 or _error_codes(reply) & _MISSING_CODES:
            return False
        why = _error_text(reply)
        if reply.status == 405:  # storage.delete.enabled is false in the registry's config
            why = f"deletes are disabled in the registry's config ({why})"
        raise self._local_error(repository, f"deleting {digest}: {why}")

    def local_blob(self, repository: str, digest: str, dest: Path, size: int) -> bool:
        """Blob `digest` of `repository` in our registry streamed into `dest` (verified
        against digest and size while written, renamed into place: mirror.transfers), with
        the authfile's credentials and the challenge the registry asks for. False when the
        registry has no such blob; ImageSyncError naming the HTTP status otherwise."""
        loc = Location(
            self._local_url, repository, insecure=not self._local_tls, ca_file=self._local_ca
        )
        base = self._base(loc, True)  # the ping learnt the registry's challenge, if any
        creds = self._local_auth.lookup(loc.host, repository)
        algorithm, _, hexdigest = digest.partition(":")
        for attempt in range(2):
            try:
                auth = self._auth.headers(base.url, repository, creds, base.opts)
            except AuthError as exc:
                raise self._local_error(repository, f"blob {digest}: {exc}") from None
            job = DownloadJob(
                f"{base.url}/v2/{repository}/blobs/{digest}",
                dest,
                Expected(algorithm, hexdigest, size),
                base.opts,
                label=digest,
                headers=tuple(f"{k}: {v}" for k, v in auth.items()),
            )
            failed = self._fetcher.download_many([job])
            if not failed:
                return True
            # Why, asked with HEAD (no GET first: a storage redirect is presigned for GET):
            # it also learns a challenge the ping did not get and renews an expired token.
            reply = self._local("HEAD", repository, f"blobs/{digest}")
            if reply.status == 404 or _error_codes(reply) & (_MISSING_CODES | {"BLOB_UNKNOWN"}):
                return False
            if reply.status != 200:
                reason = {401: "unauthorized", 403: "access denied"}.get(reply.status, "refused")
                why = f"{reason} (HTTP {reply.status})"
                raise self._local_error(repository, f"blob {digest}: {why}")
            if attempt:
                raise self._local_error(repository, f"blob {digest}: {failed[0][1]}")
        return False  # not reached: the second attempt returns or raises

    # -- one manifest request --------------------------------------------------------------

    def _manifest(
        self, loc: Location, reference: str, body: bool, authfile: AuthFile, *, prefer_http: bool
    ) -> Manifest:
        base = self._base(loc, prefer_http)
        url = f"{base.url}/v2/{loc.path}/manifests/{reference}"
        reply = self._authorized("GET" if body else "HEAD", url, base, loc, authfile)
        if reply.status == 200 and not body:
            digest = reply.headers.get("docker-content-digest", "")
            if digest.startswith("sha256:"):
                return Manifest(digest, None, url)
            # No digest header on HEAD (some registries and proxies drop it): read the body.
            reply = self._authorized("GET", url, base, loc, authfile)
        if reply.status == 200:
            return Manifest(digest_of(reply.body), reply.body, url)
        if reply.status == 404 or _error_codes(reply) & _MISSING_CODES:
            raise _Missing(url, _error_text(reply))
        raise _Failed(url, _error_text(reply))

    def _authorized(
        self, method: str, url: str, base: _Base, loc: Location, authfile: AuthFile
    ) -> Reply:
        """One request with whatever the registry's challenge asks for; after a 401 (a
        registry that did not challenge the ping, an expired token) one more with new
        credentials. A registry that redirects manifest requests to another host which then
        challenges (libcurl drops Authorization across hosts) is asked there directly."""
        creds = authfile.lookup(loc.host, loc.path)
        origin, repository, target = base.url, loc.path, url
        reply: Reply | None = None
        for _ in range(2):
            try:
                auth = self._auth.headers(origin, repository, creds, base.opts)
                headers = {"Accept": ACCEPT, **auth}
                reply = self._fetcher.request(
                    method, target, base.opts, headers=headers, limit=MANIFEST_LIMIT
                )
            except FetchError as exc:
                raise _Failed(exc.url, str(exc)) from None
            except AuthError as exc:
                raise _Failed(exc.url, str(exc)) from None
            if reply.status != 401:
                return reply
            moved = _origin(reply.url)
            if moved != origin:
                origin, target = moved, reply.url
                repository = _repository_in(reply.url) or repository
                auth = {}
                # Credentials are for the registry they were given for: never hand them to
                # the host a redirect points at (libcurl drops them across hosts on purpose).
                creds = authfile.lookup(urlsplit(reply.url).netloc, repository)
            challenge = self._auth.learn(origin, reply.headers.get("www-authenticate"))
            if challenge is None or (challenge.scheme == "basic" and creds is None):
                break
            if auth and challenge.scheme == "basic":
                break  # the authfile's password was refused: asking again cannot help
            self._auth.forget(origin, repository)
        assert reply is not None
        if reply.status == 401 and creds is None:
            raise _Failed(url, f"authentication required and no credentials for {loc.host}")
        return reply

    # -- scheme and challenge, once per registry per run ------------------------------------

    def _base(self, loc: Location, prefer_http: bool) -> _Base:
        key = (loc.endpoint, loc.insecure, prefer_http, loc.ca_file)
        with self._lock:
            if key in self._bases:
                return self._bases[key]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one ping per registry, however many image threads ask at once
            with self._lock:
                if key in self._bases:
                    return self._bases[key]
            base = self._ping(loc, prefer_http)
            with self._lock:
                self._bases[key] = base
            return base

    def _ping(self, loc: Location, prefer_http: bool) -> _Base:
        """`GET /v2/`: https only for a secure location; for an insecure one https without
        verification, then http, like skopeo (our own registry: http first, like its probe
        in mirror.images.registry)."""
        secure = _Base(f"https://{loc.endpoint}", RequestOptions(ca_file=loc.ca_file))
        if not loc.insecure:
            candidates = [secure]
        else:
            https = _Base(f"https://{loc.endpoint}", RequestOptions(verify_tls=False))
            http = _Base(f"http://{loc.endpoint}", RequestOptions())
            candidates = [http, https] if prefer_http else [https, http]
        answered: list[tuple[_Base, Reply]] = []
        for base in candidates:
            try:
                reply = self._probe.request("GET", f"{base.url}/v2/", base.opts, limit=65536)
            except FetchError:
                continue
            answered.append((base, reply))
            if reply.status in (200, 401) or "docker-distribution-api-version" in reply.headers:
                break
        if not answered:
            return candidates[0]  # the real request (with retries) reports what is wrong
        # A registry-like answer wins; else the first that answered at all.
        base, reply = next(((b, r) for b, r in answered if r.status in (200, 401)), answered[0])
        if reply.status == 401:
            self._auth.learn(base.url, reply.headers.get("www-authenticate"))
        return base
