"""Images `mirror prune` removes from the embedded registry: recorded, no longer configured.

What counts as configured is exactly what an image sync plans (mirror.nodeconfig.image_plan
plus the images found in mirrored files and charts, mirror.images.sources), by mirrored name.
Candidates come only from the image state records (names this mirror pushed), and only
names in the mirror's own layout (mirror.images.refs.RegistryLayout: under registry.url's
host and path, `<upstream host>/<path>` nested or one component flat) are touched.

distribution 2.8 deletes manifests by digest only, which removes every tag naming that
digest in the repository. So, per repository, every tag that stays (configured or not ours)
and every configured digest is resolved first, with the platform manifests of indexes
among them: a removed name resolving to one of those digests is kept (its tag stays, it
costs no space). A removed index is deleted together with its platform manifests, or the
garbage collection would keep their layers (untagged manifests still mark their blobs).
Every other manifest of the mirror's repositories that nothing staying names (the earlier
digest of a tag that moved upstream) is deleted as well.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mirror import state
from mirror.config import Config
from mirror.errors import PruneError
from mirror.images.refs import BadReference, ImageRef, RegistryLayout, parse_reference
from mirror.images.regapi import RegistryAPI

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ImageRemoval:
    name: str  # as recorded: "<registry.url>/<host>/<path>:<tag>" (or "@sha256:...")
    repository: str  # in our registry (what follows /v2/): "[<prefix>/]<host>/<path>"
    digest: str | None  # what it resolves to in our registry; None: already gone
    kept_by: str | None = None  # a name that stays and shares the digest: nothing deleted
    size: int = 0  # bytes of its manifests' blobs (shared blobs stay: an upper bound)


@dataclass
class ImagePlan:
    removals: list[ImageRemoval] = field(default_factory=list)
    untagged: list[ImageRemoval] = field(default_factory=list)  # left by tags that moved
    deletes: dict[str, list[str]] = field(default_factory=dict)  # repository -> digests
    records: list[str] = field(default_factory=list)  # image record keys to drop
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Wanted:
    keys: frozenset[str]  # upstream references (record keys) still configured
    names: frozenset[str]  # every mirrored name still configured


def wanted_images(cfg: Config) -> Wanted:
    """What an image sync would mirror now. A version whose image list is unknown makes the
    set unknowable: refused, rather than deleting that version's images."""
    from mirror import nodeconfig
    from mirror.images.sources import found_in_content, with_found_images

    plan = nodeconfig.image_plan(cfg, run_kubeadm=False)
    if plan.failures:
        raise PruneError(
            f"cannot tell which images are configured: {plan.failures[0]}; nothing was pruned"
        )
    jobs = with_found_images(cfg, plan.jobs, found_in_content(cfg))
    names = {name for job in jobs for name in job.destinations}
    return Wanted(frozenset(job.key for job in jobs), frozenset(names))


def _ours(cfg: Config, name: str) -> ImageRef | None:
    """`name` parsed when it lies in the mirror's layout under registry.url (mirror.images.refs
    RegistryLayout: its host, then its path prefix, then `<upstream host>/<path>` nested or
    one component flat), else None. ref.path is then the repository in our registry."""
    try:
        ref = parse_reference(name)
    except BadReference:
        return None
    layout = RegistryLayout.of(cfg.registry)
    if ref.host != layout.host:
        return None
    rest = ref.path
    if layout.prefix:
        if not rest.startswith(layout.prefix + "/"):
            return None
        rest = rest[len(layout.prefix) + 1 :]
    if layout.flat:
        return ref if "/" not in rest else None
    first = rest.split("/", 1)[0]
    hostlike = "." in first or ":" in first or first == "localhost"
    return ref if hostlike and "/" in rest else None


def _shape(cfg: Config) -> str:
    """The names _ours accepts, for the note on one it leaves alone."""
    url = cfg.registry.url.rstrip("/")
    shape = "<name>" if cfg.registry.layout == "flat" else "<host>/<path>"
    return f"{cfg.registry.layout} layout, {url}/{shape}"


def _children(body: bytes | None) -> list[str]:
    """Platform manifest digests of an index (none for a plain manifest)."""
    doc = _doc(body)
    if "manifests" not in doc or "layers" in doc:
        return []
    found = [m.get("digest") for m in doc.get("manifests") or [] if isinstance(m, dict)]
    return [d for d in found if isinstance(d, str) and d.startswith("sha256:")]


def _doc(body: bytes | None) -> dict[str, Any]:
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _blob_bytes(body: bytes | None) -> int:
    doc = _doc(body)
    parts = [doc.get("config") or {}, *(doc.get("layers") or [])]
    return sum(int(p.get("size") or 0) for p in parts if isinstance(p, dict))


class _Repository:
    """One repository of our registry: what stays, and what the removed names resolve to."""

    def __init__(self, api: RegistryAPI, repository: str) -> None:
        self.api = api
        self.repository = repository
        self.protected: dict[str, str] = {}  # digest -> the name that keeps it

    def protect(self, reference: str) -> None:
        found = self.api.local_manifest(self.repository, reference)
        if found is None:
            return
        sep = "@" if reference.startswith("sha256:") else ":"
        keeper = f"{self.repository}{sep}{reference}"
        self.protected.setdefault(found.digest, keeper)
        for child in _children(found.body):
            self.protected.setdefault(child, keeper)

    def removal(self, name: str, reference: str, deletes: list[str]) -> ImageRemoval:
        found = self.api.local_manifest(self.repository, reference)
        if found is None:
            return ImageRemoval(name, self.repository, None)
        keeper = self.protected.get(found.digest)
        if keeper is not None:
            return ImageRemoval(name, self.repository, found.digest, kept_by=keeper)
        size = _blob_bytes(found.body)
        if found.digest not in deletes:
            deletes.append(found.digest)  # the index first: never one naming deleted children
        for child in _children(found.body):
            if child in self.protected or child in deletes:
                continue
            deletes.append(child)
            manifest = self.api.local_manifest(self.repository, child)
            size += _blob_bytes(manifest.body if manifest else None)
        return ImageRemoval(name, self.repository, found.digest, size=size)


@dataclass
class Candidates:
    """Recorded names no longer configured, by repository; no registry read yet."""

    names: dict[str, list[tuple[str, ImageRef]]] = field(default_factory=dict)
    repositories: set[str] = field(default_factory=set)  # every one of ours, recorded or wanted
    records: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def candidates(cfg: Config, wanted: Wanted) -> Candidates:
    found = Candidates()
    for name in wanted.names:
        if (ref := _ours(cfg, name)) is not None:
            found.repositories.add(ref.path)
    for record in state.load_all(cfg.state_root, "images"):
        if record.key not in wanted.keys:
            found.records.append(record.key)
        for name in record.mirrored:
            if name in wanted.names:
                continue
            ref = _ours(cfg, name)
            if ref is None:
                found.notes.append(f"left alone: {name} (not in this mirror's {_shape(cfg)})")
                continue
            found.names.setdefault(ref.path, []).append((name, ref))
            found.repositories.add(ref.path)
    return found


def plan_images(
    cfg: Config, api: RegistryAPI | None, wanted: Wanted, found: Candidates
) -> ImagePlan:
    """What to delete, read through `api` (whose local_url serves the embedded storage);
    without one (the storage holds nothing) every candidate is only forgotten."""
    plan = ImagePlan(records=found.records, notes=found.notes)
    configured = [r for r in (_ours(cfg, n) for n in wanted.names) if r is not None]
    for repository in sorted(found.repositories):
        names = sorted(found.names.get(repository, []))
        if api is None:
            plan.removals += [ImageRemoval(name, repository, None) for name, _ in names]
        else:
            _plan_repository(cfg, api, repository, names, configured, plan)
    return plan


def revisions(cfg: Config, repository: str) -> list[str]:
    """Every manifest digest `repository` holds, tagged or not, from the storage's own index
    (distribution's layout, read only: the API lists tags, never manifests)."""
    from mirror.images.registry import registry_dir

    where = registry_dir(cfg) / "storage" / "docker" / "registry" / "v2" / "repositories"
    path = where.joinpath(*repository.split("/"), "_manifests", "revisions", "sha256")
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(f"sha256:{n}" for n in names if _HEX64.match(n))


def _plan_repository(
    cfg: Config,
    api: RegistryAPI,
    repository: str,
    names: list[tuple[str, ImageRef]],
    configured: Iterable[ImageRef],
    plan: ImagePlan,
) -> None:
    repo = _Repository(api, repository)
    gone_tags = {ref.tag for _, ref in names if ref.tag}
    # Every tag that stays protects its digest, configured or not (a tag someone else
    # pushed into this repository would otherwise vanish with a shared digest).
    for tag in api.local_tags(repository):
        if tag not in gone_tags:
            repo.protect(tag)
    for ref in configured:
        if ref.path == repository and ref.digest and not ref.tag:
            repo.protect(ref.digest)
    deletes = plan.deletes.setdefault(repository, [])
    for name, ref in sorted(names):
        reference = ref.tag or ref.digest
        assert reference is not None  # parse_reference gives every reference one of them
        plan.removals.append(repo.removal(name, reference, deletes))
    # What no staying tag, configured digest or their indexes name is garbage: the earlier
    # manifests of a tag that moved upstream (a sync copies the new one; the old stays).
    for digest in revisions(cfg, repository):
        if digest in repo.protected or digest in deletes:
            continue
        found = api.local_manifest(repository, digest)
        if found is None:
            continue
        deletes.append(digest)
        name = f"{cfg.registry.host}/{repository}@{digest}"
        plan.untagged.append(ImageRemoval(name, repository, digest, size=_blob_bytes(found.body)))
    if not deletes:
        del plan.deletes[repository]


def apply_deletes(api: RegistryAPI, plan: ImagePlan) -> int:
    """DELETE every planned manifest; returns how many existed. Stops at the first failure
    (MirrorError naming the repository): a rerun plans again from what is left."""
    deleted = 0
    for repository, digests in plan.deletes.items():
        for digest in digests:
            deleted += api.delete_local(repository, digest)
    return deleted


def drop_records(cfg: Config, keys: Iterable[str]) -> None:
    from mirror import fsutil

    for key in keys:
        fsutil.unlink_durable(state.keyed_file(cfg.state_root / "images", key))
