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
  binary of the stated version (`config images list`/`pull`, `upgrade plan`, init logs, and the
  static pods of clusters built by it). Only the release-1.32 constants.go and images.go could be
  read directly: the index holds one revision of each, so tag-by-tag source reads were not
  possible, and the stored CHANGELOG-1.3x.md revisions stop before most 2026 patch releases.

Labels: INFERRED = not seen in any output for that patch, but placed from a merged cherry-pick PR
and the patch-release dates, or bracketed by observed patches of the same minor with the same
value and no cherry-pick found in between; UNVERIFIED = carried forward/back from the nearest
verified patch with no source confirming it. Unlabelled values were seen in published output, an
image listing named next to the row, or a PR diff/release note.
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
            # output v1.27.12..15; output v1.27.16 from a kubeadm v1.27.16 ("falling back to the
            # local client version: v1.27.16", hub.8ops.top kubeadm notes), matching several
            # `kubeadm config images list --kubernetes-version v1.27.16` listings.
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
            # PR #123196 (diff 28: "3.5.12-0"); output v1.28.8..11; v1.28.12: `kubeadm init --v=5`
            # pull log dated 08-03 (2024, v1.28.12 the newest 1.28) pulling etcd:3.5.12-0, pause 3.9
            # and CoreDNS v1.10.1. v1.28.13 INFERRED (the next bump merged 2024-09-04, after the
            # 1.28.13 cut; the one v1.28.13 list found is a hand-kept table that also gives v1.29.9
            # 3.5.12-0, which output contradicts).
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
            # PR #123188; output v1.29.3..6; v1.29.7..8 INFERRED (no v1.29.7/8 output found; a
            # v1.29.8 registry listing pairs etcd 3.5.12-0 with CoreDNS v1.10.1, so it is hand-made)
            (3, "3.5.12-0", "v1.11.1", "3.9"),
            # PR #126397 (diff 29: "3.5.15-0"); output v1.29.9; v1.29.10 INFERRED (the one v1.29.10
            # list found shows etcd 3.5.10-0, i.e. it came from a v1.29.0..2 kubeadm binary)
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
            # output v1.30.0..2; output v1.30.3 (`kubeadm config images list` without a version,
            # two install notes, v1.30.3 the newest 1.30 then); output v1.30.4 ("kubeadm version:
            # v1.30.4" followed by its image list): etcd 3.5.12-0, CoreDNS v1.11.1, pause 3.9.
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
            # PR #135020 (release-1.31, 31: "3.5.24-0", lgtm 2025-11-03, deadline 2025-11-07),
            # same batch as #135018 that the v1.33.6 notes list. v1.31.14 image lists in three
            # unrelated offline-install notes: etcd 3.5.24-0, CoreDNS v1.11.3, pause 3.10 (lists
            # copied from kubeadm, not a raw `kubeadm config images list`).
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
            # v1.32.13; a cluster built with kubeadm v1.32.11 runs etcd 3.5.24-0 and CoreDNS v1.11.3
            # (kwx4957/k8s-deploy week3/kubeadm-upgrade/README.md). First patch v1.32.10 INFERRED
            # (same batch as #135018 -> v1.33.6; no v1.32.10 output found).
            (10, "3.5.24-0", "v1.11.3", "3.10"),
        ),
    ),
    # 1.33: CoreDNS v1.12.0, pause 3.10: output v1.33.0 and v1.33.1 (`kubeadm config images
    # pull`), and kubeadm v1.33.7 `upgrade plan` (CoreDNS v1.11.3 -> v1.12.0; kwx4957/k8s-deploy).
    # kubeadm does not bump CoreDNS on a release branch once it is cut (kubernetes/kubeadm#3322).
    # Last patch 1.33.13 (kubernetes/k8s.io#9592 promotes the v1.33.13 images, 2026-06-12; offline
    # packages call it the final 1.33 patch; no v1.33.14 found).
    33: (
        13,
        (
            # PR #134779 review comment (2025-10-22): "release-1.33 is at .21"; output v1.33.0,
            # v1.33.1 (etcd 3.5.21-0).
            (0, "3.5.21-0", "v1.12.0", "3.10"),
            # PR #135018; v1.33.6 release notes: "Kubeadm: updated the supported etcd version to
            # v3.5.24". kubeadm v1.33.7 upgrade plan and apply: etcd 3.5.24-0 (kwx4957/k8s-deploy).
            # v1.33.9: Spectro Cloud pack image list (etcd 3.5.24-0, CoreDNS v1.12.0). v1.33.8 and
            # v1.33.10..13 UNVERIFIED (carried forward; no later 3.5.x backport to 1.33 was found).
            (6, "3.5.24-0", "v1.12.0", "3.10"),
        ),
    ),
    # 1.34: CoreDNS v1.12.1, pause 3.10.1 (output v1.34.0, v1.34.1, v1.34.2, v1.34.4; kubeadm
    # v1.34.3 upgrade plan; a kind v1.34.11 cluster runs CoreDNS v1.12.1). Last patch 1.34.12
    # (issue 10: CoreDNS v1.12.1, pause 3.10.1, etcd 3.6.5-0, same as the row from v1.34.2; the
    # table had stopped at 1.34.11, which is why kubeadm's own list now wins when mirrored).
    34: (
        12,
        (
            # PR #133245 ("deliver etcd 3.6.4 with 1.34"); output v1.34.0, v1.34.1
            (0, "3.6.4-0", "v1.12.1", "3.10.1"),
            # 34: "3.6.5-0" is in a vendored copy of release-1.34 constants.go after PR #134861.
            # v1.34.2: `kubeadm config images list` for kubernetesVersion 1.34.2 logged 2025-12-06,
            # before kubeadm v1.34.3 was built (2025-12-09) (MagicGopher's cluster install notes);
            # kubeadm v1.34.3 upgrade plan: etcd 3.5.24-0 -> 3.6.5-0 (kwx4957/k8s-deploy); output
            # v1.34.4; a v1.34.9 cluster and a kubeadm v1.34.10 version report run 3.6.5-0.
            # v1.34.5..8 INFERRED (bracketed by v1.34.4 and v1.34.9; no release-1.34 pick of the
            # 3.6.10/3.6.11 bumps #138392/#138746 was found). v1.34.11 etcd UNVERIFIED; v1.34.12
            # as given in issue 10.
            (2, "3.6.5-0", "v1.12.1", "3.10.1"),
        ),
    ),
    # 1.35: etcd 3.6.6-0 (PR #135271, key getSkewedKubernetesVersion(0)), CoreDNS v1.13.1, pause
    # 3.10.1. Output v1.35.0 (`kubeadm config images list`, hub.8ops.top kubeadm notes); v1.35.1:
    # a minikube node with the same three tags, and kubernetes#141229 ("Kubernetes v1.35.1
    # bundles CoreDNS v1.13.1", closed without a bump); v1.35.4: `kubeadm config images pull`
    # with pause 3.10.1 (etcd/CoreDNS tags were pinned by the user there); v1.35.8: kubeadm
    # clusters at v1.35.8 on etcd 3.6.6-0 and CoreDNS v1.13.1. No release-1.35 pick of the
    # 3.6.8/3.6.10/3.6.11 bumps was found. v1.35.2..3 and v1.35.5..7 INFERRED (bracketed).
    # Last patch 1.35.9 (Talos runbooks and image digests reference kube-apiserver/kube-proxy
    # v1.35.9; no v1.35.10 found); v1.35.9 UNVERIFIED (carried forward).
    35: (9, ((0, "3.6.6-0", "v1.13.1", "3.10.1"),)),
    # 1.36: etcd 3.6.8-0 (PR #137107, master 2026-02-18), CoreDNS v1.14.2, pause 3.10.2. Output:
    # a kind v1.36.1 cluster (etcd 3.6.8-0, CoreDNS v1.14.2); `kubeadm config images list` from
    # kubeadm v1.36.2; kubeadm v1.36.4 (server tarball binaries); kubeadm v1.36.5 (unpacked from
    # kubeadm_1.36.5-1.1_amd64.deb). The 3.6.9 PRs were closed; #138392 (3.6.10), #138746
    # (3.6.11) and CoreDNS v1.14.3 (#138536, 2026-04-29) merged on master after the 1.36 branch.
    # v1.36.0 INFERRED (Talos's defaults for k8s v1.36.0-alpha.2 already were CoreDNS v1.14.2 and
    # etcd 3.6.8; v1.36.1 output matches); v1.36.3 INFERRED (bracketed). Last patch 1.36.5 (the
    # outputs above; no v1.36.6 found).
    36: (5, ((0, "3.6.8-0", "v1.14.2", "3.10.2"),)),
    # 1.37: etcd 3.7.0-0 (PR #139427 3.7.0-rc.0, then #140333 "Updated the default etcd version to
    # 3.7.0", 2026-07-08; the 3.7.1 PR #141032 was held past the 1.37 code freeze), CoreDNS
    # v1.14.6 (PR #140497, merged 2026-07-17; v1.14.7 is #141462, approved 2026-08-27 for 1.38),
    # pause 3.10.2. Output: `kubeadm config images list` from kubeadm v1.37.1 (etcd 3.7.0-0,
    # CoreDNS v1.14.6, pause 3.10.2); v1.37.0: a kind cluster with kube-proxy v1.37.0 and CoreDNS
    # v1.14.6 and a minikube v1.37.0 control plane on etcd 3.7.0-0 (pause INFERRED for v1.37.0).
    # Last patch 1.37.1 (no v1.37.2 found). The config API stays v1beta4: the v1 API added in
    # 1.37 is an experimental placeholder (CHANGELOG-1.37, v1.37.0-alpha.1, #136016).
    37: (1, ((0, "3.7.0-0", "v1.14.6", "3.10.2"),)),
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


def config_api_version(version: str) -> str:
    """api_version_for by the minor alone, for any well-formed 1.x version: a release newer
    than the table (its images listed by its own kubeadm) still gets a kubeadm config."""
    major, minor, _ = _parse(version)
    if major != 1 or minor < min(_TABLE):
        raise _unknown(version, f"unknown release; known: {known_range()}")
    return "kubeadm.k8s.io/v1beta4" if minor >= _V1BETA4_FROM_MINOR else "kubeadm.k8s.io/v1beta3"


def api_version_for(version: str) -> str:
    """kubeadm config API: kubeadm.k8s.io/v1beta3 before 1.31, kubeadm.k8s.io/v1beta4 from 1.31."""
    minor, _, _ = _lookup(version)
    return "kubeadm.k8s.io/v1beta4" if minor >= _V1BETA4_FROM_MINOR else "kubeadm.k8s.io/v1beta3"
