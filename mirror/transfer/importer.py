"""`mirror import`: verify the whole archive into staging, then publish it kind by kind.

1. Parts are ordered by their numeric suffix (a gap is refused), read as one stream, zstd
   detected by its magic number. manifest.json must come first; a delta's base must be a
   manifest imported here before (kept under state/transfer/manifests/), else refused
   naming the base.
2. Every member is streamed into data_dir/.staging/import/ (same file system as what is
   served) while its sha256 is computed; a member not in the manifest (or not carried, or
   twice, or not a regular file), a size or sha256 mismatch, a truncated stream or a member
   missing at the end refuses the import naming the archive file and member. Nothing is
   published until all of it verified.
3. `prepare_*` checks what a delta expects from its base (packages, files, tarballs already
   published here; image blobs fetched back from the registry), the importing side's
   repo_filters are applied; then repos, files, charts and images are published and the
   state records written; last, the import itself is recorded (state/transfer/).
A failure before step 3 changes nothing served; a failure inside step 3 leaves each kind
either old or new, and the import can simply be run again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tarfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zstandard

from mirror import fsutil, state
from mirror.config import Config
from mirror.errors import ArchiveError, MirrorError
from mirror.images.registry import registry_dir
from mirror.progress import Progress, human_bytes, progress_for
from mirror.repofile import RepoTarget
from mirror.transfer import archive, oci, publishers
from mirror.transfer import manifest as mf
from mirror.transfer.manifest import MANIFEST_NAME, ImageEntry, Manifest
from mirror.transfer.status import transfer_dir

if TYPE_CHECKING:
    from mirror.images.sync import ImageSession

log = logging.getLogger("mirror")


@dataclass(frozen=True)
class ImportResult:
    archive: str
    manifest_sha256: str
    members: int
    carried: int
    repos: int
    images: int
    dry_run: bool


def staging_dir(cfg: Config) -> Path:
    return cfg.data_dir / ".staging" / "import"


def _first_member(tar: tarfile.TarFile, name: str) -> bytes:
    info = tar.next()
    if info is None or info.name != MANIFEST_NAME or not info.isreg():
        raise ArchiveError(name, f"{MANIFEST_NAME} is not the first member: not a mirror export")
    if info.size > mf.MAX_MANIFEST:
        raise ArchiveError(name, f"{MANIFEST_NAME} too large ({info.size} bytes)")
    handle = tar.extractfile(info)
    assert handle is not None
    return handle.read()


def read_base_manifest(path: Path) -> tuple[Manifest, str]:
    """The manifest (and its sha256) of BASE.tar (or its parts BASE.tar.000...), or of a
    BASE-manifest.json written by `mirror export`... of any archive's manifest.json."""
    if path.suffix == ".json" and path.is_file():
        data = path.read_bytes()
    else:
        parts = [path] if path.is_file() else archive.existing_parts(path)
        if not parts:
            raise ArchiveError(str(path), "base archive not found (nor its parts NAME.000...)")
        try:
            with archive.reading(str(path), parts) as (tar, _):
                data = _first_member(tar, str(path))
        except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
            raise ArchiveError(str(path), f"cannot read the base's manifest: {exc}") from None
    return mf.parse(str(path), data), mf.sha256_hex(data)


def _check_base(cfg: Config, name: str, manifest: Manifest) -> Manifest | None:
    """The imported manifest a delta builds on (the one named, or an export of the same
    state); ArchiveError naming the base when there is none."""
    if manifest.base is None:
        return None
    stored = transfer_dir(cfg) / "manifests"
    named = stored / f"{manifest.base.sha256}.json"
    candidates = [named] if named.is_file() else sorted(stored.glob("*.json"))
    for path in candidates:
        found = mf.parse(str(path), path.read_bytes())
        if path == named or found.state_sha256() == manifest.base.state_sha256:
            return found
    raise ArchiveError(
        name,
        f"is a delta on {manifest.base.file} (manifest sha256 {manifest.base.sha256[:16]}), "
        f"which was never imported into {cfg.data_dir}: import {manifest.base.file} first",
    )


def _stream(
    tar: tarfile.TarFile,
    reader: archive.PartReader,
    name: str,
    manifest: Manifest,
    staging: Path,
    progress: Progress,
) -> None:
    members = manifest.member_map()
    seen: set[str] = set()
    current = MANIFEST_NAME
    try:
        while (info := tar.next()) is not None:
            current = info.name
            member = members.get(info.name)
            if member is None:
                raise ArchiveError(reader.current, f"member {info.name} is not in {MANIFEST_NAME}")
            if not member.carried:
                raise ArchiveError(
                    reader.current, f"member {info.name}: {MANIFEST_NAME} says the base has it"
                )
            if info.name in seen or not info.isreg():
                raise ArchiveError(
                    reader.current, f"member {info.name}: not a regular file, or twice"
                )
            if info.size != member.size:
                raise ArchiveError(
                    reader.current,
                    f"member {info.name}: size {info.size}, manifest says {member.size}",
                )
            _extract(tar, info, staging / info.name, reader, member.sha256, progress)
            seen.add(info.name)
            progress.item_done(info.name)
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
        hint = ""
        if len(reader.parts) > 1 and reader.index == len(reader.parts) - 1:
            hint = f"; is a part after {Path(reader.current).name} missing?"
        raise ArchiveError(
            reader.current, f"truncated or damaged archive at member {current} ({exc}){hint}"
        ) from None
    missing = [m.path for m in manifest.members if m.carried and m.path not in seen]
    if missing:
        raise ArchiveError(
            name,
            f"truncated: {len(missing)} members listed in {MANIFEST_NAME} are missing "
            f"(first: {missing[0]}); is a part missing at the end?",
        )


def _extract(
    tar: tarfile.TarFile,
    info: tarfile.TarInfo,
    dest: Path,
    reader: archive.PartReader,
    sha256: str,
    progress: Progress,
) -> None:
    """One member into staging, hashed on the way (never held in memory whole)."""
    source = tar.extractfile(info)
    assert source is not None
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with dest.open("wb") as out:
        while chunk := source.read(archive.CHUNK):
            digest.update(chunk)
            out.write(chunk)
            progress.advance(len(chunk))
    if digest.hexdigest() != sha256:
        dest.unlink()
        raise ArchiveError(
            reader.current, f"member {info.name}: sha256 mismatch (damaged or tampered)"
        )


def _device(path: Path) -> int:
    """st_dev of `path`, or of its nearest existing parent (the storage may not exist yet)."""
    for candidate in (path, *path.parents):
        try:
            return candidate.stat().st_dev
        except FileNotFoundError:
            continue
    return -1


def needed_bytes(cfg: Config, manifest: Manifest) -> int:
    """What the import writes under data_dir's file system: every carried member once (in
    staging, then moved into place), and the image blobs once more when the embedded
    registry keeps its filesystem storage there too (skopeo copies them out of staging)."""
    carried = [m for m in manifest.members if m.carried]
    needed = sum(m.size for m in carried)
    storage = registry_dir(cfg) / "storage"
    if (
        cfg.registry.embedded
        and cfg.registry.storage is None
        and _device(storage) == _device(staging_dir(cfg))
    ):
        needed += sum(m.size for m in carried if m.path.startswith(f"{oci.OCI_DIR}/blobs/"))
    return needed


def _check_space(cfg: Config, name: str, needed: int) -> None:
    """Refused before a byte is staged when what the import writes cannot fit under
    data_dir (staging and the published trees share its file system)."""
    free = shutil.disk_usage(staging_dir(cfg)).free
    if needed > free:
        raise MirrorError(
            f"{name}: needs {human_bytes(needed)} under data_dir ({cfg.data_dir}), "
            f"only {human_bytes(free)} free; nothing was imported"
        )


def _read_and_verify(
    cfg: Config, files: list[Path]
) -> tuple[str, Manifest, bytes, Manifest | None]:
    name, parts = archive.order_parts(files)
    staging = staging_dir(cfg)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with archive.reading(name, parts) as (tar, reader):
        try:
            raw = _first_member(tar, name)
        except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
            raise ArchiveError(reader.current, f"cannot read {MANIFEST_NAME}: {exc}") from None
        manifest = mf.parse(name, raw)
        oci.import_names(cfg, name, manifest.images)  # bad image keys refused before staging
        base = _check_base(cfg, name, manifest)
        carried = [m for m in manifest.members if m.carried]
        _check_space(cfg, name, needed_bytes(cfg, manifest))
        progress = progress_for(
            f"import {Path(name).name}", len(carried), sum(m.size for m in carried), "verifying"
        )
        try:
            _stream(tar, reader, name, manifest, staging, progress)
        finally:
            progress.close()
    return name, manifest, raw, base


def import_archive(cfg: Config, files: list[Path], dry_run: bool = False) -> ImportResult:
    """Caller holds the sync lock."""
    try:
        name, manifest, raw, base = _read_and_verify(cfg, files)
        sha = mf.sha256_hex(raw)
        carried = sum(1 for m in manifest.members if m.carried)
        log.info(
            "import: %s verified: %d members (%d carried)", name, len(manifest.members), carried
        )
        if not dry_run:
            _publish_all(cfg, name, manifest, base)
            _record(cfg, name, sha, raw, manifest)
    finally:
        shutil.rmtree(staging_dir(cfg), ignore_errors=True)
    return ImportResult(
        name,
        sha,
        len(manifest.members),
        carried,
        len(manifest.repos),
        len(manifest.images),
        dry_run,
    )


def _targets(cfg: Config, name: str, manifest: Manifest) -> tuple[list[RepoTarget], list[Path]]:
    definitions, to_install = publishers.definitions(cfg, staging_dir(cfg))
    targets = []
    for entry in manifest.repos:
        definition = definitions.get(entry.repo_id)
        if definition is None:
            raise ArchiveError(
                name, f"repo {entry.key}: no definition of [{entry.repo_id}] in {cfg.repos_dir}"
            )
        target = RepoTarget(definition, tuple((k, v) for k, v in entry.values))
        if target.key != entry.key:
            raise ArchiveError(
                name, f"repo {entry.key}: the local definition publishes {target.key}"
            )
        targets.append(target)
    return targets, to_install


def _publish_all(cfg: Config, name: str, manifest: Manifest, base: Manifest | None) -> None:
    staging = staging_dir(cfg)
    with ExitStack() as stack:
        session = None
        if manifest.images:  # a registry that is down refuses the import before any publish
            from mirror.images.registry import ensure_registry
            from mirror.images.sync import image_session

            stack.enter_context(ensure_registry(cfg))
            session = stack.enter_context(image_session(cfg, 1))
        # Everything that can refuse the import first.
        targets, definitions = _targets(cfg, name, manifest)
        jobs = [publishers.prepare_repo(cfg, name, t, staging) for t in targets]
        publishers.check_state(name, staging)
        trees = {
            top: publishers.prepare_tree(cfg, name, manifest, top, staging)
            for top in ("files", "charts")
        }
        names = oci.import_names(cfg, name, manifest.images)
        images = _prepare_images(cfg, name, manifest, base, session, names) if session else None
        publishers.install_definitions(cfg, definitions)
        for job in jobs:
            publishers.publish_repo(cfg, name, job)
        for top, moves in trees.items():
            publishers.publish_tree(cfg, manifest, top, moves)
        if images is not None:
            oci.push_images(cfg, staging / oci.OCI_DIR, *images, names)
        publishers.publish_state(cfg, manifest, staging, names)


def _prepare_images(
    cfg: Config,
    name: str,
    manifest: Manifest,
    base: Manifest | None,
    session: ImageSession,
    names: dict[str, tuple[str, ...]],
) -> tuple[list[ImageEntry], dict[str, str | None]]:
    """The images to push (some name here lacks their digest) with every blob they need in
    the staging layout (a delta's shared blobs fetched back), and what each name holds now."""
    layout = staging_dir(cfg) / oci.OCI_DIR
    oci.check_refs(name, layout, manifest.images)
    present: dict[str, str | None] = {}
    for image in manifest.images:
        for dest in names[image.key]:
            present[dest] = session.api.local_digest(dest, image.key)
    wanted = [i for i in manifest.images if any(present[d] != i.digest for d in names[i.key])]
    oci.fetch_base_blobs(
        session.api,
        cfg,
        layout,
        wanted,
        manifest.member_map(),
        list(base.images) if base else [],
        manifest.base.file if manifest.base else name,
    )
    return wanted, present


def _record(cfg: Config, name: str, sha: str, raw: bytes, manifest: Manifest) -> None:
    """The manifest kept (a later delta names it as its base) and the last import noted."""
    directory = transfer_dir(cfg)
    fsutil.atomic_write(directory / "manifests" / f"{sha}.json", raw)
    record: dict[str, Any] = {
        "archive": Path(name).name,
        "manifest_sha256": sha,
        "imported_at": state.now_iso(),
        "created": manifest.created,
        "base": manifest.base.file if manifest.base else None,
        "members": len(manifest.members),
    }
    fsutil.atomic_write_text(directory / "last_import.json", json.dumps(record, indent=2))


def summary(result: ImportResult) -> str:
    verb = "verified (dry run, nothing published)" if result.dry_run else "imported"
    return (
        f"{result.archive}: {verb}: {result.members} members ({result.carried} carried), "
        f"{result.repos} repos, {result.images} images"
    )
