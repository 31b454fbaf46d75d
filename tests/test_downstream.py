"""Mirrors of mirrors, end to end: node A mirrors fixture upstreams, node B mirrors A only.

Everything is real: A syncs a signed yum repo (rpmbuild, createrepo_c, repomd.xml.asc), images
pushed with skopeo into a distribution registry, and a file; A runs `mirror serve` (nginx in
front of gunicorn, the embedded registry). Then A's upstreams are stopped and B
(`upstream_mirror: A`) syncs from A alone; dnf installs from B with gpgcheck=1 and
repo_gpgcheck=1, skopeo finds A's digests in B's registry, and A's access logs show what a
no-op resync of B costs A.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

from mirror.web.nginx import find_nginx
from tests.conftest import K8S_REL, Upstream, free_port, stop_process, wait_http
from tests.fixtures import Pkg, UpstreamServer
from tests.fixtures.dnfclient import DnfRoot
from tests.fixtures.helmrepo import HelmRepo
from tests.fixtures.registry import (
    RegistryProcess,
    manifest_digest,
    move_tag,
    push_image,
    start_registry,
    wait_registry,
    write_registries_conf,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("skopeo") and shutil.which("dnf") and find_nginx()),
        reason="skopeo, dnf and nginx are needed",
    ),
]
IMAGES = ("docker.io/library/nginx:1.25", "quay.io/fixture/tool:v1")


@dataclass
class Node:
    """One mirror node: its directory, config, web and registry ports, and its processes."""

    dir: Path
    port: int = field(default_factory=free_port)
    registry_port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    @property
    def config(self) -> Path:
        return self.dir / "mirror.yaml"

    @property
    def verify(self) -> bool | str:
        """What requests verifies this node's https with (its CA, for one serving TLS)."""
        return True

    def write(self, **values: object) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        raw = {
            "data_dir": "./data",
            "base_url": self.base_url,
            "releasever": ["9"],
            "basearch": ["x86_64"],
            "http_timeout": 10,
            "http_retries": 1,
            "platforms": "all",
            "registry": {"url": self.registry},
            **values,
        }
        self.config.write_text(yaml.safe_dump(raw))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mirror", "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=self.dir,
        )

    def sync(self) -> subprocess.CompletedProcess[str]:
        done = self.run("sync")
        assert done.returncode == 0, done.stderr[-4000:]
        return done

    def serve(self) -> None:
        log = (self.dir / f"serve-{len(self.procs)}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "mirror", "-c", str(self.config), "serve"]
            + ["--bind", f"127.0.0.1:{self.port}", "--workers", "2"],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.dir,
            start_new_session=True,
        )
        self.procs.append(proc)
        self.wait_ready()

    def wait_ready(self) -> None:
        wait_http(self.base_url + "/healthz")
        wait_registry(self.registry)

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)


def _write_repos(repos: Path, up: Upstream) -> None:
    repos.mkdir(parents=True, exist_ok=True)
    k8s = up.server.url_for(up.root / K8S_REL)
    (repos / "kubernetes.repo").write_text(
        f"[kubernetes]\nname=Kubernetes\nbaseurl={k8s}/\nenabled=1\ngpgcheck=1\n"
        f"repo_gpgcheck=1\ngpgkey={k8s}/repodata/repomd.xml.key\n"
    )
    (repos / "docker-ce.repo").write_text(
        "[docker-ce-stable]\nname=Docker CE Stable - $basearch\n"
        f"baseurl={up.server.url}/linux/centos/$releasever/$basearch/stable\n"
        f"enabled=1\ngpgcheck=1\ngpgkey={up.server.url}/docker.gpg\n"
    )


@dataclass
class Tiers:
    """A synced from the fixture upstreams and serving, B configured with upstream_mirror: A."""

    a: Node
    b: Node
    upstream: Upstream
    registry_root: Path  # the fixture upstream registry's files (restartable on a new port)
    work: Path
    stops: list[Callable[[], None]] = field(default_factory=list)

    def configure_a(self, server_url: str, registry: RegistryProcess) -> None:
        """A's repos, images and file point at these upstreams (their ports change when
        they are restarted)."""
        up = self.upstream
        _write_repos(self.a.dir / "repos", up.root, server_url)
        write_registries_conf(self.a.dir / "registries.conf", registry)
        tool = up.root / "tools" / "tool.tar.gz"
        self.a.write(
            repos_dir="./repos",
            images_file="./images.txt",
            upstream={"registries_conf": "./registries.conf"},
            files=[
                {
                    "url": f"{server_url}/tools/tool.tar.gz",
                    "sha256": hashlib.sha256(tool.read_bytes()).hexdigest(),
                    "path": "tools/tool.tar.gz",
                }
            ],
            charts=[{"repo": f"{server_url}/charts-up", "name": "web", "newest": 2}],
        )


def _write_repos(repos: Path, root: Path, url: str) -> None:
    repos.mkdir(parents=True, exist_ok=True)
    k8s = f"{url}/{K8S_REL}"
    (repos / "kubernetes.repo").write_text(
        f"[kubernetes]\nname=Kubernetes\nbaseurl={k8s}/\nenabled=1\ngpgcheck=1\n"
        f"repo_gpgcheck=1\ngpgkey={k8s}/repodata/repomd.xml.key\n"
    )
    (repos / "docker-ce.repo").write_text(
        "[docker-ce-stable]\nname=Docker CE Stable - $basearch\n"
        f"baseurl={url}/linux/centos/$releasever/$basearch/stable\n"
        f"enabled=1\ngpgcheck=1\ngpgkey={url}/docker.gpg\n"
    )


@pytest.fixture
def tiers(tmp_path: Path, upstream: Upstream) -> Iterator[Tiers]:
    with build_tiers(tmp_path, upstream, Node(tmp_path / "a")) as t:
        yield t


@contextmanager
def build_tiers(tmp_path: Path, upstream: Upstream, a: Node) -> Iterator[Tiers]:
    """Tiers with `a` (a Node, or one serving TLS) synced and serving, its upstreams gone."""
    images_up = start_registry(tmp_path / "upstream-registry")
    t = Tiers(a, Node(tmp_path / "b"), upstream, images_up.root, tmp_path)
    t.stops += [images_up.stop, t.a.stop, t.b.stop]
    try:
        for ref in IMAGES:
            push_image(images_up, ref, tmp_path / "build")
        tool = upstream.root / "tools" / "tool.tar.gz"
        tool.parent.mkdir(parents=True)
        tool.write_bytes(hashlib.sha256(b"seed").digest() * 4096)
        charts = HelmRepo(upstream.root / "charts-up")
        charts.add("web", "1.0.0", images=[IMAGES[0]])
        charts.add("web", "1.1.0", images=[IMAGES[0]])
        charts.write_index()
        t.a.dir.mkdir(parents=True)
        (t.a.dir / "images.txt").write_text("\n".join(IMAGES) + "\n")
        t.configure_a(upstream.server.url, images_up)
        t.a.sync()
        t.a.serve()
        # From here on A is all B can reach.
        upstream.server.stop()
        images_up.stop()
        t.b.write(upstream_mirror=t.a.base_url)
        yield t
    finally:
        for stop in reversed(t.stops):
            stop()


def _access_lines(
    log: Path, since: int, sentinel: str, base_url: str, verify: bool | str = True
) -> list[str]:
    """Lines nginx logged after byte `since`, up to the sentinel request made now: nginx
    buffers its access log (flush=1s), per worker, so wait for the sentinel, then one
    more flush period for the other workers' buffers."""
    requests.get(f"{base_url}/healthz?{sentinel}", timeout=10, verify=verify)
    deadline = time.monotonic() + 15
    while sentinel not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)
    with log.open("rb") as fh:
        fh.seek(since)
        lines = fh.read().decode().splitlines()
    return [line for line in lines if sentinel not in line]


def _registry_requests(log: Path, since: int) -> list[str]:
    with log.open("rb") as fh:
        fh.seek(since)
        text = fh.read().decode(errors="replace")
    return [line for line in text.splitlines() if '"GET /v2/' in line or '"HEAD /v2/' in line]


def _repomd(node: Node, key: str = "kubernetes") -> bytes:
    return (node.dir / "data/repos" / key / "repodata/repomd.xml").read_bytes()


def _check_repos(t: Tiers) -> None:
    """B's own .repo file points at B; metadata is A's byte for byte; dnf installs from B
    with gpgcheck=1 and repo_gpgcheck=1."""
    a, b = t.a, t.b
    repofile = requests.get(f"{b.base_url}/repofiles/mirror.repo", timeout=10).text
    assert f"baseurl={b.base_url}/repos/kubernetes/" in repofile
    assert f"baseurl={b.base_url}/repos/docker-ce-stable/$releasever/$basearch/" in repofile
    assert f"gpgkey={b.base_url}/keys/kubernetes.gpg" in repofile
    assert "name=Kubernetes (mirror)\n" in repofile  # not "(mirror) (mirror)"
    assert "repo_gpgcheck=1" in repofile and a.base_url not in repofile
    for key in ("kubernetes", "docker-ce-stable/9/x86_64"):
        assert _repomd(b, key) == _repomd(a, key)
    asc = "data/repos/kubernetes/repodata/repomd.xml.asc"
    assert (b.dir / asc).read_bytes() == (a.dir / asc).read_bytes()
    with DnfRoot(t.work / "dnf") as dnf:
        (dnf.reposdir / "mirror.repo").write_text(repofile)
        dnf.install("kubeadm-1.28.2", "containerd.io")
        names = dnf.installed_names()
    assert {"kubeadm", "kubelet", "kubectl", "cri-tools", "containerd.io"} <= names


def _check_images_files_charts(t: Tiers) -> None:
    a, b = t.a, t.b
    for ref in IMAGES:  # under B's names, with A's digests
        assert manifest_digest(f"{b.registry}/{ref}") == manifest_digest(f"{a.registry}/{ref}")
    images_txt = requests.get(f"{b.base_url}/images.txt", timeout=10).text
    assert f"{b.registry}/docker.io/library/nginx:1.25@" in images_txt
    hosts = requests.get(f"{b.base_url}/containerd/certs.d/quay.io/hosts.toml", timeout=10)
    assert f"http://{b.registry}/v2/quay.io" in hosts.text  # B's node configs point at B
    tool = requests.get(f"{b.base_url}/files/tools/tool.tar.gz", timeout=10)
    assert tool.status_code == 200
    assert tool.content == (a.dir / "data/files/tools/tool.tar.gz").read_bytes()
    index = yaml.safe_load(
        requests.get(f"{b.base_url}/charts/charts-up/index.yaml", timeout=10).text
    )
    assert sorted(e["version"] for e in index["entries"]["web"]) == ["1.0.0", "1.1.0"]
    for name in ("web-1.0.0.tgz", "web-1.1.0.tgz"):
        served = requests.get(f"{b.base_url}/charts/charts-up/{name}", timeout=10)
        assert served.content == (a.dir / "data/charts/charts-up" / name).read_bytes()


def _noop_resync_costs_one_request(t: Tiers) -> None:
    """What a no-op resync of B costs A, from A's own access logs (nginx and registry)."""
    web_log = t.a.dir / "data/log/nginx-access.log"
    registry_log = t.a.dir / "data/registry/registry.log"
    web_mark, registry_mark = web_log.stat().st_size, registry_log.stat().st_size
    again = t.b.sync()
    for summary in (
        "upstream_mirror: 1 ok (0 changed",
        "repos: 2 ok (0 changed",
        "files: 1 ok (0 changed",
        "charts: 1 ok (0 changed",
        f"images: {len(IMAGES)} ok (0 changed",
    ):
        assert summary in again.stderr, again.stderr
    lines = _access_lines(web_log, web_mark, "noop-sentinel", t.a.base_url, t.a.verify)
    assert len(lines) == 1, lines
    assert '"GET /downstream.json HTTP/1.1" 304 ' in lines[0]
    assert _registry_requests(registry_log, registry_mark) == []


def _change_at_a_reaches_b(t: Tiers) -> None:
    """Upstreams back (new ports): a new package and a moved tag reach A, then B."""
    server = UpstreamServer(t.upstream.root).start()
    t.stops.append(server.stop)
    images_up = start_registry(t.registry_root)
    t.stops.append(images_up.stop)
    t.upstream.add_k8s_package(Pkg("kubectl", "1.28.3", "150500.1.1"), t.work / "build-rpm")
    moved = move_tag(images_up, IMAGES[1], t.work / "build", seed="moved")
    t.configure_a(server.url, images_up)
    t.a.sync()
    assert manifest_digest(f"{t.a.registry}/{IMAGES[1]}") == moved
    t.b.sync()
    assert _repomd(t.b) == _repomd(t.a)
    assert list((t.b.dir / "data/repos/kubernetes").rglob("kubectl-1.28.3-*.rpm"))
    assert manifest_digest(f"{t.b.registry}/{IMAGES[1]}") == moved


def test_downstream_mirrors_everything_from_upstream_mirror(tiers: Tiers) -> None:
    a, b = tiers.a, tiers.b
    registry_log = a.dir / "data/registry/registry.log"
    first_mark = registry_log.stat().st_size
    first = b.sync()
    b.serve()
    # The first sync read A's registry (so the log check of the no-op below can see reads).
    assert _registry_requests(registry_log, first_mark)
    assert "upstream_mirror: 1 ok (1 changed" in first.stderr
    _check_repos(tiers)
    _check_images_files_charts(tiers)
    status = json.loads(b.run("status", "--json").stdout)
    assert [row["key"] for row in status["upstream_mirror"]] == [a.base_url]
    assert status["upstream_mirror"][0]["images"] == len(IMAGES)
    text = b.run("status").stdout
    assert any(line.startswith(a.base_url) and " ok " in line for line in text.splitlines())
    page = requests.get(f"{b.base_url}/", timeout=10).text
    assert 'id="upstream-mirror"' in page and a.base_url in page

    _noop_resync_costs_one_request(tiers)
    _change_at_a_reaches_b(tiers)

    # Tiers chain: C mirrors B as B mirrors A.
    c = Node(tiers.work / "c")
    tiers.stops.append(c.stop)
    c.write(upstream_mirror=b.base_url)
    c.sync()
    c.serve()
    assert _repomd(c) == _repomd(a)
    assert manifest_digest(f"{c.registry}/{IMAGES[1]}") == manifest_digest(
        f"{a.registry}/{IMAGES[1]}"
    )

    # A gone: B's sync fails with one line naming the upstream mirror; B keeps serving.
    a.stop()
    down = b.run("sync")
    assert down.returncode == 1
    assert f"upstream_mirror {a.base_url}: cannot fetch {a.base_url}/downstream.json" in (
        down.stderr
    )
    assert requests.get(f"{b.base_url}/repos/kubernetes/repodata/repomd.xml", timeout=10).ok
