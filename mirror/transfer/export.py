"""`mirror export`: the published state of every kind into one archive (see mirror.transfer).

Runs under the sync lock, so no sync changes the trees while they are read. Members are
hashed in a first pass (manifest.json comes first and lists every sha256), then streamed into
the tar, hashed again on the way: a file that changed in between fails the export.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mirror import __version__, fsutil, state
from mirror.config import Config
from mirror.errors import ArchiveError
from mirror.progress import human_bytes, progress_for
from mirror.repofile import expand_targets, load_definitions
from mirror.transfer import archive, oci
from mirror.transfer.manifest import Base, ImageEntry, Manifest, Member, RepoEntry
from mirror.transfer.publishers import STATE_KINDS
from mirror.yum.metadata import REPOMD, UpstreamMetadata, parse_packages, parse_repomd
from mirror.yum.sync import key_path

log = logging.getLogger("mirror")


@dataclass(frozen=True)
class Source:
    path: str  # member path in the archive
    file: Path  # where it is read from


@dataclass(frozen=True)
class ExportResult:
    files: list[Path]
    members: int
    carried: int
    bytes: int


def scratch_dir(cfg: Config) -> Path:
    return cfg.data_dir / ".staging" / "export"


def _tree(root: Path, prefix: str) -> Iterator[Source]:
    """Regular files below root, hidden ones (temp files, .part) left out."""
    if not root.is_dir():
        return
    for entry in fsutil.walk(root):
        rel = Path(entry.path).relative_to(root)
        if entry.is_file(follow_symlinks=False) and not any(p.startswith(".") for p in rel.parts):
            yield Source(f"{prefix}/{rel.as_posix()}", Path(entry.path))


def _repo_sources(cfg: Config, scratch: Path) -> tuple[list[RepoEntry], list[Source]]:
    """The live generation of every published repo target: repomd.xml (+ .asc), the
    metadata it names and the packages its primary lists (not the previous generation's)."""
    definitions = load_definitions(cfg) if cfg.repos_dir.is_dir() else []
    entries, sources = [], []
    for target in expand_targets(definitions, cfg):
        published = cfg.repos_root.joinpath(*target.subpath)
        if not (published / REPOMD).is_file():
            continue
        meta_dir = scratch / "repos" / target.key
        repomd = (published / REPOMD).read_bytes()
        records = parse_repomd(target.key, repomd, meta_dir)
        # Only primary is read (for the package list), from a copy: parsing leaves files
        # next to what it reads, and nothing may be written into the published tree.
        for record in (r for r in records if r.type == "primary"):
            dest = meta_dir / record.href
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(published / record.href, dest)
        meta = UpstreamMetadata("", repomd, None, records, meta_dir)
        prefix = f"repos/{target.key}"
        hrefs = [REPOMD, *(r.href for r in records)]
        if (published / (REPOMD + ".asc")).is_file():
            hrefs.append(REPOMD + ".asc")
        hrefs += sorted({p.href for p in parse_packages(target.key, meta)})
        sources += [Source(f"{prefix}/{href}", published / href) for href in hrefs]
        key = key_path(cfg, target)
        if key.is_file() and not any(s.file == key for s in sources):
            sources.append(Source(f"keys/{target.key_file}", key))
        entries.append(
            RepoEntry(
                key=target.key,
                repo_id=target.repo_id,
                values=list(target.values),
                definition=target.definition.source.name,
            )
        )
    return entries, sources


def _sources(cfg: Config, scratch: Path) -> tuple[list[RepoEntry], list[ImageEntry], list[Source]]:
    repos, sources = _repo_sources(cfg, scratch)
    if cfg.repos_dir.is_dir():
        used = {r.definition for r in repos}
        for path in sorted(cfg.repos_dir.glob("*.repo")):
            if path.name in used:
                copy = scratch / "definitions" / path.name
                copy.parent.mkdir(parents=True, exist_ok=True)
                copy.write_text(redacted(path.read_text()))
                sources.append(Source(f"definitions/{path.name}", copy))
    for kind in STATE_KINDS:
        sources += _tree(cfg.state_root / kind, f"state/{kind}")
    sources += _tree(cfg.data_dir / "files", "files")
    sources += _tree(cfg.data_dir / "charts", "charts")
    images: list[ImageEntry] = []
    if any(True for _ in _tree(cfg.state_root / "images", "x")):
        from mirror.images.registry import ensure_registry

        layout = scratch / oci.OCI_DIR
        with ensure_registry(cfg):
            images, reachable = oci.export_images(cfg, layout)
        if images:
            sources += [Source("oci/oci-layout", layout / "oci-layout")]
            sources += [Source("oci/index.json", layout / "index.json")]
            sources += [
                Source(f"oci/blobs/sha256/{d.split(':')[1]}", oci.blob_path(layout, d))
                for d in sorted(reachable)
            ]
    return repos, images, sources


# Secrets stay outside: an archive travels on a disk. Inside nobody fetches upstream, so a
# definition without its password works the same there.
_SECRET_RE = re.compile(r"^(\s*(?:password|proxy_password|sync_token)\s*[=:]\s*).+$", re.MULTILINE)


def redacted(text: str) -> str:
    """.repo or config text with passwords and the sync token replaced."""
    return _SECRET_RE.sub(r"\1<redacted by mirror export>", text)


def is_content(path: str, images: list[ImageEntry]) -> bool:
    """Content a delta leaves out when the base has it; everything else (repo metadata,
    keys, state, manifests, chart indexes) is small and always carried."""
    top, _, rest = path.partition("/")
    if top == "repos":
        return "/repodata/" not in f"/{rest}"
    if top == "files":
        return True
    if top == "charts":
        return path.endswith(".tgz")
    if top == "oci" and rest.startswith("blobs/sha256/"):
        digest = "sha256:" + rest.rsplit("/", 1)[1]
        return any(digest in image.blobs for image in images)
    return False


def _hash_all(sources: list[Source]) -> list[Member]:
    total = sum(s.file.stat().st_size for s in sources)
    progress = progress_for("export", len(sources), total, "hashing")
    members = []
    try:
        for source in sources:
            size, sha = archive.file_sha256(source.file, progress.advance)
            members.append(Member(path=source.path, size=size, sha256=sha))
            progress.item_done(source.path)
    finally:
        progress.close()
    return members


def build_manifest(
    cfg: Config, base: tuple[str, Manifest, str] | None, scratch: Path
) -> tuple[Manifest, dict[str, Path]]:
    """The manifest of the current state (a delta against `base`: (file, manifest, sha256))
    and where each member is read from."""
    repos, images, sources = _sources(cfg, scratch)
    seen: dict[str, Path] = {}
    for source in sources:
        seen.setdefault(source.path, source.file)
    members = _hash_all([Source(p, f) for p, f in seen.items()])
    if base is not None:
        have = {(m.path, m.sha256) for m in base[1].members}
        members = [
            m.model_copy(
                update={"carried": not (is_content(m.path, images) and (m.path, m.sha256) in have)}
            )
            for m in members
        ]
    config_text = cfg.config_path.read_text() if cfg.config_path else ""
    manifest = Manifest(
        mirror_version=__version__,
        created=state.now_iso(),
        config_file=str(cfg.config_path or ""),
        config_sha256=hashlib.sha256(config_text.encode()).hexdigest(),
        config_text=redacted(config_text),
        registry=cfg.registry.url,
        base_url=cfg.base_url,
        base=Base(file=Path(base[0]).name, sha256=base[2], state_sha256=base[1].state_sha256())
        if base
        else None,
        repos=repos,
        images=images,
        members=members,
    )
    return manifest, seen


def write_archive(
    dest: Path, manifest: Manifest, files: dict[str, Path], split: int | None, zstd: bool
) -> list[Path]:
    carried = [m for m in manifest.members if m.carried]
    total = sum(m.size for m in carried)
    progress = progress_for(f"export {dest.name}", len(carried), total, "writing")
    try:
        with archive.writing(dest, split, zstd) as (tar, writer):
            body = manifest.dump()
            tar.addfile(archive.tar_info("manifest.json", len(body)), io.BytesIO(body))
            for member in carried:
                _add(tar, member, files[member.path], progress.advance)
                progress.item_done(member.path)
        return writer.commit()
    finally:
        progress.close()


def _add(tar: tarfile.TarFile, member: Member, file: Path, on_bytes: Callable[[int], None]) -> None:
    with file.open("rb") as handle:
        if os.fstat(handle.fileno()).st_size != member.size:
            raise ArchiveError(str(file), "changed while the export was running; run it again")
        reader = archive.HashingReader(handle, on_bytes)
        tar.addfile(archive.tar_info(member.path, member.size), reader)
    if reader.digest.hexdigest() != member.sha256:
        raise ArchiveError(str(file), "changed while the export was running; run it again")


def export(
    cfg: Config, dest: Path, since: Path | None, split: int | None, zstd: bool
) -> ExportResult:
    """Caller holds the sync lock."""
    from mirror.transfer.importer import read_base_manifest

    base = read_base_manifest(since) if since is not None else None
    scratch = scratch_dir(cfg)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        manifest, files = build_manifest(
            cfg, (str(since), base[0], base[1]) if since is not None and base else None, scratch
        )
        dest.parent.mkdir(parents=True, exist_ok=True)
        written = write_archive(dest, manifest, files, split, zstd)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    carried = [m for m in manifest.members if m.carried]
    result = ExportResult(
        written, len(manifest.members), len(carried), sum(p.stat().st_size for p in written)
    )
    log.info(
        "export: %s: %d members (%d carried), %s in %d file(s)",
        dest,
        result.members,
        result.carried,
        human_bytes(result.bytes),
        len(written),
    )
    return result
