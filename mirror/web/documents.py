"""The text documents nodes fetch (.repo files, containerd and CRI-O settings, scripts, images.txt).

One renderer per document, shared by the Flask routes (rendered live, with query parameters)
and by `mirror.web.static.render_static` (rendered once into files nginx serves). Neither
Flask nor a request is needed here: templates go through a plain Jinja environment.
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import jinja2

from mirror import nodeconfig, tls
from mirror.config import Config
from mirror.repofile import RepoDefinition
from mirror.web import repofiles

TEMPLATES = Path(__file__).resolve().parent / "templates"

# File suffix -> Content-Type, for the Flask routes and the nginx `types {}` of the rendered
# files alike (mirror.web.nginx): one table, so both front ends answer the same type.
MIMETYPES: dict[str, str] = {
    "repo": "text/plain",
    "txt": "text/plain",
    "toml": "application/toml",
    "conf": "application/toml",
    "sh": "text/x-shellscript",
    "crt": "application/x-x509-ca-cert",  # /ca.crt: PEM, what browsers and curl take
}

# Content-Type by suffix for files of a published yum tree and keys, nginx and the app alike:
# only the types a yum tree holds, anything else application/octet-stream. .gz stays
# application/gzip so no client gunzips repodata transparently.
REPO_MIMETYPES: dict[str, str] = {
    "rpm": "application/x-rpm",
    "xml": "text/xml",
    "gz": "application/gzip",
    "bz2": "application/x-bzip2",
    "xz": "application/x-xz",
    "zst": "application/zstd",
    "asc": "application/pgp-signature",
    "gpg": "application/pgp-keys",
    "key": "application/pgp-keys",
    "txt": "text/plain",
    "html": "text/html",
}

# URL prefixes (and exact paths) under which rendered documents live; nginx serves these
# from the rendered directory and sends anything it does not find there to the app.
PREFIXES: tuple[str, ...] = ("/repofiles/", "/containerd/", "/crio/")
EXACT: tuple[str, ...] = ("/bootstrap.sh", "/images.txt", "/ca.crt", "/registry-ca.crt")


def mimetype_for(url_path: str) -> str:
    return MIMETYPES.get(PurePosixPath(url_path).suffix.lstrip("."), "text/plain")


@functools.cache
def _env() -> jinja2.Environment:
    # Shell scripts, not HTML: no autoescape. Every value put into a script is validated in
    # the config and quoted in the template (`shquote`), the same filter the Flask app has.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=False,
    )
    env.filters["shquote"] = shlex.quote
    return env


def _template(name: str, **values: object) -> str:
    return _env().get_template(name).render(**values)


def mirror_repo(cfg: Config, definitions: Sequence[RepoDefinition]) -> str:
    return repofiles.render(definitions, cfg)


def one_repo(cfg: Config, definition: RepoDefinition) -> str:
    return repofiles.render([definition], cfg)


def hosts_toml(cfg: Config, host: str) -> str:
    return nodeconfig.hosts_toml(cfg, host)


def registry_ca(cfg: Config) -> str:
    """registry.ca_file as nodes get it (/registry-ca.crt): PEM certificates only."""
    path = cfg.registry.ca_file
    if path is None:
        raise ValueError("registry.ca_file is not set")
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"registry.ca_file {path}: cannot read: {exc}") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(f"registry.ca_file {path}: no PEM certificate in it")
    return text


def containerd_setup(cfg: Config, version: str) -> str:
    hosts = [(h, nodeconfig.hosts_toml(cfg, h)) for h in nodeconfig.containerd_hosts(cfg)]
    ca = nodeconfig.registry_ca(cfg)
    return _template(
        "containerd-setup.sh",
        base_url=cfg.base_url,
        certs_dir=nodeconfig.CERTS_DIR,
        sandbox_image=nodeconfig.pause_image(cfg, version),
        hosts=hosts,
        registry_ca=(ca[0], registry_ca(cfg)) if ca else None,
        ca_path=nodeconfig.registry_ca_path(cfg),
    )


def crio_registries(cfg: Config) -> str:
    return nodeconfig.crio_registries_conf(cfg, nodeconfig.mirrored_hosts(cfg))


def crio_conf(cfg: Config, version: str) -> str:
    return nodeconfig.crio_conf(cfg, version)


def images_txt(cfg: Config) -> str:
    """upstream reference, mirrored reference@digest: one image per line, from sync state."""
    from mirror.images.sync import mirrored_images

    lines = ["# upstream mirrored@digest (from the last sync)"]
    for upstream, mirrored, digest in mirrored_images(cfg):
        lines.append(f"{upstream} {mirrored}@{digest}")
    return "\n".join(lines) + "\n"


def ca_pem(cfg: Config) -> str | None:
    """The CA nodes pin (/ca.crt); None when tls is off or the CA is not made yet."""
    path = tls.ca_file(cfg)
    if not tls.enabled(cfg) or not path.is_file():
        return None
    return path.read_text(encoding="ascii")


def bootstrap(cfg: Config, definitions: Sequence[RepoDefinition]) -> str:
    version = nodeconfig.default_version(cfg) if cfg.kubernetes_versions else ""
    ca = tls.ca_file(cfg)
    return _template(
        "bootstrap.sh",
        base_url=cfg.base_url,
        kubernetes_version=version,
        registry=cfg.registry.url,
        repo_ids=[d.id for d in definitions],
        crio_registry_ca=(nodeconfig.registry_ca(cfg) or (None, None))[1],
        # What --ca-file is checked against unless --ca-sha256 says otherwise: the script came
        # over TLS verified with that very CA, so the hash in it is as trusted as the CA.
        ca_sha256=tls.file_sha256(ca) if tls.enabled(cfg) and ca.is_file() else "",
        ca_anchor=nodeconfig.CA_ANCHOR,
        # The mirror's CA also verifies the registry only when it is the embedded one; an
        # external registry's own CA (registry.ca_file) goes there instead.
        ca_paths=[
            f"{nodeconfig.CERTS_DIR}/{nodeconfig.registry_host(cfg)}/ca.crt",
            f"{nodeconfig.CONTAINERS_CERTS_DIR}/{nodeconfig.registry_host(cfg)}/ca.crt",
        ]
        if cfg.registry.embedded
        else [],
    )


def static_documents(
    cfg: Config, definitions: Sequence[RepoDefinition]
) -> dict[str, Callable[[], str]]:
    """Every document that does not depend on the request, by URL path, as a renderer.

    Documents that need a default Kubernetes version are left out when none is configured;
    the app answers those paths itself (with its error), as it does without nginx.
    """
    docs: dict[str, Callable[[], str]] = {
        "/repofiles/mirror.repo": lambda: mirror_repo(cfg, definitions),
        "/crio/registries.conf": lambda: crio_registries(cfg),
        "/bootstrap.sh": lambda: bootstrap(cfg, definitions),
        "/images.txt": lambda: images_txt(cfg),
    }
    pem = ca_pem(cfg)
    if pem is not None:
        docs["/ca.crt"] = lambda: pem
    for d in definitions:
        docs[f"/repofiles/{d.id}.repo"] = functools.partial(one_repo, cfg, d)
    if cfg.registry.ca_file is not None:
        docs["/registry-ca.crt"] = functools.partial(registry_ca, cfg)
    for host in nodeconfig.containerd_hosts(cfg):
        docs[f"/containerd/certs.d/{host}/hosts.toml"] = functools.partial(hosts_toml, cfg, host)
    if cfg.kubernetes_versions:
        version = nodeconfig.default_version(cfg)
        docs["/containerd/setup.sh"] = functools.partial(containerd_setup, cfg, version)
        docs["/crio/crio.conf"] = functools.partial(crio_conf, cfg, version)
    return docs
