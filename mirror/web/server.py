"""The Flask app under gunicorn, configured in code (no gunicorn CLI needed).

`mirror serve` runs this as a child process (`python -m mirror.web.server CONFIG BIND WORKERS`),
behind nginx on a private unix socket, or alone on the public address when nginx is missing
(mirror.web.frontend).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.gthread import ThreadWorker

from mirror.config import Config

# A request (line, headers and body) must arrive within this many seconds once its first
# byte did; nginx has the same bound (client_header_timeout / client_body_timeout).
REQUEST_READ_TIMEOUT = 10.0
WORKER_CLASS = "mirror.web.server.BoundedThreadWorker"


class _DeadlineSocket:
    """A client socket whose reads must all finish by `deadline` (None: no limit).

    gunicorn's gthread worker waits for a request's first byte without holding a thread, but
    then reads the rest on a blocking socket with no timeout: a client trickling its headers
    a byte at a time (slowloris) holds a thread for as long as it likes, and threads x workers
    such clients stop the service. Everything but `recv` goes to the real socket.
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.deadline: float | None = None

    def recv(self, size: int) -> bytes:
        if self.deadline is None:
            data: bytes = self._sock.recv(size)
            return data
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise NoMoreData(b"")  # gunicorn closes the connection, quietly
        previous = self._sock.gettimeout()
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(size)
            return data
        except TimeoutError:
            raise NoMoreData(b"") from None
        finally:
            self._sock.settimeout(previous)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class BoundedThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread, with a deadline on reading each request (see _DeadlineSocket)."""

    def handle(self, conn: Any) -> Any:
        if not isinstance(conn.sock, _DeadlineSocket):
            conn.sock = _DeadlineSocket(conn.sock)
        conn.sock.deadline = time.monotonic() + REQUEST_READ_TIMEOUT
        try:
            return super().handle(conn)
        finally:
            conn.sock.deadline = None


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, cfg: Config, options: dict[str, Any]) -> None:
        self.cfg_obj = cfg
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from mirror.web import create_app

        return create_app(self.cfg_obj)


def gunicorn_options(
    bind: str, workers: int, threads: int = 4, runtime: str | None = None
) -> dict[str, Any]:
    from gunicorn.config import Config as GunicornConfig

    # gthread workers: dnf and curl keep connections open.
    options: dict[str, Any] = {
        "bind": bind,
        "workers": workers,
        "threads": threads,
        "worker_class": WORKER_CLASS,
        "accesslog": "-",
        "errorlog": "-",
        # Behind nginx the peer is a unix socket: log the client nginx saw.
        "access_log_format": '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" '
        'xff="%({x-forwarded-for}i)s" %(M)sms',
        "timeout": 120,
        "graceful_timeout": 10,
        # No "sendfile" key: it is a store_const setting, so setting it to anything, even
        # True, turns sendfile off. Left unset, gunicorn uses sendfile(2) for file bodies.
    }
    # gunicorn 23+ opens a control socket, by default in $HOME/.gunicorn/: keep it with the
    # rest of this run's files (and two `mirror serve` from sharing one).
    if runtime is not None and "control_socket" in GunicornConfig().settings:
        options["control_socket"] = f"{runtime}/gunicorn.ctl"
    return options


def serve(
    cfg: Config, bind: str, workers: int = 4, threads: int = 4, runtime: str | None = None
) -> None:
    """Run gunicorn in this process until it is stopped (SIGTERM, SIGINT)."""
    _Gunicorn(cfg, gunicorn_options(bind, workers, threads, runtime)).run()


def main(argv: list[str]) -> None:
    """`python -m mirror.web.server CONFIG BIND WORKERS RUNTIME_DIR`: what
    mirror.web.frontend starts."""
    from pathlib import Path

    from mirror.config import load_config

    config, bind, workers, runtime = argv
    serve(load_config(Path(config)), bind, workers=int(workers), runtime=runtime)


if __name__ == "__main__":
    main(sys.argv[1:])
