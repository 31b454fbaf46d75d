"""TLS web service end to end: `mirror serve` over HTTPS with a generated CA, pinned by a node.

Real parts only: the fixture upstream synced by the CLI, `mirror serve` (nginx in front, and
gunicorn alone), curl as the node runs it (the pinning command from `mirror status`, run as
printed but with `sudo bash` replaced by a run into a throwaway root), bootstrap.sh driving
real dnf and rpm over HTTPS with `sslverify=1` and `sslcacert`, and clients without the CA
that must be refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import requests

from mirror import tls
from mirror.config import load_config
from tests import test_bootstrap
from tests.conftest import Mirror, free_port, stop_process
from tests.fixtures.dnfclient import DnfRoot
from tests.test_bootstrap import K8S, files_under, rpm_names
from tests.test_status import SCHEMA

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("curl"), reason="curl is needed"),
]
dnf_cache = test_bootstrap.dnf_cache  # the fixture: a short cachedir, its gpg-agents stopped
ANCHOR = "etc/pki/ca-trust/source/anchors/airgap-mirror-ca.crt"


class TlsMirror(Mirror):
    """The conftest mirror with tls.mode generate and an https:// base_url."""

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def write(self) -> None:
        # The embedded registry too (serve starts it, with TLS): the node files then name
        # the registry's CA, and bootstrap's containerd step needs it installed.
        super().write()
        text = self.config.read_text()
        self.config.write_text(text.replace("embedded: false", "embedded: true"))

    @property
    def ca(self) -> Path:
        return self.data / "tls" / "ca" / "ca.crt"

    def serve_tls(self, frontend: str = "auto", port: int | None = None) -> str:
        port = port or self.port
        env_args = ("--frontend", frontend)
        self.start("serve", "--bind", f"127.0.0.1:{port}", "--workers", "2", *env_args)
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:  # the CA exists once serve has started; then verify with it
            try:
                if self.ca.exists() and requests.get(f"{url}/healthz", verify=self.ca, timeout=2):
                    return url
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, self.logs[self.procs[-1].pid].read_text()[-3000:]
            time.sleep(0.2)


@pytest.fixture
def tls_mirror(tmp_path: Path, upstream) -> Iterator[TlsMirror]:  # noqa: ANN001
    m = TlsMirror(
        tmp_path / "mirror", upstream, free_port(), extra_config="tls: {mode: generate}\n"
    )
    m.write()
    yield m
    for proc in m.procs:
        stop_process(proc)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=30)


def pinned_command(mirror: TlsMirror, pin: Path, root: Path, cache: Path) -> str:
    """`mirror status --json`'s bootstrap command, as printed, but into a throwaway root:
    only the CA's place and `sudo bash -s --` are replaced (no root, no sudo here)."""
    proc = mirror.run("status", "--json")
    doc = json.loads(proc.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["tls"]["ca_sha256"] == tls.file_sha256(mirror.ca)
    command = doc["commands"]["bootstrap"]
    assert command.startswith(f"curl -fsSk {mirror.base_url}/ca.crt -o /tmp/mirror-ca.crt && ")
    assert "sudo bash -s -- --ca-file /tmp/mirror-ca.crt --ca-sha256" in command
    assert " -k" not in command.split("&&", 1)[1]  # only the first fetch skips verification
    node = (
        f"bash -s -- --root {root} --releasever 9 --dnf-opt --noplugins "
        f"--dnf-opt --setopt=cachedir={cache}"
    )
    return command.replace("/tmp/mirror-ca.crt", str(pin)).replace("sudo bash -s --", node)


def test_pinned_bootstrap_over_https(
    tls_mirror: TlsMirror, tmp_path: Path, dnf_cache: Path
) -> None:
    mirror = tls_mirror
    proc = mirror.sync()
    assert proc.returncode == 0, proc.stderr[-3000:]
    url = mirror.serve_tls()
    cfg = load_config(mirror.config)

    # /ca.crt is the CA on disk, and the status shows its hashes.
    served = curl("-fk", f"{url}/ca.crt")
    assert served.returncode == 0 and served.stdout == mirror.ca.read_text()
    status = mirror.run("status").stdout
    assert f"sha256 {tls.file_sha256(mirror.ca)}" in status
    assert "tls: pin it on a node: curl -fsSk" in status
    metrics = requests.get(f"{url}/metrics", verify=mirror.ca, timeout=10).text
    assert 'mirror_tls_certificate_expiry_timestamp_seconds{certificate="ca"}' in metrics
    assert 'mirror_tls_certificate_expiry_timestamp_seconds{certificate="server"}' in metrics
    page = requests.get(f"{url}/", verify=mirror.ca, timeout=10).text
    assert tls.file_sha256(mirror.ca) in page and 'id="pin-command"' in page

    # A client without the CA is refused (curl: 60, peer certificate not trusted).
    refused = curl("-f", f"{url}/bootstrap.sh")
    assert refused.returncode == 60, refused.stderr
    # A .repo file as served: sslverify on, pointing at the node's copy of the CA.
    repo = curl("-f", "--cacert", str(mirror.ca), f"{url}/repofiles/mirror.repo").stdout
    assert "sslverify=1\nsslcacert=/etc/pki/ca-trust/source/anchors/airgap-mirror-ca.crt" in repo
    assert f"baseurl={url}/repos/kubernetes/" in repo

    # A wrong pinned hash stops bootstrap.sh before it changes anything.
    pin = tmp_path / "pin" / "mirror-ca.crt"
    pin.parent.mkdir()
    wrong_root = tmp_path / "wrong"
    wrong_root.mkdir()
    good = pinned_command(mirror, pin, wrong_root, dnf_cache)
    sha = tls.file_sha256(mirror.ca)
    wrong = "0" * 64
    bad = subprocess.run(
        [
            "bash",
            "-c",
            good.replace(f"--ca-sha256 {sha}", f"--ca-sha256 {wrong}")
            + f" --kubernetes-version {K8S}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"has sha256 {sha}, not the pinned {wrong}; nothing was changed" in bad.stderr
    assert "[step] repo file" not in bad.stdout
    assert not files_under(wrong_root)
    # ...and so does a CA that is not the mirror's, even with no --ca-sha256 (the script
    # carries the hash of the CA it was served with).
    other = tmp_path / "other"
    other.mkdir()
    (other / "mirror.yaml").write_text("base_url: https://x.example\ntls: {mode: generate}\n")
    other_ca = tls.ensure(load_config(other / "mirror.yaml"))
    assert other_ca is not None
    script = curl("-f", "--cacert", str(mirror.ca), f"{url}/bootstrap.sh").stdout
    proc = subprocess.run(
        [
            "bash",
            "-s",
            "--",
            "--root",
            str(wrong_root),
            "--kubernetes-version",
            K8S,
            "--ca-file",
            str(other_ca.ca),
        ],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "not the pinned" in proc.stderr, proc.stderr
    assert not files_under(wrong_root)

    # The pinning command as printed: CA fetched and checked, bootstrap.sh fetched with it,
    # then every step verifies TLS with it (dnf through sslcacert, curl through --cacert).
    root = tmp_path / "node"
    root.mkdir()
    command = [
        "bash",
        "-c",
        pinned_command(mirror, pin, root, dnf_cache) + f" --kubernetes-version {K8S}",
    ]
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    assert f"{pin}: OK" in run.stdout  # sha256sum -c
    assert "[step] mirror CA" in run.stdout
    assert "skipped (--root): update-ca-trust extract" in run.stdout
    names = rpm_names(root)
    assert {f"kubeadm-{K8S}", f"kubelet-{K8S}", "containerd.io-1.6.31"} <= names
    assert any(n.startswith("gpg-pubkey-") for n in names)
    ca_pem = mirror.ca.read_bytes()
    registry = cfg.registry.url
    for path in (
        ANCHOR,
        f"etc/containerd/certs.d/{registry}/ca.crt",
        f"etc/containers/certs.d/{registry}/ca.crt",
    ):
        assert (root / path).read_bytes() == ca_pem, path
    assert (root / "etc/yum.repos.d/mirror.repo").read_text() == repo
    certs = root / "etc/containerd/certs.d"
    own = (certs / registry / "hosts.toml").read_text()
    assert f'[host."https://{registry}"]' in own
    for host in ("docker.io", registry):
        assert (
            f'ca = "/etc/containerd/certs.d/{registry}/ca.crt"'
            in (certs / host / "hosts.toml").read_text()
        )
    # Run again: the CA step, like every other, changes nothing the second time.
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-3000:]
    assert "unchanged: " + str(root / ANCHOR) in again.stdout
    assert "no changes" in again.stdout.splitlines()[-1], again.stdout[-3000:]

    # dnf itself: the same served .repo with sslcacert at the node's copy installs; without
    # the CA dnf is refused (the mirror's certificate is not in this machine's trust).
    for with_ca in (True, False):
        dnf = DnfRoot(tmp_path / f"dnf-{with_ca}")
        try:
            text = repo.replace(
                "/etc/pki/ca-trust/source/anchors/airgap-mirror-ca.crt", str(root / ANCHOR)
            )
            if not with_ca:
                text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("sslcacert="))
            (dnf.reposdir / "mirror.repo").write_text(text + "\n")
            (dnf.root / "etc/dnf/vars").mkdir(parents=True)
            (dnf.root / "etc/dnf/vars/kubernetes_minor").write_text("v1.28\n")
            got = dnf.install(
                f"kubectl-{K8S}",
                "--disablerepo=*",
                "--enablerepo=kubernetes",
                "--disableexcludes=kubernetes",
                check=False,
            )
            if with_ca:
                assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]
                assert f"kubectl-{K8S}" in rpm_names(dnf.root)
            else:
                assert got.returncode != 0
                assert "SSL" in got.stdout + got.stderr or "certificate" in got.stdout + got.stderr
        finally:
            dnf.close()


def test_gunicorn_alone_serves_https(tls_mirror: TlsMirror) -> None:
    """Without nginx in front, gunicorn itself presents the certificate."""
    url = tls_mirror.serve_tls(frontend="gunicorn")
    ok = curl("-f", "--cacert", str(tls_mirror.ca), f"{url}/ca.crt")
    assert ok.returncode == 0 and ok.stdout == tls_mirror.ca.read_text()
    refused = curl("-f", f"{url}/healthz")
    assert refused.returncode == 60, refused.stderr


def presented(port: int) -> str:
    """The certificate a TLS server on `port` presents (PEM); "" while it is not listening
    (the registry being restarted)."""
    import ssl

    try:
        return ssl.get_server_certificate(("127.0.0.1", port), timeout=5)
    except OSError:
        return ""


def test_running_serve_renews_a_certificate_due_and_keeps_the_ca(tls_mirror: TlsMirror) -> None:
    """Time passing is simulated by putting a certificate with 17 days left on disk (as
    mirror.tls would have made 380 days ago); SIGHUP asks serve to check at once, as the
    hourly check would. nginx reloads, the embedded registry is restarted: both present the
    new certificate."""
    import datetime as dt
    import signal

    from cryptography import x509

    url = tls_mirror.serve_tls(frontend="nginx")
    cfg = load_config(tls_mirror.config)
    files = tls.server_files(cfg)
    assert files is not None
    ca_pem = tls_mirror.ca.read_bytes()
    first = files.cert.read_text()
    registry = tls_mirror.registry_port
    for port in (tls_mirror.port, registry):  # nginx and the embedded registry
        assert presented(port) == first
    files.cert.unlink()
    tls.ensure(cfg, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=380))
    due = files.cert.read_text()
    assert due != first
    tls_mirror.procs[-1].send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while files.cert.read_text() == due or {presented(tls_mirror.port), presented(registry)} != {
        files.cert.read_text()
    }:
        assert time.monotonic() < deadline, tls_mirror.logs[tls_mirror.procs[-1].pid].read_text()
        time.sleep(0.2)
    renewed = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert renewed.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=390)
    assert tls_mirror.ca.read_bytes() == ca_pem
    assert requests.get(f"{url}/healthz", verify=tls_mirror.ca, timeout=5).status_code == 200
    assert tls_mirror.procs[-1].poll() is None  # SIGHUP did not stop it
