"""Kubernetes version numbers, minors and the `A..B` ranges of `kubernetes_versions`.

Pure parsing: nothing here reads the mirror, so mirror/config.py can validate with it. What
a range means in packages (the newest mirrored patch of each minor between its ends) is
decided at plan time, in mirror.kubernetes.resolve.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mirror.errors import UnknownKubernetesVersion

RANGE_SEP = ".."
_VERSION_RE = re.compile(r"v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
_MINOR_RE = re.compile(r"v(0|[1-9]\d*)\.(0|[1-9]\d*)")


@dataclass(frozen=True, order=True)
class KubeVersion:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> KubeVersion:
        """`v1.36.5` or `1.36.5`; anything else (pre-releases included) is refused."""
        match = _VERSION_RE.fullmatch(text.strip())
        if match is None:
            raise UnknownKubernetesVersion(
                f"kubernetes version {text!r}", "malformed version, expected vMAJOR.MINOR.PATCH"
            )
        major, minor, patch = (int(g) for g in match.groups())
        return cls(major, minor, patch)

    @property
    def minor_name(self) -> str:
        """The value of `$kubernetes_minor`: "v1.36" (pkgs.k8s.io's path segment)."""
        return f"v{self.major}.{self.minor}"

    @property
    def minor_key(self) -> tuple[int, int]:
        return (self.major, self.minor)

    def __str__(self) -> str:
        return f"v{self.major}.{self.minor}.{self.patch}"


@dataclass(frozen=True)
class VersionRange:
    """`start..end`: both ends plus the newest mirrored patch of every minor between."""

    start: KubeVersion
    end: KubeVersion

    def minors(self) -> list[str]:
        return [f"v{self.start.major}.{m}" for m in range(self.start.minor, self.end.minor + 1)]

    def middle_minors(self) -> list[str]:
        """Minors strictly between the ends' minors (resolved from mirrored packages)."""
        return self.minors()[1:-1]

    def __str__(self) -> str:
        return f"{self.start}{RANGE_SEP}{self.end}"


Entry = KubeVersion | VersionRange


def parse_entry(text: str) -> Entry:
    """One item of `kubernetes_versions`; UnknownKubernetesVersion (a ConfigError) if bad."""
    if RANGE_SEP not in text:
        return KubeVersion.parse(text)
    left, _, right = text.partition(RANGE_SEP)
    start, end = KubeVersion.parse(left), KubeVersion.parse(right)
    where = f"kubernetes version range {text!r}"
    if start.major != end.major:
        raise UnknownKubernetesVersion(where, "both ends must have the same major version")
    if end < start:
        raise UnknownKubernetesVersion(where, f"ends in reverse order (write {end}..{start})")
    return VersionRange(start, end)


def parse_entries(texts: Iterable[str]) -> list[Entry]:
    return [parse_entry(t) for t in texts]


def normalize_entry(text: str) -> str:
    return str(parse_entry(text))


def minor_of(version: str) -> str:
    """ "v1.35.9" -> "v1.35"."""
    return KubeVersion.parse(version).minor_name


def parse_minor(text: str) -> tuple[int, int]:
    match = _MINOR_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a Kubernetes minor like v1.36: {text!r}")
    return int(match.group(1)), int(match.group(2))


def configured_minors(texts: Sequence[str]) -> list[str]:
    """Every minor `kubernetes_versions` touches, ascending: the values of `$kubernetes_minor`."""
    minors: set[str] = set()
    for entry in parse_entries(texts):
        if isinstance(entry, VersionRange):
            minors.update(entry.minors())
        else:
            minors.add(entry.minor_name)
    return sorted(minors, key=parse_minor)


def first_version(texts: Sequence[str]) -> str | None:
    """The default for node configs: the first entry (a range's lower end)."""
    if not texts:
        return None
    entry = parse_entry(texts[0])
    return str(entry.start if isinstance(entry, VersionRange) else entry)


def explicit_versions(texts: Sequence[str]) -> list[str]:
    """Versions written in the config (a range's two ends), in order, deduplicated."""
    out: list[str] = []
    for entry in parse_entries(texts):
        ends = [entry.start, entry.end] if isinstance(entry, VersionRange) else [entry]
        out.extend(str(v) for v in ends if str(v) not in out)
    return out
