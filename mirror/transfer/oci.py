"""Images in an archive: one OCI image layout (archive top dir `oci/`) holding every mirrored
image, copied out of our registry with `skopeo copy --all --preserve-digests`, so every
platform and every digest is the original and a blob shared by many images is stored once.

Blobs come in two classes. Manifests and indexes are metadata: always carried. Configs and
layers are content (`ImageEntry.blobs`): a delta carries only those its base lacks. Before a
delta's image is pushed, the layers it shares with the base are fetched back from the
importing side's registry (where the base put them; GET /v2/<repo>/blobs/<digest>, verified
against the digest while streaming) into the staging layout: skopeo reading `oci:` needs
every blob it cannot find at the destination under the same repository. Those requests go
through mirror.images.regapi (the registry's authfile, Basic or Bearer challenge, its CA).

Names: an image is pushed under the names the importing side's image sync would give its
upstream reference (the entry's key) with that side's registry.url and layout
(`import_names`), so node configs, images.txt and prune find it there. The archive's `names`
(the exporting side's) are never pushed to.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirror import state
from mirror.config import Config
from mirror.errors import ArchiveError, ConfigError, ImageSyncError, MirrorError
from mirror.images import skopeo
from mirror.images.refs import (
    BadReference,
    ImageJob,
    RegistryLayout,
    check_unique,
    image_job,
    parse_reference,
)
from mirror.progress import human_bytes
from mirror.transfer.manifest import ImageEntry, Member

if TYPE_CHECKING:
    from mirror.images.regapi import RegistryAPI

log = logging.getLogger("mirror")

OCI_DIR = "oci"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
_TAG_RE = re.compile(r":[^/:@]+$")


def repository(name: str) -> str:
    """ "docker.io/library/nginx:1.25" or "...@sha256:..." -> "docker.io/library/nginx"."""
    return _TAG_RE.sub("", name.split("@", 1)[0])


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
        raise ArchiveError(str(layout), f"refusing blob digest {digest!r}")
    return layout / "blobs" / "sha256" / hexdigest


def _document(layout: Path, digest: str) -> dict[str, Any]:
    try:
        doc = json.loads(blob_path(layout, digest).read_bytes())
    except (OSError, ValueError) as exc:
        raise ArchiveError(str(layout), f"manifest {digest}: {exc}") from None
    if not isinstance(doc, dict):
        raise ArchiveError(str(layout), f"manifest {digest} is not a JSON object")
    return doc


def walk(layout: Path, digest: str) -> tuple[set[str], list[str]]:
    """(manifest and index digests, config and layer digests) reachable from `digest`."""
    manifests, blobs = {digest}, []
    doc = _document(layout, digest)
    for child in doc.get("manifests") or []:
        more, content = walk(layout, str(child["digest"]))
        manifests |= more
        blobs += [b for b in content if b not in blobs]
    for desc in [doc.get("config"), *(doc.get("layers") or [])]:
        if isinstance(desc, dict) and desc["digest"] not in blobs:
            blobs.append(str(desc["digest"]))
    return manifests, blobs


def layout_refs(layout: Path) -> dict[str, str]:
    """ref name -> digest, from the layout's index.json."""
    index = json.loads((layout / "index.json").read_text())
    return {
        str(m["annotations"][REF_ANNOTATION]): str(m["digest"])
        for m in index.get("manifests", [])
        if REF_ANNOTATION in (m.get("annotations") or {})
    }


def export_images(cfg: Config, layout: Path) -> tuple[list[ImageEntry], set[str]]:
    """Every image recorded as mirrored, copied from our registry into `layout`. Returns the
    entries and the digests of every blob they reach (manifests included)."""
    records = [
        r
        for r in state.load_all(cfg.state_root, "images")
        if r.last_success and r.digest and r.mirrored
    ]
    prefix = cfg.registry.url + "/"
    entries: list[ImageEntry] = []
    reachable: set[str] = set()
    for number, record in enumerate(sorted(records, key=lambda r: r.key)):
        names = [n.removeprefix(prefix) for n in record.mirrored if n.startswith(prefix)]
        if not names:
            continue
        ref = f"i{number:05d}"
        source = f"docker://{prefix}{repository(names[0])}@{record.digest}"
        log.info("export: image %s (%s)", record.key, record.digest)
        skopeo.copy_all(source, f"oci:{layout}:{ref}", registry=_registry(cfg), image=record.key)
        if layout_refs(layout).get(ref) != record.digest:
            raise ImageSyncError(record.key, f"exported digest differs from {record.digest}")
        manifests, blobs = walk(layout, record.digest)
        reachable |= manifests | set(blobs)
        entries.append(
            ImageEntry(key=record.key, ref=ref, digest=record.digest, names=names, blobs=blobs)
        )
    return entries, reachable


def _registry(cfg: Config) -> skopeo.Endpoint:
    """Our registry as the image sync reaches it: TLS verified with its CA, its authfile."""
    from mirror.images.sync import local_endpoint, prepare_cert_dir

    prepare_cert_dir(cfg)
    return local_endpoint(cfg)


def import_names(
    cfg: Config, source: str, images: Sequence[ImageEntry]
) -> dict[str, tuple[str, ...]]:
    """Image key -> its names in *our* registry ("HOST/repository:tag"), made from the key (the
    upstream reference) with this side's registry.url and layout, as the image sync makes
    them: the archive's own names are the exporting side's and are never pushed to. A key
    that is no image reference is refused (ArchiveError); names that collide in a flat
    layout are refused as a sync refuses them, naming the archive (ArchiveError)."""
    layout = RegistryLayout.of(cfg.registry)
    jobs: dict[str, ImageJob] = {}
    for image in images:
        try:
            ref = parse_reference(image.key)
        except BadReference as exc:
            raise ArchiveError(source, f"image {image.key!r}: {exc}") from None
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", image.digest):
            raise ArchiveError(source, f"image {image.key}: refusing digest {image.digest!r}")
        jobs[image.key] = image_job(ref, layout)
    try:
        check_unique(jobs.values(), layout)
    except ConfigError as exc:  # a flat layout here cannot hold two of the archive's images
        raise ArchiveError(source, f"its images do not fit registry.layout here: {exc}") from None
    return {key: job.destinations for key, job in jobs.items()}


def check_refs(source: str, layout: Path, images: Sequence[ImageEntry]) -> None:
    """Each image's ref names its digest in the staged layout's index.json."""
    try:
        refs = layout_refs(layout) if images else {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArchiveError(source, f"{OCI_DIR}/index.json: {exc}") from None
    for image in images:
        if refs.get(image.ref) != image.digest:
            raise ArchiveError(
                source,
                f"image {image.key}: {OCI_DIR}/index.json has no {image.ref} at {image.digest}",
            )


def _blob_source(digest: str, images: Iterable[ImageEntry], layout: RegistryLayout) -> str | None:
    """The repository (in our registry, below /v2/) of an image of the base holding the blob:
    where the base's import pushed it."""
    for image in images:
        if digest in image.blobs:
            try:
                ref = parse_reference(image.key)
            except BadReference:
                continue
            return layout.repository(ref.host, ref.path)
    return None


def fetch_base_blobs(
    api: RegistryAPI,
    cfg: Config,
    layout: Path,
    wanted: Sequence[ImageEntry],
    members: dict[str, Member],
    base_images: Sequence[ImageEntry],
    base_name: str,
) -> int:
    """Blobs of `wanted` images missing from the staging layout (a delta did not carry them),
    fetched from our registry through the registry API (its authfile, auth challenge and CA)
    and verified. ArchiveError naming the blob when it is gone or cannot be read."""
    names = RegistryLayout.of(cfg.registry)
    jobs: list[tuple[str, str, Path, int]] = []
    for image in wanted:
        for digest in image.blobs:
            dest = blob_path(layout, digest)
            if dest.exists() or any(j[2] == dest for j in jobs):
                continue
            member = members.get(f"{OCI_DIR}/blobs/sha256/{digest.split(':')[1]}")
            source = _blob_source(digest, base_images, names)
            if member is None or source is None:
                raise ArchiveError(
                    base_name, f"image {image.key}: blob {digest} is in neither archive nor base"
                )
            jobs.append((source, digest, dest, member.size))
    if not jobs:
        return 0
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    # The preflight counted what the archive carries; these come on top (before any push).
    needed, free = sum(j[3] for j in jobs), shutil.disk_usage(layout).free
    if needed > free:
        raise MirrorError(
            f"{base_name}: the {len(jobs)} blobs shared with the base need {human_bytes(needed)} "
            f"in staging under data_dir, only {human_bytes(free)} free; nothing was imported"
        )
    for repository, digest, dest, size in jobs:
        try:
            found = api.local_blob(repository, digest, dest, size)
        except ImageSyncError as exc:
            raise ArchiveError(
                base_name,
                f"blob {digest} the delta expects from its base cannot be read from registry "
                f"{cfg.registry.url}: {exc}",
            ) from None
        if not found:
            raise ArchiveError(
                base_name,
                f"blob {digest} the delta expects from its base is not in registry "
                f"{cfg.registry.url} ({repository}: the registry does not know it); "
                "import the base archive first",
            )
    log.info("import: %d blobs shared with the base fetched from %s", len(jobs), cfg.registry.url)
    return len(jobs)


def push_images(
    cfg: Config,
    layout: Path,
    images: Sequence[ImageEntry],
    present: dict[str, str | None],
    names: dict[str, tuple[str, ...]],
) -> int:
    """Push every image under each of its names here (`import_names`; digests preserved);
    names already holding the digest (`present`) are skipped. Returns how many were pushed."""
    pushed = 0
    registry = _registry(cfg)
    for image in images:
        for dest in names[image.key]:
            if present.get(dest) == image.digest:
                continue
            skopeo.copy_all(
                f"oci:{layout}:{image.ref}", f"docker://{dest}", registry=registry, image=image.key
            )
            log.info("import: image %s -> %s (%s)", image.key, dest, image.digest)
            pushed += 1
    return pushed
