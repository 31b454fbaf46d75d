"""An image sync as named stages, per image: resolve upstream -> compare -> copy -> record.

All reads are registry API requests (mirror.images.regapi, one Fetcher per run); skopeo runs
only to copy, and only when something differs.

1. resolve: one manifest request upstream. A `HEAD` (digest only) when the state of the last
   successful sync says what that digest resolves to (its fingerprint: platform mode + the
   upstream digest), so a no-op sync reads no document and Docker Hub counts no pull; a GET
   otherwise (first sync, tag moved, platforms changed): its sha256 is the digest, and for a
   single configured platform the index names that platform's manifest digest.
2. compare: one `HEAD` per destination name in our registry; missing (404) or different means
   copy. Equal everywhere: nothing else happens (no blob moves, no skopeo).
3. copy: `skopeo copy --preserve-digests` from `repo@<resolved digest>`, so what lands is exactly
   what was compared even if the tag moves meanwhile. A tag that moved upstream resolves to a
   new digest and is copied again. Further destination names (the coredns alias) are copied
   registry-locally from the first one: no upstream traffic, blobs already there.
4. record: state per image (key = upstream reference): digest, mirrored names, platforms,
   fingerprint, last_success/last_error, duration.

Platforms (see mirror.images.skopeo for what skopeo 1.9 can do):
- "all", or two or more platforms: the whole index is copied, digest kept. skopeo 1.9 cannot
  copy a subset of an index, so a platform list of several copies every platform.
- exactly one platform: only that platform's manifest is copied; the tag in our registry then
  points at the platform manifest (its upstream digest), not the index.
- references pinned by digest (`repo@sha256:...`, `repo:tag@sha256:...`) are always copied whole,
  so the pinned digest resolves in our registry.

Images are independent: the one runner (mirror.content.runner) syncs cfg.image_workers at once;
a failing image is recorded in its ImageResult.error and its state and does not stop the
others; what was mirrored before stays in the registry.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mirror import fsutil, state, tls
from mirror.config import Config
from mirror.errors import ConfigError, ImageSyncError
from mirror.http import Fetcher
from mirror.images import manifest, regcheck, registries_conf, skopeo
from mirror.images.manifest import Platform
from mirror.images.refs import ImageJob, ImageRef
from mirror.images.regapi import RegistryAPI
from mirror.images.regauth import AuthFile
from mirror.images.skopeo import Endpoint, SkopeoError

log = logging.getLogger("mirror.images")
PROBE_TIMEOUT = 10.0  # the /v2/ ping only picks a scheme; the real requests wait longer


@dataclass(frozen=True)
class ImageResult:
    upstream: str
    destinations: tuple[str, ...]
    digest: str | None  # what the destinations hold (resolved upstream digest)
    changed: bool  # something was (or, in a dry run, would be) copied
    error: str | None = None
    platforms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resolved:
    """Stage 1: what to copy for one image."""

    source: str  # "host/path@sha256:..." : the exact manifest or index to copy
    digest: str  # digest every destination must have
    all_platforms: bool
    platform: Platform | None  # the one platform copied, when not all
    platforms: tuple[str, ...]  # for state and reports; () when unknown
    fingerprint: str  # "<mode> <upstream digest>": what this was resolved from


def upstream_endpoint(cfg: Config, ca_file: Path | None = None) -> Endpoint:
    """tls_verify None: registries.conf (insecure = true) decides for upstreams. `ca_file`
    (RegistryAPI.upstream_ca): a CA file alone in its directory, for --src-cert-dir; skopeo
    adds it to the system trust (c/image tlsclientconfig), and that copy then reads no
    /etc/containers/certs.d/<host>/."""
    cert_dir = None if ca_file is None else ca_file.parent
    return Endpoint(tls_verify=None, authfile=cfg.upstream.authfile, cert_dir=cert_dir)


def local_endpoint(cfg: Config) -> Endpoint:
    return Endpoint(
        tls_verify=tls.local_registry_verify(cfg),
        authfile=cfg.registry.authfile,
        cert_dir=local_cert_dir(cfg),
    )


def local_cert_dir(cfg: Config) -> Path | None:
    """skopeo takes a CA as a directory holding ca.crt (--dest-cert-dir): registry.ca_file is
    copied to state/registry-ca/ca.crt (prepare_cert_dir), so any file name works; the
    mirror's own CA (mirror.tls) already lies alone in its directory."""
    if cfg.registry.ca_file is not None:
        return cfg.state_root / "registry-ca"
    ca = tls.local_registry_ca(cfg)
    return None if ca is None else ca.parent


def prepare_cert_dir(cfg: Config) -> None:
    if cfg.registry.ca_file is None:
        return
    directory = cfg.state_root / "registry-ca"
    try:
        data = cfg.registry.ca_file.read_bytes()
    except OSError as exc:
        raise ConfigError(
            str(cfg.config_path or "config"),
            f"key 'registry.ca_file': cannot read {cfg.registry.ca_file}: {exc.strerror}",
        ) from None
    target = directory / "ca.crt"
    if not target.is_file() or target.read_bytes() != data:
        directory.mkdir(parents=True, exist_ok=True)
        fsutil.atomic_write(target, data, 0o644)


def wanted_platforms(cfg: Config) -> list[Platform] | None:
    """None means every platform."""
    if cfg.platforms == "all":
        return None
    try:
        return [Platform.parse(p) for p in cfg.platforms]
    except ValueError as exc:
        raise ConfigError(str(cfg.config_path or "config"), f"key 'platforms': {exc}") from None


def open_api(cfg: Config, fetcher: Fetcher, probe: Fetcher) -> RegistryAPI:
    """The registry API client of one run (reads registries.conf and the authfiles once)."""
    upstream_cas = {}
    if cfg.upstream_mirror is not None:  # its registry is verified with upstream_mirror_ca
        from mirror.downstream.client import registry_cas

        upstream_cas = registry_cas(cfg)
    return RegistryAPI(
        fetcher,
        probe,
        registries_conf=registries_conf.load(cfg.upstream.registries_conf),
        upstream_auth=AuthFile(cfg.upstream.authfile),
        local_url=cfg.registry.host,
        local_tls_verify=tls.local_registry_verify(cfg),
        local_auth=AuthFile(cfg.registry.authfile),
        local_ca_file=tls.local_registry_ca(cfg),
        upstream_cas=upstream_cas,
    )


def _mode(ref: ImageRef, wanted: list[Platform] | None) -> Platform | None:
    """The one platform to copy, or None for the whole index (pinned references always)."""
    if wanted is not None and len(wanted) == 1 and not ref.digest:
        return wanted[0]
    return None


def _from_state(
    ref: ImageRef, one: Platform | None, fingerprint: str, previous: state.ImageRecord
) -> Resolved | None:
    """What the last successful sync resolved the same upstream digest to, if it did: the
    digest names the document, so the outcome is the same without reading it again."""
    if previous.fingerprint != fingerprint or not previous.digest or not previous.platforms:
        return None
    if one is None:
        source = f"{ref.repository}@{previous.digest}"
        return Resolved(source, previous.digest, True, None, tuple(previous.platforms), fingerprint)
    plat = Platform.parse(previous.platforms[0])
    source = f"{ref.repository}@{previous.digest}"
    return Resolved(source, previous.digest, False, plat, (str(plat),), fingerprint)


def resolve(
    api: RegistryAPI,
    ref: ImageRef,
    wanted: list[Platform] | None,
    previous: state.ImageRecord | None = None,
    known_digest: str | None = None,
) -> Resolved:
    """Stage 1: one manifest request upstream (two when the tag moved since the last sync);
    none when `known_digest` (what the HEAD would answer) is what the last sync resolved."""
    image = ref.upstream
    reference = ref.digest or ref.tag or "latest"
    one = _mode(ref, wanted)
    mode = _mode_key(ref, one, wanted)
    if previous is not None and previous.fingerprint:
        head = known_digest or api.upstream(ref, reference).digest
        known = _from_state(ref, one, f"{mode} {head}", previous)
        if known is not None:
            _check_pinned(ref, head)
            return known
        reference = head  # read exactly the document HEAD named
    got = api.upstream(ref, reference, body=True)
    top = got.digest
    _check_pinned(ref, top)
    assert got.body is not None
    doc = manifest.parse_manifest(got.body, image)
    index = manifest.is_index(doc)
    entries = [p for p, _ in manifest.index_platforms(doc)] if index else []
    listed = tuple(sorted(str(p) for p in entries))
    source = f"{ref.repository}@{top}"
    fingerprint = f"{mode} {top}"
    if one is not None:
        if not index:  # a single-platform image: copied as it is
            return Resolved(source, top, False, one, (str(one),), fingerprint)
        plat, digest = manifest.select_platform(doc, one, image)
        return Resolved(
            f"{ref.repository}@{digest}", digest, False, plat, (str(plat),), fingerprint
        )
    if wanted is not None and index:
        _warn_missing(image, wanted, entries)
    return Resolved(source, top, True, None, listed, fingerprint)


def _mode_key(ref: ImageRef, one: Platform | None, wanted: list[Platform] | None) -> str:
    """What decides the outcome of resolve besides the upstream digest (the fingerprint's
    first half): a state written under other platform settings is not reused."""
    if ref.digest:
        return "pinned"  # always the whole index
    if one is not None:
        return str(one)
    return "all" if wanted is None else ",".join(str(w) for w in wanted)


def _warn_missing(image: str, wanted: list[Platform], entries: list[Platform]) -> None:
    missing = [
        str(w)
        for w in wanted
        if not any(
            (p.os, p.arch) == (w.os, w.arch) and w.variant in (None, p.variant) for p in entries
        )
    ]
    if missing:
        log.warning("%s: upstream has no %s image", image, ", ".join(missing))


def _check_pinned(ref: ImageRef, served: str) -> None:
    if ref.digest and served != ref.digest:
        raise ImageSyncError(ref.upstream, f"upstream served {served}, not the pinned digest")


def local_digest(api: RegistryAPI, name: str, image: str) -> str | None:
    """Stage 2, one destination: its digest in our registry, None when it has no such tag."""
    return api.local_digest(name, image)


def copy_to(
    cfg: Config,
    job: ImageJob,
    resolved: Resolved,
    targets: Sequence[str],
    source_ca: Path | None = None,
) -> None:
    """Stage 3: the first destination from upstream (verified with `source_ca` when given),
    the others from our first copy."""
    image = job.source.upstream
    first = job.destinations[0]
    for name in targets:
        try:
            if name == first:
                skopeo.copy(
                    resolved.source,
                    name,
                    all_platforms=resolved.all_platforms,
                    platform=resolved.platform,
                    src_endpoint=upstream_endpoint(cfg, source_ca),
                    dest_endpoint=local_endpoint(cfg),
                    registries_conf=cfg.upstream.registries_conf,
                    image=image,
                )
            else:  # registry-local: an alias of an image we hold (first is up to date)
                skopeo.copy(
                    first,
                    name,
                    all_platforms=True,
                    src_endpoint=local_endpoint(cfg),
                    dest_endpoint=local_endpoint(cfg),
                    registries_conf=cfg.upstream.registries_conf,
                    image=image,
                )
        except SkopeoError as exc:
            raise SkopeoError(image, f"copy to {name}: {exc.reason}") from None
        log.info("%s: copied to %s (%s)", image, name, resolved.digest)


def sync_image(
    cfg: Config,
    api: RegistryAPI,
    job: ImageJob,
    wanted: list[Platform] | None,
    dry_run: bool,
    previous: state.ImageRecord | None = None,
) -> tuple[ImageResult, Resolved]:
    """Stages 1-3 for one image; raises MirrorError on failure."""
    image = job.source.upstream
    resolved = resolve(api, job.source, wanted, previous, job.known_digest)
    current = {name: local_digest(api, name, image) for name in job.destinations}
    targets = [name for name, digest in current.items() if digest != resolved.digest]
    if not targets:
        log.debug("%s: up to date (%s)", image, resolved.digest)
    elif dry_run:
        for name in targets:
            log.info("%s: would copy %s to %s", image, resolved.digest, name)
    else:
        # Destinations keep their order, so a stale first name is refreshed before the alias
        # is copied from it.
        copy_to(cfg, job, resolved, targets, api.upstream_ca(job.source))
    result = ImageResult(
        image, job.destinations, resolved.digest, bool(targets), platforms=resolved.platforms
    )
    return result, resolved


@dataclass
class ImageSession:
    """What the images of one run share: the registry API client and the platform choice."""

    cfg: Config
    api: RegistryAPI
    wanted: list[Platform] | None
    _repo_locks: dict[str, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def repository_lock(self, repository: str) -> threading.Lock:
        """One image of a repository at a time: two skopeo copies pushing the same blobs and
        an index into one repository at once can see each other's half-written uploads, and
        skopeo then falls back to converting the index, which --preserve-digests forbids
        (seen as a flaky failure copying nginx:1.25 and nginx@sha256:... together)."""
        with self._guard:
            return self._repo_locks.setdefault(repository, threading.Lock())


@contextmanager
def image_session(cfg: Config, workers: int) -> Iterator[ImageSession]:
    """Fails every image alike (EnvironmentProblem: no skopeo; ConfigError: bad platforms)."""
    skopeo.binary()  # no skopeo: one clear error instead of one per image
    wanted = wanted_platforms(cfg)
    prepare_cert_dir(cfg)
    fetcher = Fetcher(timeout=cfg.http_timeout, retries=cfg.http_retries, parallel=workers)
    # Pings that fail only mean "try the other scheme": no retries, no long wait.
    probe = Fetcher(timeout=min(cfg.http_timeout, PROBE_TIMEOUT), retries=0, parallel=1)
    try:
        if regcheck.needs_preflight(cfg):  # a wrong password or CA: one line, not one per image
            regcheck.check_registry(cfg, push=False, fetcher=fetcher)
        yield ImageSession(cfg, open_api(cfg, fetcher, probe), wanted)
    finally:
        fetcher.close()
        probe.close()


def sync_one(
    session: ImageSession, job: ImageJob, record: state.ImageRecord, dry_run: bool
) -> ImageResult:
    """One image through stages 1-3; its record gets what the destinations now hold."""
    with session.repository_lock(job.source.repository):
        result, resolved = sync_image(
            session.cfg, session.api, job, session.wanted, dry_run, record
        )
    record.digest = result.digest
    record.mirrored = list(job.destinations)
    record.platforms = list(result.platforms)
    record.fingerprint = resolved.fingerprint
    return result


def sync_images(cfg: Config, jobs: Sequence[ImageJob], dry_run: bool = False) -> list[ImageResult]:
    """Mirror every job into cfg.registry.url through the one runner; results in job order.
    Needs a registry answering there (`mirror sync` brings one up: mirror.images.kind).

    Raises only for what fails every image alike (EnvironmentProblem, ConfigError); per-image
    problems are in the results and the state."""
    from mirror.content.kind import SyncRequest
    from mirror.content.runner import run_items
    from mirror.images.kind import KIND

    if not jobs:
        return []
    with image_session(cfg, KIND.workers(cfg, jobs)) as session:
        done = run_items(cfg, KIND, session, jobs, SyncRequest(dry_run=dry_run))
    return [
        ImageResult(job.source.upstream, job.destinations, None, False, item.error)
        if item.error or not isinstance(item.detail, ImageResult)
        else item.detail
        for job, item in zip(jobs, done, strict=True)
    ]


def mirrored_images(cfg: Config) -> list[tuple[str, str, str]]:
    """(upstream, mirrored name, digest) of every image synced successfully at least once, from
    state; an image whose last sync failed is listed with what it still has in the registry."""
    rows = []
    for record in state.load_all(cfg.state_root, "images"):
        if not (record.last_success and record.digest and record.mirrored):
            continue
        for name in record.mirrored:
            rows.append((record.upstream or record.key, name, record.digest))
    return sorted(rows)
