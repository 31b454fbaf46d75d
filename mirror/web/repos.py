"""Routes for what dnf needs: /repos/ (published trees), /repofiles/, /keys/."""

from __future__ import annotations

import html
from pathlib import Path

from flask import Blueprint, Response, abort, current_app, request, send_from_directory
from werkzeug.security import safe_join

from mirror.config import Config
from mirror.repofile import RepoDefinition
from mirror.web import repofiles

bp = Blueprint("repos", __name__)


def _cfg() -> Config:
    cfg: Config = current_app.config["MIRROR"]
    return cfg


def _definitions() -> list[RepoDefinition]:
    defs: list[RepoDefinition] = current_app.config["MIRROR_REPOS"]
    return defs


@bp.get("/repos/", defaults={"subpath": ""})
@bp.get("/repos/<path:subpath>")
def repo_tree(subpath: str) -> Response:
    root = _cfg().repos_root
    target = safe_join(str(root), subpath) if subpath else str(root)
    if target is None:
        abort(404)
    path = Path(target)
    if path.is_dir():
        if subpath and not request.path.endswith("/"):
            return Response(status=301, headers={"Location": request.path + "/"})
        return _listing(path, request.path)
    if not path.is_file() or path.name.endswith((".part",)) or path.name.startswith("."):
        abort(404)
    # conditional=True gives Range, ETag, Last-Modified and 304s; under gunicorn the file
    # goes out through wsgi.file_wrapper, i.e. sendfile(2), when no range is asked for.
    resp = send_from_directory(root, subpath, conditional=True, max_age=0)
    if path.name == "repomd.xml" or path.name.startswith("repomd.xml."):
        resp.headers["Cache-Control"] = "no-cache"  # the one file that changes in place
    return resp


def _listing(directory: Path, url_path: str) -> Response:
    entries = sorted(
        (
            p
            for p in directory.iterdir()
            if not p.name.startswith(".") and not p.name.endswith(".part")
        ),
        key=lambda p: (not p.is_dir(), p.name),
    )
    rows = "".join(
        f'<li><a href="{html.escape(p.name)}{"/" if p.is_dir() else ""}">'
        f"{html.escape(p.name)}{'/' if p.is_dir() else ''}</a></li>"
        for p in entries
    )
    body = (
        f"<!doctype html><meta charset=utf-8><title>{html.escape(url_path)}</title>"
        f"<h1>Index of {html.escape(url_path)}</h1><ul>"
        f'<li><a href="../">../</a></li>{rows}</ul>'
    )
    return Response(body, mimetype="text/html")


@bp.get("/repofiles/mirror.repo")
def all_repofiles() -> Response:
    return Response(repofiles.render(_definitions(), _cfg()), mimetype="text/plain")


@bp.get("/repofiles/<repo_id>.repo")
def one_repofile(repo_id: str) -> Response:
    for definition in _definitions():
        if definition.id == repo_id:
            return Response(repofiles.render([definition], _cfg()), mimetype="text/plain")
    abort(404)


@bp.get("/keys/<repo_id>.gpg")
def repo_key(repo_id: str) -> Response:
    if not any(d.id == repo_id for d in _definitions()):
        abort(404)
    return send_from_directory(
        _cfg().keys_root, f"{repo_id}.gpg", conditional=True, mimetype="application/pgp-keys"
    )
