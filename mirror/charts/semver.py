"""SemVer 2.0 precedence for chart versions (semver.org, section 11).

Helm orders chart versions with Masterminds/semver, which also accepts a leading "v" and
missing minor/patch parts ("v1.2" = 1.2.0); so do we. Nothing SemVer-capable is a dependency
of this project (`packaging` implements PEP 440, which orders pre-releases differently), and
precedence is small enough to own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SEMVER_RE = re.compile(
    r"^v?(?P<major>0|[1-9]\d*)(?:\.(?P<minor>0|[1-9]\d*))?(?:\.(?P<patch>0|[1-9]\d*))?"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


class NotSemver(ValueError):
    pass


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    pre: tuple[str, ...]  # dot-separated identifiers; empty for a release

    @property
    def prerelease(self) -> bool:
        return bool(self.pre)

    def _pre_key(self) -> tuple[tuple[int, int, str], ...]:
        # Numeric identifiers sort numerically and before alphanumeric ones (rule 11.4).
        return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre)

    def key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        # A release sorts after every pre-release of the same core version (rule 11.3);
        # a longer identifier list wins when one is a prefix of the other (tuple order).
        return (self.major, self.minor, self.patch, 0 if self.pre else 1, self._pre_key())

    def __lt__(self, other: Version) -> bool:
        return self.key() < other.key()


def parse(text: str) -> Version:
    """A chart version; build metadata is ignored for precedence, as SemVer says."""
    match = _SEMVER_RE.match(text.strip()) if len(text) <= 128 else None
    if match is None:
        raise NotSemver(f"not a SemVer version: {text[:80]!r}")
    pre = match["pre"]
    return Version(
        int(match["major"]),
        int(match["minor"] or 0),
        int(match["patch"] or 0),
        tuple(pre.split(".")) if pre else (),
    )
