"""`kubernetes_versions` at plan time: ranges become concrete versions from what is mirrored.

`v1.34.3..v1.36.5` means v1.34.3, the newest mirrored kubeadm patch of v1.35, and v1.36.5:
exactly the versions a kubeadm upgrade from one end to the other passes through. The middle
minors come from the published kubeadm packages, so the repo sync must run first; a middle
minor with no kubeadm mirrored yet is a problem of that range, not of the config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mirror.config import Config
from mirror.kubernetes.packages import newest_patch
from mirror.kubernetes.versions import KubeVersion, VersionRange, parse_entries

NewestPatch = Callable[[str], KubeVersion | None]


@dataclass(frozen=True)
class Resolution:
    versions: tuple[str, ...]  # concrete, in config order, deduplicated
    problems: tuple[str, ...]  # one line per minor a range could not fill


def upgrade_chain(
    start: KubeVersion, end: KubeVersion, newest: NewestPatch
) -> tuple[list[KubeVersion], list[str]]:
    """start, the newest patch of each minor between, end: kubeadm upgrades one minor at a
    time. Returns the chain and the minors that have no mirrored patch."""
    chain = [start]
    missing = []
    for minor in VersionRange(start, end).middle_minors():
        found = newest(minor)
        if found is None:
            missing.append(minor)
        else:
            chain.append(found)
    if end != start:
        chain.append(end)
    return chain, missing


def resolve_entries(texts: Sequence[str], newest: NewestPatch) -> Resolution:
    versions: list[str] = []
    problems: list[str] = []
    for entry in parse_entries(texts):
        if isinstance(entry, VersionRange):
            chain, missing = upgrade_chain(entry.start, entry.end, newest)
            problems += [
                f"kubernetes_versions range {entry}: no kubeadm of {minor} is mirrored, so "
                f"its newest patch is unknown (is a repo with $kubernetes_minor synced?)"
                for minor in missing
            ]
        else:
            chain = [entry]
        versions += [str(v) for v in chain if str(v) not in versions]
    return Resolution(tuple(versions), tuple(problems))


def resolve_versions(cfg: Config) -> Resolution:
    """Every concrete version `kubernetes_versions` asks for, from the mirrored packages."""
    cache: dict[str, KubeVersion | None] = {}

    def newest(minor: str) -> KubeVersion | None:
        if minor not in cache:
            cache[minor] = newest_patch(cfg, minor)
        return cache[minor]

    return resolve_entries(cfg.kubernetes_versions, newest)
