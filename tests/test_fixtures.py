"""Prove the fixture upstreams are real: signed rpms, signed repodata, dnf-resolvable, and an
HTTP server with working ranges, logging and fault injection."""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import createrepo_c as cr
import pytest

from tests.fixtures import (
    DnfRoot,
    GpgKey,
    Pkg,
    UpstreamServer,
    add_package,
    build_rpms,
    corrupt_file,
    docker_ce_fixture,
    kill_agent,
    kubernetes_fixture,
    make_gpg_key,
    make_repo,
    payload_bytes,
    remove_package,
    sign_detached,
)

K8S_VERSIONS = ("1.28.0", "1.28.1", "1.28.2")


# ------------------------------------------------------------------------------------------
# helpers and module-scoped upstreams
# ------------------------------------------------------------------------------------------


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


def primary(repo: Path) -> dict[tuple[str, str, str], cr.Package]:
    """(name, version, arch) -> package, parsed from repo/repodata by createrepo_c."""
    md = cr.Metadata()
    md.locate_and_load_xml(str(repo))
    pkgs = (md.get(k) for k in md.keys())  # noqa: SIM118
    return {(p.name, p.version, p.arch): p for p in pkgs}


def gpgv(public_key: Path, signature: Path, data: Path, tmp: Path) -> bool:
    """Verify with a keyring made only from ``public_key`` (as a client would)."""
    keyring = tmp / f"keyring-{hashlib.sha1(str(signature).encode()).hexdigest()[:8]}.gpg"
    run("gpg", "--batch", "--yes", "--dearmor", "--output", str(keyring), str(public_key))
    return (
        run("gpgv", "--keyring", str(keyring), str(signature), str(data), check=False).returncode
        == 0
    )


def rpm_k(dbpath: Path, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return run("rpm", "--dbpath", str(dbpath), "-K", *map(str, files), check=False)


@pytest.fixture(scope="module")
def key(gpg_key: GpgKey) -> GpgKey:
    """The session's throwaway key (tests/conftest.py), under the name these tests use."""
    return gpg_key


@pytest.fixture(scope="module")
def k8s_repo(tmp_path_factory: pytest.TempPathFactory, key: GpgKey) -> Path:
    return kubernetes_fixture(tmp_path_factory.mktemp("k8s"), key, versions=K8S_VERSIONS)


@pytest.fixture(scope="module")
def k8s_server(k8s_repo: Path) -> Iterator[UpstreamServer]:
    with UpstreamServer(k8s_repo.parents[3]) as server:
        yield server


@pytest.fixture
def dnf(tmp_path: Path) -> Iterator[DnfRoot]:
    with DnfRoot(tmp_path / "dnf") as client:
        yield client


# ------------------------------------------------------------------------------------------
# yum repository builders
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kubernetes_fixture_layout_and_repodata(k8s_repo: Path, key: GpgKey) -> None:
    assert k8s_repo.as_posix().endswith("/core:/stable:/v1.28/rpm")
    pkgs = primary(k8s_repo)
    for arch in ("x86_64", "aarch64"):
        expected = {("cri-tools", "1.28.0", arch), ("kubernetes-cni", "1.2.0", arch)}
        expected |= {(n, v, arch) for n in ("kubeadm", "kubelet", "kubectl") for v in K8S_VERSIONS}
        assert {k for k in pkgs if k[2] == arch} == expected
        kubeadm = pkgs[("kubeadm", "1.28.1", arch)]
        assert kubeadm.location_href == f"{arch}/kubeadm-1.28.1-150500.1.1.{arch}.rpm"
        assert {(r[0], r[1], r[3]) for r in kubeadm.requires} == {
            ("kubelet", "GE", "1.28.0"),
            ("kubectl", "GE", "1.28.0"),
            ("cri-tools", "GE", "1.28.0"),
        }
        assert [r[0] for r in pkgs[("kubelet", "1.28.0", arch)].requires] == ["kubernetes-cni"]
        assert kubeadm.files == [(None, "/usr/share/fixture/", "kubeadm")]
    assert len(pkgs) == 22
    repodata = k8s_repo / "repodata"
    assert (repodata / "repomd.xml.key").read_text() == key.public_key.read_text()
    assert "BEGIN PGP PUBLIC KEY BLOCK" in (repodata / "repomd.xml.key").read_text()


@pytest.mark.slow
def test_rpms_signed_and_verify_against_imported_key(
    k8s_repo: Path, key: GpgKey, tmp_path: Path
) -> None:
    rpms = sorted(k8s_repo.glob("*/*.rpm"))
    assert len(rpms) == 22
    (tmp_path / "db").mkdir()
    unverified = rpm_k(tmp_path / "db", rpms[:1])
    assert unverified.returncode != 0 and "NOT OK" in unverified.stdout  # NOKEY: really signed
    run("rpm", "--dbpath", str(tmp_path / "db"), "--import", str(key.public_key))
    checked = rpm_k(tmp_path / "db", rpms)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("digests signatures OK") == len(rpms)
    # payload: /usr/share/fixture/NAME, deterministic per name-version-arch
    rpm = k8s_repo / "aarch64" / "kubectl-1.28.2-150500.1.1.aarch64.rpm"
    digest = run("rpm", "-qp", "--qf", "[%{FILEDIGESTS}]", str(rpm)).stdout
    expected = payload_bytes(Pkg("kubectl", "1.28.2"), "aarch64")
    assert len(expected) == 1024 and digest == hashlib.sha256(expected).hexdigest()
    # same size, flipped bytes: only the checksum / signature check notices
    bad = tmp_path / rpm.name
    shutil.copy2(rpm, bad)
    corrupt_file(bad)
    assert bad.stat().st_size == rpm.stat().st_size
    assert bad.stat().st_mtime_ns == rpm.stat().st_mtime_ns
    assert bad.read_bytes() != rpm.read_bytes()
    assert rpm_k(tmp_path / "db", [bad]).returncode != 0


@pytest.mark.slow
def test_repomd_signature(k8s_repo: Path, key: GpgKey, tmp_path: Path) -> None:
    repodata = k8s_repo / "repodata"
    asc, repomd = repodata / "repomd.xml.asc", repodata / "repomd.xml"
    assert asc.read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    verified = subprocess.run(
        ["gpg", "--batch", "--verify", str(asc), str(repomd)],
        env={"GNUPGHOME": str(key.gnupghome)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0 and "Good signature" in verified.stderr
    assert gpgv(repodata / "repomd.xml.key", asc, repomd, tmp_path)
    tampered = tmp_path / "repomd.xml"
    shutil.copy2(repomd, tampered)
    corrupt_file(tampered, count=1)
    assert not gpgv(repodata / "repomd.xml.key", asc, tampered, tmp_path)


@pytest.mark.slow
def test_build_rpms_options(tmp_path: Path) -> None:
    pkgs = [
        Pkg("tool", "1.0"),
        Pkg("tool", "2.0", "3", ("lib >= 2",)),  # same name: two specs
        Pkg("lib", "2.0", payload_size=100_000),
        Pkg("empty", "0.1", payload_size=0),
    ]
    out = build_rpms(pkgs, "noarch", tmp_path / "repo", None, tmp_path / "work", "Packages")
    assert [p.name for p in out] == [
        "tool-1.0-1.noarch.rpm",
        "tool-2.0-3.noarch.rpm",
        "lib-2.0-1.noarch.rpm",
        "empty-0.1-1.noarch.rpm",
    ]
    assert all(p.parent == tmp_path / "repo" / "Packages" and p.is_file() for p in out)
    qf = "%{NAME} %{ARCH} %{SIZE} %{RSAHEADER:pgpsig}|[%{REQUIRENAME} ]"
    info = [run("rpm", "-qp", "--qf", qf, str(p)).stdout.strip() for p in out]
    assert info[1].startswith("tool noarch 1024 (none)|lib ")
    assert info[2].startswith("lib noarch 100000 (none)")
    assert info[3].startswith("empty noarch 0 ")
    assert run("rpm", "-K", str(out[0])).stdout.strip().endswith("digests OK")
    with pytest.raises(ValueError):
        build_rpms([Pkg("x", "1-2")], "x86_64", tmp_path, None, tmp_path / "work")
    with pytest.raises(ValueError):
        build_rpms([Pkg("x", "1")], "ppc64le", tmp_path, None, tmp_path / "work")


@pytest.mark.slow
def test_docker_ce_fixture(key: GpgKey, tmp_path: Path) -> None:
    base = docker_ce_fixture(tmp_path / "up", key, releasevers=("8", "9"))
    assert base == tmp_path / "up" / "linux" / "centos"
    for rel in ("8", "9"):
        for arch in ("x86_64", "aarch64"):
            repo = base / rel / arch / "stable"
            assert set(primary(repo)) == {
                ("containerd.io", "1.6.28", arch),
                ("containerd.io", "1.6.31", arch),
                ("docker-ce-cli", "26.1.3", arch),
            }
            rpms = sorted((repo / "Packages").glob("*.rpm"))
            assert [p.name for p in rpms][0] == f"containerd.io-1.6.28-3.1.el{rel}.{arch}.rpm"
            data = repo / "repodata"
            assert gpgv(
                data / "repomd.xml.key", data / "repomd.xml.asc", data / "repomd.xml", tmp_path
            )


@pytest.mark.slow
def test_mutating_an_upstream(key: GpgKey, tmp_path: Path) -> None:
    repo, work = tmp_path / "repo", tmp_path / "work"
    build_rpms([Pkg("a", "1"), Pkg("b", "1")], "x86_64", repo, key, work)
    make_repo(repo, None)
    assert not (repo / "repodata" / "repomd.xml.asc").exists()
    make_repo(repo, key)
    data = repo / "repodata"
    before = (data / "repomd.xml").read_bytes()
    added = add_package(repo, Pkg("c", "2", requires=("a",)), "x86_64", key, work)
    assert added == repo / "c-2-1.x86_64.rpm"
    assert set(primary(repo)) == {("a", "1", "x86_64"), ("b", "1", "x86_64"), ("c", "2", "x86_64")}
    assert (data / "repomd.xml").read_bytes() != before
    assert gpgv(data / "repomd.xml.key", data / "repomd.xml.asc", data / "repomd.xml", tmp_path)
    assert remove_package(repo, "b-*.rpm", key) == [repo / "b-1-1.x86_64.rpm"]
    assert set(primary(repo)) == {("a", "1", "x86_64"), ("c", "2", "x86_64")}
    assert gpgv(data / "repomd.xml.key", data / "repomd.xml.asc", data / "repomd.xml", tmp_path)
    assert len(list(data.glob("*-primary.xml*"))) == 1  # regenerated, not accumulated
    with pytest.raises(FileNotFoundError):
        remove_package(repo, "zzz-*.rpm", key)
    make_repo(repo, key, sign_repomd=False)
    assert not (data / "repomd.xml.asc").exists() and (data / "repomd.xml.key").exists()


def test_corrupt_file_keeps_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abcdef")
    before = path.stat()
    corrupt_file(path, offset=0, count=2)
    assert path.read_bytes() == bytes([ord("a") ^ 0xFF, ord("b") ^ 0xFF]) + b"cdef"
    corrupt_file(path, count=1)
    assert path.read_bytes()[-1] == ord("f") ^ 0xFF
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns


# ------------------------------------------------------------------------------------------
# real dnf against the fixture
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dnf_resolves_kubeadm_from_file_url(k8s_repo: Path, dnf: DnfRoot) -> None:
    dnf.add_repo("kubernetes", k8s_repo.as_uri() + "/")
    dnf.install("kubeadm", nogpgcheck=True)
    assert dnf.installed() == {
        f"{n}-{v}-150500.1.1.x86_64"
        for n, v in [
            ("kubeadm", "1.28.2"),
            ("kubelet", "1.28.2"),
            ("kubectl", "1.28.2"),
            ("cri-tools", "1.28.0"),
            ("kubernetes-cni", "1.2.0"),
        ]
    }


@pytest.mark.slow
def test_dnf_gpgcheck_over_http(k8s_repo: Path, k8s_server: UpstreamServer, dnf: DnfRoot) -> None:
    base = k8s_server.url_for(k8s_repo) + "/"
    assert base.endswith("/core:/stable:/v1.28/rpm/")
    dnf.add_repo(
        "kubernetes",
        base,
        gpgcheck=True,
        repo_gpgcheck=True,
        gpgkey=base + "repodata/repomd.xml.key",
    )
    k8s_server.clear_log()
    dnf.install("kubeadm-1.28.1")
    assert dnf.installed_names() == {"kubeadm", "kubelet", "kubectl", "cri-tools", "kubernetes-cni"}
    assert "kubeadm-1.28.1-150500.1.1.x86_64" in dnf.installed()
    assert any(n.startswith("gpg-pubkey-") for n in dnf.query("%{NAME}-%{VERSION}"))
    prefix = "/core:/stable:/v1.28/rpm/"
    assert k8s_server.count(prefix + "x86_64/", status=200) == 5
    assert k8s_server.count(prefix + "aarch64/") == 0
    assert k8s_server.count(prefix + "repodata/repomd.xml.asc") >= 1


@pytest.mark.slow
def test_dnf_rejects_repomd_signed_by_another_key(
    k8s_repo: Path, tmp_path: Path, dnf: DnfRoot
) -> None:
    other = make_gpg_key(tmp_path / "k2", name="Impostor Key")
    try:
        repo = tmp_path / "copy"
        shutil.copytree(k8s_repo, repo)
        sign_detached(other, repo / "repodata" / "repomd.xml")  # .key still the real key
    finally:
        kill_agent(other)
    dnf.add_repo(
        "kubernetes",
        repo.as_uri() + "/",
        gpgcheck=True,
        repo_gpgcheck=True,
        gpgkey=(repo / "repodata" / "repomd.xml.key").as_uri(),
    )
    proc = dnf.install("kubeadm", check=False)
    assert proc.returncode != 0
    assert "GPG signature verification error" in proc.stdout + proc.stderr
    assert dnf.installed_names() == set()


# ------------------------------------------------------------------------------------------
# UpstreamServer
# ------------------------------------------------------------------------------------------

DATA = hashlib.shake_256(b"server").digest(100_000)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[UpstreamServer]:
    (tmp_path / "root" / "a:" / "b").mkdir(parents=True)
    (tmp_path / "root" / "a:" / "b" / "file.bin").write_bytes(DATA)
    (tmp_path / "outside").write_text("secret")
    (tmp_path / "root" / "escape").symlink_to(tmp_path / "outside")
    with UpstreamServer(tmp_path / "root") as server:
        yield server


def fetch(
    server: UpstreamServer, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def test_server_serves_ranges_and_headers(served: UpstreamServer, tmp_path: Path) -> None:
    assert served.url.startswith("http://127.0.0.1:") and served.port > 0
    path = "/a:/b/file.bin"
    resp, body = fetch(served, path)
    assert resp.status == 200 and body == DATA
    assert resp.headers["Content-Length"] == "100000"
    mtime = (tmp_path / "root" / "a:" / "b" / "file.bin").stat().st_mtime
    assert resp.headers["Last-Modified"] == email.utils.formatdate(mtime, usegmt=True)
    resp, body = fetch(served, path, headers={"Range": "bytes=1000-"})
    assert resp.status == 206 and body == DATA[1000:]
    assert resp.headers["Content-Range"] == "bytes 1000-99999/100000"
    assert resp.headers["Content-Length"] == "99000"
    resp, body = fetch(served, "/a%3A/b/file.bin", headers={"Range": "bytes=10-19"})
    assert resp.status == 206 and body == DATA[10:20]
    resp, body = fetch(served, path, headers={"Range": "bytes=-5"})
    assert resp.status == 206 and body == DATA[-5:]
    resp, _ = fetch(served, path, headers={"Range": "bytes=100000-"})
    assert resp.status == 416 and resp.headers["Content-Range"] == "bytes */100000"
    resp, body = fetch(served, path, "HEAD")
    assert resp.status == 200 and body == b"" and resp.headers["Content-Length"] == "100000"
    resp, body = fetch(served, path, headers={"If-Modified-Since": resp.headers["Last-Modified"]})
    assert resp.status == 304 and body == b""
    assert served.count() == 7 and served.count("/a:/b/") == 7
    assert served.count(method="HEAD") == 1 and served.count(status=206) == 3
    assert served.requests[0] == ("GET", path, 200)
    assert served.url_for("a:/b/file.bin") == served.url + path
    served.clear_log()
    assert served.requests == [] and served.count() == 0


def test_server_refuses_traversal(served: UpstreamServer) -> None:
    for path in (
        "/../outside",
        "/a:/../../outside",
        "/%2e%2e/outside",
        "/escape",
        "/a:/b",
        "/missing",
    ):
        resp, _ = fetch(served, path)
        assert resp.status == 404, path
    assert served.count(status=404) == 6


def test_server_fail_next(served: UpstreamServer) -> None:
    served.fail_next("/a:/b/", status=503, times=2)
    served.fail_next("/other", status=500)
    assert fetch(served, "/a:/b/file.bin", "HEAD")[0].status == 503
    assert fetch(served, "/a:/b/file.bin")[0].status == 503
    resp, body = fetch(served, "/a:/b/file.bin")
    assert resp.status == 200 and body == DATA
    assert fetch(served, "/other/x")[0].status == 500
    assert fetch(served, "/other/x")[0].status == 404
    assert [s for _, _, s in served.requests] == [503, 503, 200, 500, 404]


def test_server_drop_after_then_resume(served: UpstreamServer) -> None:
    served.drop_after("/a:/b/file.bin", 4096)
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    conn.request("GET", "/a:/b/file.bin")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.headers["Content-Length"] == "100000"
    with pytest.raises(http.client.IncompleteRead) as err:
        resp.read()
    conn.close()
    partial = err.value.partial
    assert partial == DATA[:4096]
    resp, rest = fetch(served, "/a:/b/file.bin", headers={"Range": f"bytes={len(partial)}-"})
    assert resp.status == 206 and partial + rest == DATA
    assert fetch(served, "/a:/b/file.bin")[1] == DATA  # times=1: back to normal


def test_server_concurrent_log_and_lifecycle(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 10)
    server = UpstreamServer(tmp_path)
    with pytest.raises(RuntimeError):
        _ = server.url
    with server:

        def worker() -> None:
            for _ in range(10):
                assert fetch(server, "/f")[1] == b"x" * 10

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert server.count("/f") == 80
    server.stop()  # idempotent
