"""Node-side configs served by the app: kubeadm config, containerd and CRI-O mirror settings."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from mirror.config import load_config
from mirror.web import create_app

REGISTRY = "utility.example.com:5000"


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    (tmp_path / "repos").mkdir()
    (tmp_path / "images.txt").write_text("# extra images\nnginx:1.25\nghcr.io/fluxcd/flux:v2\n")
    path = tmp_path / "mirror.yaml"
    path.write_text(
        "base_url: http://utility.example.com:8080\n"
        "kubernetes_versions: [v1.28.4, v1.31.2]\n"
        f"registry: {{url: {REGISTRY}}}\n"
    )
    return path


@pytest.fixture
def client(cfg_path: Path):
    return create_app(load_config(cfg_path)).test_client()


def test_kubeadm_config_v1beta3_before_1_31(client) -> None:
    resp = client.get("/kubeadm/config.yaml")
    assert resp.status_code == 200
    (doc,) = list(yaml.safe_load_all(resp.text))
    assert doc == {
        "apiVersion": "kubeadm.k8s.io/v1beta3",
        "kind": "ClusterConfiguration",
        "kubernetesVersion": "v1.28.4",
        "imageRepository": f"{REGISTRY}/registry.k8s.io",
    }


def test_kubeadm_config_v1beta4_from_1_31_with_init_settings(client) -> None:
    resp = client.get(
        "/kubeadm/config.yaml?kubernetes_version=1.31.2&control_plane_endpoint=cp.example:6443"
        "&pod_subnet=10.244.0.0/16&service_subnet=10.96.0.0/12"
        "&cri_socket=unix:///var/run/crio/crio.sock"
    )
    assert resp.status_code == 200
    init, cluster = list(yaml.safe_load_all(resp.text))
    assert init["kind"] == "InitConfiguration" and init["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert init["nodeRegistration"] == {"criSocket": "unix:///var/run/crio/crio.sock"}
    assert cluster["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert cluster["controlPlaneEndpoint"] == "cp.example:6443"
    assert cluster["networking"] == {"podSubnet": "10.244.0.0/16", "serviceSubnet": "10.96.0.0/12"}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("kubernetes_version=v1.99.0", "known: v1.24.0 .."),
        ("kubernetes_version=banana", "kubernetes version 'banana'"),
        ("pod_subnet=10.244.0.0/99", "pod_subnet must be a CIDR"),
        ("control_plane_endpoint=a b", "control_plane_endpoint"),
    ],
)
def test_kubeadm_config_rejects_bad_parameters(client, query: str, message: str) -> None:
    resp = client.get(f"/kubeadm/config.yaml?{query}")
    assert resp.status_code == 400
    assert message in resp.text


def test_containerd_hosts_toml_per_mirrored_host(client) -> None:
    for host, server in [
        ("docker.io", "https://registry-1.docker.io"),
        ("registry.k8s.io", "https://registry.k8s.io"),
        ("quay.io", "https://quay.io"),
        ("ghcr.io", "https://ghcr.io"),  # from images.txt
    ]:
        resp = client.get(f"/containerd/certs.d/{host}/hosts.toml")
        assert resp.status_code == 200, host
        doc = tomllib.loads(resp.text)
        assert doc["server"] == server
        assert doc["host"] == {
            f"http://{REGISTRY}/v2/{host}": {
                "capabilities": ["pull", "resolve"],
                "override_path": True,
            }
        }
    assert client.get("/containerd/certs.d/evil.example/hosts.toml").status_code == 404
    # Pulls by mirrored name (kubeadm's imageRepository, the pause image) go to the registry
    # itself: containerd assumes https for any host but localhost, so it is told plain HTTP.
    own = tomllib.loads(client.get(f"/containerd/certs.d/{REGISTRY}/hosts.toml").text)
    assert own["server"] == f"http://{REGISTRY}"
    assert own["host"] == {f"http://{REGISTRY}": {"capabilities": ["pull", "resolve"]}}


def test_external_registry_gets_https_and_skip_verify(cfg_path: Path) -> None:
    cfg_path.write_text(
        cfg_path.read_text().replace(
            f"registry: {{url: {REGISTRY}}}",
            "registry: {url: harbor.example.com, embedded: false, tls_verify: false}",
        )
    )
    client = create_app(load_config(cfg_path)).test_client()
    doc = tomllib.loads(client.get("/containerd/certs.d/quay.io/hosts.toml").text)
    assert doc["host"]["https://harbor.example.com/v2/quay.io"]["skip_verify"] is True
    # Pulls by mirrored name (kubeadm's imageRepository) skip verification there too.
    own = tomllib.loads(client.get("/containerd/certs.d/harbor.example.com/hosts.toml").text)
    assert own["host"]["https://harbor.example.com"]["skip_verify"] is True


def test_crio_registries_conf(client) -> None:
    doc = tomllib.loads(client.get("/crio/registries.conf").text)
    # The registry itself, for pulls by mirrored name: plain HTTP, so insecure for CRI-O.
    own = [r for r in doc["registry"] if "prefix" not in r]
    assert own == [{"location": REGISTRY, "insecure": True}]
    by_prefix = {r["prefix"]: r for r in doc["registry"] if "prefix" in r}
    assert set(by_prefix) == {"registry.k8s.io", "docker.io", "quay.io", "ghcr.io"}
    assert by_prefix["docker.io"]["mirror"] == [
        {"location": f"{REGISTRY}/docker.io", "insecure": True}
    ]
    crio = tomllib.loads(client.get("/crio/crio.conf").text)
    assert crio["crio"]["image"]["pause_image"] == f"{REGISTRY}/registry.k8s.io/pause:3.9"


def _setup_script(client, tmp_path: Path) -> Path:
    script = tmp_path / "setup.sh"
    script.write_text(client.get("/containerd/setup.sh").text)
    return script


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_containerd_setup_script_is_shellcheck_clean(client, tmp_path: Path) -> None:
    script = _setup_script(client, tmp_path)
    proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.skipif(not shutil.which("containerd"), reason="containerd not installed")
def test_containerd_setup_for_containerd_1x_is_idempotent_and_loads(client, tmp_path) -> None:
    script = _setup_script(client, tmp_path)
    root = tmp_path / "root"
    first = subprocess.run(
        ["bash", str(script), "--root", str(root)], capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    config = root / "etc/containerd/config.toml"
    doc = tomllib.loads(config.read_text())
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    assert doc["version"] == 2
    assert cri["registry"]["config_path"] == "/etc/containerd/certs.d"
    assert cri["sandbox_image"] == f"{REGISTRY}/registry.k8s.io/pause:3.9"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
    hosts = tomllib.loads((root / "etc/containerd/certs.d/docker.io/hosts.toml").read_text())
    assert f"http://{REGISTRY}/v2/docker.io" in hosts["host"]
    # The real containerd accepts the result.
    dump = subprocess.run(
        ["containerd", "--config", str(config), "config", "dump"], capture_output=True, text=True
    )
    assert dump.returncode == 0, dump.stderr
    assert f'sandbox_image = "{REGISTRY}/registry.k8s.io/pause:3.9"' in dump.stdout

    second = subprocess.run(
        ["bash", str(script), "--root", str(root)], capture_output=True, text=True
    )
    assert second.returncode == 0
    assert "nothing to change" in second.stdout and "wrote" not in second.stdout


def test_containerd_setup_for_containerd_2x_writes_version_3_keys(client, tmp_path) -> None:
    script = _setup_script(client, tmp_path)
    root = tmp_path / "root"
    config = root / "etc/containerd/config.toml"
    config.parent.mkdir(parents=True)
    # The shape of containerd 2.x's `config default` around the keys we set.
    config.write_text(
        "version = 3\nroot = '/var/lib/containerd'\n\n[plugins]\n"
        "  [plugins.'io.containerd.cri.v1.images']\n    snapshotter = 'overlayfs'\n"
        "    [plugins.'io.containerd.cri.v1.images'.pinned_images]\n"
        "      sandbox = 'registry.k8s.io/pause:3.10'\n"
        "    [plugins.'io.containerd.cri.v1.images'.registry]\n      config_path = ''\n"
        "  [plugins.'io.containerd.cri.v1.runtime']\n    enable_cdi = true\n"
    )
    proc = subprocess.run(
        ["bash", str(script), "--root", str(root), "--containerd-major", "2"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    doc = tomllib.loads(config.read_text())
    images = doc["plugins"]["io.containerd.cri.v1.images"]
    assert images["pinned_images"]["sandbox"] == f"{REGISTRY}/registry.k8s.io/pause:3.9"
    assert images["registry"]["config_path"] == "/etc/containerd/certs.d"
    assert images["snapshotter"] == "overlayfs"  # untouched
    runc = doc["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]
    assert runc["options"]["SystemdCgroup"] is True


def test_containerd_setup_dry_run_writes_nothing(client, tmp_path: Path) -> None:
    script = _setup_script(client, tmp_path)
    root = tmp_path / "root"
    proc = subprocess.run(
        ["bash", str(script), "--root", str(root), "--dry-run", "--containerd-major", "1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "would write" in proc.stdout
    assert not root.exists()


def test_tls_node_files_point_at_the_ca(cfg_path: Path) -> None:
    """tls on, embedded registry: https everywhere, verified with the CA at its node path."""
    cfg_path.write_text(
        cfg_path.read_text().replace("http://utility.example.com:8080", "https://utility:8443")
        + "tls: {mode: generate}\n"
    )
    cfg = load_config(cfg_path)
    client = create_app(cfg).test_client()
    ca = f"/etc/containerd/certs.d/{REGISTRY}/ca.crt"
    doc = tomllib.loads(client.get("/containerd/certs.d/quay.io/hosts.toml").text)
    assert doc["host"] == {
        f"https://{REGISTRY}/v2/quay.io": {
            "capabilities": ["pull", "resolve"],
            "override_path": True,
            "ca": ca,
        }
    }
    crio = tomllib.loads(client.get("/crio/registries.conf").text)
    assert {m["insecure"] for r in crio["registry"] for m in r["mirror"]} == {False}
    kubeadm = client.get("/kubeadm/config.yaml").text
    assert f"verifies {REGISTRY} with the mirror's CA ({ca})" in kubeadm
    # No CA made yet (serve makes it): /ca.crt is missing rather than empty or wrong.
    assert client.get("/ca.crt").status_code == 404
    from mirror import tls

    tls.ensure(cfg)
    resp = client.get("/ca.crt")
    assert resp.status_code == 200 and resp.data == tls.ca_file(cfg).read_bytes()
    script = client.get("/bootstrap.sh").text
    assert f"MIRROR_CA_SHA256='{tls.file_sha256(tls.ca_file(cfg))}'" in script
    assert f"'{ca}' '/etc/containers/certs.d/{REGISTRY}/ca.crt'" in script


def test_containerd_setup_with_tls_needs_the_ca_first(cfg_path: Path, tmp_path: Path) -> None:
    cfg_path.write_text(
        cfg_path.read_text().replace("http://utility.example.com:8080", "https://utility:8443")
        + "tls: {mode: generate}\n"
    )
    script = _setup_script(create_app(load_config(cfg_path)).test_client(), tmp_path)
    if shutil.which("shellcheck"):
        check = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
    root = tmp_path / "root"
    args = ["bash", str(script), "--root", str(root), "--containerd-major", "1"]
    ca = root / f"etc/containerd/certs.d/{REGISTRY}/ca.crt"
    dry = subprocess.run([*args, "--dry-run"], capture_output=True, text=True)
    assert dry.returncode == 0 and "the mirror's CA is not at" in dry.stdout
    missing = subprocess.run(args, capture_output=True, text=True)
    assert missing.returncode == 1
    assert f"the mirror's CA is missing: {ca}" in missing.stderr
    assert not root.exists()
    ca.parent.mkdir(parents=True)
    ca.write_text("-----BEGIN CERTIFICATE-----\n")  # what bootstrap.sh --ca-file installs
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    hosts = tomllib.loads((root / "etc/containerd/certs.d/docker.io/hosts.toml").read_text())
    assert hosts["host"][f"https://{REGISTRY}/v2/docker.io"]["ca"] == str(ca).replace(str(root), "")
