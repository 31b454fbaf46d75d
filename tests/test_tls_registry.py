"""The embedded registry over TLS with the generated CA, end to end through the CLI.

A real upstream distribution registry (plain HTTP, redirected by registries.conf), `mirror sync`
pushing into the embedded registry it starts with TLS (skopeo verifying with the CA), then
`mirror serve`: real skopeo and a real containerd (`ctr --hosts-dir`, the served hosts.toml)
pull over verified TLS; clients without the CA (curl, skopeo, containerd) are refused.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port, stop_process
from tests.fixtures.registry import (
    RegistryProcess,
    push_images,
    start_registry,
    write_registries_conf,
)
from tests.test_images_e2e import containerd, run_mirror  # noqa: F401 - containerd: a fixture

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("containerd") and shutil.which("ctr") and shutil.which("skopeo")),
        reason="containerd, ctr and skopeo are needed",
    ),
]
IMAGES = ["docker.io/calico/node:v3.26.1", "quay.io/cilium/operator:v1.14.0"]


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[RegistryProcess, dict[str, str]]]:
    registry = start_registry(tmp_path / "upstream")
    try:
        yield registry, push_images(registry, IMAGES, tmp_path / "build")
    finally:
        registry.stop()


def inspect_digest(ref: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["skopeo", "inspect", "--raw", *args, f"docker://{ref}"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def ctr_pull(sock: str, hosts_dir: Path, ref: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ctr", "--address", sock, "images", "pull", "--hosts-dir", str(hosts_dir)]
        + ["--snapshotter", "native", ref],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_tls_registry_pulls_need_the_ca(
    tmp_path: Path,
    upstream: tuple[RegistryProcess, dict[str, str]],
    containerd: tuple[str, Path],  # noqa: F811
) -> None:
    registry, digests = upstream
    local = f"127.0.0.1:{free_port()}"
    web = f"https://127.0.0.1:{free_port()}"
    (tmp_path / "repos").mkdir()
    (tmp_path / "images.txt").write_text("\n".join(IMAGES) + "\n")
    conf = write_registries_conf(tmp_path / "registries.conf", registry)
    cfg = tmp_path / "mirror.yaml"
    cfg.write_text(
        f"base_url: {web}\nregistry: {{url: '{local}', embedded: true}}\n"
        f"upstream: {{registries_conf: {conf}}}\nplatforms: all\ntls: {{mode: generate}}\n"
    )
    ca = tmp_path / "data" / "tls" / "ca" / "ca.crt"

    # 1. sync starts the embedded registry with TLS and pushes verifying it with the CA.
    proc = run_mirror(cfg, "sync", "--only", "images")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ca.is_file()

    with (tmp_path / "serve.log").open("w") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "mirror", "-c", str(cfg), "serve"]
            + ["--bind", web.removeprefix("https://"), "--workers", "1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{web}/healthz", verify=ca, timeout=2)
                requests.get(f"https://{local}/v2/", verify=ca, timeout=2)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.2)
        registry.stop()  # the upstream is gone from here on

        # 2. The registry speaks only TLS, and only clients with the CA get in.
        refused = subprocess.run(
            ["curl", "-sS", f"https://{local}/v2/"], capture_output=True, text=True, timeout=30
        )
        assert refused.returncode == 60, refused.stderr  # peer certificate not trusted
        plain = subprocess.run(
            ["curl", "-sS", f"http://{local}/v2/"], capture_output=True, text=True, timeout=30
        )
        assert "Client sent an HTTP request to an HTTPS server" in plain.stdout
        ref = f"{local}/docker.io/calico/node:v3.26.1"
        no_ca = inspect_digest(ref)
        assert no_ca.returncode != 0
        assert "x509: certificate signed by unknown authority" in no_ca.stderr
        with_ca = inspect_digest(ref, "--cert-dir", str(ca.parent))
        assert with_ca.returncode == 0, with_ca.stderr
        digest = subprocess.run(
            ["skopeo", "manifest-digest", "/dev/stdin"],
            input=with_ca.stdout,
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert digest == digests["docker.io/calico/node:v3.26.1"]

        # 3. containerd with the served hosts.toml and the served CA. The hosts.toml names
        # the CA at its node path (/etc/containerd/certs.d/<registry>/ca.crt, where
        # bootstrap.sh --ca-file puts it); this test's hosts dir stands in for that directory.
        sock, work = containerd
        hosts_dir = work / "certs.d"
        (hosts_dir / local).mkdir(parents=True)
        served_ca = requests.get(f"{web}/ca.crt", verify=ca, timeout=5)
        assert served_ca.content == ca.read_bytes()
        (hosts_dir / local / "ca.crt").write_bytes(served_ca.content)
        tomls = {}
        for host in ("docker.io", "quay.io"):
            resp = requests.get(f"{web}/containerd/certs.d/{host}/hosts.toml", verify=ca, timeout=5)
            assert resp.status_code == 200
            assert f'[host."https://{local}/v2/{host}"]' in resp.text
            assert f'ca = "/etc/containerd/certs.d/{local}/ca.crt"' in resp.text
            assert "skip_verify" not in resp.text
            tomls[host] = resp.text
            (hosts_dir / host).mkdir()
            (hosts_dir / host / "hosts.toml").write_text(
                resp.text.replace("/etc/containerd/certs.d", str(hosts_dir))
            )
        pull = ctr_pull(sock, hosts_dir, "docker.io/calico/node:v3.26.1")
        assert pull.returncode == 0, pull.stdout[-1500:] + pull.stderr[-1500:]
        images = subprocess.run(
            ["ctr", "--address", sock, "images", "ls", "-q"], capture_output=True, text=True
        ).stdout.split()
        assert "docker.io/calico/node:v3.26.1" in images

        # By its mirrored name (how kubeadm's images and the pause image are pulled): the
        # registry's own hosts.toml says https with the CA (containerd would try plain http
        # for 127.0.0.1 without one).
        own = requests.get(f"{web}/containerd/certs.d/{local}/hosts.toml", verify=ca, timeout=5)
        assert own.status_code == 200
        assert tomllib.loads(own.text)["host"] == {
            f"https://{local}": {
                "capabilities": ["pull", "resolve"],
                "ca": f"/etc/containerd/certs.d/{local}/ca.crt",
            }
        }
        (hosts_dir / local / "hosts.toml").write_text(
            own.text.replace("/etc/containerd/certs.d", str(hosts_dir))
        )
        pull = ctr_pull(sock, hosts_dir, f"{local}/quay.io/cilium/operator:v1.14.0")
        assert pull.returncode == 0, pull.stdout[-1500:] + pull.stderr[-1500:]

        # Without the CA line containerd is refused by the same registry.
        bare = "\n".join(
            ln for ln in tomls["quay.io"].splitlines() if not ln.strip().startswith("ca =")
        )
        (hosts_dir / "quay.io" / "hosts.toml").write_text(bare + "\n")
        refused_pull = ctr_pull(sock, hosts_dir, "quay.io/cilium/operator:v1.14.0")
        assert refused_pull.returncode != 0
        assert "x509" in refused_pull.stdout + refused_pull.stderr

        # 4. CRI-O's registries.conf keeps verification on.
        crio = requests.get(f"{web}/crio/registries.conf", verify=ca, timeout=5).text
        assert "insecure = false" in crio and "insecure = true" not in crio
    finally:
        stop_process(serve)
