"""Mirrors of mirrors over TLS: A serves its web service and its embedded registry over
HTTPS with its generated CA (`tls: {mode: generate}`, base_url https://...).

B (`upstream_mirror: https://...`, `upstream_mirror_ca: A's ca.crt`) verifies all of A with
that CA and nothing else: the index, repos, keys, files and charts (libcurl, `sslcacert`),
the registry API digest reads (libcurl) and skopeo's copies (`--src-cert-dir`). The CA is
fresh, so no system trust on this machine knows it: a copy or read that did not use it
fails. B itself serves plain HTTP; C, serving TLS with a CA of its own, mirrors A too (every
tier on TLS). Everything is real, as in tests/test_downstream.py (whose fixtures build A
here): rpmbuild'd signed repos, distribution registries driven with skopeo, nginx, dnf.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from mirror.web.nginx import find_nginx
from tests.conftest import Upstream
from tests.fixtures.dnfclient import DnfRoot
from tests.test_downstream import (
    IMAGES,
    Node,
    _check_images_files_charts,
    _check_repos,
    _noop_resync_costs_one_request,
    build_tiers,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("skopeo") and shutil.which("dnf") and find_nginx()),
        reason="skopeo, dnf and nginx are needed",
    ),
]


@dataclass
class TlsNode(Node):
    """A mirror node serving its web service and embedded registry with its generated CA."""

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.dir / "data" / "tls" / "ca" / "ca.crt"

    @property
    def verify(self) -> bool | str:
        return str(self.ca)

    def write(self, **values: object) -> None:
        super().write(tls={"mode": "generate"}, **values)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{self.base_url}/healthz", verify=self.verify, timeout=2)
                requests.get(f"https://{self.registry}/v2/", verify=self.verify, timeout=2)
                return
            except requests.RequestException:
                assert time.monotonic() < deadline, "TLS node did not come up"
                time.sleep(0.2)


def _verified_digest(ref: str, ca: Path) -> str:
    """The digest of `ref`'s manifest as skopeo reads it verifying TLS with `ca`."""
    raw = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--raw",
            "--no-tags",
            "--cert-dir",
            str(ca.parent),
            f"docker://{ref}",
        ],
        capture_output=True,
        timeout=60,
    )
    assert raw.returncode == 0, raw.stderr.decode()
    return "sha256:" + hashlib.sha256(raw.stdout).hexdigest()


def _published(node: Node) -> list[Path]:
    """What a sync published on `node`: repos, files, charts, image records."""
    data = node.dir / "data"
    found = [p for sub in ("repos", "files", "charts") for p in (data / sub).rglob("*")]
    return found + list((data / "state" / "images").glob("*.json"))


def test_downstream_of_a_tls_upstream_mirror_verifies_it_with_its_ca(
    tmp_path: Path, upstream: Upstream
) -> None:
    with build_tiers(tmp_path, upstream, TlsNode(tmp_path / "a")) as t:
        a, b = t.a, t.b
        assert isinstance(a, TlsNode) and a.base_url.startswith("https://")
        # A's registry speaks TLS only, with a certificate no system trust here knows.
        untrusted = subprocess.run(
            ["curl", "-sS", f"https://{a.registry}/v2/"], capture_output=True, text=True
        )
        assert untrusted.returncode == 60, untrusted.stderr

        # 1. Without upstream_mirror_ca: one line naming the certificate problem, exit 1,
        # nothing published.
        b.write(upstream_mirror=a.base_url)
        refused = b.run("sync")
        assert refused.returncode == 1, refused.stderr[-3000:]
        # (the log line and the summary's repeat of it: one message)
        said = {
            line.split(" ERROR ", 1)[-1].strip()
            for line in refused.stderr.splitlines()
            if "certificate" in line
        }
        assert said == {
            f"upstream_mirror {a.base_url}: cannot fetch {a.base_url}/downstream.json: "
            "TLS certificate not trusted"
        }, refused.stderr
        assert _published(b) == []

        # 2. With A's CA, B takes everything from A, verifying web service and registry.
        b.write(upstream_mirror=a.base_url, upstream_mirror_ca=str(a.ca))
        registry_log = a.dir / "data" / "registry" / "registry.log"
        mark = registry_log.stat().st_size
        first = b.sync()
        assert "upstream_mirror: 1 ok (1 changed" in first.stderr, first.stderr
        assert f"images: {len(IMAGES)} ok ({len(IMAGES)} changed" in first.stderr, first.stderr
        # The copies came from A's registry (its log), which B's registries.conf names as
        # verified TLS: skopeo verified A's certificate with the CA (no insecure fallback).
        assert '"GET /v2/' in registry_log.read_bytes()[mark:].decode(errors="replace")
        conf = (b.dir / "data/state/downstream/registries.conf").read_text()
        assert f'location = "{a.registry}/' in conf
        assert "insecure = false" in conf and "insecure = true" not in conf
        b.serve()
        _check_repos(t)  # dnf from B: gpgcheck=1, repo_gpgcheck=1
        _check_images_files_charts(t)  # every image on B has A's digest
        _noop_resync_costs_one_request(t)  # one request at A: the index, 304

        # 3. Every tier on TLS: C (its own generated CA) mirrors A. One skopeo copy then
        # verifies A with A's CA (--src-cert-dir) and pushes to C with C's (--dest-cert-dir).
        c = TlsNode(t.work / "c")
        t.stops.append(c.stop)
        c.write(upstream_mirror=a.base_url, upstream_mirror_ca=str(a.ca))
        c.sync()
        c.serve()
        assert c.ca.read_bytes() != a.ca.read_bytes()
        for ref in IMAGES:
            assert _verified_digest(f"{c.registry}/{ref}", c.ca) == _verified_digest(
                f"{a.registry}/{ref}", a.ca
            )
        repofile = requests.get(f"{c.base_url}/repofiles/mirror.repo", verify=c.verify).text
        assert f"baseurl={c.base_url}/repos/kubernetes/" in repofile
        assert "repo_gpgcheck=1" in repofile and "sslverify=1" in repofile
        # The node path of C's CA (bootstrap.sh puts it there) is this test's copy of it.
        repofile = re.sub(r"(?m)^sslcacert=.*$", f"sslcacert={c.ca}", repofile)
        with DnfRoot(t.work / "dnf-c") as dnf:
            (dnf.reposdir / "mirror.repo").write_text(repofile)
            dnf.install("kubeadm-1.28.2")
            assert "kubeadm" in dnf.installed_names()
