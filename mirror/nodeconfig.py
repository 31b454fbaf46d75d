"""What cluster nodes are handed: kubeadm config, containerd hosts.toml, CRI-O registries.conf.

Pure functions from the Config (and a Kubernetes version) to text, so the web routes stay
thin and everything here is unit-testable without a server.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import yaml

from mirror import kubeadm_images, tls
from mirror.config import Config
from mirror.errors import ConfigError
from mirror.images.refs import (
    DOCKER_HUB,
    ImageJob,
    RegistryLayout,
    parse_images_file,
    plan_jobs,
    upstream_hosts,
)

log = logging.getLogger("mirror.images")
CERTS_DIR = "/etc/containerd/certs.d"
CONTAINERS_CERTS_DIR = "/etc/containers/certs.d"  # containers-certs.d(5): CRI-O, podman, skopeo
# Where bootstrap.sh --ca-file installs the mirror's CA on a node (mirror.tls): the system
# trust (update-ca-trust), which mirror.repo's sslcacert names too.
CA_ANCHOR = "/etc/pki/ca-trust/source/anchors/airgap-mirror-ca.crt"
_ENDPOINT_RE = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$|^\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$")


def registry_scheme(cfg: Config) -> str:
    """The embedded registry speaks plain HTTP unless tls is on; an external one HTTPS."""
    return "http" if cfg.registry.embedded and not tls.enabled(cfg) else "https"


def registry_ca_path(cfg: Config) -> str | None:
    """Where a node holds the CA that registry.url's certificate is verified with (bootstrap.sh
    puts it there); None when the node's system trust is used, or nothing is verified."""
    if tls.local_registry_ca(cfg) is None:
        return None
    return f"{CERTS_DIR}/{registry_host(cfg)}/ca.crt"


def registry_host(cfg: Config) -> str:
    """HOST[:PORT] of registry.url: the certs.d directory name containerd and CRI-O use."""
    return cfg.registry.host


def default_version(cfg: Config) -> str:
    """The first configured version (a range's lower end): what node configs default to."""
    from mirror.kubernetes.versions import first_version

    version = first_version(cfg.kubernetes_versions)
    if version is None:
        raise ConfigError(str(cfg.config_path or "config"), "key 'kubernetes_versions' is empty")
    return version


def image_repository(cfg: Config) -> str:
    """What kubeadm's imageRepository / --image-repository must be (registry.url's path
    included; in the flat layout registry.url itself)."""
    layout = RegistryLayout.of(cfg.registry)
    return layout.image_repository(kubeadm_images.DEFAULT_IMAGE_REPOSITORY)


def pause_image(cfg: Config, version: str) -> str:
    """The sandbox image by its mirrored name: kubeadm preflight warns unless the runtime's
    sandbox image is the one under imageRepository. Never runs kubeadm (web workers call
    this): the list kubeadm gave at sync time, else the table."""
    from mirror.kubernetes.images import image_list

    found = image_list(cfg, version, run_kubeadm=False)
    tag = found.tag_of("pause")
    if tag is None:
        raise ConfigError(f"kubernetes version {found.version!r}", "its image list has no pause")
    return f"{image_repository(cfg)}/pause:{tag}"


@dataclass(frozen=True)
class ImagePlan:
    """What an image sync copies, and why some configured versions cannot be planned."""

    jobs: list[ImageJob]
    failures: list[str]  # one line per version (or range minor) without an image list
    warnings: list[str]  # kubeadm disagreeing with the table, a failed kubeadm run


def image_plan(cfg: Config, run_kubeadm: bool = True) -> ImagePlan:
    """Every configured version (ranges resolved from the mirrored kubeadm packages) with
    kubeadm's own image list where available, plus images.txt. Call after the repo sync:
    a new version's kubeadm rpm must be mirrored before its image list can be read."""
    from mirror.kubernetes.images import image_lists
    from mirror.kubernetes.resolve import resolve_versions

    resolution = resolve_versions(cfg)
    lists = image_lists(cfg, resolution.versions, run_kubeadm)
    extra = []
    if cfg.images_file is not None and cfg.images_file.exists():
        extra = parse_images_file(cfg.images_file)
    planned = [v for v in resolution.versions if v in lists.lists]
    by_version = {v: found.images for v, found in lists.lists.items()}
    jobs = plan_jobs(RegistryLayout.of(cfg.registry), planned, extra, by_version)
    if cfg.upstream_mirror is not None:  # and every image the upstream mirror holds
        from mirror.downstream.client import with_upstream_images

        jobs = with_upstream_images(cfg, jobs)
    return ImagePlan(jobs, [*resolution.problems, *lists.failures], lists.warnings)


def image_jobs(cfg: Config, run_kubeadm: bool = True) -> list[ImageJob]:
    """image_plan's jobs; its failures and warnings are logged (a caller that must fail on
    them uses image_plan)."""
    plan = image_plan(cfg, run_kubeadm)
    for line in plan.failures:
        log.error("%s", line)
    for line in plan.warnings:
        log.warning("%s", line)
    return plan.jobs


def mirrored_hosts(cfg: Config) -> list[str]:
    # Rendering node files: no kubeadm runs, and a version without a list only lacks hosts
    # (kubeadm's images are all on registry.k8s.io, which is always listed).
    # Images found in mirrored files and charts count too: containerd must be told to pull
    # their hosts (ghcr.io, quay.io, ...) from the mirror as well.
    from mirror.images.sources import found_in_content, with_found_images

    jobs = image_plan(cfg, run_kubeadm=False).jobs
    return upstream_hosts(with_found_images(cfg, jobs, found_in_content(cfg)))


# --- kubeadm -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InitSettings:
    """The usual `kubeadm init` settings a user may pass as query parameters."""

    control_plane_endpoint: str | None = None
    pod_subnet: str | None = None
    service_subnet: str | None = None
    cri_socket: str | None = None

    def validate(self) -> None:
        if self.control_plane_endpoint and not _ENDPOINT_RE.match(self.control_plane_endpoint):
            raise ValueError("control_plane_endpoint must be HOST or HOST:PORT")
        for name in ("pod_subnet", "service_subnet"):
            value = getattr(self, name)
            if value:
                for part in value.split(","):  # dual-stack: "10.244.0.0/16,fd00::/56"
                    try:
                        ipaddress.ip_network(part.strip())
                    except ValueError:
                        raise ValueError(f"{name} must be a CIDR, got {value!r}") from None
        if self.cri_socket and not self.cri_socket.startswith("unix:///"):
            raise ValueError("cri_socket must be a unix:/// path")


def kubeadm_config(cfg: Config, version: str, settings: InitSettings) -> str:
    """ClusterConfiguration (+ InitConfiguration when a CRI socket is given) for `version`,
    in the API version that kubeadm release accepts (v1beta3 < 1.31 <= v1beta4)."""
    from mirror.kubernetes.images import image_list

    images = image_list(cfg, version, run_kubeadm=False)  # unknown version -> clear error
    settings.validate()
    api = kubeadm_images.config_api_version(images.version)
    cluster: dict[str, object] = {
        "apiVersion": api,
        "kind": "ClusterConfiguration",
        "kubernetesVersion": images.version,
        # kubeadm derives every control-plane image, etcd and CoreDNS (as <repo>/coredns)
        # from this; the mirror holds all of them under these names.
        "imageRepository": image_repository(cfg),
    }
    if settings.control_plane_endpoint:
        cluster["controlPlaneEndpoint"] = settings.control_plane_endpoint
    networking = {}
    if settings.pod_subnet:
        networking["podSubnet"] = settings.pod_subnet
    if settings.service_subnet:
        networking["serviceSubnet"] = settings.service_subnet
    if networking:
        cluster["networking"] = networking
    docs = [cluster]
    if settings.cri_socket:
        docs.insert(
            0,
            {
                "apiVersion": api,
                "kind": "InitConfiguration",
                "nodeRegistration": {"criSocket": settings.cri_socket},
            },
        )
    header = (
        f"# kubeadm {api.split('/')[1]} config for Kubernetes {images.version}, images from "
        f"the mirror.\n# Use: kubeadm init --config config.yaml\n"
    )
    ca = registry_ca_path(cfg)
    if ca is not None:
        # kubeadm has no registry CA setting: the runtime verifies the pulls.
        header += f"# The runtime verifies {cfg.registry.url} with the mirror's CA ({ca}).\n"
    return header + yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True)


# --- containerd --------------------------------------------------------------------------


def _upstream_server(host: str) -> str:
    return "https://registry-1.docker.io" if host == DOCKER_HUB else f"https://{host}"


def registry_ca(cfg: Config) -> tuple[str, str] | None:
    """(containerd path, CRI-O path) where nodes keep an external registry's registry.ca_file
    (handed out at /registry-ca.crt), None without one. The mirror's own CA (tls on) is
    installed by bootstrap.sh --ca-file instead."""
    if cfg.registry.ca_file is None:
        return None
    host = cfg.registry.host
    return f"{CERTS_DIR}/{host}/ca.crt", f"{CONTAINERS_CERTS_DIR}/{host}/ca.crt"


def containerd_hosts(cfg: Config) -> list[str]:
    """Hosts that get a hosts.toml: every mirrored upstream (nested layout; the flat one has
    no prefix to redirect to) and the registry itself whenever a pull by mirrored name
    (kubeadm's imageRepository, the pause image, flat names) needs telling how to reach it:
    plain HTTP (containerd assumes https for any host but localhost), https verified with a
    CA (registry.ca_file or the mirror's own), or https left unverified (skip_verify)."""
    hosts = [] if cfg.registry.layout == "flat" else mirrored_hosts(cfg)
    needs_own = (
        registry_scheme(cfg) == "http"
        or registry_ca_path(cfg) is not None
        or not tls.local_registry_verify(cfg)
    )
    if needs_own and registry_host(cfg) not in hosts:
        hosts.append(registry_host(cfg))
    return hosts


def _tls_lines(cfg: Config, scheme: str) -> list[str]:
    ca = registry_ca_path(cfg)
    if ca is not None:
        return [f'  ca = "{ca}"']
    if scheme == "https" and not tls.local_registry_verify(cfg):
        return ["  skip_verify = true"]
    return []


def hosts_toml(cfg: Config, host: str) -> str:
    """containerd's /etc/containerd/certs.d/<host>/hosts.toml: pull `host/x` from the mirror's
    `<registry>/<prefix>/<host>/x` (override_path, because the path already includes
    /v2/<prefix>/<host>). For the registry's own host: its CA, no redirect."""
    if not _HOST_RE.match(host):
        raise ValueError(f"bad registry host {host!r}")
    scheme = registry_scheme(cfg)
    layout = RegistryLayout.of(cfg.registry)
    if host == layout.host:
        how = "plain HTTP" if scheme == "http" else "https"
        lines = [
            f"# {host}: the air-gap mirror's registry itself ({how}; pulls by mirrored name)",
            f'server = "{scheme}://{host}"',
            "",
            f'[host."{scheme}://{host}"]',
            '  capabilities = ["pull", "resolve"]',
        ]
        return "\n".join([*lines, *_tls_lines(cfg, scheme)]) + "\n"
    namespace = layout.host_namespace(host)
    if namespace is None:
        raise ValueError(f"registry.layout is flat: no hosts.toml redirects {host}")
    lines = [
        f"# {host}: pulls go to the air-gap mirror at {cfg.registry.url}",
        f'server = "{_upstream_server(host)}"',
        "",
        f'[host."{scheme}://{layout.host}/v2/{namespace}"]',
        '  capabilities = ["pull", "resolve"]',
        "  override_path = true",
    ]
    return "\n".join([*lines, *_tls_lines(cfg, scheme)]) + "\n"


# --- CRI-O -------------------------------------------------------------------------------


def crio_registries_conf(cfg: Config, hosts: Sequence[str]) -> str:
    """containers-registries.conf(5) drop-in: each upstream host with the mirror in front."""
    # With a CA (the mirror's or registry.ca_file), verification stays on: bootstrap.sh puts
    # it in /etc/containers/certs.d/<registry>/ca.crt, where containers/image looks for it.
    verified = tls.local_registry_verify(cfg)
    insecure = "true" if registry_scheme(cfg) == "http" or not verified else "false"
    layout = RegistryLayout.of(cfg.registry)
    out = [
        "# Air-gap mirror: install as /etc/containers/registries.conf.d/50-airgap-mirror.conf",
        "# The pause image setting for CRI-O is served at /crio/crio.conf",
        "# (install as /etc/crio/crio.conf.d/50-airgap-mirror.conf).",
        "",
    ]
    if layout.flat:
        out += [
            "# registry.layout is flat: images are pulled by their mirrored names",
            f"# ({cfg.registry.url}/..., see /images.txt); no upstream is redirected.",
            "",
        ]
        hosts = []
    ca = registry_ca(cfg)
    if ca is not None:
        out += [f"# The registry's CA goes to {ca[1]} (bootstrap.sh installs it).", ""]
    if insecure == "true":
        # Pulls by mirrored name (kubeadm's imageRepository, flat names) go to the registry
        # itself: CRI-O must be told it is plain HTTP (or unverified), as for the mirrors.
        out += ["[[registry]]", f'location = "{layout.host}"', "insecure = true", ""]
    for host in hosts:
        out += [
            "[[registry]]",
            f'prefix = "{host}"',
            f'location = "{host}"',
            "",
            "[[registry.mirror]]",
            f'location = "{layout.host}/{layout.host_namespace(host)}"',
            f"insecure = {insecure}",
            "",
        ]
    return "\n".join(out)


def crio_conf(cfg: Config, version: str) -> str:
    return (
        "# Air-gap mirror: install as /etc/crio/crio.conf.d/50-airgap-mirror.conf\n"
        "[crio.image]\n"
        f'pause_image = "{pause_image(cfg, version)}"\n'
    )
