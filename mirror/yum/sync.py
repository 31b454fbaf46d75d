"""A repo sync as named stages: fetch metadata -> plan -> download -> publish.

Data flows one way: each stage takes what the previous one returned. A failure in any stage
raises for that target (RepoSyncError, or an OSError for local trouble); its published copy is
left exactly as it was. The per-target loop, state and errors are mirror.content.runner's
(mirror.yum.kind makes repos a kind of content).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from mirror import fsutil, gpg, state
from mirror.config import Config
from mirror.errors import RepoSyncError
from mirror.http import Fetcher, FetchError, RequestOptions
from mirror.progress import human_bytes
from mirror.repofile import RepoTarget
from mirror.yum import publish
from mirror.yum.checksums import ChecksumCache
from mirror.yum.download import download_packages
from mirror.yum.metadata import (
    REPOMD,
    PackageRef,
    UpstreamMetadata,
    fetch_metadata_files,
    fetch_repomd,
    join_url,
    parse_packages,
    parse_repomd,
)
from mirror.yum.plan import DuplicateHref, Plan, check_space, make_plan
from mirror.yum.signatures import StreamingVerifier

log = logging.getLogger("mirror.yum")


@dataclass(frozen=True)
class RepoResult:
    key: str
    changed: bool
    packages: int = 0
    downloaded: int = 0
    downloaded_bytes: int = 0
    total_bytes: int | None = None  # size of the published packages
    fingerprint: str | None = None  # of what is now published; see repo_fingerprint


def _options(target: RepoTarget) -> RequestOptions:
    d = target.definition
    return RequestOptions(d.sslverify, d.proxy, d.username, d.password, d.sslcacert)


def key_path(cfg: Config, target: RepoTarget) -> Path:
    return cfg.keys_root / target.key_file


def fetch_keys(target: RepoTarget, fetcher: Fetcher, opts: RequestOptions) -> bytes:
    """All gpgkey URLs of the target, concatenated; each must hold at least one public key."""
    blobs = []
    for url in target.gpgkeys:
        try:
            blob = fetcher.get_bytes(url, opts, limit=1024 * 1024)
        except FetchError as exc:
            raise RepoSyncError(target.key, f"cannot fetch gpgkey: {exc}", exc.url) from None
        if not gpg.key_fingerprints(blob):
            raise RepoSyncError(target.key, "gpgkey holds no OpenPGP public key", url)
        blobs.append(_armored(blob))
    return b"".join(blobs)


def _armored(blob: bytes) -> bytes:
    """A key file as ASCII armour, so that several can be concatenated into the one file
    nodes import: an armoured key is kept as is (trailing newline normalised); a binary one
    (gpg --export without --armor) is armoured here, since binary and armoured data cannot
    share a file and a stripped trailing byte would corrupt a binary key."""
    if blob.lstrip().startswith(b"-----BEGIN PGP"):
        return blob.rstrip(b"\r\n") + b"\n"
    crc = 0xB704CE
    for byte in blob:  # CRC-24 of RFC 4880 section 6.1
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    body = base64.encodebytes(blob).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    checksum = base64.b64encode((crc & 0xFFFFFF).to_bytes(3, "big"))
    return b"\n".join(
        [
            b"-----BEGIN PGP PUBLIC KEY BLOCK-----",
            b"",
            *lines,
            b"=" + checksum,
            b"-----END PGP PUBLIC KEY BLOCK-----",
            b"",
        ]
    )


def repo_fingerprint(repomd: bytes, cfg: Config, target: RepoTarget) -> str:
    """Identifies what a published copy was made from: upstream repomd.xml and our filter."""
    return fingerprint_of(hashlib.sha256(repomd).hexdigest(), cfg, target)


def fingerprint_of(repomd_sha256: str, cfg: Config, target: RepoTarget) -> str:
    rule = cfg.repo_filters.get(target.repo_id)
    text = repomd_sha256 + "|" + (rule.model_dump_json() if rule else "")
    if target.definition.gpgcheck:
        # Turning gpgcheck on (or changing its keys) must not be a no-op: the packages already
        # published then get checked too (verify_published).
        text += "|gpgcheck=" + " ".join(target.gpgkeys)
    return hashlib.sha256(text.encode()).hexdigest()


def unchanged_since(
    cfg: Config, target: RepoTarget, previous: state.RepoRecord, repomd_sha256: str
) -> bool:
    """The published copy was made from a repomd.xml with this sha256 (and our filter):
    what a downstream mirror learns from its upstream mirror's index without asking."""
    fingerprint = fingerprint_of(repomd_sha256, cfg, target)
    return _up_to_date(cfg, target, previous, fingerprint, publish_dir(cfg, target))


def publish_dir(cfg: Config, target: RepoTarget) -> Path:
    """Where the target is published; strictly inside repos_root, or the sync is refused
    (pruning a directory that holds other repos would delete their packages)."""
    root = cfg.repos_root.resolve()
    path = root.joinpath(*target.subpath).resolve()
    if path == root or not path.is_relative_to(root):
        raise RepoSyncError(target.key, f"refusing to publish outside {root}")
    return path


def staging_dir(cfg: Config, target: RepoTarget) -> Path:
    return cfg.data_dir / ".staging" / "repos" / target.key


def sync_target(
    cfg: Config,
    target: RepoTarget,
    fetcher: Fetcher,
    dry_run: bool,
    previous: state.RepoRecord | None = None,
) -> RepoResult:
    """Stages 1-6 for one repo target; raises MirrorError (or OSError, LocalWriteError) on
    failure, leaving the published copy as it was. `previous`: its record of the last run."""
    opts = _options(target)
    published = publish_dir(cfg, target)
    staging = staging_dir(cfg, target)
    # Before anything is written: a symlink planted in staging or the published tree must
    # not let a download or the publish write outside data_dir.
    publish.refuse_symlinks(
        target.key, cfg.data_dir, [staging, cfg.repos_root.joinpath(*target.subpath)]
    )
    if previous is None:
        previous = state.load(cfg.state_root, "repos", target.key)

    # Stage 1: repomd.xml. When it is what we published from last time, we are done.
    baseurl, repomd = fetch_repomd(target.key, target.baseurls, fetcher, opts)
    fingerprint = repo_fingerprint(repomd, cfg, target)
    if _up_to_date(cfg, target, previous, fingerprint, published):
        log.info("%s: unchanged upstream, nothing to do", target.key)
        return RepoResult(
            target.key,
            False,
            previous.packages or 0,
            total_bytes=previous.bytes,
            fingerprint=fingerprint,
        )
    keys = fetch_keys(target, fetcher, opts) if target.gpgkeys else b""
    signature = _verified_signature(target, fetcher, opts, baseurl, repomd, keys)

    # Stages 2-3: metadata files, verified; then the package list.
    meta_dir = staging / "meta"
    if meta_dir.exists():
        shutil.rmtree(meta_dir)
    records = parse_repomd(target.key, repomd, meta_dir)
    meta = UpstreamMetadata(baseurl, repomd, signature, records, meta_dir)
    fetch_metadata_files(target.key, meta, fetcher, opts)
    packages = parse_packages(target.key, meta)

    # Stage 4: plan.
    checksums = ChecksumCache(cfg.state_root / "checksums" / f"{target.key}.json")
    plan = _plan(cfg, target, packages, published, checksums)
    if dry_run:
        # One write, not one log record per package: a 60,000-package plan is the output.
        lines = (f"{target.key}: would download {p.href}\n" for p in plan.to_download)
        sys.stderr.write("".join(lines))
        shutil.rmtree(meta_dir, ignore_errors=True)
        return RepoResult(
            target.key, True, len(plan.selected), len(plan.to_download), plan.download_bytes
        )

    # Stage 5: download into staging, after making sure it can fit (a primary claiming
    # terabytes must not fill data_dir before a checksum could catch it).
    check_space(target.key, plan, staging / "packages", data_dir=cfg.data_dir)
    checked = verify_published(cfg, target, plan, published, keys)
    _download(target, baseurl, plan, staging / "packages", fetcher, keys)

    # Stage 6: publish.
    staged = Staged(
        meta, plan, keys, staging / "packages", staging / "generated", (staging,), checked
    )
    publish_target(cfg, target, staged)
    shutil.rmtree(staging, ignore_errors=True)
    return RepoResult(
        target.key,
        True,
        len(plan.selected),
        len(plan.to_download),
        plan.download_bytes,
        total_bytes=plan.total_bytes,
        fingerprint=fingerprint,
    )


def _up_to_date(
    cfg: Config, target: RepoTarget, previous: state.RepoRecord, fingerprint: str, published: Path
) -> bool:
    """Upstream's repomd.xml (and our filter) is what the published copy was made from."""
    return (
        previous.fingerprint == fingerprint
        and (published / REPOMD).exists()
        and (key_path(cfg, target).exists() or not target.gpgkeys)
    )


def _verified_signature(
    target: RepoTarget,
    fetcher: Fetcher,
    opts: RequestOptions,
    baseurl: str,
    repomd: bytes,
    keys: bytes,
) -> bytes | None:
    """repomd.xml.asc checked against the repo's keys (repo_gpgcheck=1), else None."""
    if not target.definition.repo_gpgcheck:
        return None
    sig_url = join_url(baseurl, REPOMD + ".asc")
    try:
        signature = fetcher.get_bytes(sig_url, opts, limit=1024 * 1024)
        gpg.verify_detached(repomd, signature, keys)
    except FetchError as exc:
        raise RepoSyncError(
            target.key, f"repo_gpgcheck: cannot fetch repomd.xml.asc: {exc}", sig_url
        ) from None
    except gpg.SignatureError as exc:
        raise RepoSyncError(target.key, f"repo_gpgcheck: repomd.xml.asc: {exc}", sig_url) from None
    return signature


def _plan(
    cfg: Config,
    target: RepoTarget,
    packages: list[PackageRef],
    published: Path,
    checksums: ChecksumCache,
) -> Plan:
    try:
        plan = make_plan(packages, cfg.repo_filters.get(target.repo_id), published, checksums)
    except DuplicateHref as exc:
        raise RepoSyncError(
            target.key, f"primary lists {exc} twice with different checksums"
        ) from None
    log.info(
        "%s: %d packages upstream, %d selected, %d to download (%s)",
        target.key,
        len(packages),
        len(plan.selected),
        len(plan.to_download),
        human_bytes(plan.download_bytes),
    )
    return plan


def verified_stamp(cfg: Config, target: RepoTarget) -> Path:
    """Records the keys (sha256) every published package of the target was checked with."""
    return state.keyed_file(cfg.state_root / "verified", target.key)


def verify_published(
    cfg: Config, target: RepoTarget, plan: Plan, published: Path, keys: bytes
) -> str | None:
    """With gpgcheck=1: the packages kept from the published copy were checked with these keys
    (the stamp says so), or they are checked now, before anything new is published: a repo
    mirrored while gpgcheck was off, or before a key change, is not trusted blindly.
    Returns the stamp to record after the publish; None when gpgcheck is off."""
    path = verified_stamp(cfg, target)
    if not target.definition.gpgcheck:
        # Removed before this unchecked publish, so a crash cannot leave a stale stamp.
        fsutil.unlink_durable(path)
        return None
    stamp = hashlib.sha256(keys).hexdigest()
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("keys_sha256") == stamp:
            return stamp
    new = {p.href for p in plan.to_download}
    kept = [p for p in plan.selected if p.href not in new]
    if kept:
        log.info("%s: checking signatures of %d published packages", target.key, len(kept))
        with StreamingVerifier(target.key, keys) as verifier:
            for pkg in kept:
                verifier.add(published / pkg.href, pkg.nevra)
            verifier.finish()
    return stamp


def _download(
    target: RepoTarget,
    baseurl: str,
    plan: Plan,
    pkg_staging: Path,
    fetcher: Fetcher,
    keys: bytes,
) -> None:
    """Stage 5. With gpgcheck=1 every new package must be signed by one of the repo's keys
    before it is published: checked as each one lands, alongside the remaining transfers."""
    opts = _options(target)
    if not (target.definition.gpgcheck and plan.to_download):
        download_packages(target.key, baseurl, plan.to_download, pkg_staging, fetcher, opts)
        return
    with StreamingVerifier(target.key, keys) as verifier:
        download_packages(
            target.key,
            baseurl,
            plan.to_download,
            pkg_staging,
            fetcher,
            opts,
            on_ready=lambda pkg: verifier.add(pkg_staging / pkg.href, pkg.nevra),
        )
        verifier.finish()


@dataclass(frozen=True)
class Staged:
    """What stage 6 makes live, wherever it was staged (a sync's downloads, an import)."""

    meta: UpstreamMetadata  # its .staging holds the verified upstream metadata files
    plan: Plan
    keys: bytes
    packages: Path  # where plan.to_download lie
    generated: Path  # scratch dir for a filtered repo's regenerated metadata
    roots: tuple[Path, ...]  # staging dirs the symlink check covers
    stamp: str | None  # verify_published's result: recorded once live


def publish_target(cfg: Config, target: RepoTarget, staged: Staged) -> Path:
    """Stage 6, for `mirror sync` and `mirror import` alike: keys first (so the .repo file's
    gpgkey works as soon as metadata does), then the atomic publish (mirror.yum.publish), then
    the checksum cache and the signature stamp. Returns the published directory."""
    meta, plan = staged.meta, staged.plan
    # publish_dir is resolved; the symlink check needs the path as configured.
    publish.refuse_symlinks(
        target.key,
        cfg.data_dir,
        [cfg.repos_root.joinpath(*target.subpath), *staged.roots, cfg.keys_root],
    )
    if staged.keys:
        fsutil.atomic_write(key_path(cfg, target), staged.keys)
    if plan.filtered:
        source = staged.generated
        repomd, hrefs = publish.generate_filtered_metadata(target.key, meta, plan.selected, source)
        signature = None
    else:
        source, repomd, signature = meta.staging, meta.repomd, meta.repomd_asc
        hrefs = [r.href for r in meta.records]
    generation = publish.Generation(
        repomd, signature, source, tuple(hrefs), plan.selected, plan.to_download, staged.packages
    )
    published = publish_dir(cfg, target)
    record = state.keyed_file(cfg.state_root / "published", target.key)
    removed = publish.publish(published, generation, record)
    if removed:
        log.info("%s: removed %d files no longer in the repo", target.key, removed)
    checksums = ChecksumCache(cfg.state_root / "checksums" / f"{target.key}.json")
    checksums.record(published, plan.to_download)
    checksums.save(plan.selected)
    if staged.stamp is not None:
        stamp = json.dumps({"keys_sha256": staged.stamp}) + "\n"
        fsutil.atomic_write_text(verified_stamp(cfg, target), stamp)
    return published
