"""Routes for what dnf needs: /repos/ (published trees), /repofiles/, /keys/."""

from __future__ import annotations

import html
import os
from datetime import UTC, datetime
from pathlib import Path

from flask import Blueprint, Response, abort, current_app, request
from werkzeug.security import safe_join
from werkzeug.wsgi import wrap_file

from mirror.config import Config
from mirror.repofile import RepoDefinition, expand_targets
from mirror.web import documents

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
    found = tree_entry(root, subpath)
    if isinstance(found, Response):
        return found
    resp = send_consistent(found, root=root)
    if found.name == "repomd.xml" or found.name.startswith("repomd.xml."):
        resp.headers["Cache-Control"] = "no-cache"  # the one file that changes in place
    return resp


def tree_entry(root: Path, subpath: str) -> Path | Response:
    """The published file below `root` that `subpath` names; for a directory its listing
    (or the redirect to its trailing-slash URL); 404 for anything else. Every static tree
    (/repos/, /files/, /charts/) is looked up this way, with nginx's rules."""
    target = safe_join(str(root), subpath) if subpath else str(root)
    # Hidden names anywhere in the path (temp files, downloads in progress, a staging dir)
    # are not published; nginx's rule is the same (`location ~ /\.`).
    if target is None or any(part.startswith(".") for part in subpath.split("/")):
        abort(404)
    path = Path(target)
    if path.is_dir():
        if not _real_path_is(str(path), _expected_real(root, path)):
            abort(404)  # a symlinked directory below root
        if subpath and not request.path.endswith("/"):
            return Response(status=301, headers={"Location": request.path + "/"})
        return _listing(path, request.path)
    if not path.is_file() or path.name.endswith(".part"):
        abort(404)
    return path


def _expected_real(root: Path, path: Path) -> str:
    """Where `path` (already normalized under `root` by safe_join) is when no symlink is
    followed on the way from root down to it."""
    return os.path.join(os.path.realpath(root), os.path.relpath(path, root))


def _real_path_is(path: str, expected: str) -> bool:
    return os.path.realpath(path) == expected


def _fd_path_is(fd: int, expected: str, path: Path) -> bool:
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: fall back to the path (racy, still refuses planted links)
        return _real_path_is(str(path), expected)
    # A file renamed over after our open (a publish) is still the file we meant to send.
    return real.removesuffix(" (deleted)") == expected


def send_consistent(path: Path, mimetype: str | None = None, *, root: Path) -> Response:
    """Send a file whose headers and body are guaranteed to describe the same inode.

    werkzeug's send_file stats the path and then opens it; when publish renames a new
    repomd.xml into place between the two, Content-Length belongs to one file and the body
    to another, and the client hangs waiting for bytes. Opening first and fstat-ing the
    open file closes that gap. Range, ETag, Last-Modified and 304s come from
    make_conditional; under gunicorn the body goes out via wsgi.file_wrapper (sendfile).

    Symlinks below `root` are not followed (a link planted in the published tree must not
    hand out a file from elsewhere), the rule nginx applies with `disable_symlinks on`.
    The check is on the open descriptor, so no rename between check and open can fool it.
    """
    try:
        fh = path.open("rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError):
        abort(404)  # ValueError: a NUL byte in the name
    if not _fd_path_is(fh.fileno(), _expected_real(root, path), path):
        fh.close()
        abort(404)
    st = os.fstat(fh.fileno())
    # The table nginx uses too; .gz stays application/gzip, so no client gunzips repodata.
    suffix = path.suffix.lstrip(".")
    guessed = mimetype or documents.REPO_MIMETYPES.get(suffix, "application/octet-stream")
    resp = current_app.response_class(
        wrap_file(request.environ, fh), content_type=guessed, direct_passthrough=True
    )
    resp.content_length = st.st_size
    resp.last_modified = datetime.fromtimestamp(st.st_mtime, UTC)
    resp.set_etag(f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}")
    resp.cache_control.no_cache = True
    resp.make_conditional(request.environ, accept_ranges=True, complete_length=st.st_size)
    return resp


def _listing(directory: Path, url_path: str) -> Response:
    entries = sorted(
        (
            p
            for p in directory.iterdir()
            if not p.name.startswith(".") and not p.name.endswith(".part") and not p.is_symlink()
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
    return Response(documents.mirror_repo(_cfg(), _definitions()), mimetype="text/plain")


@bp.get("/repofiles/<repo_id>.repo")
def one_repofile(repo_id: str) -> Response:
    for definition in _definitions():
        if definition.id == repo_id:
            return Response(documents.one_repo(_cfg(), definition), mimetype="text/plain")
    abort(404)


@bp.get("/keys/<path:name>")
def repo_key(name: str) -> Response:
    # Only the key files of configured targets (`docker-ce-stable.gpg`, `kubernetes/v1.36.gpg`):
    # the name is matched against them, never joined onto keys_root as the client sent it.
    cfg = _cfg()
    known = {target.key_file for target in expand_targets(_definitions(), cfg)}
    if name not in known:
        abort(404)
    root = cfg.keys_root
    return send_consistent(root / name, "application/pgp-keys", root=root)
