"""The Kubernetes packages this mirror has published, read from the published primary metadata.

Which patch releases exist for a minor, which kubeadm/kubelet/kubectl rpm each has, and where
the kubeadm rpm of an exact version lies (its binary is the source of truth for its image list).
Read from `data_dir/repos/<repo>/<minor>/repodata/` (what nodes get), never from upstream: the
repo sync ran first and verified it, so this needs no network.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import createrepo_c as cr

from mirror.config import Config
from mirror.errors import ConfigError
from mirror.kubernetes.versions import KubeVersion
from mirror.repofile import RepoTarget, expand_targets, load_definitions

log = logging.getLogger("mirror.kubernetes")
KUBE_PACKAGES = ("kubeadm", "kubelet", "kubectl")
REPOMD = ("repodata", "repomd.xml")


@dataclass(frozen=True)
class KubePackage:
    name: str
    version: str  # "1.36.5" as in the rpm
    release: str
    arch: str
    checksum: str  # pkgId from primary: identifies the exact rpm (cache key)
    path: Path  # the published file
    repo: str  # target key, "kubernetes/v1.36"

    @property
    def kube_version(self) -> KubeVersion | None:
        try:
            return KubeVersion.parse(self.version)
        except ConfigError:
            return None  # e.g. a pre-release build: not a version we plan with

    @property
    def nvra(self) -> str:
        return f"{self.name}-{self.version}-{self.release}.{self.arch}"


def _targets(cfg: Config) -> list[RepoTarget]:
    try:
        return expand_targets(load_definitions(cfg), cfg)
    except ConfigError as exc:  # no repos_dir (`--only images` setups): nothing mirrored
        log.debug("no repo definitions: %s", exc)
        return []


def trees_for(cfg: Config, minor: str) -> list[tuple[str, Path]]:
    """(target key, published root) that may hold `minor`'s packages: the targets with
    $kubernetes_minor == minor; failing those, repos without that variable (a .repo written
    for one fixed minor), whose packages are then filtered by version."""
    targets = _targets(cfg)
    chosen = [t for t in targets if dict(t.values).get("kubernetes_minor") == minor]
    if not chosen:
        chosen = [t for t in targets if "kubernetes_minor" not in dict(t.values)]
    out = []
    for target in chosen:
        root = cfg.repos_root.joinpath(*target.subpath)
        if root.joinpath(*REPOMD).is_file():
            out.append((target.key, root))
    return out


def _safe_file(root: Path, href: str) -> Path | None:
    rel = PurePosixPath(href)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        return None
    return root.joinpath(*rel.parts)


def _primary_href(root: Path) -> str | None:
    repomd = cr.Repomd(str(root.joinpath(*REPOMD)))
    for record in repomd.records:
        if record.type == "primary":
            href: str = record.location_href
            return href
    return None


@functools.lru_cache(maxsize=64)
def _parse_primary(key: str, root: Path, stamp: tuple[int, int]) -> tuple[KubePackage, ...]:
    """Kubernetes packages of one published tree; cached per repomd.xml (mtime, size), so a
    process reads each generation once. The sync checked this metadata against its caps
    before publishing it, so createrepo_c parses it directly."""
    del stamp  # only part of the cache key
    href = _primary_href(root)
    primary = _safe_file(root, href) if href else None
    if primary is None or not primary.is_file():
        return ()
    found: list[KubePackage] = []

    def keep(pkg: cr.Package) -> None:
        if pkg.name not in KUBE_PACKAGES:
            return
        path = _safe_file(root, pkg.location_href or "")
        if path is None or pkg.location_base:
            return
        found.append(
            KubePackage(pkg.name, pkg.version, pkg.release, pkg.arch, pkg.pkgId, path, key)
        )

    try:
        cr.xml_parse_primary(str(primary), pkgcb=keep, do_files=False)
    except Exception as exc:  # createrepo_c raises its own error type
        log.warning("%s: published primary metadata does not parse: %s", key, exc)
        return ()
    return tuple(found)


def _stamp(root: Path) -> tuple[int, int]:
    st = root.joinpath(*REPOMD).stat()
    return (st.st_mtime_ns, st.st_size)


def mirrored_packages(cfg: Config, minor: str) -> list[KubePackage]:
    """kubeadm/kubelet/kubectl of `minor` ("v1.36") as published, every arch."""
    out = []
    for key, root in trees_for(cfg, minor):
        try:
            packages = _parse_primary(key, root, _stamp(root))
        except (OSError, ValueError) as exc:  # a tree being replaced right now
            log.warning("%s: cannot read published metadata: %s", key, exc)
            continue
        for pkg in packages:
            version = pkg.kube_version
            if version is not None and version.minor_name == minor:
                out.append(pkg)
    return out


def kubeadm_versions(packages: list[KubePackage]) -> list[KubeVersion]:
    """Distinct versions kubeadm is mirrored in, ascending."""
    versions = {p.kube_version for p in packages if p.name == "kubeadm"}
    return sorted(v for v in versions if v is not None)


def newest_patch(cfg: Config, minor: str) -> KubeVersion | None:
    versions = kubeadm_versions(mirrored_packages(cfg, minor))
    return versions[-1] if versions else None


def packages_of(packages: list[KubePackage], version: KubeVersion) -> Iterator[KubePackage]:
    return (p for p in packages if p.kube_version == version)
