"""External registries without a network: registry.url with a path, the nested and flat layouts,
flat-name collisions, registry.ca_file, and the node configs that point at such a registry.
(tests/test_external_registry_e2e.py syncs into and pulls from a real TLS + htpasswd one.)"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from mirror import nodeconfig
from mirror.config import load_config
from mirror.errors import ConfigError
from mirror.images.refs import RegistryLayout, parse_reference, plan_jobs
from mirror.web import create_app

HARBOR = "harbor.example.com"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def write_cfg(tmp_path: Path, registry: str, images: str = "", versions: str = "[v1.28.4]") -> Path:
    (tmp_path / "repos").mkdir(exist_ok=True)
    (tmp_path / "images.txt").write_text(images)
    (tmp_path / "harbor-ca.pem").write_text(PEM)
    path = tmp_path / "mirror.yaml"
    path.write_text(
        "base_url: http://utility.example.com:8080\n"
        f"kubernetes_versions: {versions}\n"
        f"registry: {registry}\n"
    )
    return path


def config_error(tmp_path: Path, registry: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(write_cfg(tmp_path, registry))
    return str(err.value)


# --- config ----------------------------------------------------------------------------


def test_url_with_path_and_port(tmp_path: Path) -> None:
    cfg = load_config(write_cfg(tmp_path, f"{{url: '{HARBOR}:8443/k8s-mirror/', embedded: false}}"))
    assert cfg.registry.url == f"{HARBOR}:8443/k8s-mirror"
    assert (cfg.registry.host, cfg.registry.prefix) == (f"{HARBOR}:8443", "k8s-mirror")
    assert cfg.registry.layout == "nested" and cfg.registry.tls_verify is False


@pytest.mark.parametrize(
    "url, words",
    [
        ("https://harbor.example.com/k8s", "no scheme"),
        ("harbor.example.com/K8s", "lowercase"),
        ("harbor.example.com/k8s//x", "lowercase"),
        ("harbor.example.com/k8s mirror", "lowercase"),
    ],
)
def test_bad_url_refused(tmp_path: Path, url: str, words: str) -> None:
    message = config_error(tmp_path, f"{{url: '{url}'}}")
    assert "registry.url" in message and words in message


def test_ca_file_implies_tls_verify_and_is_resolved(tmp_path: Path) -> None:
    registry = f"{{url: {HARBOR}/p, embedded: false, ca_file: harbor-ca.pem}}"
    cfg = load_config(write_cfg(tmp_path, registry))
    assert cfg.registry.tls_verify is True
    assert cfg.registry.ca_file == tmp_path / "harbor-ca.pem"


def test_ca_file_with_the_embedded_registry_refused(tmp_path: Path) -> None:
    # The embedded registry is verified with the mirror's own CA (tls:), not a second one.
    message = config_error(tmp_path, f"{{url: {HARBOR}, ca_file: harbor-ca.pem}}")
    assert "registry.ca_file is for an external registry (embedded: false)" in message


def test_ca_file_with_tls_verify_false_refused(tmp_path: Path) -> None:
    message = config_error(tmp_path, f"{{url: {HARBOR}, ca_file: x.pem, tls_verify: false}}")
    assert "ca_file needs tls_verify: true" in message


def test_unknown_layout_refused(tmp_path: Path) -> None:
    assert "registry.layout" in config_error(tmp_path, f"{{url: {HARBOR}, layout: flatter}}")


# --- the mapping -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref, nested, flat",
    [
        ("calico/node:v3.28.2", "docker.io/calico/node:v3.28.2", "calico-node:v3.28.2"),
        ("nginx:1.25", "docker.io/library/nginx:1.25", "nginx:1.25"),
        (
            "registry.k8s.io/kube-apiserver:v1.28.4",
            "registry.k8s.io/kube-apiserver:v1.28.4",
            "kube-apiserver:v1.28.4",
        ),
        (
            "quay.io/cilium/cilium-envoy:v1",
            "quay.io/cilium/cilium-envoy:v1",
            "cilium-cilium-envoy:v1",
        ),
    ],
)
def test_nested_and_flat_names(ref: str, nested: str, flat: str) -> None:
    parsed = parse_reference(ref)
    base = f"{HARBOR}:8443/k8s-mirror"
    assert parsed.mirrored(RegistryLayout(base)) == f"{base}/{nested}"
    assert parsed.mirrored(RegistryLayout(base, flat=True)) == f"{base}/{flat}"
    # No path in registry.url: the flat names sit right below the host.
    assert parsed.mirrored(RegistryLayout(HARBOR, flat=True)) == f"{HARBOR}/{flat}"


def test_flat_kubeadm_set_is_one_level_with_coredns_under_both_names() -> None:
    layout = RegistryLayout(f"{HARBOR}/k8s", flat=True)
    jobs = plan_jobs(layout, ["v1.28.4"], [])
    names = [d for job in jobs for d in job.destinations]
    assert f"{HARBOR}/k8s/coredns:v1.10.1" in names  # what kubeadm asks imageRepository for
    assert f"{HARBOR}/k8s/coredns-coredns:v1.10.1" in names
    assert all(name.count("/") == 2 for name in names), names
    assert layout.image_repository("registry.k8s.io") == f"{HARBOR}/k8s"


def test_flat_collision_refused_naming_both() -> None:
    extra = [parse_reference(r) for r in ("calico/node:v3", "quay.io/calico/node:v3")]
    with pytest.raises(ConfigError) as err:
        plan_jobs(RegistryLayout(f"{HARBOR}/k8s", flat=True), [], extra)
    message = str(err.value)
    assert "docker.io/calico/node:v3" in message and "quay.io/calico/node:v3" in message
    assert f"{HARBOR}/k8s/calico-node" in message
    # Nested, the same two are distinct; two tags of one repository never collide.
    assert len(plan_jobs(RegistryLayout(f"{HARBOR}/k8s"), [], extra)) == 2
    tags = [parse_reference(r) for r in ("calico/node:v3", "calico/node:v4")]
    assert len(plan_jobs(RegistryLayout(f"{HARBOR}/k8s", flat=True), [], tags)) == 2


def test_flat_collision_fails_mirror_sync_before_any_network(tmp_path: Path) -> None:
    cfg = write_cfg(
        tmp_path,
        "{url: '127.0.0.1:9/k8s', layout: flat, embedded: false}",
        images="docker.io/calico/node:v3\nquay.io/calico/node:v3\n",
        versions="[]",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mirror", "-c", str(cfg), "sync", "--only", "images"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, proc.stderr
    assert "docker.io/calico/node:v3 and quay.io/calico/node:v3" in errors[0]
    assert not (tmp_path / "data" / "state" / "images").exists()


# --- node configs ----------------------------------------------------------------------


def test_node_configs_nested_with_path_and_ca(tmp_path: Path) -> None:
    cfg = load_config(
        write_cfg(
            tmp_path,
            f"{{url: '{HARBOR}:8443/k8s-mirror', embedded: false, ca_file: harbor-ca.pem}}",
            images="ghcr.io/fluxcd/flux:v2\n",
        )
    )
    host = f"{HARBOR}:8443"
    ca = f"/etc/containerd/certs.d/{host}/ca.crt"
    doc = tomllib.loads(nodeconfig.hosts_toml(cfg, "docker.io"))
    assert doc["server"] == "https://registry-1.docker.io"
    assert doc["host"] == {
        f"https://{host}/v2/k8s-mirror/docker.io": {
            "capabilities": ["pull", "resolve"],
            "override_path": True,
            "ca": ca,
        }
    }
    own = tomllib.loads(nodeconfig.hosts_toml(cfg, host))  # pulls by mirrored name
    assert own["host"] == {f"https://{host}": {"capabilities": ["pull", "resolve"], "ca": ca}}
    assert host in nodeconfig.containerd_hosts(cfg) and "ghcr.io" in nodeconfig.containerd_hosts(
        cfg
    )

    crio = tomllib.loads(nodeconfig.crio_registries_conf(cfg, ["docker.io"]))
    assert crio["registry"][0]["mirror"] == [
        {"location": f"{host}/k8s-mirror/docker.io", "insecure": False}
    ]
    client = create_app(cfg).test_client()
    (kubeadm,) = yaml.safe_load_all(client.get("/kubeadm/config.yaml").text)
    assert kubeadm["imageRepository"] == f"{host}/k8s-mirror/registry.k8s.io"
    assert nodeconfig.pause_image(cfg, "v1.28.4") == f"{host}/k8s-mirror/registry.k8s.io/pause:3.9"
    assert client.get("/registry-ca.crt").text == PEM
    assert client.get(f"/containerd/certs.d/{host}/hosts.toml").status_code == 200
    setup = client.get("/containerd/setup.sh").text
    assert f"put_file \"$ROOT\"{ca} '{PEM.strip()}'" in setup
    boot = client.get("/bootstrap.sh").text
    assert f"put_file /etc/containers/certs.d/{host}/ca.crt" in boot


def test_node_configs_flat_redirect_nothing(tmp_path: Path) -> None:
    registry = f"{{url: '{HARBOR}/k8s', layout: flat, embedded: false, ca_file: harbor-ca.pem}}"
    cfg = load_config(write_cfg(tmp_path, registry))
    # No prefix rewrite turns docker.io/calico/node into k8s/calico-node: only the registry's
    # own hosts.toml (its CA) is served, and CRI-O gets no mirror entries.
    assert nodeconfig.containerd_hosts(cfg) == [HARBOR]
    with pytest.raises(ValueError, match="flat"):
        nodeconfig.hosts_toml(cfg, "docker.io")
    assert "registry" not in tomllib.loads(nodeconfig.crio_registries_conf(cfg, ["docker.io"]))
    client = create_app(cfg).test_client()
    (kubeadm,) = yaml.safe_load_all(client.get("/kubeadm/config.yaml").text)
    assert kubeadm["imageRepository"] == f"{HARBOR}/k8s"
    assert client.get("/containerd/certs.d/docker.io/hosts.toml").status_code == 404


def test_no_ca_file_no_ca_document(tmp_path: Path) -> None:
    cfg = load_config(write_cfg(tmp_path, f"{{url: '{HARBOR}/k8s', embedded: false}}"))
    client = create_app(cfg).test_client()
    assert client.get("/registry-ca.crt").status_code == 404
    assert "skip_verify = true" in nodeconfig.hosts_toml(cfg, "docker.io")
    assert "put_file /etc/containers/certs.d" not in client.get("/bootstrap.sh").text


def test_check_of_a_registry_that_does_not_answer(tmp_path: Path) -> None:
    from tests.conftest import free_port

    cfg = write_cfg(tmp_path, f"{{url: '127.0.0.1:{free_port()}/k8s', tls_verify: true}}")
    proc = subprocess.run(
        [sys.executable, "-m", "mirror", "-c", str(cfg), "registry", "check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "cannot reach https://127.0.0.1:" in line and "connection refused" in line


def test_a_renewed_registry_ca_rerenders_the_node_files(tmp_path: Path) -> None:
    # The site renews its registry CA at the same path: the next sync must render
    # /registry-ca.crt and containerd's setup.sh (which embeds it) again.
    from mirror.cli import _node_file_inputs

    registry = f"{{url: {HARBOR}/p, embedded: false, ca_file: harbor-ca.pem}}"
    cfg = load_config(write_cfg(tmp_path, registry))
    before = _node_file_inputs(cfg)
    assert cfg.registry.ca_file is not None
    cfg.registry.ca_file.write_text(PEM.replace("MII", "MIJ", 1))
    assert _node_file_inputs(cfg) != before
