"""Import, second half: the verified staging tree made live, kind by kind.

Every check that can refuse the import runs in `prepare_*` (before anything is published);
`publish_*` only moves files into place. Repos go through the yum publish mechanism
(mirror.yum.publish: packages first, generation record, metadata, repomd.xml last), with the
importing side's `repo_filters` applied (newest-N included) as a sync would. Files and chart
tarballs are renamed into place before the chart index that names them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from mirror import fsutil, gpg, state
from mirror.config import Config
from mirror.errors import ArchiveError
from mirror.http import file_matches
from mirror.repofile import RepoDefinition, RepoTarget, parse_repo_file
from mirror.transfer.manifest import Manifest, Member
from mirror.yum import publish
from mirror.yum.checksums import ChecksumCache
from mirror.yum.metadata import REPOMD, UpstreamMetadata, parse_packages, parse_repomd
from mirror.yum.plan import Plan, make_plan
from mirror.yum.signatures import StreamingVerifier
from mirror.yum.sync import (
    Staged,
    key_path,
    publish_dir,
    publish_target,
    repo_fingerprint,
    verify_published,
)

log = logging.getLogger("mirror")


def definitions(cfg: Config, staging: Path) -> tuple[dict[str, RepoDefinition], list[Path]]:
    """Repo definitions by id: repos_dir's, plus the archive's .repo files repos_dir has no
    file of that name for (a local one is kept: the inside may point elsewhere). Returns
    them and the staged files to install (by `install_definitions`, when publishing)."""
    # Each file on its own: load_definitions would refuse a repo_filters entry for a repo
    # only the archive defines (yet).
    files = sorted(cfg.repos_dir.glob("*.repo")) if cfg.repos_dir.is_dir() else []
    found = {d.id: d for path in files for d in parse_repo_file(path)}
    missing = []
    for path in sorted((staging / "definitions").glob("*.repo")):
        local = cfg.repos_dir / path.name
        if not local.exists():
            missing.append(path)
            found.update({d.id: d for d in parse_repo_file(path) if d.id not in found})
        elif local.read_bytes() != path.read_bytes():
            log.warning("import: kept local %s (the archive's differs)", local)
    return found, missing


def install_definitions(cfg: Config, staged: list[Path]) -> None:
    for path in staged:
        fsutil.ensure_dir(cfg.repos_dir)
        fsutil.atomic_write(cfg.repos_dir / path.name, path.read_bytes())
        log.info("import: installed repo definition %s", cfg.repos_dir / path.name)


@dataclass
class RepoJob:
    target: RepoTarget
    stage: Path
    meta: UpstreamMetadata
    plan: Plan
    keys: bytes
    stamp: str | None  # the key set every published package was checked with (gpgcheck)


def _keys(cfg: Config, staging: Path, target: RepoTarget) -> bytes:
    for path in (staging / "keys" / target.key_file, key_path(cfg, target)):
        if path.is_file():
            return path.read_bytes()
    return b""


def prepare_repo(cfg: Config, name: str, target: RepoTarget, staging: Path) -> RepoJob:
    """Metadata checked against repomd.xml (and its signature with repo_gpgcheck), the
    importing side's filter applied, every package to publish present and checked."""
    key = target.key
    stage = staging / "repos" / key
    repomd = (stage / REPOMD).read_bytes()
    records = parse_repomd(key, repomd, stage)
    for record in records:
        if not file_matches(stage / record.href, record.expected):
            raise ArchiveError(name, f"repo {key}: {record.href} does not match its repomd.xml")
    asc_path = stage / (REPOMD + ".asc")
    signature = asc_path.read_bytes() if asc_path.is_file() else None
    keys = _keys(cfg, staging, target)
    filtered = cfg.repo_filters.get(target.repo_id) is not None
    if target.definition.repo_gpgcheck and signature is None and not filtered:
        # As a sync refuses it: published unfiltered, the metadata is served as signed by
        # upstream, and nodes with repo_gpgcheck=1 would fail on it. (Filtered, it is
        # regenerated here and served unsigned anyway.)
        raise ArchiveError(
            name, f"repo {key}: repo_gpgcheck=1 but the archive has no {REPOMD}.asc for it"
        )
    if target.definition.repo_gpgcheck and signature is not None:
        try:
            gpg.verify_detached(repomd, signature, keys)
        except gpg.SignatureError as exc:
            raise ArchiveError(name, f"repo {key}: repomd.xml.asc: {exc}") from None
    meta = UpstreamMetadata(f"archive:{name}", repomd, signature, records, stage)
    published = publish_dir(cfg, target)
    checksums = ChecksumCache(cfg.state_root / "checksums" / f"{key}.json")
    plan = make_plan(
        parse_packages(key, meta), cfg.repo_filters.get(target.repo_id), published, checksums
    )
    for pkg in plan.to_download:
        if not file_matches(stage / pkg.href, pkg.expected):
            raise ArchiveError(
                name,
                f"repo {key}: package {pkg.href} is neither in the archive nor published here "
                "(a delta needs its base imported first)",
            )
    # gpgcheck as a sync does it: packages kept from the published copy were checked with
    # these keys (the stamp) or are checked now; the new ones are checked here, in staging.
    stamp = verify_published(cfg, target, plan, published, keys)
    if target.definition.gpgcheck and plan.to_download:
        with StreamingVerifier(key, keys) as verifier:
            for pkg in plan.to_download:
                verifier.add(stage / pkg.href, pkg.nevra)
            verifier.finish()
    return RepoJob(target, stage, meta, plan, keys, stamp)


def publish_repo(cfg: Config, name: str, job: RepoJob) -> None:
    target, meta, plan = job.target, job.meta, job.plan
    generated = job.stage.parent / f".generated-{target.key.replace('/', '_')}"
    staged = Staged(meta, plan, job.keys, job.stage, generated, (job.stage,), job.stamp)
    publish_target(cfg, target, staged)
    record = state.load(cfg.state_root, "repos", target.key)
    record.upstream = f"archive {Path(name).name}"
    record.last_attempt = record.last_success = state.now_iso()
    record.last_error = None
    record.duration_s = None
    record.packages = len(plan.selected)
    record.bytes = plan.total_bytes
    record.fingerprint = repo_fingerprint(meta.repomd, cfg, target)
    state.save(cfg.state_root, "repos", record)
    log.info("import: repo %s: %d packages published", target.key, len(plan.selected))


def prepare_tree(
    cfg: Config, name: str, manifest: Manifest, top: str, staging: Path
) -> list[tuple[Path, Path]]:
    """(source, destination) of every member under `top` (files/ or charts/): carried ones
    from staging, the others already published here with the manifest's sha256."""
    moves = []
    for member in manifest.members:
        if not member.path.startswith(top + "/"):
            continue
        dest = cfg.data_dir / member.path
        if member.carried:
            moves.append((staging / member.path, dest))
        elif not _published_matches(dest, member):
            base = manifest.base.file if manifest.base else "its base"
            raise ArchiveError(
                name, f"{member.path} is expected from {base} but not published here unchanged"
            )
    return moves


def _published_matches(path: Path, member: Member) -> bool:
    from mirror.transfer.archive import file_sha256

    try:
        return file_sha256(path) == (member.size, member.sha256)
    except (FileNotFoundError, IsADirectoryError):
        return False


def _clear_way(root: Path, dest: Path) -> None:
    """What stands where the archive puts a file: a directory at `dest` (a path that was a
    directory here is a file in the archive) or a file where `dest` needs a parent directory
    (the reverse). The archive lists neither (a member below a member is refused when its
    manifest is read), and the tree is to equal the archive's, so they go."""
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
        fsutil.fsync_dir(dest.parent)
    for parent in reversed(dest.relative_to(root).parents[:-1]):
        path = root / parent
        if path.is_file() or path.is_symlink():
            fsutil.unlink_durable(path)


def publish_tree(cfg: Config, manifest: Manifest, top: str, moves: list[tuple[Path, Path]]) -> None:
    """Files in (chart indexes last, their urls moved to this mirror's base_url), then what
    the archive no longer lists removed (the tree equals the archive's)."""
    publish.refuse_symlinks(top, cfg.data_dir, [cfg.data_dir / top])
    indexes = [m for m in moves if top == "charts" and m[1].name == "index.yaml"]
    others = [m for m in moves if m not in indexes]
    for _, dest in moves:
        _clear_way(cfg.data_dir / top, dest)
        fsutil.ensure_dir(dest.parent)
    fsutil.durable_move_all(others)
    for src, dest in indexes:
        data = src.read_bytes()
        if manifest.base_url != cfg.base_url:
            data = data.replace(
                f"{manifest.base_url}/charts/".encode(), f"{cfg.base_url}/charts/".encode()
            )
        fsutil.atomic_write(dest, data)
    wanted = {cfg.data_dir / m.path for m in manifest.members if m.path.startswith(top + "/")}
    root = cfg.data_dir / top
    if root.is_dir():
        for entry in list(fsutil.walk(root)):
            path = Path(entry.path)
            hidden = any(p.startswith(".") for p in path.relative_to(root).parts)
            if entry.is_file(follow_symlinks=False) and not hidden and path not in wanted:
                os.unlink(path)


# state/kubeadm/: kubeadm's own image lists (mirror.kubernetes.images) cached at sync time, so
# an import-only site's node configs and prune use them rather than the built-in table.
STATE_KINDS = ("images", "files", "charts", "kubeadm")


def check_state(name: str, staging: Path) -> None:
    """Every staged record is a JSON object (before anything is published)."""
    for kind in STATE_KINDS:
        for path in sorted((staging / "state" / kind).glob("*.json")):
            try:
                data = json.loads(path.read_bytes())
            except ValueError as exc:
                raise ArchiveError(name, f"state/{kind}/{path.name}: not JSON ({exc})") from None
            if not isinstance(data, dict):
                raise ArchiveError(name, f"state/{kind}/{path.name}: not a JSON object")


def publish_state(
    cfg: Config, manifest: Manifest, staging: Path, image_names: dict[str, tuple[str, ...]]
) -> None:
    """The exporting side's records of images, files, charts and kubeadm image lists,
    written here (images under the names they were pushed to here: `image_names`, from
    mirror.transfer.oci.import_names); records of files and charts not in the archive go."""
    for kind in STATE_KINDS:
        staged = staging / "state" / kind
        names = {p.name for p in staged.glob("*.json")} if staged.is_dir() else set()
        for path in sorted(staged.glob("*.json")) if staged.is_dir() else []:
            data = json.loads(path.read_bytes())
            if kind == "images":
                entry = next((i for i in manifest.images if i.key == data.get("key")), None)
                if entry is None:
                    continue
                data["mirrored"] = list(image_names[entry.key])
            fsutil.atomic_write_text(
                cfg.state_root / kind / path.name, json.dumps(data, indent=2, sort_keys=True)
            )
        # kubeadm lists are keyed by the rpm they came from: one the archive lacks is kept.
        if kind in ("files", "charts") and (cfg.state_root / kind).is_dir():
            for old in (cfg.state_root / kind).glob("*.json"):
                if old.name not in names:
                    old.unlink()
