"""Plan stage: filters, newest-N by rpm version order, duplicate hrefs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirror.config import RepoFilter
from mirror.errors import UnsafePathError
from mirror.yum.checksums import ChecksumCache
from mirror.yum.metadata import PackageRef, safe_relpath
from mirror.yum.plan import DuplicateHref, apply_filter, make_plan


def pkg(name: str, version: str, arch: str = "x86_64", checksum: str = "") -> PackageRef:
    href = f"{arch}/{name}-{version}-1.{arch}.rpm"
    return PackageRef(name, "0", version, "1", arch, href, "sha256", checksum or href, 10)


def test_newest_uses_rpm_version_order_per_name_and_arch() -> None:
    pkgs = [pkg("kubeadm", v) for v in ("1.28.9", "1.28.10", "1.28.2")]
    pkgs += [pkg("kubeadm", "1.28.1", "aarch64")]
    kept = apply_filter(pkgs, RepoFilter(newest=2))
    assert sorted(p.nevra for p in kept) == [
        "kubeadm-1.28.1-1.aarch64",
        "kubeadm-1.28.10-1.x86_64",
        "kubeadm-1.28.9-1.x86_64",
    ]


def test_include_exclude_globs_match_name_version_release() -> None:
    pkgs = [pkg("kubeadm", "1.28.4"), pkg("kubeadm", "1.29.0"), pkg("kubectl", "1.28.4")]
    rule = RepoFilter(include=("kubeadm-1.28.*", "kubectl"), exclude=("*-1.28.4-1.aarch64",))
    assert [p.nevra for p in apply_filter(pkgs, rule)] == [
        "kubeadm-1.28.4-1.x86_64",
        "kubectl-1.28.4-1.x86_64",
    ]


def test_duplicate_hrefs_are_planned_once_or_refused(tmp_path: Path) -> None:
    a = pkg("kubeadm", "1.28.4")
    cache = ChecksumCache(tmp_path / "checksums.json")
    plan = make_plan([a, a], None, tmp_path, cache)
    assert plan.to_download == (a,)
    with pytest.raises(DuplicateHref):
        make_plan([a, pkg("kubeadm", "1.28.4", checksum="other")], None, tmp_path, cache)


@pytest.mark.parametrize("href", ["../x.rpm", "a/../../x.rpm", "/x.rpm", "http://h/x", "a\\b.rpm"])
def test_unsafe_hrefs(href: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_relpath("repo", href)
