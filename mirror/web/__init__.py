"""The web service: `create_app(config)` is the Flask app factory used by gunicorn and tests.

Flask is imported inside `create_app`, not here: `mirror sync` imports `mirror.web.static` to
render the static node files, and must not pay for Flask doing so.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from mirror.config import Config
from mirror.repofile import load_definitions

if TYPE_CHECKING:
    from flask import Flask


def create_app(cfg: Config) -> Flask:
    from flask import Flask

    app = Flask(__name__)
    # Every value rendered into a shell script goes through shquote, whatever validated it.
    app.jinja_env.filters["shquote"] = shlex.quote
    app.config["MIRROR"] = cfg
    # Definitions are read once: the .repo files we hand out describe what the config
    # declared when the service started (restart after editing repos/, like any daemon).
    app.config["MIRROR_REPOS"] = load_definitions(cfg)
    from mirror.web import downstream, files, http_metrics, nodes, repos, status

    app.register_blueprint(repos.bp)
    app.register_blueprint(nodes.bp)
    app.register_blueprint(status.bp)
    app.register_blueprint(files.bp)
    app.register_blueprint(downstream.bp)
    http_metrics.install(app)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
