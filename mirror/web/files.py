"""Routes for mirrored files and chart repositories: /files/<path>, /charts/<repo>/<file>.

The same rules as /repos/ (mirror.web.repos) and as nginx's locations for them
(mirror.web.nginx): no path outside the tree, no symlink below data_dir followed, hidden and
.part files 404, Range/ETag/Last-Modified from the open file. Content types come from one
table (mirror.files.content_types); archives are sent as they are, never with a
Content-Encoding, so a .tgz arrives byte for byte as its digest says.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app

from mirror.config import Config
from mirror.files.content_types import content_type
from mirror.files.record import files_root
from mirror.web.repos import send_consistent, tree_entry

bp = Blueprint("files", __name__)
CHARTS_DIR = "charts"  # data_dir/charts/<repo-name>/: index.yaml and .tgz (mirror.charts)


def _cfg() -> Config:
    cfg: Config = current_app.config["MIRROR"]
    return cfg


@bp.get("/files/", defaults={"subpath": ""})
@bp.get("/files/<path:subpath>")
def files_tree(subpath: str) -> Response:
    return serve_tree(files_root(_cfg()), subpath)


@bp.get("/charts/", defaults={"subpath": ""})
@bp.get("/charts/<path:subpath>")
def charts_tree(subpath: str) -> Response:
    # index.yaml is rewritten in place by each charts sync: send_consistent's ETag comes
    # from the inode, so a rewrite is never answered 304 (nginx sends none for it).
    return serve_tree(_cfg().data_dir / CHARTS_DIR, subpath)


def serve_tree(root: Path, subpath: str) -> Response:
    """A file or a directory listing below `root`, or 404 (mirror.web.repos.tree_entry)."""
    found = tree_entry(root, subpath)
    if isinstance(found, Response):
        return found
    resp = send_consistent(found, content_type(found.name), root=root)
    # Upstream content under the mirror's origin: no browser may sniff it into HTML.
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp
