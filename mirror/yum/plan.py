"""Stage 4 of a repo sync: decide which packages to publish and which must be downloaded."""

from __future__ import annotations

import functools
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from rpm_vercmp import vercmp

from mirror.config import RepoFilter
from mirror.errors import RepoSyncError
from mirror.progress import human_bytes
from mirror.yum.checksums import ChecksumCache
from mirror.yum.metadata import PackageRef


@dataclass(frozen=True)
class Plan:
    selected: tuple[PackageRef, ...]  # what the published repo will hold
    to_download: tuple[PackageRef, ...]  # the subset not yet present with the right checksum
    filtered: bool  # True when metadata must be regenerated (subset of upstream)

    @property
    def download_bytes(self) -> int:
        return sum(p.size for p in self.to_download)

    @property
    def total_bytes(self) -> int:
        return sum(p.size for p in self.selected)


def _names(pkg: PackageRef) -> tuple[str, ...]:
    return (
        pkg.name,
        f"{pkg.name}-{pkg.version}",
        f"{pkg.name}-{pkg.version}-{pkg.release}",
        f"{pkg.name}-{pkg.version}-{pkg.release}.{pkg.arch}",
    )


def _matches(pkg: PackageRef, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(n, pat) for pat in patterns for n in _names(pkg))


def _evr_cmp(a: PackageRef, b: PackageRef) -> int:
    for x, y in ((a.epoch, b.epoch), (a.version, b.version), (a.release, b.release)):
        result = int(vercmp(x or "0", y or "0"))
        if result:
            return result
    return 0


def apply_filter(packages: Sequence[PackageRef], rule: RepoFilter | None) -> list[PackageRef]:
    """include/exclude globs, then keep the `newest` N versions of each name and arch."""
    if rule is None:
        return list(packages)
    chosen = [
        p
        for p in packages
        if (not rule.include or _matches(p, rule.include)) and not _matches(p, rule.exclude)
    ]
    if rule.newest is None:
        return chosen
    by_name: dict[tuple[str, str], list[PackageRef]] = defaultdict(list)
    for pkg in chosen:
        by_name[(pkg.name, pkg.arch)].append(pkg)
    keep: set[int] = set()
    for group in by_name.values():
        group.sort(key=functools.cmp_to_key(_evr_cmp), reverse=True)
        keep.update(id(p) for p in group[: rule.newest])
    return [p for p in chosen if id(p) in keep]


def _unique_hrefs(packages: Sequence[PackageRef]) -> list[PackageRef]:
    """One package per file: a primary.xml listing the same href twice (it happens with
    hand-made repos) would have two downloads race on one file. Same bytes: keep one;
    different checksums for one file: the metadata contradicts itself."""
    seen: dict[str, PackageRef] = {}
    for pkg in packages:
        other = seen.setdefault(pkg.href, pkg)
        if other is not pkg and (other.checksum, other.size) != (pkg.checksum, pkg.size):
            raise DuplicateHref(pkg.href)
    return list(seen.values())


class DuplicateHref(ValueError):
    pass


def make_plan(
    packages: Sequence[PackageRef],
    rule: RepoFilter | None,
    published_dir: Path,
    checksums: ChecksumCache,
) -> Plan:
    """Packages already on disk with the right checksum are not downloaded again."""
    selected = _unique_hrefs(apply_filter(packages, rule))
    missing = tuple(p for p in selected if not checksums.matches(published_dir, p))
    return Plan(selected=tuple(selected), to_download=missing, filtered=rule is not None)


def _existing_parent(path: Path) -> Path:
    """The nearest existing directory at or above `path` (staging is created lazily)."""
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return Path("/")


def check_space(
    repo: str,
    plan: Plan,
    staging_dir: Path,
    *,
    data_dir: Path | None = None,
    reserve: int = 0,
) -> None:
    """Refuse a plan whose downloads cannot fit, before any byte is downloaded.

    Upstream claims each package's size in primary.xml; a hostile or broken one claiming
    1 TB would otherwise fill data_dir (and break serving) before the checksum check fails.
    Packages are downloaded into `staging_dir` and renamed into place on the same file
    system, so what counts is the free space there, plus `reserve` bytes kept free.
    """
    needed = plan.download_bytes + reserve
    if needed <= 0:
        return
    usage = shutil.disk_usage(_existing_parent(staging_dir))
    if needed > usage.free:
        where = data_dir if data_dir is not None else staging_dir
        raise RepoSyncError(
            repo,
            f"no space left on device under data_dir ({where}): needs "
            f"{human_bytes(needed)} for {len(plan.to_download)} packages, "
            f"only {human_bytes(usage.free)} free",
        )
