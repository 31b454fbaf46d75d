"""Shared pytest fixtures: real fixture upstreams, a mirror config pointing at them, `mirror serve`.

Upstreams are redirected the way a user would do it: the .repo files in repos_dir carry
loopback baseurls. Processes run in their own session and are killed by pid on teardown.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.fixtures import (
    GpgKey,
    Pkg,
    UpstreamServer,
    add_package,
    docker_ce_fixture,
    kill_agent,
    kubernetes_fixture,
    make_gpg_key,
)

# Nothing from the caller's environment may point a test at a real config or metrics dir
# (`make run` users have MIRROR_CONFIG set; a test must never sync the real upstreams).
for _var in ("MIRROR_CONFIG", "PROMETHEUS_MULTIPROC_DIR", "MIRROR_LOG_JSON"):
    os.environ.pop(_var, None)

K8S_REL = "core:/stable:/v1.28/rpm"
REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@pytest.fixture(scope="session")
def gpg_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgKey]:
    key = make_gpg_key(tmp_path_factory.mktemp("key"))
    yield key
    kill_agent(key)


@pytest.fixture(scope="session")
def pristine_upstream(tmp_path_factory: pytest.TempPathFactory, gpg_key: GpgKey) -> Path:
    """Built once per session (rpmbuild is the slow part); tests get a copy."""
    root = tmp_path_factory.mktemp("pristine")
    kubernetes_fixture(root, gpg_key)
    docker_ce_fixture(root, gpg_key)
    shutil.copyfile(gpg_key.public_key, root / "docker.gpg")
    return root


@dataclass
class Upstream:
    root: Path
    server: UpstreamServer
    key: GpgKey

    @property
    def k8s_repo(self) -> Path:
        return self.root / K8S_REL

    def docker_repo(self, releasever: str = "9", arch: str = "x86_64") -> Path:
        return self.root / "linux" / "centos" / releasever / arch / "stable"

    def add_k8s_package(self, pkg: Pkg, workdir: Path, arch: str = "x86_64") -> Path:
        """Build, sign and add `pkg` to the kubernetes repo (OBS layout: rpms in ARCH/)."""
        return add_package(self.k8s_repo, pkg, arch, self.key, workdir, subdir=arch)


@pytest.fixture
def upstream(tmp_path: Path, pristine_upstream: Path, gpg_key: GpgKey) -> Iterator[Upstream]:
    root = tmp_path / "upstream"
    shutil.copytree(pristine_upstream, root)
    with UpstreamServer(root) as server:
        yield Upstream(root, server, gpg_key)


@dataclass
class Mirror:
    """A mirror config in a temp dir whose repos point at the fixture upstream."""

    dir: Path
    upstream: Upstream
    port: int
    extra_config: str = ""
    repo_gpgcheck: bool = True
    basearch: tuple[str, ...] = ("x86_64", "aarch64")
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    logs: dict[int, Path] = field(default_factory=dict)
    registry_port: int = field(default_factory=free_port)

    @property
    def config(self) -> Path:
        return self.dir / "mirror.yaml"

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write(self) -> None:
        repos = self.dir / "repos"
        repos.mkdir(parents=True, exist_ok=True)
        up = self.upstream.server
        k8s = up.url_for(self.upstream.k8s_repo)
        (repos / "kubernetes.repo").write_text(
            "[kubernetes]\nname=Kubernetes\n"
            f"baseurl={k8s}/\nenabled=1\ngpgcheck=1\nrepo_gpgcheck={int(self.repo_gpgcheck)}\n"
            f"gpgkey={k8s}/repodata/repomd.xml.key\n"
            "exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n"
        )
        (repos / "docker-ce.repo").write_text(
            "[docker-ce-stable]\nname=Docker CE Stable - $basearch\n"
            f"baseurl={up.url}/linux/centos/$releasever/$basearch/stable\n"
            f"enabled=1\ngpgcheck=1\ngpgkey={up.url}/docker.gpg\n"
        )
        arches = ", ".join(self.basearch)
        self.config.write_text(
            f"data_dir: ./data\nbase_url: {self.base_url}\nrepos_dir: ./repos\n"
            f'releasever: ["9"]\nbasearch: [{arches}]\nhttp_timeout: 10\nhttp_retries: 2\n'
            # Yum tests need no registry: never start one on a shared default port.
            f"registry: {{url: '127.0.0.1:{self.registry_port}', embedded: false}}\n"
            + self.extra_config
        )

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mirror", "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.dir,
        )

    def sync(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("sync", *args)

    def start(self, *args: str) -> subprocess.Popen[str]:
        """A background `mirror` process. Its output goes to a log file, never to a pipe:
        an undrained pipe blocks gunicorn's access log after 64 KiB."""
        log = self.dir / f"{args[0]}-{len(self.procs)}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mirror", "-c", str(self.config), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=self.dir,
                start_new_session=True,
            )
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def serve(self) -> subprocess.Popen[str]:
        proc = self.start("serve", "--bind", f"127.0.0.1:{self.port}", "--workers", "2")
        wait_http(self.base_url + "/healthz")
        return proc


@pytest.fixture
def mirror(tmp_path: Path, upstream: Upstream) -> Iterator[Mirror]:
    m = Mirror(tmp_path / "mirror", upstream, free_port())
    m.write()
    yield m
    for proc in m.procs:
        stop_process(proc)
