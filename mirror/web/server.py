"""The Flask app under gunicorn, configured in code (no gunicorn CLI needed).

`mirror serve` runs this as a child process (`python -m mirror.web.server CONFIG BIND WORKERS`),
behind nginx on a private unix socket, or alone on the public address when nginx is missing
(mirror.web.frontend).
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import sys
import time
from functools import partial
from typing import Any

from gunicorn import http
from gunicorn.app.base import BaseApplication
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.gthread import TConn, ThreadWorker

from mirror.config import Config
from mirror.web.gunicorn_settings import SHARED

# A request (line, headers and body) must arrive within this many seconds once its first
# byte did; nginx has the same bound (client_header_timeout / client_body_timeout).
REQUEST_READ_TIMEOUT = 10.0


class _DeadlineSocket:
    """A client socket whose reads must all finish by `deadline` (None: no limit).

    gunicorn's gthread worker reads a request in a thread, on a blocking socket with no
    timeout: a client trickling bytes holds that thread for as long as it likes, and
    threads x workers such clients stop the service. Everything but `recv` goes to the real
    socket.
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
    """gthread that keeps slow clients off its threads.

    Stock gthread hands a connection to a thread as soon as it is readable and the thread then
    blocks until the whole request head has arrived. Here the main loop gathers the head with
    non-blocking reads first (as nginx does) and only a complete head goes to a thread; a
    head not complete within REQUEST_READ_TIMEOUT, or a client that closes, costs no thread
    and is dropped. Reads a thread still does (a body, a head over MAX_HEAD) are bounded by
    the same deadline (_DeadlineSocket).
    """

    MAX_HEAD = 64 * 1024  # past this, gunicorn's own limits answer 400/414 from a thread

    def init_process(self) -> None:
        self.gathering: dict[Any, float] = {}  # connection -> deadline for its request head
        super().init_process()  # runs the worker loop; must come last

    def accept(self, listener: Any) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())
        conn.sock = _DeadlineSocket(conn.sock)
        if self.cfg.is_ssl:  # the TLS handshake needs gthread's own path
            self.enqueue_req(conn)
            return
        self._gather(conn)

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """A kept-alive connection: its next request head is gathered the same way."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._gather(conn)

    def _gather(self, conn: Any) -> None:
        conn.head = bytearray()
        self.gathering[conn] = time.monotonic() + REQUEST_READ_TIMEOUT
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_bytes, conn))

    def _on_head_bytes(self, conn: Any, client: Any) -> None:
        try:
            data = conn.sock.recv(65536)  # non-blocking: the poller said readable
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.head += data
        complete = b"\n\r\n" in conn.head or b"\n\n" in conn.head
        if not complete and len(conn.head) < self.MAX_HEAD:
            return  # more to come; this costs no thread meanwhile
        del self.gathering[conn]
        self.poller.unregister(conn.sock)
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(bytes(conn.head))
        conn.data_ready = True
        self.enqueue_req(conn)

    def _drop(self, conn: Any) -> None:
        self.gathering.pop(conn, None)
        with contextlib.suppress(OSError, KeyError, ValueError):
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Called every loop iteration: also drop heads past their deadline (all of them
        once the worker stops)."""
        super().murder_pending()
        now = time.monotonic()
        for conn, deadline in list(self.gathering.items()):
            if deadline <= now or not self.alive:
                self._drop(conn)

    def handle(self, conn: Any) -> Any:
        if isinstance(conn.sock, _DeadlineSocket):
            conn.sock.deadline = time.monotonic() + REQUEST_READ_TIMEOUT
        try:
            return super().handle(conn)
        finally:
            if isinstance(conn.sock, _DeadlineSocket):
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

    options: dict[str, Any] = {**SHARED, "bind": bind, "workers": workers, "threads": threads}
    # gunicorn 23+ opens a control socket, by default in $HOME/.gunicorn/: keep it with the
    # rest of this run's files (and two `mirror serve` from sharing one).
    if runtime is not None and "control_socket" in GunicornConfig().settings:
        options["control_socket"] = f"{runtime}/gunicorn.ctl"
    return options


def serve(
    cfg: Config,
    bind: str,
    workers: int = 4,
    threads: int = 4,
    runtime: str | None = None,
    use_tls: bool = False,
) -> None:
    """Run gunicorn in this process until it is stopped (SIGTERM, SIGINT); HTTPS with the
    mirror's certificate (mirror.tls) when `use_tls`."""
    from mirror import tls

    options = gunicorn_options(bind, workers, threads, runtime)
    files = tls.server_files(cfg) if use_tls else None
    if files is not None:
        options.update(certfile=str(files.cert), keyfile=str(files.key))
    _Gunicorn(cfg, options).run()


def main(argv: list[str]) -> None:
    """`python -m mirror.web.server CONFIG BIND WORKERS RUNTIME_DIR [tls]`: what
    mirror.web.frontend starts ("tls": gunicorn alone on the public address, with HTTPS)."""
    from pathlib import Path

    from mirror.config import load_config

    config, bind, workers, runtime = argv[:4]
    use_tls = argv[4:] == ["tls"]
    serve(load_config(Path(config)), bind, workers=int(workers), runtime=runtime, use_tls=use_tls)


if __name__ == "__main__":
    main(sys.argv[1:])
