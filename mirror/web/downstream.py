"""`GET /downstream.json`: what a downstream mirror (upstream_mirror: this node) needs
(mirror.downstream.index), with a strong ETag so that an unchanged mirror costs a 304."""

from __future__ import annotations

import contextlib

from flask import Blueprint, Response, current_app, request

from mirror.config import Config
from mirror.downstream import index
from mirror.errors import ConfigError
from mirror.repofile import RepoDefinition, load_definitions

bp = Blueprint("downstream", __name__)


@bp.get(index.PATH)
def downstream_index() -> Response:
    cfg: Config = current_app.config["MIRROR"]
    definitions: list[RepoDefinition] = current_app.config["MIRROR_REPOS"]
    if cfg.upstream_mirror is not None:
        # A middle tier: its own upstream mirror's repos change at sync time, not at start.
        with contextlib.suppress(ConfigError):
            definitions = load_definitions(cfg)
    body, etag = index.render(cfg, definitions)
    reply = Response(body, mimetype="application/json")
    reply.set_etag(etag)
    # Always revalidated: the document changes whenever a sync publishes something.
    reply.headers["Cache-Control"] = "no-cache"
    reply.make_conditional(request)  # 304 and no body when If-None-Match matches
    return reply
