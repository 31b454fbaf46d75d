"""Images end to end through the CLI: sync into the embedded registry the code starts, serve the
node configs, then a real containerd pulls by original names with the upstream gone."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port, stop_process, wait_http
from tests.fixtures.registry import (
    RegistryProcess,
    manifest_digest,
    populate_kubeadm,
    start_registry,
    write_registries_conf,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("containerd") and shutil.which("ctr") and shutil.which("skopeo")),
        reason="containerd, ctr and skopeo are needed",
    ),
]
VERSION = "v1.28.4"
EXTRA = ["docker.io/calico/node:v3.26.1", "quay.io/cilium/operator:v1.14.0"]


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[RegistryProcess, dict[str, str]]]:
    registry = start_registry(tmp_path / "upstream")
    try:
        digests = populate_kubeadm(registry, VERSION, tmp_path / "build", extra=EXTRA)
        yield registry, digests
    finally:
        registry.stop()


def run_mirror(cfg: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mirror", "-c", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cfg.parent,
    )


@pytest.fixture
def containerd() -> Iterator[tuple[str, Path]]:
    # Socket paths must stay under 108 bytes: a short /tmp dir, not pytest's tmp_path.
    work = Path(tempfile.mkdtemp(prefix="ctrd-", dir="/tmp"))
    sock = work / "c.sock"
    config = work / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{work}/root"\nstate = "{work}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n'
    )
    with (work / "containerd.log").open("w") as log:
        proc = subprocess.Popen(
            ["containerd", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None, (work / "containerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "containerd did not start"
            time.sleep(0.1)
        yield str(sock), work
    finally:
        stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)


def test_sync_serve_and_containerd_pulls_by_original_name(
    tmp_path: Path, upstream: tuple[RegistryProcess, dict[str, str]], containerd
) -> None:
    registry, digests = upstream
    local = f"127.0.0.1:{free_port()}"
    web = free_port()
    (tmp_path / "repos").mkdir()
    (tmp_path / "images.txt").write_text("# extras\n" + "\n".join(EXTRA) + "\n")
    conf = write_registries_conf(tmp_path / "registries.conf", registry)
    cfg = tmp_path / "mirror.yaml"
    cfg.write_text(
        f"base_url: http://127.0.0.1:{web}\nkubernetes_versions: [{VERSION}]\n"
        f"registry: {{url: '{local}', embedded: true}}\n"
        f"upstream: {{registries_conf: {conf}}}\nplatforms: all\n"
    )

    # 1. A sync from "cron" with nothing running: it starts the registry for the duration.
    proc = run_mirror(cfg, "sync", "--only", "images")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{local}/v2/", timeout=2)  # ...and stopped it afterwards

    mirrored = run_mirror(cfg, "images", "list", "--mirrored").stdout.split()
    assert f"{local}/registry.k8s.io/coredns:v1.10.1" in mirrored
    assert f"{local}/docker.io/calico/node:v3.26.1" in mirrored

    # 2. The web service starts the registry again and hands out node configs.
    with (tmp_path / "serve.log").open("w") as log:
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mirror",
                "-c",
                str(cfg),
                "serve",
                "--bind",
                f"127.0.0.1:{web}",
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=tmp_path,
        )
    try:
        wait_http(f"http://127.0.0.1:{web}/healthz")
        wait_http(f"http://{local}/v2/")
        registry.stop()  # the upstream is gone from here on

        # Every kubeadm name (coredns under both) and every images.txt entry, upstream digest.
        for ref, digest in digests.items():
            assert manifest_digest(f"{local}/{ref}") == digest, ref
        assert (
            manifest_digest(f"{local}/registry.k8s.io/coredns:v1.10.1")
            == (digests["registry.k8s.io/coredns/coredns:v1.10.1"])
        )
        listing = requests.get(f"http://127.0.0.1:{web}/images.txt", timeout=5).text
        assert f"docker.io/calico/node:v3.26.1 {local}/docker.io/calico/node:v3.26.1@" in listing
        coredns = digests["registry.k8s.io/coredns/coredns:v1.10.1"]
        for name in ("registry.k8s.io/coredns/coredns", "registry.k8s.io/coredns"):
            line = f"registry.k8s.io/coredns/coredns:v1.10.1 {local}/{name}:v1.10.1@{coredns}"
            assert line in listing.splitlines()

        sock, work = containerd
        hosts_dir = work / "certs.d"
        for host in ("docker.io", "quay.io", "registry.k8s.io"):
            resp = requests.get(
                f"http://127.0.0.1:{web}/containerd/certs.d/{host}/hosts.toml", timeout=5
            )
            assert resp.status_code == 200
            (hosts_dir / host).mkdir(parents=True)
            (hosts_dir / host / "hosts.toml").write_text(resp.text)
        for ref in [
            "docker.io/calico/node:v3.26.1",
            "quay.io/cilium/operator:v1.14.0",
            "registry.k8s.io/coredns/coredns:v1.10.1",
            "registry.k8s.io/pause:3.9",
        ]:
            pull = subprocess.run(
                [
                    "ctr",
                    "--address",
                    sock,
                    "images",
                    "pull",
                    "--hosts-dir",
                    str(hosts_dir),
                    "--snapshotter",
                    "native",
                    ref,
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert pull.returncode == 0, f"{ref}: {pull.stdout[-1500:]}{pull.stderr[-1500:]}"
        images = subprocess.run(
            ["ctr", "--address", sock, "images", "ls", "-q"], capture_output=True, text=True
        ).stdout.split()
        assert "docker.io/calico/node:v3.26.1" in images
        assert "registry.k8s.io/pause:3.9" in images
    finally:
        stop_process(serve)
    # serve stopped the registry it started
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{local}/v2/", timeout=2)
