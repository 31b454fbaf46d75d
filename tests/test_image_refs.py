"""Unit tests for mirror.images.refs: docker-style names, images.txt, planning, mirrored names."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirror.errors import ConfigError
from mirror.images.refs import (
    BadReference,
    ImageRef,
    coredns_alias,
    parse_images_file,
    parse_reference,
    plan_jobs,
    upstream_hosts,
)

D = "sha256:" + "ab" * 32
D2 = "sha256:" + "cd" * 32
REG = "utility:5000"


@pytest.mark.parametrize(
    ("text", "host", "path", "tag", "digest"),
    [
        ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
        ("nginx", "docker.io", "library/nginx", "latest", None),
        ("calico/node:v3.26.1", "docker.io", "calico/node", "v3.26.1", None),
        ("docker.io/nginx:1.25", "docker.io", "library/nginx", "1.25", None),
        ("index.docker.io/library/nginx", "docker.io", "library/nginx", "latest", None),
        ("registry-1.docker.io/calico/node:v3", "docker.io", "calico/node", "v3", None),
        ("registry.k8s.io/pause:3.9", "registry.k8s.io", "pause", "3.9", None),
        ("registry.k8s.io/coredns/coredns:v1", "registry.k8s.io", "coredns/coredns", "v1", None),
        ("quay.io/calico/node:v3.26.1", "quay.io", "calico/node", "v3.26.1", None),
        # hosts with ports, localhost, a bare first component that is not a host
        ("localhost:5000/team/app:1.0", "localhost:5000", "team/app", "1.0", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("10.0.0.1:5000/app", "10.0.0.1:5000", "app", "latest", None),
        ("myreg:5000/app:v2", "myreg:5000", "app", "v2", None),
        ("team/app", "docker.io", "team/app", "latest", None),
        ("a.b-c/x__y/z-1.2:T_1.0-rc", "a.b-c", "x__y/z-1.2", "T_1.0-rc", None),
        # digests
        (f"nginx@{D}", "docker.io", "library/nginx", None, D),
        (f"nginx:1.25@{D}", "docker.io", "library/nginx", "1.25", D),
        (f"localhost:5000/app@{D}", "localhost:5000", "app", None, D),
        ("  nginx:1.25  ", "docker.io", "library/nginx", "1.25", None),
    ],
)
def test_parse_reference(
    text: str, host: str, path: str, tag: str | None, digest: str | None
) -> None:
    assert parse_reference(text) == ImageRef(host, path, tag, digest)


def test_upstream_and_str() -> None:
    assert parse_reference("nginx").upstream == "docker.io/library/nginx:latest"
    assert str(parse_reference(f"nginx:1.25@{D}")) == f"docker.io/library/nginx:1.25@{D}"
    assert parse_reference(f"nginx@{D}").upstream == f"docker.io/library/nginx@{D}"
    assert parse_reference("localhost:5000/app:1").repository == "localhost:5000/app"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "not an image reference"),
        ("nginx 1.25", "not an image reference"),
        ("Nginx:1.25", "bad repository name"),
        ("docker.io/", "bad repository name"),
        ("nginx/", "bad repository name"),
        ("nginx:", "bad tag"),
        ("nginx:-1", "bad tag"),
        ("nginx:1.25ü", "bad tag"),  # tags are ASCII
        ("nginx:" + "x" * 129, "bad tag"),
        ("nginx@sha256:abc", "bad digest"),
        (f"nginx@{D.upper()}", "bad digest"),
        ("nginx@md5:" + "a" * 32, "bad digest"),
        ("my_reg.io:5000/app", "bad registry host"),
        ("foo:bar/baz", "bad registry host"),
        ("reg.io:50x0/app", "bad registry host"),
        ("a//b", "bad repository name"),
    ],
)
def test_bad_references(text: str, why: str) -> None:
    with pytest.raises(BadReference, match=why):
        parse_reference(text)


def test_mirrored_names() -> None:
    assert parse_reference("nginx:1.25").mirrored(REG) == f"{REG}/docker.io/library/nginx:1.25"
    assert parse_reference("registry.k8s.io/pause:3.9").mirrored(REG + "/") == (
        f"{REG}/registry.k8s.io/pause:3.9"
    )
    # A registry cannot be pushed to by tag and digest: tag only (the copy keeps the digest).
    assert parse_reference(f"calico/node:v3@{D}").mirrored(REG) == f"{REG}/docker.io/calico/node:v3"
    assert parse_reference(f"calico/node@{D}").mirrored(REG) == f"{REG}/docker.io/calico/node@{D}"
    ref = parse_reference("registry.k8s.io/coredns/coredns:v1.10.1")
    assert ref.mirrored(REG, "coredns") == f"{REG}/registry.k8s.io/coredns:v1.10.1"


def test_refs_sort_even_with_digest_only_ones() -> None:
    refs = [parse_reference(f"nginx@{D}"), parse_reference("nginx:1.25"), parse_reference("b")]
    assert [r.upstream for r in sorted(refs)] == [
        "docker.io/library/b:latest",
        f"docker.io/library/nginx@{D}",
        "docker.io/library/nginx:1.25",
    ]


def test_coredns_alias_only_for_the_upstream_coredns() -> None:
    assert coredns_alias(parse_reference("registry.k8s.io/coredns/coredns:v1.11.1")) == "coredns"
    assert coredns_alias(parse_reference("registry.k8s.io/pause:3.9")) is None
    assert coredns_alias(parse_reference("docker.io/coredns/coredns:1.11.1")) is None


def test_images_file(tmp_path: Path) -> None:
    f = tmp_path / "images.txt"
    f.write_text(
        f"# CNI\n\nquay.io/calico/node:v3.26.1   # pinned by tag\n  nginx:1.25\ncalico/cni@{D}\r\n"
    )
    assert [r.upstream for r in parse_images_file(f)] == [
        "quay.io/calico/node:v3.26.1",
        "docker.io/library/nginx:1.25",
        f"docker.io/calico/cni@{D}",
    ]


def test_images_file_with_byte_order_mark(tmp_path: Path) -> None:
    f = tmp_path / "images.txt"
    f.write_bytes("nginx:1.25\n".encode("utf-8-sig"))
    assert [r.upstream for r in parse_images_file(f)] == ["docker.io/library/nginx:1.25"]


def test_images_file_errors_name_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "images.txt"
    f.write_text("nginx:1.25\n# ok\n\nNginx:Bad tag\n")
    with pytest.raises(ConfigError) as info:
        parse_images_file(f)
    assert str(info.value) == f"{f}: line 4: not an image reference: 'Nginx:Bad tag'"
    assert info.value.exit_code == 2
    f.write_text("nginx@sha256:1234\n")
    with pytest.raises(ConfigError, match=r"images\.txt: line 1: bad digest"):
        parse_images_file(f)
    with pytest.raises(ConfigError, match="images file not found"):
        parse_images_file(tmp_path / "missing.txt")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot read"):
        parse_images_file(tmp_path / "binary.txt")


def test_plan_jobs_kubeadm_set_and_coredns_alias() -> None:
    jobs = plan_jobs(REG, ["v1.28.4"], [])
    assert [j.source.upstream for j in jobs] == [
        "registry.k8s.io/kube-apiserver:v1.28.4",
        "registry.k8s.io/kube-controller-manager:v1.28.4",
        "registry.k8s.io/kube-scheduler:v1.28.4",
        "registry.k8s.io/kube-proxy:v1.28.4",
        "registry.k8s.io/pause:3.9",
        "registry.k8s.io/etcd:3.5.9-0",
        "registry.k8s.io/coredns/coredns:v1.10.1",
    ]
    assert all(len(j.destinations) == 1 for j in jobs[:-1])
    assert jobs[-1].destinations == (
        f"{REG}/registry.k8s.io/coredns/coredns:v1.10.1",
        f"{REG}/registry.k8s.io/coredns:v1.10.1",
    )
    assert jobs[0].destinations == (f"{REG}/registry.k8s.io/kube-apiserver:v1.28.4",)


def test_plan_jobs_dedup() -> None:
    extra = [
        parse_reference("nginx"),
        parse_reference("docker.io/library/nginx:latest"),  # same image, other spelling
        parse_reference("registry.k8s.io/pause:3.9"),  # already in the kubeadm set
        parse_reference(f"nginx@{D}"),
        parse_reference(f"nginx@{D2}"),
    ]
    # Two patch releases share pause, etcd and coredns; "1.28.5" normalizes like "v1.28.5".
    jobs = plan_jobs(REG, ["v1.28.4", "1.28.5"], extra)
    names = [j.source.upstream for j in jobs]
    assert len(names) == len(set(names))
    assert names.count("registry.k8s.io/pause:3.9") == 1
    assert "registry.k8s.io/kube-apiserver:v1.28.5" in names
    assert names[-3:] == [
        "docker.io/library/nginx:latest",
        f"docker.io/library/nginx@{D}",
        f"docker.io/library/nginx@{D2}",
    ]
    assert len(jobs) == 7 + 4 + 3


def test_plan_jobs_without_versions_and_hosts() -> None:
    jobs = plan_jobs(REG, [], [parse_reference("ghcr.io/org/app:1"), parse_reference("nginx")])
    assert [j.destinations for j in jobs] == [
        (f"{REG}/ghcr.io/org/app:1",),
        (f"{REG}/docker.io/library/nginx:latest",),
    ]
    assert upstream_hosts(jobs) == ["registry.k8s.io", "docker.io", "quay.io", "ghcr.io"]
