"""Routes nodes fetch to join: kubeadm config, containerd and CRI-O mirror settings, images.txt.

The bodies come from mirror.web.documents, the same renderers `render_static` writes to disk
for nginx; here they are rendered per request, which is what query parameters need.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, request

from mirror import nodeconfig
from mirror.config import Config
from mirror.errors import ConfigError
from mirror.repofile import RepoDefinition
from mirror.web import documents

bp = Blueprint("nodes", __name__)


def _cfg() -> Config:
    cfg: Config = current_app.config["MIRROR"]
    return cfg


def _definitions() -> list[RepoDefinition]:
    defs: list[RepoDefinition] = current_app.config["MIRROR_REPOS"]
    return defs


def _text(body: str) -> Response:
    return Response(body, mimetype=documents.mimetype_for(request.path))


def _error(status: int, message: str) -> Response:
    return Response(f"error: {message}\n", status=status, mimetype="text/plain")


def _version() -> str:
    cfg = _cfg()
    return request.args.get("kubernetes_version") or nodeconfig.default_version(cfg)


@bp.errorhandler(ConfigError)
def _config_error(exc: ConfigError) -> Response:
    return _error(400, str(exc))


@bp.get("/kubeadm/config.yaml")
def kubeadm_config() -> Response:
    settings = nodeconfig.InitSettings(
        control_plane_endpoint=request.args.get("control_plane_endpoint"),
        pod_subnet=request.args.get("pod_subnet"),
        service_subnet=request.args.get("service_subnet"),
        cri_socket=request.args.get("cri_socket"),
    )
    try:
        body = nodeconfig.kubeadm_config(_cfg(), _version(), settings)
    except ValueError as exc:
        return _error(400, str(exc))
    return Response(body, mimetype="application/yaml")


@bp.get("/ca.crt")
def ca_crt() -> Response:
    """The mirror's CA (PEM) for nodes to pin: its sha256 is in `mirror status`."""
    pem = documents.ca_pem(_cfg())
    if pem is None:
        abort(404)
    return _text(pem)


@bp.get("/containerd/certs.d/<host>/hosts.toml")
def containerd_hosts(host: str) -> Response:
    cfg = _cfg()
    if host not in nodeconfig.containerd_hosts(cfg):
        abort(404)
    return _text(documents.hosts_toml(cfg, host))


@bp.get("/registry-ca.crt")
def registry_ca() -> Response:
    """registry.ca_file (an external registry's CA), for nodes to trust its certificate."""
    cfg = _cfg()
    if cfg.registry.ca_file is None:
        abort(404)
    try:
        return _text(documents.registry_ca(cfg))
    except ValueError as exc:
        return _error(500, str(exc))


@bp.get("/containerd/setup.sh")
def containerd_setup() -> Response:
    return _text(documents.containerd_setup(_cfg(), _version()))


@bp.get("/crio/registries.conf")
def crio_registries() -> Response:
    return _text(documents.crio_registries(_cfg()))


@bp.get("/crio/crio.conf")
def crio_conf() -> Response:
    return _text(documents.crio_conf(_cfg(), _version()))


@bp.get("/images.txt")
def images_txt() -> Response:
    """upstream reference, mirrored reference@digest: one image per line."""
    return _text(documents.images_txt(_cfg()))


@bp.get("/bootstrap.sh")
def bootstrap() -> Response:
    """Node preparation script; `curl -fsS BASE/bootstrap.sh | sudo bash -s -- --runtime ...`."""
    return _text(documents.bootstrap(_cfg(), _definitions()))
