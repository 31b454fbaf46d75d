"""Yum mirroring end to end: real rpms, real createrepo_c metadata, real HTTP, real dnf."""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from pathlib import Path

import createrepo_c as cr
import pytest
import requests

from tests.conftest import Mirror, stop_process
from tests.fixtures import DnfRoot, Pkg, corrupt_file, make_gpg_key, remove_package
from tests.fixtures.yumrepo import K8S_RELEASE, sign_detached

pytestmark = pytest.mark.slow


def published_nevras(repo_dir: Path) -> set[str]:
    """Package NVRAs named by the published metadata (parsed like dnf would)."""
    repomd = cr.Repomd(str(repo_dir / "repodata" / "repomd.xml"))
    primary = next(r for r in repomd.records if r.type == "primary")
    names: set[str] = set()
    cr.xml_parse_primary(
        str(repo_dir / primary.location_href),
        pkgcb=lambda p: names.add(f"{p.name}-{p.version}-{p.release}.{p.arch}"),
        do_files=0,
    )
    return names


def assert_ok(proc, what: str = "mirror") -> None:
    assert proc.returncode == 0, f"{what} exited {proc.returncode}\n{proc.stderr[-3000:]}"


def test_dnf_installs_kubeadm_from_served_mirror(mirror: Mirror, tmp_path: Path) -> None:
    assert_ok(mirror.sync())
    mirror.serve()
    repofile = requests.get(f"{mirror.base_url}/repofiles/mirror.repo", timeout=10)
    assert repofile.status_code == 200
    text = repofile.text
    assert f"baseurl={mirror.base_url}/repos/kubernetes/" in text
    assert f"baseurl={mirror.base_url}/repos/docker-ce-stable/$releasever/$basearch/" in text
    assert "repo_gpgcheck=1" in text and "gpgcheck=1" in text
    assert "exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni" in text

    with DnfRoot(tmp_path / "node") as node:
        (node.reposdir / "mirror.repo").write_text(text)
        node.install("--disableexcludes=kubernetes", "kubeadm", "containerd.io")
        names = node.installed_names()
        assert {"kubeadm", "kubelet", "kubectl", "cri-tools", "kubernetes-cni"} <= names
        assert "containerd.io" in names
        # gpgcheck really happened: dnf imported our served key into the rpmdb.
        assert any(n.startswith("gpg-pubkey-") for n in node.installed())
        assert "kubeadm-1.28.2" in " ".join(node.installed())  # newest wins


def test_excluded_packages_need_disableexcludes(mirror: Mirror, tmp_path: Path) -> None:
    """The upstream exclude line is carried over: plain `dnf install kubeadm` finds nothing."""
    assert_ok(mirror.sync("--repo", "kubernetes"))
    mirror.serve()
    text = requests.get(f"{mirror.base_url}/repofiles/kubernetes.repo", timeout=10).text
    with DnfRoot(tmp_path / "node") as node:
        (node.reposdir / "kubernetes.repo").write_text(text)
        proc = node.install("kubeadm", check=False)
        assert proc.returncode != 0


def test_published_layout_and_byte_identical_metadata(mirror: Mirror) -> None:
    assert_ok(mirror.sync())
    k8s = mirror.data / "repos" / "kubernetes"
    up = mirror.upstream.k8s_repo
    for name in ("repomd.xml", "repomd.xml.asc"):
        assert (k8s / "repodata" / name).read_bytes() == (up / "repodata" / name).read_bytes()
    assert (k8s / "x86_64" / f"kubeadm-1.28.0-{K8S_RELEASE}.x86_64.rpm").is_file()
    assert (k8s / "aarch64" / f"kubeadm-1.28.0-{K8S_RELEASE}.aarch64.rpm").is_file()
    for arch in ("x86_64", "aarch64"):
        docker = mirror.data / "repos" / "docker-ce-stable" / "9" / arch
        assert "containerd.io-1.6.31-3.1.el9." + arch in published_nevras(docker)
    # The key dnf will fetch is the upstream key.
    assert (mirror.data / "keys" / "kubernetes.gpg").read_bytes().strip() == (
        mirror.upstream.key.public_key.read_bytes().strip()
    )
    assert not list(mirror.data.rglob("*.part"))


def test_noop_resync_makes_one_request_per_repo(mirror: Mirror) -> None:
    assert_ok(mirror.sync())
    server = mirror.upstream.server
    server.clear_log()
    proc = mirror.sync()
    assert_ok(proc)
    paths = sorted(path for _, path, _ in server.requests)
    assert paths == sorted(
        [
            "/core:/stable:/v1.28/rpm/repodata/repomd.xml",
            "/linux/centos/9/x86_64/stable/repodata/repomd.xml",
            "/linux/centos/9/aarch64/stable/repodata/repomd.xml",
        ]
    )


def test_new_package_appears_and_removed_one_disappears(mirror: Mirror, tmp_path: Path) -> None:
    assert_ok(mirror.sync())
    up = mirror.upstream
    k8s = mirror.data / "repos" / "kubernetes"
    new = Pkg("kubectl", "1.28.3", K8S_RELEASE)
    up.add_k8s_package(new, tmp_path / "build")
    remove_package(up.k8s_repo, f"kubectl-1.28.0-{K8S_RELEASE}.x86_64.rpm", up.key)

    generation_before = {
        r.location_href for r in cr.Repomd(str(k8s / "repodata" / "repomd.xml")).records
    }
    assert_ok(mirror.sync("--repo", "kubernetes"))
    nevras = published_nevras(k8s)
    assert f"kubectl-1.28.3-{K8S_RELEASE}.x86_64" in nevras
    assert f"kubectl-1.28.0-{K8S_RELEASE}.x86_64" not in nevras
    assert (k8s / "x86_64" / new.filename("x86_64")).is_file()
    # Dropped upstream, but kept one more generation for nodes holding the previous metadata.
    old = k8s / "x86_64" / f"kubectl-1.28.0-{K8S_RELEASE}.x86_64.rpm"
    assert old.is_file()
    # Metadata of the previous generation stays (for clients mid-fetch); older is pruned.
    live = {r.location_href for r in cr.Repomd(str(k8s / "repodata" / "repomd.xml")).records}
    on_disk = {f"repodata/{p.name}" for p in (k8s / "repodata").iterdir()}
    assert on_disk - live == generation_before | {"repodata/repomd.xml", "repodata/repomd.xml.asc"}
    remove_package(up.k8s_repo, new.filename("x86_64"), up.key)
    assert_ok(mirror.sync("--repo", "kubernetes"))
    on_disk = {f"repodata/{p.name}" for p in (k8s / "repodata").iterdir()}
    assert not on_disk & generation_before
    assert not old.exists()  # two generations later it is gone


def test_corrupt_package_fails_repo_and_keeps_previous_copy(mirror: Mirror, tmp_path: Path) -> None:
    assert_ok(mirror.sync())
    up = mirror.upstream
    k8s = mirror.data / "repos" / "kubernetes"
    before = (k8s / "repodata" / "repomd.xml").read_bytes()
    pkg = Pkg("kubeadm", "1.28.3", K8S_RELEASE, ("kubelet >= 1.28.0",))
    path = up.add_k8s_package(pkg, tmp_path / "build")
    corrupt_file(path)  # same size, wrong bytes: only the checksum can tell
    # ... and a change in another repo, which must still sync.
    remove_package(up.docker_repo(), "docker-ce-cli-*", up.key)

    proc = mirror.sync()
    assert proc.returncode == 1
    assert f"kubeadm-1.28.3-{K8S_RELEASE}.x86_64" in proc.stderr
    assert "sha256 mismatch" in proc.stderr
    assert (k8s / "repodata" / "repomd.xml").read_bytes() == before
    assert not list(k8s.rglob("kubeadm-1.28.3*"))
    docker = mirror.data / "repos" / "docker-ce-stable" / "9" / "x86_64"
    assert not any(n.startswith("docker-ce-cli") for n in published_nevras(docker))

    status = mirror.run("status")
    assert status.returncode == 1
    assert "kubernetes" in status.stdout and "FAILED" in status.stdout


def test_corrupt_package_on_first_sync_publishes_nothing(mirror: Mirror) -> None:
    up = mirror.upstream
    corrupt_file(next((up.k8s_repo / "x86_64").glob("kubelet-1.28.1-*.rpm")))
    proc = mirror.sync("--repo", "kubernetes")
    assert proc.returncode == 1
    assert "kubelet-1.28.1" in proc.stderr
    assert not (mirror.data / "repos" / "kubernetes").exists()


def test_bad_repomd_signature_is_refused(mirror: Mirror, tmp_path: Path) -> None:
    assert_ok(mirror.sync("--repo", "kubernetes"))
    k8s = mirror.data / "repos" / "kubernetes"
    before = (k8s / "repodata" / "repomd.xml").read_bytes()
    up = mirror.upstream
    # Upstream changes and its repomd.xml gets signed by a key that is not the repo's.
    up.add_k8s_package(Pkg("kubectl", "1.28.9", K8S_RELEASE), tmp_path / "build")
    intruder = make_gpg_key(tmp_path / "intruder", "Intruder")
    sign_detached(intruder, up.k8s_repo / "repodata" / "repomd.xml")
    proc = mirror.sync("--repo", "kubernetes")
    assert proc.returncode == 1
    assert "repo_gpgcheck" in proc.stderr and "not the repo's gpgkey" in proc.stderr
    assert (k8s / "repodata" / "repomd.xml").read_bytes() == before

    # Right key, tampered content: BADSIG.
    sign_detached(up.key, up.k8s_repo / "repodata" / "repomd.xml")
    with (up.k8s_repo / "repodata" / "repomd.xml").open("a") as fh:
        fh.write("\n")
    proc = mirror.sync("--repo", "kubernetes")
    assert proc.returncode == 1 and "bad signature" in proc.stderr
    assert (k8s / "repodata" / "repomd.xml").read_bytes() == before
    assert not list(k8s.rglob("kubectl-1.28.9*"))


def _rewrite_primary_href(repo: Path, key, new_href: str) -> None:
    """Regenerate metadata with one package's location href replaced (signed, consistent)."""
    repomd = cr.Repomd(str(repo / "repodata" / "repomd.xml"))
    paths = {r.type: str(repo / r.location_href) for r in repomd.records}
    out = repo / "newmd"
    out.mkdir()
    pkgs = list(cr.PackageIterator(paths["primary"], paths["filelists"], paths["other"]))
    pkgs[0].location_href = new_href
    files = {
        "primary": cr.PrimaryXmlFile(str(out / "primary.xml.gz")),
        "filelists": cr.FilelistsXmlFile(str(out / "filelists.xml.gz")),
        "other": cr.OtherXmlFile(str(out / "other.xml.gz")),
    }
    new = cr.Repomd()
    for xml in files.values():
        xml.set_num_of_pkgs(len(pkgs))
        for pkg in pkgs:
            xml.add_pkg(pkg)
        xml.close()
    shutil.rmtree(repo / "repodata")
    (repo / "repodata").mkdir()
    for kind in files:
        dest = repo / "repodata" / f"{kind}.xml.gz"
        shutil.move(out / f"{kind}.xml.gz", dest)
        rec = cr.RepomdRecord(kind, str(dest))
        rec.fill(cr.SHA256)
        rec.rename_file()
        new.set_record(rec)
    (repo / "repodata" / "repomd.xml").write_text(new.xml_dump())
    sign_detached(key, repo / "repodata" / "repomd.xml")
    shutil.copyfile(key.public_key, repo / "repodata" / "repomd.xml.key")
    shutil.rmtree(out)


@pytest.mark.parametrize("href", ["../../etc/x", "/etc/x", "http://evil.example/x.rpm"])
def test_hostile_location_href_is_refused(mirror: Mirror, href: str) -> None:
    up = mirror.upstream
    _rewrite_primary_href(up.k8s_repo, up.key, href)
    proc = mirror.sync("--repo", "kubernetes")
    assert proc.returncode == 1
    assert "unsafe location href" in proc.stderr and repr(href) in proc.stderr
    assert not (mirror.dir / "etc").exists() and not (mirror.data / "etc").exists()
    assert not Path("/etc/x").exists()
    assert not (mirror.data / "repos" / "kubernetes").exists()


def test_filtered_repo_gets_fresh_metadata_and_installs(mirror: Mirror, tmp_path: Path) -> None:
    mirror.extra_config = "repo_filters:\n  kubernetes: {newest: 2}\n"
    mirror.write()
    assert_ok(mirror.sync("--repo", "kubernetes"))
    k8s = mirror.data / "repos" / "kubernetes"
    nevras = published_nevras(k8s)
    assert f"kubeadm-1.28.0-{K8S_RELEASE}.x86_64" not in nevras
    assert {
        f"kubeadm-1.28.{n}-{K8S_RELEASE}.{a}" for n in (1, 2) for a in ("x86_64", "aarch64")
    } <= nevras
    assert not (k8s / "repodata" / "repomd.xml.asc").exists()
    assert not list(k8s.rglob("kubeadm-1.28.0-*"))
    mirror.serve()
    text = requests.get(f"{mirror.base_url}/repofiles/kubernetes.repo", timeout=10).text
    assert "repo_gpgcheck=0" in text and "cannot carry upstream's signature" in text
    with DnfRoot(tmp_path / "node") as node:
        (node.reposdir / "kubernetes.repo").write_text(text)
        node.install("--disableexcludes=kubernetes", "kubeadm-1.28.1")
        assert f"kubeadm-1.28.1-{K8S_RELEASE}.x86_64" in node.installed()

    # A no-op resync of a filtered repo is one request too.
    mirror.upstream.server.clear_log()
    assert_ok(mirror.sync("--repo", "kubernetes"))
    assert mirror.upstream.server.count() == 1


def test_transient_upstream_faults_are_retried_and_resumed(mirror: Mirror, tmp_path: Path) -> None:
    up = mirror.upstream
    big = Pkg("kubectl", "1.28.7", K8S_RELEASE, payload_size=400_000)
    up.add_k8s_package(big, tmp_path / "build")
    prefix = "/core:/stable:/v1.28/rpm/x86_64/"
    server = up.server
    server.fail_next(prefix + "kubelet-1.28.2", status=503, times=2)
    server.drop_after(prefix + big.filename("x86_64"), nbytes=150_000)
    assert_ok(mirror.sync("--repo", "kubernetes"))
    kubelet = [s for _, p, s in server.requests if p.startswith(prefix + "kubelet-1.28.2")]
    assert kubelet == [503, 503, 200]
    kubectl = [s for _, p, s in server.requests if p.startswith(prefix + big.filename("x86_64"))]
    assert kubectl == [200, 206]  # broken off, then resumed with a Range request
    published = mirror.data / "repos" / "kubernetes" / "x86_64"
    for name in (big.filename("x86_64"), f"kubelet-1.28.2-{K8S_RELEASE}.x86_64.rpm"):
        assert (published / name).read_bytes() == (up.k8s_repo / "x86_64" / name).read_bytes()


def test_second_concurrent_sync_exits_with_lock_message(mirror: Mirror) -> None:
    # An upstream that accepts connections and never answers keeps the first sync busy.
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(8)
    port = hang.getsockname()[1]
    (mirror.dir / "repos" / "docker-ce.repo").unlink()
    (mirror.dir / "repos" / "kubernetes.repo").write_text(
        f"[kubernetes]\nname=K\nbaseurl=http://127.0.0.1:{port}/rpm/\n"
    )
    first = mirror.start("sync")
    try:
        time.sleep(1.5)
        assert first.poll() is None, mirror.logs[first.pid].read_text()
        second = mirror.sync()
        assert second.returncode == 75
        assert "another mirror sync is running" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert first.poll() is None  # the second one did not disturb the first
    finally:
        stop_process(first)
        hang.close()


def test_dry_run_changes_nothing(mirror: Mirror) -> None:
    proc = mirror.sync("--dry-run")
    assert_ok(proc)
    assert "would download x86_64/kubeadm-1.28.0" in proc.stderr
    assert not (mirror.data / "repos").exists()
    assert not (mirror.data / "state").exists()
    assert not list((mirror.data / ".staging").rglob("*.xml*"))


def test_served_files_support_range_and_conditional_requests(mirror: Mirror) -> None:
    assert_ok(mirror.sync("--repo", "kubernetes"))
    mirror.serve()
    name = f"kubeadm-1.28.0-{K8S_RELEASE}.x86_64.rpm"
    url = f"{mirror.base_url}/repos/kubernetes/x86_64/{name}"
    data = (mirror.data / "repos" / "kubernetes" / "x86_64" / name).read_bytes()
    full = requests.get(url, timeout=10)
    assert full.content == data and int(full.headers["Content-Length"]) == len(data)
    assert "ETag" in full.headers and "Last-Modified" in full.headers
    part = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=10)
    assert part.status_code == 206 and part.content == data[100:200]
    again = requests.get(url, headers={"If-None-Match": full.headers["ETag"]}, timeout=10)
    assert again.status_code == 304
    assert requests.get(f"{mirror.base_url}/repos/../mirror.yaml", timeout=10).status_code == 404
    assert requests.get(f"{mirror.base_url}/keys/kubernetes.gpg", timeout=10).status_code == 200
    assert requests.get(f"{mirror.base_url}/keys/nope.gpg", timeout=10).status_code == 404


def test_concurrent_dnf_during_publish_sees_complete_repo(mirror: Mirror, tmp_path: Path) -> None:
    """Readers hammer repomd.xml -> primary while syncs publish; every fetch must verify."""
    assert_ok(mirror.sync("--repo", "kubernetes"))
    mirror.serve()
    base = f"{mirror.base_url}/repos/kubernetes/"
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            repomd = requests.get(base + "repodata/repomd.xml", timeout=10).content
            for href in _hrefs(repomd):
                resp = requests.get(base + href, timeout=10)
                if resp.status_code != 200:
                    errors.append(f"{href}: {resp.status_code}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        up = mirror.upstream
        for n in range(3, 6):
            up.add_k8s_package(Pkg("kubectl", f"1.28.{n}", K8S_RELEASE), tmp_path / "build")
            assert_ok(mirror.sync("--repo", "kubernetes"))
    finally:
        stop.set()
        thread.join()
    assert errors == []


def _hrefs(repomd: bytes) -> list[str]:
    return [h.decode() for h in re.findall(rb'<location href="([^"]+)"', repomd)]


def test_stale_partial_download_from_an_earlier_run_is_restarted(mirror: Mirror) -> None:
    """A .part left by a failed run whose upstream file was since replaced: the resumed bytes
    don't verify, so the download starts over instead of failing the repo."""
    name = f"kubelet-1.28.1-{K8S_RELEASE}.x86_64.rpm"
    part = mirror.data / ".staging/repos/kubernetes/packages/x86_64" / f"{name}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1000)  # not a prefix of the real file
    server = mirror.upstream.server
    assert_ok(mirror.sync("--repo", "kubernetes"))
    statuses = [s for _, p, s in server.requests if p.endswith("/" + name)]
    assert statuses == [206, 200]
    published = mirror.data / "repos/kubernetes/x86_64" / name
    assert published.read_bytes() == (mirror.upstream.k8s_repo / "x86_64" / name).read_bytes()


def test_damaged_published_package_is_downloaded_again(mirror: Mirror, tmp_path: Path) -> None:
    assert_ok(mirror.sync("--repo", "kubernetes"))
    name = f"kubectl-1.28.1-{K8S_RELEASE}.x86_64.rpm"
    damaged = mirror.data / "repos/kubernetes/x86_64" / name
    damaged.write_bytes(b"\0" * damaged.stat().st_size)  # new mtime: the cache rehashes it
    up = mirror.upstream
    up.add_k8s_package(Pkg("kubectl", "1.28.8", K8S_RELEASE), tmp_path / "build")
    up.server.clear_log()
    assert_ok(mirror.sync("--repo", "kubernetes"))
    rpms = sorted(p.rsplit("/", 1)[1] for _, p, _ in up.server.requests if p.endswith(".rpm"))
    assert rpms == sorted([name, f"kubectl-1.28.8-{K8S_RELEASE}.x86_64.rpm"])
    assert damaged.read_bytes() == (up.k8s_repo / "x86_64" / name).read_bytes()
