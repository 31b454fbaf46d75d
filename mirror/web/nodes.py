"""Routes nodes fetch to join: kubeadm config, containerd and CRI-O mirror settings, images.txt."""

from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, render_template, request

from mirror import nodeconfig
from mirror.config import Config
from mirror.errors import ConfigError

bp = Blueprint("nodes", __name__)


def _cfg() -> Config:
    cfg: Config = current_app.config["MIRROR"]
    return cfg


def _text(body: str, mimetype: str = "text/plain") -> Response:
    return Response(body, mimetype=mimetype)


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
    return _text(body, "application/yaml")


@bp.get("/containerd/certs.d/<host>/hosts.toml")
def containerd_hosts(host: str) -> Response:
    cfg = _cfg()
    if host not in nodeconfig.mirrored_hosts(cfg):
        abort(404)
    return _text(nodeconfig.hosts_toml(cfg, host), "application/toml")


@bp.get("/containerd/setup.sh")
def containerd_setup() -> Response:
    cfg = _cfg()
    hosts = [(h, nodeconfig.hosts_toml(cfg, h)) for h in nodeconfig.mirrored_hosts(cfg)]
    script = render_template(
        "containerd-setup.sh",
        base_url=cfg.base_url,
        certs_dir=nodeconfig.CERTS_DIR,
        sandbox_image=nodeconfig.pause_image(cfg, _version()),
        hosts=hosts,
    )
    return _text(script, "text/x-shellscript")


@bp.get("/crio/registries.conf")
def crio_registries() -> Response:
    cfg = _cfg()
    body = nodeconfig.crio_registries_conf(cfg, nodeconfig.mirrored_hosts(cfg))
    return _text(body, "application/toml")


@bp.get("/crio/crio.conf")
def crio_conf() -> Response:
    return _text(nodeconfig.crio_conf(_cfg(), _version()), "application/toml")


@bp.get("/images.txt")
def images_txt() -> Response:
    """upstream reference, mirrored reference@digest: one image per line."""
    from mirror.images.sync import mirrored_images

    lines = ["# upstream mirrored@digest (from the last sync)"]
    for upstream, mirrored, digest in mirrored_images(_cfg()):
        lines.append(f"{upstream} {mirrored}@{digest}")
    return _text("\n".join(lines) + "\n")


@bp.get("/bootstrap.sh")
def bootstrap() -> Response:
    """Node preparation script; `curl -fsS BASE/bootstrap.sh | sudo bash -s -- --runtime ...`."""
    cfg = _cfg()
    version = nodeconfig.default_version(cfg) if cfg.kubernetes_versions else ""
    defs = current_app.config["MIRROR_REPOS"]
    script = render_template(
        "bootstrap.sh",
        base_url=cfg.base_url,
        kubernetes_version=version,
        registry=cfg.registry.url,
        repo_ids=[d.id for d in defs],
    )
    return _text(script, "text/x-shellscript")
