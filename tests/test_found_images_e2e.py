"""Images found in a mirrored manifest and a mirrored chart land in the registry with the
rest, and a real containerd pulls one by its original name through the served hosts.toml
(upstreams stopped). One `mirror sync`: files and charts first, then images."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import free_port, stop_process, wait_http
from tests.fixtures import UpstreamServer
from tests.fixtures.helmrepo import HelmRepo
from tests.fixtures.registry import (
    manifest_digest,
    push_images,
    start_registry,
    write_registries_conf,
)
from tests.test_images_e2e import containerd, run_mirror  # noqa: F401 - fixture

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("containerd") and shutil.which("ctr") and shutil.which("skopeo")),
        reason="containerd, ctr and skopeo are needed",
    ),
]
IN_MANIFEST = "quay.io/calico/node:v3.28.2"
IN_CHART = "ghcr.io/example/web:1.2.0"
MANIFEST = f"""apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: calico-node}}
spec:
  template:
    spec:
      containers:
        - {{name: node, image: {IN_MANIFEST}}}
"""


def test_found_images_are_mirrored_and_pulled(tmp_path: Path, containerd) -> None:  # noqa: F811
    registry = start_registry(tmp_path / "upstream-registry")
    try:
        digests = push_images(registry, [IN_MANIFEST, IN_CHART], tmp_path / "build")
        web_root = tmp_path / "web"
        (web_root / "manifests").mkdir(parents=True)
        (web_root / "manifests" / "calico.yaml").write_text(MANIFEST)
        charts = HelmRepo(web_root / "charts" / "example")
        charts.add(
            "web",
            "1.2.0",
            values={"image": {"registry": "ghcr.io", "repository": "example/web", "tag": "1.2.0"}},
        )
        charts.write_index()
        local, web = f"127.0.0.1:{free_port()}", free_port()
        (tmp_path / "repos").mkdir()
        conf = write_registries_conf(
            tmp_path / "registries.conf", registry, ("quay.io", "ghcr.io", "docker.io")
        )
        cfg = tmp_path / "mirror.yaml"
        with UpstreamServer(web_root) as server:
            cfg.write_text(
                f"base_url: http://127.0.0.1:{web}\nimages_file: null\n"
                f"registry: {{url: '{local}', embedded: true}}\n"
                f"upstream: {{registries_conf: {conf}}}\nplatforms: all\n"
                f"files:\n  - {{url: '{server.url}/manifests/calico.yaml', path: calico.yaml}}\n"
                f"charts:\n  - {{repo: '{server.url}/charts/example', name: web,"
                " versions: ['1.2.0']}\n"
            )
            proc = run_mirror(cfg, "sync")
            assert proc.returncode == 0, proc.stderr[-3000:]
        listed = run_mirror(cfg, "images", "list", "--why").stdout
        assert f"{IN_MANIFEST}  (files:calico.yaml)" in listed
        assert f"{IN_CHART}  (charts:web-1.2.0 (values.yaml))" in listed
    finally:
        registry.stop()
    _pull_through_mirror(tmp_path, cfg, local, web, digests, containerd)


def _pull_through_mirror(
    tmp_path: Path, cfg: Path, local: str, web: int, digests: dict[str, str], ctrd: Any
) -> None:
    """`mirror serve` (with the upstreams gone), then containerd pulls the chart's image by
    its original name through the hosts.toml the mirror serves for ghcr.io."""
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
        for ref, digest in digests.items():
            assert manifest_digest(f"{local}/{ref}") == digest, ref
        sock, work = ctrd
        hosts_dir = work / "certs.d"
        host = IN_CHART.split("/", 1)[0]
        resp = requests.get(
            f"http://127.0.0.1:{web}/containerd/certs.d/{host}/hosts.toml", timeout=5
        )
        assert resp.status_code == 200, f"no hosts.toml for {host}"
        (hosts_dir / host).mkdir(parents=True)
        (hosts_dir / host / "hosts.toml").write_text(resp.text)
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
                IN_CHART,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert pull.returncode == 0, f"{pull.stdout[-1500:]}{pull.stderr[-1500:]}"
    finally:
        stop_process(serve)
