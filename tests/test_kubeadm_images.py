"""Tests for the kubeadm image table (mirror.kubeadm_images).

Expected lists are published `kubeadm config images list` output (sources in the module).
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from mirror.errors import ConfigError, UnknownKubernetesVersion
from mirror.kubeadm_images import (
    DEFAULT_IMAGE_REPOSITORY,
    KubeadmImageSet,
    api_version_for,
    config_api_version,
    image_set,
    known_range,
    known_versions,
    normalize_version,
)

RANGE = "v1.24.0 .. v1.37.1"


def _old_order(v: str, pause: str, etcd: str, coredns: str) -> list[str]:
    """kubeadm < 1.29 with the default repository: ..., kube-proxy, pause, etcd, coredns."""
    r = DEFAULT_IMAGE_REPOSITORY
    return [
        f"{r}/kube-apiserver:{v}",
        f"{r}/kube-controller-manager:{v}",
        f"{r}/kube-scheduler:{v}",
        f"{r}/kube-proxy:{v}",
        f"{r}/pause:{pause}",
        f"{r}/etcd:{etcd}",
        f"{r}/coredns/coredns:{coredns}",
    ]


# --- exact lists against published output -------------------------------------------------


def test_v1_24_0_matches_published_output_with_its_k8s_gcr_io_default() -> None:
    assert image_set("v1.24.0").images("k8s.gcr.io") == [
        "k8s.gcr.io/kube-apiserver:v1.24.0",
        "k8s.gcr.io/kube-controller-manager:v1.24.0",
        "k8s.gcr.io/kube-scheduler:v1.24.0",
        "k8s.gcr.io/kube-proxy:v1.24.0",
        "k8s.gcr.io/pause:3.7",
        "k8s.gcr.io/etcd:3.5.3-0",
        "k8s.gcr.io/coredns/coredns:v1.8.6",
    ]


def test_v1_24_0_default_repository_is_registry_k8s_io() -> None:
    assert image_set("v1.24.0").images() == [
        "registry.k8s.io/kube-apiserver:v1.24.0",
        "registry.k8s.io/kube-controller-manager:v1.24.0",
        "registry.k8s.io/kube-scheduler:v1.24.0",
        "registry.k8s.io/kube-proxy:v1.24.0",
        "registry.k8s.io/pause:3.7",
        "registry.k8s.io/etcd:3.5.3-0",
        "registry.k8s.io/coredns/coredns:v1.8.6",
    ]


def test_v1_24_17_last_of_the_minor() -> None:
    assert image_set("v1.24.17").images() == [
        "registry.k8s.io/kube-apiserver:v1.24.17",
        "registry.k8s.io/kube-controller-manager:v1.24.17",
        "registry.k8s.io/kube-scheduler:v1.24.17",
        "registry.k8s.io/kube-proxy:v1.24.17",
        "registry.k8s.io/pause:3.7",
        "registry.k8s.io/etcd:3.5.6-0",
        "registry.k8s.io/coredns/coredns:v1.8.6",
    ]


def test_v1_26_0_default_and_custom_repository() -> None:
    s = image_set("v1.26.0")
    assert s.images() == [
        "registry.k8s.io/kube-apiserver:v1.26.0",
        "registry.k8s.io/kube-controller-manager:v1.26.0",
        "registry.k8s.io/kube-scheduler:v1.26.0",
        "registry.k8s.io/kube-proxy:v1.26.0",
        "registry.k8s.io/pause:3.9",
        "registry.k8s.io/etcd:3.5.6-0",
        "registry.k8s.io/coredns/coredns:v1.9.3",
    ]
    assert s.images("my.customrepository.io/subpath") == [
        "my.customrepository.io/subpath/kube-apiserver:v1.26.0",
        "my.customrepository.io/subpath/kube-controller-manager:v1.26.0",
        "my.customrepository.io/subpath/kube-scheduler:v1.26.0",
        "my.customrepository.io/subpath/kube-proxy:v1.26.0",
        "my.customrepository.io/subpath/pause:3.9",
        "my.customrepository.io/subpath/etcd:3.5.6-0",
        "my.customrepository.io/subpath/coredns:v1.9.3",
    ]


def test_v1_27_2_uses_the_nearest_key_fallback_etcd() -> None:
    assert image_set("v1.27.2").images() == [
        "registry.k8s.io/kube-apiserver:v1.27.2",
        "registry.k8s.io/kube-controller-manager:v1.27.2",
        "registry.k8s.io/kube-scheduler:v1.27.2",
        "registry.k8s.io/kube-proxy:v1.27.2",
        "registry.k8s.io/pause:3.9",
        "registry.k8s.io/etcd:3.5.7-0",
        "registry.k8s.io/coredns/coredns:v1.10.1",
    ]


def test_v1_28_0() -> None:
    assert image_set("v1.28.0").images() == [
        "registry.k8s.io/kube-apiserver:v1.28.0",
        "registry.k8s.io/kube-controller-manager:v1.28.0",
        "registry.k8s.io/kube-scheduler:v1.28.0",
        "registry.k8s.io/kube-proxy:v1.28.0",
        "registry.k8s.io/pause:3.9",
        "registry.k8s.io/etcd:3.5.9-0",
        "registry.k8s.io/coredns/coredns:v1.10.1",
    ]


def test_v1_28_6_etcd_changed_within_the_minor() -> None:
    assert image_set("v1.28.6").images() == [
        "registry.k8s.io/kube-apiserver:v1.28.6",
        "registry.k8s.io/kube-controller-manager:v1.28.6",
        "registry.k8s.io/kube-scheduler:v1.28.6",
        "registry.k8s.io/kube-proxy:v1.28.6",
        "registry.k8s.io/pause:3.9",
        "registry.k8s.io/etcd:3.5.10-0",
        "registry.k8s.io/coredns/coredns:v1.10.1",
    ]


def test_v1_28_14() -> None:
    assert image_set("1.28.14").images() == _old_order("v1.28.14", "3.9", "3.5.15-0", "v1.10.1")


def test_v1_29_0_uses_the_new_order() -> None:
    assert image_set("v1.29.0").images() == [
        "registry.k8s.io/kube-apiserver:v1.29.0",
        "registry.k8s.io/kube-controller-manager:v1.29.0",
        "registry.k8s.io/kube-scheduler:v1.29.0",
        "registry.k8s.io/kube-proxy:v1.29.0",
        "registry.k8s.io/coredns/coredns:v1.11.1",
        "registry.k8s.io/pause:3.9",
        "registry.k8s.io/etcd:3.5.10-0",
    ]


def test_v1_29_9_custom_repository_matches_published_output() -> None:
    assert image_set("v1.29.9").images("hub.8ops.top/google_containers") == [
        "hub.8ops.top/google_containers/kube-apiserver:v1.29.9",
        "hub.8ops.top/google_containers/kube-controller-manager:v1.29.9",
        "hub.8ops.top/google_containers/kube-scheduler:v1.29.9",
        "hub.8ops.top/google_containers/kube-proxy:v1.29.9",
        "hub.8ops.top/google_containers/coredns:v1.11.1",
        "hub.8ops.top/google_containers/pause:3.9",
        "hub.8ops.top/google_containers/etcd:3.5.15-0",
    ]


def test_v1_30_0_and_v1_30_5() -> None:
    assert image_set("v1.30.0").images() == [
        "registry.k8s.io/kube-apiserver:v1.30.0",
        "registry.k8s.io/kube-controller-manager:v1.30.0",
        "registry.k8s.io/kube-scheduler:v1.30.0",
        "registry.k8s.io/kube-proxy:v1.30.0",
        "registry.k8s.io/coredns/coredns:v1.11.1",
        "registry.k8s.io/pause:3.9",
        "registry.k8s.io/etcd:3.5.12-0",
    ]
    assert image_set("v1.30.5").images() == [
        "registry.k8s.io/kube-apiserver:v1.30.5",
        "registry.k8s.io/kube-controller-manager:v1.30.5",
        "registry.k8s.io/kube-scheduler:v1.30.5",
        "registry.k8s.io/kube-proxy:v1.30.5",
        "registry.k8s.io/coredns/coredns:v1.11.3",
        "registry.k8s.io/pause:3.9",
        "registry.k8s.io/etcd:3.5.15-0",
    ]


def test_v1_31_0_and_v1_31_1_coredns_changed_within_the_minor() -> None:
    assert image_set("v1.31.0").images() == [
        "registry.k8s.io/kube-apiserver:v1.31.0",
        "registry.k8s.io/kube-controller-manager:v1.31.0",
        "registry.k8s.io/kube-scheduler:v1.31.0",
        "registry.k8s.io/kube-proxy:v1.31.0",
        "registry.k8s.io/coredns/coredns:v1.11.1",
        "registry.k8s.io/pause:3.10",
        "registry.k8s.io/etcd:3.5.15-0",
    ]
    assert image_set("v1.31.1").images()[4:] == [
        "registry.k8s.io/coredns/coredns:v1.11.3",
        "registry.k8s.io/pause:3.10",
        "registry.k8s.io/etcd:3.5.15-0",
    ]


def test_v1_32_13() -> None:
    assert image_set("v1.32.13").images() == [
        "registry.k8s.io/kube-apiserver:v1.32.13",
        "registry.k8s.io/kube-controller-manager:v1.32.13",
        "registry.k8s.io/kube-scheduler:v1.32.13",
        "registry.k8s.io/kube-proxy:v1.32.13",
        "registry.k8s.io/coredns/coredns:v1.11.3",
        "registry.k8s.io/pause:3.10",
        "registry.k8s.io/etcd:3.5.24-0",
    ]


def test_v1_34_0_and_v1_34_4() -> None:
    assert image_set("v1.34.0") == KubeadmImageSet("v1.34.0", "3.6.4-0", "v1.12.1", "3.10.1")
    assert image_set("v1.34.4") == KubeadmImageSet("v1.34.4", "3.6.5-0", "v1.12.1", "3.10.1")


def test_newest_v1_36_4_default_and_custom_repository() -> None:
    s = image_set("v1.36.4")
    assert s.images() == [
        "registry.k8s.io/kube-apiserver:v1.36.4",
        "registry.k8s.io/kube-controller-manager:v1.36.4",
        "registry.k8s.io/kube-scheduler:v1.36.4",
        "registry.k8s.io/kube-proxy:v1.36.4",
        "registry.k8s.io/coredns/coredns:v1.14.2",
        "registry.k8s.io/pause:3.10.2",
        "registry.k8s.io/etcd:3.6.8-0",
    ]
    assert s.images("mirror.ccs.tencentyun.com") == [
        "mirror.ccs.tencentyun.com/kube-apiserver:v1.36.4",
        "mirror.ccs.tencentyun.com/kube-controller-manager:v1.36.4",
        "mirror.ccs.tencentyun.com/kube-scheduler:v1.36.4",
        "mirror.ccs.tencentyun.com/kube-proxy:v1.36.4",
        "mirror.ccs.tencentyun.com/coredns:v1.14.2",
        "mirror.ccs.tencentyun.com/pause:3.10.2",
        "mirror.ccs.tencentyun.com/etcd:3.6.8-0",
    ]


def _new_order(v: str, repo: str, coredns: str, pause: str, etcd: str) -> list[str]:
    """kubeadm >= 1.29: ..., kube-proxy, coredns, pause, etcd."""
    dns = f"{repo}/coredns" if repo == DEFAULT_IMAGE_REPOSITORY else repo
    return [
        f"{repo}/kube-apiserver:{v}",
        f"{repo}/kube-controller-manager:{v}",
        f"{repo}/kube-scheduler:{v}",
        f"{repo}/kube-proxy:{v}",
        f"{dns}/coredns:{coredns}",
        f"{repo}/pause:{pause}",
        f"{repo}/etcd:{etcd}",
    ]


def test_v1_27_16_matches_published_output() -> None:
    assert image_set("v1.27.16").images() == _old_order("v1.27.16", "3.9", "3.5.12-0", "v1.10.1")
    aliyun = "registry.aliyuncs.com/google_containers"
    assert image_set("v1.27.16").images(aliyun)[4:] == [
        f"{aliyun}/pause:3.9",
        f"{aliyun}/etcd:3.5.12-0",
        f"{aliyun}/coredns:v1.10.1",
    ]


def test_v1_28_12_matches_published_pull_log() -> None:
    assert image_set("v1.28.12").images() == _old_order("v1.28.12", "3.9", "3.5.12-0", "v1.10.1")


def test_v1_30_3_and_v1_30_4_match_published_output() -> None:
    r = DEFAULT_IMAGE_REPOSITORY
    for v in ("v1.30.3", "v1.30.4"):
        assert image_set(v).images() == _new_order(v, r, "v1.11.1", "3.9", "3.5.12-0")
    assert image_set("v1.30.4").images("registry.local")[4:] == [
        "registry.local/coredns:v1.11.1",
        "registry.local/pause:3.9",
        "registry.local/etcd:3.5.12-0",
    ]


def test_v1_31_14_and_v1_32_11() -> None:
    r = DEFAULT_IMAGE_REPOSITORY
    assert image_set("v1.31.14").images() == _new_order(
        "v1.31.14", r, "v1.11.3", "3.10", "3.5.24-0"
    )
    assert image_set("v1.32.11") == KubeadmImageSet("v1.32.11", "3.5.24-0", "v1.11.3", "3.10")


def test_v1_33_0_and_v1_33_1_match_published_pull_output() -> None:
    r = DEFAULT_IMAGE_REPOSITORY
    for v in ("v1.33.0", "v1.33.1"):
        assert image_set(v).images() == _new_order(v, r, "v1.12.0", "3.10", "3.5.21-0")


def test_v1_33_7_matches_kubeadm_upgrade_plan_and_v1_33_9_pack() -> None:
    assert image_set("v1.33.7") == KubeadmImageSet("v1.33.7", "3.5.24-0", "v1.12.0", "3.10")
    assert image_set("v1.33.9") == KubeadmImageSet("v1.33.9", "3.5.24-0", "v1.12.0", "3.10")
    assert image_set("v1.33.13").etcd == "3.5.24-0"


def test_v1_34_2_and_v1_34_3_already_have_etcd_3_6_5() -> None:
    aliyun = "registry.aliyuncs.com/google_containers"
    assert image_set("v1.34.2").images(aliyun) == _new_order(
        "v1.34.2", aliyun, "v1.12.1", "3.10.1", "3.6.5-0"
    )
    assert image_set("v1.34.3") == KubeadmImageSet("v1.34.3", "3.6.5-0", "v1.12.1", "3.10.1")
    assert image_set("v1.34.1").etcd == "3.6.4-0"


def test_v1_34_10_and_v1_34_11() -> None:
    r = DEFAULT_IMAGE_REPOSITORY
    assert image_set("v1.34.10").images() == _new_order(
        "v1.34.10", r, "v1.12.1", "3.10.1", "3.6.5-0"
    )
    assert image_set("v1.34.11").coredns == "v1.12.1"


def test_v1_34_12_added_for_issue_10() -> None:
    assert image_set("v1.34.12") == KubeadmImageSet("v1.34.12", "3.6.5-0", "v1.12.1", "3.10.1")


def test_config_api_version_needs_only_the_minor() -> None:
    assert config_api_version("v1.30.99") == "kubeadm.k8s.io/v1beta3"
    assert config_api_version("v1.38.0") == "kubeadm.k8s.io/v1beta4"
    with pytest.raises(UnknownKubernetesVersion):
        config_api_version("v1.23.0")


def test_v1_35_0_matches_published_output() -> None:
    r = DEFAULT_IMAGE_REPOSITORY
    assert image_set("v1.35.0").images() == _new_order("v1.35.0", r, "v1.13.1", "3.10.1", "3.6.6-0")
    hub = "hub.8ops.top/google_containers"
    assert image_set("v1.35.0").images(hub) == _new_order(
        "v1.35.0", hub, "v1.13.1", "3.10.1", "3.6.6-0"
    )


def test_v1_35_1_v1_35_4_v1_35_8_and_newest_v1_35_9() -> None:
    assert image_set("v1.35.1") == KubeadmImageSet("v1.35.1", "3.6.6-0", "v1.13.1", "3.10.1")
    assert image_set("v1.35.4").pause == "3.10.1"
    assert image_set("v1.35.8") == KubeadmImageSet("v1.35.8", "3.6.6-0", "v1.13.1", "3.10.1")
    assert image_set("v1.35.9") == KubeadmImageSet("v1.35.9", "3.6.6-0", "v1.13.1", "3.10.1")


def test_v1_36_1_v1_36_2_and_newest_v1_36_5_match_published_output() -> None:
    r = DEFAULT_IMAGE_REPOSITORY
    for v in ("v1.36.1", "v1.36.2", "v1.36.5"):
        assert image_set(v).images() == _new_order(v, r, "v1.14.2", "3.10.2", "3.6.8-0")


def test_v1_37_0_and_newest_v1_37_1() -> None:
    r = DEFAULT_IMAGE_REPOSITORY
    assert image_set("v1.37.1").images() == _new_order("v1.37.1", r, "v1.14.6", "3.10.2", "3.7.0-0")
    assert image_set("v1.37.0") == KubeadmImageSet("v1.37.0", "3.7.0-0", "v1.14.6", "3.10.2")
    assert api_version_for("v1.37.0") == "kubeadm.k8s.io/v1beta4"


# --- per-patch change points ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "etcd"),
    [
        ("v1.24.7", "3.5.3-0"),
        ("v1.24.8", "3.5.5-0"),
        ("v1.24.9", "3.5.6-0"),
        ("v1.25.3", "3.5.4-0"),
        ("v1.25.4", "3.5.5-0"),
        ("v1.25.5", "3.5.6-0"),
        ("v1.25.14", "3.5.6-0"),
        ("v1.25.15", "3.5.9-0"),
        ("v1.26.9", "3.5.6-0"),
        ("v1.26.10", "3.5.9-0"),
        ("v1.26.12", "3.5.9-0"),
        ("v1.26.13", "3.5.10-0"),
        ("v1.27.6", "3.5.7-0"),
        ("v1.27.7", "3.5.9-0"),
        ("v1.27.10", "3.5.10-0"),
        ("v1.27.12", "3.5.12-0"),
        ("v1.27.16", "3.5.12-0"),
        ("v1.28.5", "3.5.9-0"),
        ("v1.28.7", "3.5.10-0"),
        ("v1.28.8", "3.5.12-0"),
        ("v1.28.12", "3.5.12-0"),
        ("v1.28.13", "3.5.12-0"),
        ("v1.29.2", "3.5.10-0"),
        ("v1.29.3", "3.5.12-0"),
        ("v1.29.9", "3.5.15-0"),
        ("v1.29.11", "3.5.16-0"),
        ("v1.29.15", "3.5.16-0"),
        ("v1.30.3", "3.5.12-0"),
        ("v1.30.4", "3.5.12-0"),
        ("v1.30.14", "3.5.15-0"),
        ("v1.31.13", "3.5.15-0"),
        ("v1.31.14", "3.5.24-0"),
        ("v1.32.9", "3.5.16-0"),
        ("v1.32.10", "3.5.24-0"),
        ("v1.32.11", "3.5.24-0"),
        ("v1.33.1", "3.5.21-0"),
        ("v1.33.5", "3.5.21-0"),
        ("v1.33.6", "3.5.24-0"),
        ("v1.33.7", "3.5.24-0"),
        ("v1.33.9", "3.5.24-0"),
        ("v1.34.1", "3.6.4-0"),
        ("v1.34.2", "3.6.5-0"),
        ("v1.34.3", "3.6.5-0"),
        ("v1.34.9", "3.6.5-0"),
        ("v1.34.10", "3.6.5-0"),
        ("v1.35.8", "3.6.6-0"),
        ("v1.36.5", "3.6.8-0"),
        ("v1.37.0", "3.7.0-0"),
    ],
)
def test_etcd_change_points(version: str, etcd: str) -> None:
    assert image_set(version).etcd == etcd


@pytest.mark.parametrize(
    ("minor", "coredns", "pause"),
    [
        (24, "v1.8.6", "3.7"),
        (25, "v1.9.3", "3.8"),
        (26, "v1.9.3", "3.9"),
        (27, "v1.10.1", "3.9"),
        (28, "v1.10.1", "3.9"),
        (29, "v1.11.1", "3.9"),
        (32, "v1.11.3", "3.10"),
        (33, "v1.12.0", "3.10"),
        (34, "v1.12.1", "3.10.1"),
        (35, "v1.13.1", "3.10.1"),
        (36, "v1.14.2", "3.10.2"),
        (37, "v1.14.6", "3.10.2"),
    ],
)
def test_coredns_and_pause_constant_within_minor(minor: int, coredns: str, pause: str) -> None:
    sets = [image_set(v) for v in known_versions() if v.startswith(f"v1.{minor}.")]
    assert sets
    assert {(s.coredns, s.pause) for s in sets} == {(coredns, pause)}


# --- repository handling ---------------------------------------------------------------------


def test_coredns_rule_only_adds_sub_path_for_the_default_repository() -> None:
    s = image_set("v1.33.0")
    assert f"{DEFAULT_IMAGE_REPOSITORY}/coredns/coredns:v1.12.0" in s.images()
    custom = s.images("registry.example.com:5000/k8s")
    assert "registry.example.com:5000/k8s/coredns:v1.12.0" in custom
    assert not any("/coredns/coredns" in ref for ref in custom)


def test_repository_trailing_slash_is_ignored_and_empty_is_rejected() -> None:
    s = image_set("v1.30.5")
    assert s.images("mirror.local:5000/k8s/") == s.images("mirror.local:5000/k8s")
    assert all("//" not in ref for ref in s.images("mirror.local:5000/k8s/"))
    with pytest.raises(ValueError):
        s.images("  ")


def test_image_set_is_frozen() -> None:
    s = image_set("v1.28.4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.etcd = "x"  # type: ignore[misc]


# --- versions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.28.4", "v1.28.4"), ("v1.28.4", "v1.28.4"), (" v1.36.4\n", "v1.36.4"), ("1.0.0", "v1.0.0")],
)
def test_normalize_version(text: str, expected: str) -> None:
    assert normalize_version(text) == expected


def test_image_set_accepts_unprefixed_version_and_normalizes_it() -> None:
    assert image_set("1.28.4").version == "v1.28.4"


@pytest.mark.parametrize(
    "text",
    ["", "1.28", "v1.28.x", "1.28.4.1", "v01.28.4", "V1.28.4", "latest", "v1.28.4+build1"],
)
def test_malformed_versions_are_rejected(text: str) -> None:
    with pytest.raises(UnknownKubernetesVersion) as exc:
        normalize_version(text)
    message = str(exc.value)
    assert "expected vMAJOR.MINOR.PATCH" in message
    assert RANGE in message
    assert exc.value.source == f"kubernetes version {text!r}"
    with pytest.raises(UnknownKubernetesVersion):
        image_set(text)


@pytest.mark.parametrize("text", ["v1.30.0-rc.1", "1.36.0-alpha.2", "v1.29.0-beta.0"])
def test_pre_releases_are_unknown(text: str) -> None:
    with pytest.raises(UnknownKubernetesVersion) as exc:
        image_set(text)
    assert "unknown release" in str(exc.value)
    assert RANGE in str(exc.value)


@pytest.mark.parametrize(
    "text",
    [
        "v1.23.17",
        "v1.24.18",
        "v1.30.15",
        "v1.35.10",
        "v1.36.6",
        "v1.37.2",
        "v1.38.0",
        "v2.0.0",
        "v0.24.0",
    ],
)
def test_unknown_releases_name_the_known_range(text: str) -> None:
    with pytest.raises(UnknownKubernetesVersion) as exc:
        image_set(text)
    assert isinstance(exc.value, ConfigError)
    assert str(exc.value) == f"kubernetes version {text!r}: unknown release; known: {RANGE}"


def test_known_range() -> None:
    assert known_range() == RANGE


def test_known_versions_are_ascending_and_gap_free_per_minor() -> None:
    versions = known_versions()
    parsed = [tuple(int(p) for p in v[1:].split(".")) for v in versions]
    assert parsed == sorted(parsed)
    assert len(set(versions)) == len(versions)
    assert versions[0] == "v1.24.0"
    assert versions[-1] == "v1.37.1"
    last = {24: 17, 25: 16, 26: 15, 27: 16, 28: 15, 29: 15, 30: 14}
    last |= {31: 14, 32: 13, 33: 13, 34: 12, 35: 9, 36: 5, 37: 1}
    by_minor: dict[int, list[int]] = {}
    for major, minor, patch in parsed:
        assert major == 1
        by_minor.setdefault(minor, []).append(patch)
    assert sorted(by_minor) == list(range(24, 38))
    for minor, patches in by_minor.items():
        assert patches == list(range(last[minor] + 1)), minor
    assert len(versions) == sum(n + 1 for n in last.values())


def test_every_known_version_resolves_to_well_formed_tags() -> None:
    for v in known_versions():
        s = image_set(v)
        assert s.version == v
        assert re.fullmatch(r"3\.\d+\.\d+-\d", s.etcd), v
        assert re.fullmatch(r"v1\.\d+\.\d+", s.coredns), v
        assert re.fullmatch(r"3\.\d+(\.\d+)?", s.pause), v
        assert len(s.images()) == 7


@pytest.mark.parametrize(
    ("version", "api"),
    [
        ("v1.24.0", "kubeadm.k8s.io/v1beta3"),
        ("v1.30.14", "kubeadm.k8s.io/v1beta3"),
        ("1.31.0", "kubeadm.k8s.io/v1beta4"),
        ("v1.36.4", "kubeadm.k8s.io/v1beta4"),
        ("v1.37.1", "kubeadm.k8s.io/v1beta4"),
    ],
)
def test_api_version_for(version: str, api: str) -> None:
    assert api_version_for(version) == api


def test_api_version_for_unknown_release_raises() -> None:
    with pytest.raises(UnknownKubernetesVersion):
        api_version_for("v1.38.0")
