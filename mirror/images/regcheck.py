"""Can this node push to registry.url? `mirror registry check`, and the image sync's preflight.

Three steps, each failing with one line that names the registry and what to fix
(EnvironmentProblem, exit 3), so a wrong password or an untrusted CA is one clear error
instead of one per image:

1. reachable: `GET /v2/`. With registry.tls_verify https only, verified against
   registry.ca_file (else the system CAs); without it http, then https unverified, the way
   skopeo's tls-verify=false falls back.
2. authenticated: what the 401 challenge asks for, with registry.authfile's entry for the
   registry (containers-auth.json, looked up like skopeo does: "host/prefix" before "host"):
   Basic sends it, Bearer trades it for a push token at the realm; `/v2/` must then answer 200.
3. allowed to push (the check only; the sync's preflight skips it): `POST
   /v2/<prefix>/mirror-check/blobs/uploads/` starts a blob upload (202) and `DELETE` on its
   Location cancels it, so nothing is stored; 401/403 there means the account may read only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from mirror.config import Config
from mirror.errors import EnvironmentProblem
from mirror.http import Fetcher, FetchError, Reply, RequestOptions
from mirror.images.regapi import error_text
from mirror.images.regauth import Authenticator, AuthError, AuthFile, Credentials

log = logging.getLogger("mirror.images")
CHECK_REPOSITORY = "mirror-check"  # under registry.url's path; an upload there stores nothing
CHECK_TIMEOUT = 30.0


@dataclass
class _Found:
    base: str  # "https://harbor.example.com"
    opts: RequestOptions
    headers: dict[str, str] = field(default_factory=dict)
    who: str = "anonymous"
    # Bearer registries: how to get a token for another scope (DELETE needs "delete").
    token: Callable[[str], str] | None = None


def _fail(cfg: Config, message: str) -> EnvironmentProblem:
    return EnvironmentProblem(f"registry {cfg.registry.url}: {message}")


def check_repository(cfg: Config) -> str:
    return "/".join(p for p in (cfg.registry.prefix, CHECK_REPOSITORY) if p)


def _candidates(cfg: Config) -> list[tuple[str, RequestOptions]]:
    from mirror import tls

    host = cfg.registry.host
    # As the sync reaches it: verified with registry.ca_file, or the mirror's own CA when the
    # embedded registry serves TLS (mirror.tls).
    if tls.local_registry_verify(cfg):
        return [(f"https://{host}", RequestOptions(ca_file=tls.local_registry_ca(cfg)))]
    return [(f"http://{host}", RequestOptions()), (f"https://{host}", RequestOptions(False))]


def _tls_hint(cfg: Config, reason: str) -> str:
    if "not trusted" not in reason and "certificate" not in reason:
        return ""
    if cfg.registry.ca_file is not None:
        return f" (registry.ca_file {cfg.registry.ca_file} did not sign its certificate)"
    if cfg.registry.embedded:
        from mirror import tls

        return (
            f" (the embedded registry must serve the mirror's certificate, signed by "
            f"{tls.ca_file(cfg)}: restart it after tls changes or a renewal)"
        )
    return " (set registry.ca_file to the CA that signed its certificate)"


def _reach(cfg: Config, fetcher: Fetcher) -> tuple[_Found, Reply]:
    """Step 1: the first base URL whose /v2/ answers like a registry."""
    problem = "no answer"
    for base, opts in _candidates(cfg):
        url = f"{base}/v2/"
        try:
            reply = fetcher.request("GET", url, opts, limit=65536)
        except FetchError as exc:
            problem = f"cannot reach {url}: {exc}{_tls_hint(cfg, str(exc))}"
            continue
        if reply.status in (200, 401):
            return _Found(base, opts), reply
        problem = f"{url} does not answer like a registry (HTTP {reply.status})"
    raise _fail(cfg, problem)


def _credentials(cfg: Config) -> Credentials | None:
    return AuthFile(cfg.registry.authfile).lookup(cfg.registry.host, check_repository(cfg))


def _authfile_name(cfg: Config) -> str:
    return str(cfg.registry.authfile) if cfg.registry.authfile else "the default authfiles"


def _authenticate(cfg: Config, fetcher: Fetcher, found: _Found, reply: Reply) -> None:
    """Step 2: credentials the registry accepts, as headers for the requests that follow."""
    if reply.status == 200:
        return
    auth = Authenticator(fetcher)
    challenge = auth.learn(found.base, reply.headers.get("www-authenticate"))
    if challenge is None:
        raise _fail(cfg, "answers 401 without a Basic or Bearer challenge")
    creds = _credentials(cfg)
    if creds is None and challenge.scheme == "basic":
        raise _fail(
            cfg,
            f"requires authentication ({challenge.scheme}) and {_authfile_name(cfg)} has no "
            f"entry for {cfg.registry.host} (key 'registry.authfile')",
        )
    # Bearer without credentials: an anonymous token, which step 3 then tests for push.
    if creds is not None:
        found.who = f"user {creds.username!r} from {_authfile_name(cfg)}"
    if challenge.scheme == "basic" and creds is not None:
        found.headers = {"Authorization": creds.basic()}
    else:
        repository = check_repository(cfg)

        def token(actions: str) -> str:
            return auth.scoped_token(found.base, repository, challenge, creds, found.opts, actions)

        try:
            found.headers = {"Authorization": f"Bearer {token('pull,push')}"}
        except AuthError as exc:
            raise _fail(cfg, f"credentials of {found.who} refused: {exc}") from None
        found.token = token
    try:
        again = fetcher.request("GET", f"{found.base}/v2/", found.opts, headers=found.headers)
    except FetchError as exc:
        raise _fail(cfg, f"cannot reach {found.base}/v2/: {exc}") from None
    if again.status != 200:
        raise _fail(cfg, f"credentials of {found.who} refused: {error_text(again)}")


def _push(cfg: Config, fetcher: Fetcher, found: _Found) -> None:
    """Step 3: start a blob upload and cancel it."""
    repository = check_repository(cfg)
    url = f"{found.base}/v2/{repository}/blobs/uploads/"
    headers = {**found.headers, "Content-Length": "0"}
    try:
        reply = fetcher.request("POST", url, found.opts, headers=headers)
    except FetchError as exc:
        raise _fail(cfg, f"cannot start an upload at {url}: {exc}") from None
    if reply.status in (401, 403):
        raise _fail(cfg, f"{found.who} may not push to {repository} ({error_text(reply)})")
    if reply.status != 202:
        raise _fail(cfg, f"cannot push to {repository}: {error_text(reply)}")
    location = reply.headers.get("location")
    if location:
        _cancel(fetcher, found, urljoin(url, location))


def _cancel(fetcher: Fetcher, found: _Found, url: str) -> None:
    """DELETE the check's upload; a token registry wants a "delete" scope for it. A refusal
    only leaves an empty upload, which the registry purges (distribution: after a week)."""
    if urlsplit(url).netloc != urlsplit(found.base).netloc:
        # The upload's Location names another host: the registry's credentials stay home.
        log.debug("check upload at another host (%s): not cancelled", url)
        return
    try:
        done = fetcher.request("DELETE", url, found.opts, headers=found.headers)
        if done.status == 401 and found.token is not None:
            bearer = {"Authorization": f"Bearer {found.token('delete')}"}
            done = fetcher.request("DELETE", url, found.opts, headers=bearer)
        log.debug("cancelled the check upload: HTTP %d", done.status)
    except (FetchError, AuthError) as exc:
        log.debug("could not cancel the check upload: %s", exc)


def check_registry(cfg: Config, *, push: bool = True, fetcher: Fetcher | None = None) -> list[str]:
    """Steps 1-3 (1-2 without `push`); what was verified, one line each. EnvironmentProblem
    with one line for the first step that fails."""
    own = fetcher is None
    fetcher = fetcher or Fetcher(timeout=min(cfg.http_timeout, CHECK_TIMEOUT), retries=1)
    try:
        found, reply = _reach(cfg, fetcher)
        verified = "certificate verified" if found.opts.verify_tls else "not verified"
        https = f"https, {verified}" if found.base.startswith("https") else "plain http"
        lines = [f"reachable: {found.base}/v2/ ({https})"]
        _authenticate(cfg, fetcher, found, reply)
        lines.append(f"authenticated: {found.who}" if reply.status == 401 else "no auth required")
        if push:
            _push(cfg, fetcher, found)
            lines.append(
                f"push allowed: an upload to {check_repository(cfg)} started and cancelled"
            )
        return lines
    finally:
        if own:
            fetcher.close()


def needs_preflight(cfg: Config) -> bool:
    """The image sync checks steps 1-2 first where they can fail for every image alike: an
    external registry, or one with credentials or a CA configured."""
    reg = cfg.registry
    return not reg.embedded or reg.authfile is not None or reg.ca_file is not None
