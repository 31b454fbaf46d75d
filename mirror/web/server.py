"""`mirror serve`: the Flask app under gunicorn, configured in code (no gunicorn CLI needed)."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from mirror.config import Config
from mirror.web import create_app


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, cfg: Config, options: dict[str, Any]) -> None:
        self.cfg_obj = cfg
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app(self.cfg_obj)


def serve(cfg: Config, bind: str, workers: int = 4, threads: int = 4) -> None:
    # gthread workers: dnf and curl keep connections open.
    options = {
        "bind": bind,
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "accesslog": "-",
        "errorlog": "-",
        "timeout": 120,
        "graceful_timeout": 10,
        # No "sendfile" key: it is a store_const setting, so setting it to anything, even
        # True, turns sendfile off. Left unset, gunicorn uses sendfile(2) for file bodies.
    }
    _Gunicorn(cfg, options).run()
