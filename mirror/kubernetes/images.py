"""Which images kubeadm of a version needs: from its own binary when mirrored, else the table.

Rules (config `kubeadm_images`):
- `auto` (default): the built-in table (mirror.kubeadm_images) for a version it knows; for one
  it does not know, the kubeadm binary of that exact version from the mirrored rpm.
- `binary`: the mirrored kubeadm binary whenever its rpm is mirrored; the table otherwise.
Either way a list kubeadm already gave (cached in state) is used, and where kubeadm and the
table disagree kubeadm wins, with a warning: the binary is what `kubeadm init` will pull.

Running kubeadm is only done where allowed (`run_kubeadm=True`: `mirror sync`, upgrade-plan);
web workers rendering node files pass False and use the cache or the table.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mirror import kubeadm_images
from mirror.config import Config
from mirror.errors import EnvironmentProblem, UnknownKubernetesVersion
from mirror.kubernetes import kubeadm_binary
from mirror.kubernetes.kubeadm_binary import BinaryList, KubeadmBinaryError
from mirror.kubernetes.packages import KubePackage, mirrored_packages, packages_of
from mirror.kubernetes.versions import KubeVersion

log = logging.getLogger("mirror.kubernetes")


class ImagesUnknown(UnknownKubernetesVersion):
    """Neither the table nor a mirrored kubeadm knows this version's images."""


@dataclass(frozen=True)
class ImageList:
    version: str  # "v1.36.5"
    images: tuple[str, ...]  # kubeadm's names: "registry.k8s.io/coredns/coredns:v1.14.2"
    source: str  # "table" or "kubeadm <rpm NVRA>"
    warning: str | None = None  # kubeadm and the table disagree, or kubeadm failed

    def tag_of(self, path: str) -> str | None:
        """Tag of e.g. "pause" in kubeadm's default repository."""
        prefix = f"{kubeadm_images.DEFAULT_IMAGE_REPOSITORY}/{path}:"
        return next((i[len(prefix) :] for i in self.images if i.startswith(prefix)), None)


def _table(version: str) -> tuple[str, ...] | None:
    try:
        return tuple(kubeadm_images.image_set(version).images())
    except UnknownKubernetesVersion:
        return None


def _disagreement(version: str, binary: BinaryList, table: Sequence[str]) -> str | None:
    only_binary = [i for i in binary.images if i not in table]
    only_table = [i for i in table if i not in binary.images]
    if not only_binary and not only_table:
        return None
    return (
        f"kubeadm {version}: its binary ({binary.rpm}) lists "
        f"{', '.join(only_binary) or 'nothing else'} where the built-in table has "
        f"{', '.join(only_table) or 'nothing else'}; using the binary's list"
    )


def _usable_cache(cached: BinaryList | None, rpms: list[KubePackage], run: bool) -> bool:
    """A cached list holds while the rpm it came from is what is mirrored (or nothing is, or
    we may not run a new one anyway)."""
    if cached is None:
        return False
    return not rpms or not run or any(r.checksum == cached.checksum for r in rpms)


def _no_source(version: KubeVersion, packages: list[KubePackage], problem: str | None) -> str:
    if problem:
        return problem
    kubeadm = [p for p in packages if p.name == "kubeadm"]
    known = f"known: {kubeadm_images.known_range()}"
    if kubeadm:
        arches = ", ".join(sorted({p.arch for p in kubeadm}))
        return (
            f"not in the built-in image table ({known}) and the mirrored kubeadm-"
            f"{version.major}.{version.minor}.{version.patch} is for {arches} only, which "
            f"this {os.uname().machine} machine cannot run"
        )
    return (
        f"not in the built-in image table ({known}) and no kubeadm rpm of that version is "
        f"mirrored (a repo with $kubernetes_minor={version.minor_name}; sync repos first)"
    )


def image_list(cfg: Config, version: str, run_kubeadm: bool = True) -> ImageList:
    """kubeadm's image list for `version`; ImagesUnknown (one line naming why) if none."""
    v = KubeVersion.parse(version)
    name = str(v)
    table = _table(name)
    packages = list(packages_of(mirrored_packages(cfg, v.minor_name), v))
    rpms = kubeadm_binary.host_arch_packages(packages)
    cached = kubeadm_binary.load_cached(cfg, name)
    binary: BinaryList | None = None
    problem: str | None = None
    if _usable_cache(cached, rpms, run_kubeadm):
        binary = cached
    elif (cfg.kubeadm_images == "binary" or table is None) and rpms and run_kubeadm:
        try:
            binary = kubeadm_binary.images_from_rpm(cfg, rpms[0], name)
        except (KubeadmBinaryError, EnvironmentProblem) as exc:
            problem = str(exc)
        except OSError as exc:  # scratch dir or cache not writable: say so, fall back
            problem = f"kubeadm {name}: {exc.strerror or exc} ({exc.filename or 'temp dir'})"
        except subprocess.TimeoutExpired as exc:  # a hung extraction fails this version only
            problem = f"kubeadm {name}: {Path(str(exc.cmd[0])).name} did not finish in time"
    if binary is not None:
        warning = _disagreement(name, binary, table) if table is not None else None
        return ImageList(name, binary.images, f"kubeadm {binary.rpm}", warning)
    if table is not None:
        warning = f"{problem}; using the built-in table" if problem else None
        return ImageList(name, table, "table", warning)
    raise ImagesUnknown(f"kubernetes version {name!r}", _no_source(v, packages, problem))


@dataclass
class KubeadmImages:
    """Image lists of every configured version, and what went wrong for the others."""

    lists: dict[str, ImageList] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # one line per failed version
    warnings: list[str] = field(default_factory=list)


def image_lists(cfg: Config, versions: Sequence[str], run_kubeadm: bool = True) -> KubeadmImages:
    out = KubeadmImages()
    for version in versions:
        try:
            found = image_list(cfg, version, run_kubeadm)
        except UnknownKubernetesVersion as exc:
            out.failures.append(f"kubeadm images of {version}: {exc}")
            continue
        out.lists[found.version] = found
        if found.warning:
            out.warnings.append(found.warning)
    return out
