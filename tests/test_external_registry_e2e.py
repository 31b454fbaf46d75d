"""An external, Harbor-style registry for real: a second distribution registry started here with
htpasswd auth and TLS from a throwaway CA. `mirror registry check` and `mirror sync` push under
a path prefix (nested and flat), skopeo and a real containerd pull back through the served node
files, and a wrong password or an untrusted CA each fail with one clear line."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.fixtures.registry import (
    RegistryProcess,
    htpasswd_auth,
    push_images,
    start_registry,
    write_registries_conf,
)
from tests.fixtures.testca import CertSet, make_test_ca
from tests.fixtures.tokenserver import TokenServer
from tests.test_images_e2e import containerd  # noqa: F401 - the fixture

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("skopeo") and shutil.which("htpasswd")),
        reason="skopeo and htpasswd (apache2-utils) are needed",
    ),
]
IMAGES = ["docker.io/calico/node:v3.26.1", "quay.io/cilium/operator:v1.14.0"]
USER, PASSWORD = "mirror-bot", "s3cret-Pa55"
CERTS_DIR = "/etc/containerd/certs.d"


@dataclass(frozen=True)
class Harbor:
    registry: RegistryProcess
    ca: CertSet
    other_ca: CertSet  # a CA that did not sign the registry's certificate
    upstream: RegistryProcess
    digests: dict[str, str]


@pytest.fixture(scope="module")
def harbor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harbor]:
    root = tmp_path_factory.mktemp("harbor")
    ca = make_test_ca(root / "pki", "harbor")
    other = make_test_ca(root / "pki", "other")
    upstream = start_registry(root / "upstream")
    target = start_registry(
        root / "harbor", auth=htpasswd_auth(root / "auth", USER, PASSWORD), tls=ca
    )
    try:
        digests = push_images(upstream, IMAGES, root / "build")
        yield Harbor(target, ca, other, upstream, digests)
    finally:
        target.stop()
        upstream.stop()


def authfile(path: Path, host: str, password: str = PASSWORD) -> Path:
    token = base64.b64encode(f"{USER}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path


def mirror_config(tmp_path: Path, harbor: Harbor, **registry: object) -> Path:
    (tmp_path / "repos").mkdir(exist_ok=True)
    (tmp_path / "images.txt").write_text("\n".join(IMAGES) + "\n")
    write_registries_conf(tmp_path / "registries.conf", harbor.upstream)
    registry.setdefault("authfile", str(authfile(tmp_path / "auth.json", harbor.registry.host)))
    registry.setdefault("ca_file", str(harbor.ca.ca_cert))
    if registry["ca_file"] is None:
        del registry["ca_file"]
    raw = {
        "base_url": "http://127.0.0.1:8080",
        "images_file": "./images.txt",
        "platforms": "all",
        "registry": {"embedded": False, **registry},
        "upstream": {"registries_conf": "./registries.conf"},
    }
    (tmp_path / "mirror.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "mirror.yaml"


def run_mirror(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mirror", "-c", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cfg.parent,
    )


def pulled_digest(harbor: Harbor, name: str, cert_dir: Path) -> str:
    """skopeo as a client: credentials and the CA, nothing --tls-verify=false."""
    (cert_dir / "ca.crt").parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(harbor.ca.ca_cert, cert_dir / "ca.crt")
    proc = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--raw",
            "--no-tags",
            "--creds",
            f"{USER}:{PASSWORD}",
            "--cert-dir",
            str(cert_dir),
            f"docker://{name}",
        ],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return "sha256:" + hashlib.sha256(proc.stdout).hexdigest()


def sync_failures(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines of `mirror sync`'s failure summary."""
    lines = proc.stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("mirror sync: "))
    return [line.strip() for line in lines[start + 1 :] if line.startswith("  ")]


def ctr_pull(sock: str, hosts_dir: Path, ref: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ctr",
            "--address",
            sock,
            "images",
            "pull",
            "--hosts-dir",
            str(hosts_dir),
            "--user",
            f"{USER}:{PASSWORD}",
            "--snapshotter",
            "native",
            ref,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def install_node_files(www: Path, hosts_dir: Path, hosts: list[str]) -> None:
    """What bootstrap/setup.sh put under /etc/containerd/certs.d, under the test's hosts dir:
    the served hosts.toml files (their `ca` path moved along) and the served CA."""
    for host in hosts:
        text = (www / "containerd/certs.d" / host / "hosts.toml").read_text()
        (hosts_dir / host).mkdir(parents=True, exist_ok=True)
        (hosts_dir / host / "hosts.toml").write_text(text.replace(CERTS_DIR, str(hosts_dir)))


needs_containerd = pytest.mark.skipif(
    not (shutil.which("containerd") and shutil.which("ctr")), reason="containerd and ctr are needed"
)


@needs_containerd
def test_nested_prefix_check_sync_and_pull_back(
    tmp_path: Path,
    harbor: Harbor,
    containerd: tuple[str, Path],  # noqa: F811
) -> None:
    host = harbor.registry.host
    cfg = mirror_config(tmp_path, harbor, url=f"{host}/k8s-mirror")

    check = run_mirror(cfg, "registry", "check")
    assert check.returncode == 0, check.stderr
    assert f"authenticated: user '{USER}'" in check.stdout
    assert "push allowed" in check.stdout and "certificate verified" in check.stdout

    proc = run_mirror(cfg, "sync", "--only", "images")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for ref in IMAGES:
        name = f"{host}/k8s-mirror/{ref}"
        assert pulled_digest(harbor, name, tmp_path / "skopeo-certs") == harbor.digests[ref]
    listed = run_mirror(cfg, "images", "list", "--mirrored").stdout.split()
    assert f"{host}/k8s-mirror/docker.io/calico/node:v3.26.1" in listed

    www = tmp_path / "data" / "www"
    assert (www / "registry-ca.crt").read_bytes() == harbor.ca.ca_cert.read_bytes()
    toml = (www / "containerd/certs.d/docker.io/hosts.toml").read_text()
    assert f'[host."https://{host}/v2/k8s-mirror/docker.io"]' in toml
    assert f'ca = "{CERTS_DIR}/{host}/ca.crt"' in toml
    crio = (www / "crio/registries.conf").read_text()
    assert f'location = "{host}/k8s-mirror/docker.io"' in crio and "insecure = false" in crio

    # containerd pulls the original names through the served hosts.toml, trusting the CA.
    sock, work = containerd
    hosts_dir = work / "certs.d"
    install_node_files(www, hosts_dir, ["docker.io", "quay.io", host])
    (hosts_dir / host / "ca.crt").write_bytes((www / "registry-ca.crt").read_bytes())
    for ref in IMAGES:
        pull = ctr_pull(sock, hosts_dir, ref)
        assert pull.returncode == 0, f"{ref}: {pull.stdout[-1500:]}{pull.stderr[-1500:]}"
    # Without the CA the same pull is refused: the hosts.toml `ca` is what made it work.
    (hosts_dir / host / "ca.crt").write_bytes(harbor.other_ca.ca_cert.read_bytes())
    subprocess.run(["ctr", "--address", sock, "images", "rm", IMAGES[0]], capture_output=True)
    subprocess.run(
        ["ctr", "--address", sock, "content", "prune", "references"], capture_output=True
    )
    refused = ctr_pull(sock, hosts_dir, IMAGES[0])
    assert refused.returncode != 0
    assert "certificate" in (refused.stdout + refused.stderr)


@needs_containerd
def test_flat_layout_sync_and_pull_by_mirrored_name(
    tmp_path: Path,
    harbor: Harbor,
    containerd: tuple[str, Path],  # noqa: F811
) -> None:
    host = harbor.registry.host
    cfg = mirror_config(tmp_path, harbor, url=f"{host}/flat", layout="flat")
    proc = run_mirror(cfg, "sync", "--only", "images")
    assert proc.returncode == 0, proc.stderr[-3000:]
    flat = {
        "docker.io/calico/node:v3.26.1": f"{host}/flat/calico-node:v3.26.1",
        "quay.io/cilium/operator:v1.14.0": f"{host}/flat/cilium-operator:v1.14.0",
    }
    for ref, name in flat.items():
        assert pulled_digest(harbor, name, tmp_path / "skopeo-certs") == harbor.digests[ref]
    www = tmp_path / "data" / "www"
    listing = (www / "images.txt").read_text()
    assert f"docker.io/calico/node:v3.26.1 {flat['docker.io/calico/node:v3.26.1']}@" in listing
    served = sorted(p.name for p in (www / "containerd/certs.d").iterdir())
    assert served == [host]  # no upstream redirect in the flat layout, only the registry's CA

    sock, work = containerd
    hosts_dir = work / "certs.d"
    install_node_files(www, hosts_dir, [host])
    (hosts_dir / host / "ca.crt").write_bytes((www / "registry-ca.crt").read_bytes())
    pull = ctr_pull(sock, hosts_dir, flat["docker.io/calico/node:v3.26.1"])
    assert pull.returncode == 0, pull.stdout[-1500:] + pull.stderr[-1500:]


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("password", "credentials of user 'mirror-bot'"),
        ("ca", "TLS certificate not trusted"),
        ("no entry", "has no entry for 127.0.0.1:"),
    ],
)
def test_wrong_password_or_untrusted_ca_fail_check_and_sync_with_one_line(
    tmp_path: Path, harbor: Harbor, problem: str, expected: str
) -> None:
    host = harbor.registry.host
    settings: dict[str, object] = {"url": f"{host}/k8s-mirror"}
    if problem == "password":
        settings["authfile"] = str(authfile(tmp_path / "bad.json", host, "wrong"))
    elif problem == "no entry":
        settings["authfile"] = str(authfile(tmp_path / "other.json", "registry.example.com"))
    else:
        settings["ca_file"] = str(harbor.other_ca.ca_cert)
    cfg = mirror_config(tmp_path, harbor, **settings)
    before = harbor.registry.mark()

    check = run_mirror(cfg, "registry", "check")
    assert check.returncode == 3, check.stdout + check.stderr
    (line,) = check.stderr.splitlines()
    assert line.startswith(f"mirror: error: registry {host}/k8s-mirror: ") and expected in line

    proc = run_mirror(cfg, "sync", "--only", "images")
    assert proc.returncode == 3, proc.stderr[-3000:]
    (failure,) = sync_failures(proc)  # one line for the registry, not one per image
    assert expected in failure, proc.stderr
    # Nothing was pushed: no upload reached the registry.
    assert not [r for r in harbor.registry.requests(before) if r.method in ("POST", "PUT")]


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl signs the fixture's tokens")
def test_check_trades_the_authfile_for_a_push_token(tmp_path: Path, harbor: Harbor) -> None:
    """A registry in `auth: token` mode (Docker token service, as Harbor and Quay run): the
    check asks the realm for a pull,push token with the authfile's credentials."""
    tokens = TokenServer(tmp_path)
    tokens.start()
    registry = start_registry(tmp_path / "token-registry", auth=tokens.auth_config())
    try:
        cfg = mirror_config(
            tmp_path,
            harbor,
            url=f"{registry.host}/team",
            ca_file=None,
            authfile=str(authfile(tmp_path / "token-auth.json", registry.host)),
        )
        check = run_mirror(cfg, "registry", "check")
        assert check.returncode == 0, check.stderr
        assert f"authenticated: user '{USER}'" in check.stdout and "push allowed" in check.stdout
        basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        asked = [(q["scope"], q["authorization"]) for q in tokens.requests if q.get("scope")]
        assert (["repository:team/mirror-check:pull,push"], [f"Basic {basic}"]) in asked
        # distribution wants a "delete" scope to cancel the upload: asked for separately.
        assert (["repository:team/mirror-check:delete"], [f"Basic {basic}"]) in asked
        uploads = [(r.method, r.status) for r in registry.requests() if "/uploads/" in r.path]
        assert uploads[0] == ("POST", 202) and uploads[-1] == ("DELETE", 204), uploads
    finally:
        registry.stop()
        tokens.stop()


class PullOnlyTokens(TokenServer):
    """A token service that grants pull and nothing else, like a read-only robot account."""

    def sign(self, scopes: list[str]) -> str:
        return super().sign([scope.rsplit(":", 1)[0] + ":pull" for scope in scopes])


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl signs the fixture's tokens")
def test_check_names_a_missing_push_permission(tmp_path: Path, harbor: Harbor) -> None:
    tokens = PullOnlyTokens(tmp_path)
    tokens.start()
    registry = start_registry(tmp_path / "token-registry", auth=tokens.auth_config())
    try:
        cfg = mirror_config(
            tmp_path,
            harbor,
            url=f"{registry.host}/team",
            ca_file=None,
            authfile=str(authfile(tmp_path / "token-auth.json", registry.host)),
        )
        check = run_mirror(cfg, "registry", "check")
        assert check.returncode == 3, check.stdout + check.stderr
        (line,) = check.stderr.splitlines()
        assert f"user '{USER}'" in line and "may not push to team/mirror-check" in line
        assert "HTTP 401" in line
    finally:
        registry.stop()
        tokens.stop()
