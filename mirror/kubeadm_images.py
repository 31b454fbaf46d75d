"""Container images kubeadm needs for each Kubernetes patch release (air-gap mirror list).

kubeadm compiles the CoreDNS and pause tags into each binary (constants.CoreDNSVersion,
constants.PauseVersion) and picks etcd from constants.SupportedEtcdVersion[<minor>], falling
back to the nearest minor in the map (constants.EtcdSupportedVersion). Both change inside a
minor release through cherry-picks, so the table below is per patch release. It describes
`kubeadm config images list --kubernetes-version vX.Y.Z` run with kubeadm vX.Y.Z itself.

Sources read (kubernetes/kubernetes unless noted):
- cmd/kubeadm/app/images/images.go @ 008b3652959ca58af8be3fb5b6ecfe9ae7638282 (v1.36.0-era
  master): GetControlPlaneImages, GetDNSImage, GetEtcdImage, GetPauseImage.
- cmd/kubeadm/app/constants/constants.go @ 00886ac01fec1c8432967e8bb597828f46a9ba8b (release-1.32
  tip): DefaultEtcdVersion "3.5.16-0", SupportedEtcdVersion {29..32: "3.5.24-0"},
  CoreDNSVersion "v1.11.3", PauseVersion "3.10", EtcdSupportedVersion's nearest-key fallback.
- The constants.go diffs quoted in the cherry-pick PRs cited next to each change point, and the
  patch dates in kubernetes/website data/releases/schedule.yaml (several stored revisions).
- Published `kubeadm config images list` output, cited as "output" below: a per-patch table of
  v1.22.0..v1.30.2 (a GitHub "hub-mirrors" README) and individual outputs produced by a kubeadm
  binary of the stated version. Only the release-1.32 constants.go and images.go could be read
  directly: the index holds one revision of each, so tag-by-tag source reads were not possible.

Labels: INFERRED = placed from a merged cherry-pick PR and the patch-release dates, not seen in
any output; UNVERIFIED = carried forward/back from the nearest verified patch with no source
confirming it. Unlabelled values were seen in published output or in a PR diff/release note.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mirror.errors import UnknownKubernetesVersion

DEFAULT_IMAGE_REPOSITORY = "registry.k8s.io"

# kubeadm v1.24.0..v1.24.8 defaulted to k8s.gcr.io; v1.24.9 switched to registry.k8s.io (output:
# hub-mirrors table). Same image paths; k8s.gcr.io is frozen, so images() always pulls from
# registry.k8s.io by default and only treats k8s.gcr.io as "default" for those nine releases.
LEGACY_IMAGE_REPOSITORY = "k8s.gcr.io"
_LEGACY_DEFAULT_LAST = (24, 8)

# images.go GetControlPlaneImages @ 008b365: apiserver, controller-manager, scheduler, kube-proxy,
# CoreDNS, pause, etcd. Before v1.29 CoreDNS was appended last, after pause and etcd (old body
# quoted in kubernetes/kubernetes#114979); PR #114534 ("kubeadm: Support skipping addons image
# pull", merged 2023-10-27, v1.29.0) moved it. Output: v1.28.14 and v1.28.15 old order, v1.29.0
# (etcd 3.5.10-0) and v1.30.0 new order.
_NEW_ORDER_FROM_MINOR = 29

# kubeadm config API: v1beta4 is the default from v1.31 (fields added to v1beta4 by PR #114534
# reached users "in milestone 1.31", kubernetes/kubeadm#2603); v1beta3 before that.
_V1BETA4_FROM_MINOR = 31

# Per minor: (last known patch, ((first_patch, etcd, coredns, pause), ...)). A row applies from
# first_patch up to the next row's first_patch - 1.
_Row = tuple[int, str, str, str]
_TABLE: dict[int, tuple[int, tuple[_Row, ...]]] = {
    # 1.24: CoreDNS v1.8.6, pause 3.7 throughout (output). Last patch 1.24.17 (eol.yaml).
    24: (
        17,
        (
            # PR #109471 adds 24: "3.5.3-0"; output v1.24.0..7
            (0, "3.5.3-0", "v1.8.6", "3.7"),
            # PR #113099 (release-1.24, merged 2022-10-21); output
            (8, "3.5.5-0", "v1.8.6", "3.7"),
            # output v1.24.9..17 (also first registry.k8s.io default)
            (9, "3.5.6-0", "v1.8.6", "3.7"),
        ),
    ),
    # 1.25: CoreDNS v1.9.3, pause 3.8. Last patch 1.25.16 (eol.yaml).
    25: (
        16,
        (
            # output v1.25.0..3
            (0, "3.5.4-0", "v1.9.3", "3.8"),
            # PR #113197 (release-1.25, merged 2022-10-21); output
            (4, "3.5.5-0", "v1.9.3", "3.8"),
            # output v1.25.5..14
            (5, "3.5.6-0", "v1.9.3", "3.8"),
            # output v1.25.15, v1.25.16 (PR #121701 3.5.10: closed)
            (15, "3.5.9-0", "v1.9.3", "3.8"),
        ),
    ),
    # 1.26: CoreDNS v1.9.3 (PR #121526 to v1.10.1: closed), pause 3.9. Last 1.26.15 (eol.yaml).
    26: (
        15,
        (
            # PR #114232 adds 26: "3.5.6-0"; output v1.26.0..9
            (0, "3.5.6-0", "v1.9.3", "3.9"),
            # output v1.26.10..12
            (10, "3.5.9-0", "v1.9.3", "3.9"),
            # PR #121803 (merged 2024-01-10); output v1.26.13..15
            (13, "3.5.10-0", "v1.9.3", "3.9"),
        ),
    ),
    # 1.27: CoreDNS v1.10.1, pause 3.9. v1.27.0..2 had no key 27 and fell back to the nearest key
    # (26: "3.5.7-0", kubernetes/kubeadm#2859, kubernetes#118302 output for v1.27.2); PR #118307
    # (v1.27.3) added 27: "3.5.7-0". Last patch 1.27.16 (eol.yaml).
    27: (
        16,
        (
            # output v1.27.0..6
            (0, "3.5.7-0", "v1.10.1", "3.9"),
            # output v1.27.7..9
            (7, "3.5.9-0", "v1.10.1", "3.9"),
            # output v1.27.10, v1.27.11
            (10, "3.5.10-0", "v1.10.1", "3.9"),
            # output v1.27.12..15. v1.27.16: UNVERIFIED (no later etcd cherry-pick to 1.27
            # was found; the 3.5.15 backports targeted 1.28..1.30 only).
            (12, "3.5.12-0", "v1.10.1", "3.9"),
        ),
    ),
    # 1.28: CoreDNS v1.10.1, pause 3.9, old image order. Last patch 1.28.15 (eol.yaml).
    28: (
        15,
        (
            # output v1.28.0..5
            (0, "3.5.9-0", "v1.10.1", "3.9"),
            # PR #121805; CHANGELOG-1.28.md v1.28.6: "Etcd: Update to version 3.5.10";
            # output v1.28.6..7
            (6, "3.5.10-0", "v1.10.1", "3.9"),
            # PR #123196 (diff 28: "3.5.12-0"); output v1.28.8..11; v1.28.12..13 INFERRED (the
            # next bump merged 2024-09-04, after the 1.28.13 cut).
            (8, "3.5.12-0", "v1.10.1", "3.9"),
            # PR #126399 (diff 28: "3.5.12-0" -> "3.5.15-0", approved 2024-09-04; 1.28.14
            # cherry-pick deadline 2024-09-06); output from kubeadm v1.28.14 and v1.28.15.
            (14, "3.5.15-0", "v1.10.1", "3.9"),
        ),
    ),
    # 1.29: CoreDNS v1.11.1 throughout (output v1.29.9, v1.29.15), pause 3.9. Last 1.29.15
    # (released 2025-03-12 per rancher/kontainer-driver-metadata#1636 and kURL#5612).
    29: (
        15,
        (
            # output v1.29.0..2
            (0, "3.5.10-0", "v1.11.1", "3.9"),
            # PR #123188; output v1.29.3..6; v1.29.7..8 INFERRED
            (3, "3.5.12-0", "v1.11.1", "3.9"),
            # PR #126397 (diff 29: "3.5.15-0"); output v1.29.9; v1.29.10 INFERRED
            (9, "3.5.15-0", "v1.11.1", "3.9"),
            # PR #127951 (release-1.29, lgtm 2024-11-11); PR #127953 thread: upgrading "from
            # 1.29.11 to 1.30.8" goes back to 3.5.15, so 1.29.11 has 3.5.16; output v1.29.15.
            # The 3.5.17 (#129671) and 3.5.21 backports were closed.
            (11, "3.5.16-0", "v1.11.1", "3.9"),
        ),
    ),
    # 1.30: pause 3.9. 3.5.16 (#127953), 3.5.17 (#129673), 3.5.21 (#131960) backports all
    # closed. Last patch 1.30.14 (rancher/hyperkube#413, eol.yaml).
    30: (
        14,
        (
            # output v1.30.0..2; v1.30.3..4 INFERRED
            (0, "3.5.12-0", "v1.11.1", "3.9"),
            # PR #126395 (diff 30: "3.5.15-0") plus the CoreDNS v1.11.3 backport of #126449 that
            # #126796 (release-1.31) waited on; output from kubeadm v1.30.5 and v1.30.14.
            (5, "3.5.15-0", "v1.11.3", "3.9"),
        ),
    ),
    # 1.31: pause 3.10, first v1beta4 release. Last patch 1.31.14 (eol.yaml).
    31: (
        14,
        (
            # output v1.31.0 (8 independent listings)
            (0, "3.5.15-0", "v1.11.1", "3.10"),
            # PR #126796 (release-1.31 cherry-pick of #126449, CoreDNS v1.11.3 "in 1.31.1"); output
            # v1.31.1. etcd backports #127955 (3.5.16), #129676 (3.5.17), #131959 (3.5.21): closed.
            (1, "3.5.15-0", "v1.11.3", "3.10"),
            # INFERRED: PR #135020 (release-1.31, 31: "3.5.24-0", lgtm 2025-11-03, deadline
            # 2025-11-07), same batch as #135018 that the v1.33.6 notes list. No v1.31.14 output.
            (14, "3.5.24-0", "v1.11.3", "3.10"),
        ),
    ),
    # 1.32: CoreDNS v1.11.3, pause 3.10 (release-1.32 constants.go @ 00886ac). Last patch 1.32.13
    # (k0sproject/k0s#7181; output from v1.32.13).
    32: (
        13,
        (
            # output v1.32.0; #131958 (3.5.21) closed
            (0, "3.5.16-0", "v1.11.3", "3.10"),
            # PR #135019 (release-1.32); constants.go @ 00886ac has 32: "3.5.24-0"; output
            # v1.32.13. First patch v1.32.10 INFERRED (same batch as #135018 -> v1.33.6).
            (10, "3.5.24-0", "v1.11.3", "3.10"),
        ),
    ),
    # 1.33: pause 3.10. CoreDNS v1.12.0 is taken from several published image lists; no
    # kubeadm-generated 1.33 output or 1.33 constants.go was readable: UNVERIFIED.
    # Last patch 1.33.13 (schedule.yaml lists 1.33.12 on 2026-05-12; k3s builds reference
    # v1.33.13 on 2026-06-10).
    33: (
        13,
        (
            # PR #134779 review comment (2025-10-22): "release-1.33 is at .21".
            (0, "3.5.21-0", "v1.12.0", "3.10"),
            # PR #135018; v1.33.6 release notes: "Kubeadm: updated the supported etcd version to
            # v3.5.24". v1.33.7..13 UNVERIFIED (carried forward).
            (6, "3.5.24-0", "v1.12.0", "3.10"),
        ),
    ),
    # 1.34: CoreDNS v1.12.1, pause 3.10.1 (output v1.34.0, v1.34.1, v1.34.4). Last patch
    # 1.34.11 (k3s builds reference v1.34.11 on 2026-08-17; schedule.yaml lists up to 1.34.8).
    34: (
        11,
        (
            # PR #133245 ("deliver etcd 3.6.4 with 1.34"); output
            (0, "3.6.4-0", "v1.12.1", "3.10.1"),
            # 34: "3.6.5-0" is in a vendored copy of release-1.34 constants.go after PR #134861
            # and in output from kubeadm v1.34.4. The switch happened in v1.34.2, .3 or .4:
            # v1.34.2 is assumed (UNVERIFIED). v1.34.5..11 UNVERIFIED (carried forward).
            (2, "3.6.5-0", "v1.12.1", "3.10.1"),
        ),
    ),
    # 1.35: PR #135271 (master, key getSkewedKubernetesVersion(0): "3.6.5-0" -> "3.6.6-0"); a
    # published v1.35.0 list shows etcd 3.6.6-0, CoreDNS v1.13.1, pause 3.10.1. No kubeadm-made
    # 1.35 output was found: UNVERIFIED for every 1.35 patch. Last patch 1.35.8 (k3s builds
    # reference v1.35.8 on 2026-08-17).
    35: (8, ((0, "3.6.6-0", "v1.13.1", "3.10.1"),)),
    # 1.36: output from kubeadm v1.36.4 (server tarball binaries): etcd 3.6.8-0, CoreDNS
    # v1.14.2, pause 3.10.2. etcd 3.6.8 came from PR #137107 (master, 2026-02-18); the 3.6.9
    # PRs were closed and #138392 (3.6.10) / #138746 (3.6.11) merged on master after the 1.36
    # branch. v1.36.0..3 UNVERIFIED (carried back from v1.36.4). Last patch 1.36.4 (GitHub
    # release published 2026-08-20). v1.37.0 exists (2026-08) but its constants were not found.
    36: (4, ((0, "3.6.8-0", "v1.14.2", "3.10.2"),)),
}

_KUBERNETES_IMAGES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy")
_VERSION_RE = re.compile(r"v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
_PRERELEASE_RE = re.compile(r"v?\d+\.\d+\.\d+-(alpha|beta|rc)\b.*")
_FIRST = (1, min(_TABLE), 0)
_LAST = (1, max(_TABLE), _TABLE[max(_TABLE)][0])


def _fmt(major: int, minor: int, patch: int) -> str:
    return f"v{major}.{minor}.{patch}"


def known_range() -> str:
    """The first and last known release, e.g. "v1.24.0 .. v1.36.4"."""
    return f"{_fmt(*_FIRST)} .. {_fmt(*_LAST)}"


def _unknown(text: str, why: str) -> UnknownKubernetesVersion:
    return UnknownKubernetesVersion(f"kubernetes version {text!r}", why)


def _parse(text: str) -> tuple[int, int, int]:
    candidate = text.strip()
    if _PRERELEASE_RE.fullmatch(candidate):
        raise _unknown(
            text, f"unknown release (pre-releases are not supported); known: {known_range()}"
        )
    match = _VERSION_RE.fullmatch(candidate)
    if match is None:
        raise _unknown(
            text, f"malformed version, expected vMAJOR.MINOR.PATCH; known: {known_range()}"
        )
    major, minor, patch = (int(group) for group in match.groups())
    return major, minor, patch


def normalize_version(text: str) -> str:
    """Normalize "1.28.4" or "v1.28.4" to "v1.28.4"; UnknownKubernetesVersion if malformed."""
    return _fmt(*_parse(text))


def _lookup(text: str) -> tuple[int, int, _Row]:
    major, minor, patch = _parse(text)
    entry = _TABLE.get(minor) if major == 1 else None
    if entry is None or patch > entry[0]:
        raise _unknown(text, f"unknown release; known: {known_range()}")
    rows = entry[1]
    row = next(r for r in reversed(rows) if r[0] <= patch)
    return minor, patch, row


@dataclass(frozen=True)
class KubeadmImageSet:
    version: str  # normalized "v1.28.4"
    etcd: str  # "3.5.9-0"
    coredns: str  # "v1.10.1"
    pause: str  # "3.9"

    def images(self, repository: str = DEFAULT_IMAGE_REPOSITORY) -> list[str]:
        """Full references in `kubeadm config images list --kubernetes-version V` order.

        CoreDNS naming (images.go GetDNSImage @ 008b365): only when the repository equals
        kubeadm's default does kubeadm add the sub-path ("registry.k8s.io/coredns/coredns:TAG");
        any other imageRepository gets "<imageRepository>/coredns:TAG". Output confirming the
        custom form: v1.26.0 (learnk8s article), v1.28.14/v1.29.9, v1.36.4.
        """
        repo = repository.strip().rstrip("/")
        if not repo:
            raise ValueError("image repository must not be empty")
        _, minor, patch = (int(p) for p in self.version[1:].split("."))
        defaults = {DEFAULT_IMAGE_REPOSITORY}
        if (minor, patch) <= _LEGACY_DEFAULT_LAST:
            defaults.add(LEGACY_IMAGE_REPOSITORY)
        dns_repo = f"{repo}/coredns" if repo in defaults else repo
        core = [f"{repo}/{name}:{self.version}" for name in _KUBERNETES_IMAGES]
        coredns = f"{dns_repo}/coredns:{self.coredns}"
        pause = f"{repo}/pause:{self.pause}"
        etcd = f"{repo}/etcd:{self.etcd}"
        if minor >= _NEW_ORDER_FROM_MINOR:
            return [*core, coredns, pause, etcd]
        return [*core, pause, etcd, coredns]


def image_set(version: str) -> KubeadmImageSet:
    """The images kubeadm of `version` uses. Raises UnknownKubernetesVersion if not in the table."""
    minor, patch, (_, etcd, coredns, pause) = _lookup(version)
    return KubeadmImageSet(version=_fmt(1, minor, patch), etcd=etcd, coredns=coredns, pause=pause)


def known_versions() -> list[str]:
    """Every known patch release, ascending."""
    return [
        _fmt(1, minor, patch) for minor in sorted(_TABLE) for patch in range(_TABLE[minor][0] + 1)
    ]


def api_version_for(version: str) -> str:
    """kubeadm config API: kubeadm.k8s.io/v1beta3 before 1.31, kubeadm.k8s.io/v1beta4 from 1.31."""
    minor, _, _ = _lookup(version)
    return "kubeadm.k8s.io/v1beta4" if minor >= _V1BETA4_FROM_MINOR else "kubeadm.k8s.io/v1beta3"
