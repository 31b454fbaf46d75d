"""`mirror serve`: nginx in front of gunicorn (or gunicorn alone), started and stopped as one.

With nginx (on PATH, or in /usr/sbin), `mirror serve` runs two children:
  * gunicorn (`python -m mirror.web.server`) on a unix socket in a private runtime dir, and
  * nginx, `daemon off`, listening on `--bind`, with a config generated at every start
    (mirror.web.nginx): static files from the data dir, the rest proxied to gunicorn.
Without nginx (or with `--frontend gunicorn` / `MIRROR_FRONTEND=gunicorn`) gunicorn alone
listens on `--bind` and serves everything, files with sendfile(2).

The runtime dir (`$RUNTIME_DIRECTORY` or a new `mirror-serve-*` dir under $TMPDIR, removed on
exit) holds nginx.conf, nginx.pid, nginx's temp dirs, the gunicorn socket and the Prometheus
multiprocess files. nginx logs go to `<data_dir>/log/nginx-{access,error}.log` (errors also
to stderr, next to gunicorn's log lines).

With tls on, the server certificate is checked hourly and on SIGHUP, renewed when due
(mirror.tls), nginx reloaded with it and the embedded registry restarted (`on_renewed`).

SIGTERM or SIGINT stops both children (gracefully, bounded) and returns; the caller then
stops the embedded registry. Children get SIGTERM from the kernel if `mirror serve` itself
dies (PR_SET_PDEATHSIG), so no server outlives it. If a child exits on its own, the other is
stopped and `mirror serve` fails (exit 3): a supervisor (systemd, podman) restarts the whole.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from mirror import tls
from mirror.config import Config
from mirror.errors import EnvironmentProblem, MirrorError
from mirror.web import nginx as nginx_conf

log = logging.getLogger(__name__)
FRONTENDS = ("auto", "nginx", "gunicorn")
STOP_TIMEOUT = 15.0  # gunicorn's graceful_timeout is 10 s, nginx's worker_shutdown_timeout 5 s
START_TIMEOUT = 30.0
TLS_CHECK_SECONDS = 3600.0  # how often a running serve checks its certificate's expiry
_BIND_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):[0-9]{1,5}$|^unix:/[^\s;{}'\"]+$")
PR_SET_PDEATHSIG = 1


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    stop_signal: signal.Signals


def choose_nginx(frontend: str) -> str | None:
    """The nginx binary to put in front, or None for gunicorn alone."""
    if frontend == "gunicorn":
        return None
    found = nginx_conf.find_nginx()
    if found is None and frontend == "nginx":
        raise EnvironmentProblem("--frontend nginx: nginx is not installed (not on PATH)")
    return found


def check_bind(bind: str) -> None:
    # The address ends up in nginx.conf: nothing but HOST:PORT or unix:/PATH gets in.
    if not _BIND_RE.match(bind):
        raise EnvironmentProblem(f"--bind {bind!r}: expected HOST:PORT or unix:/PATH")


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when `mirror serve` dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _spawn(name: str, argv: list[str], env: dict[str, str], stop: signal.Signals) -> _Child:
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    log.info("started %s (pid %d)", name, proc.pid)
    return _Child(name, proc, stop)


def _remove_stale_runtime_dirs(base: Path) -> None:
    """Runtime dirs of a `mirror serve` that was SIGKILLed (no chance to clean up)."""
    for old in base.glob("mirror-serve-*"):
        try:
            pid = int((old / "serve.pid").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except (OSError, ValueError):
            pass  # not ours, or not readable: leave it


@contextlib.contextmanager
def _runtime_dir() -> Iterator[Path]:
    base = Path(os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or tempfile.gettempdir())
    _remove_stale_runtime_dirs(base)
    path = Path(tempfile.mkdtemp(prefix="mirror-serve-", dir=base))
    (path / "serve.pid").write_text(f"{os.getpid()}\n")
    # nginx workers may run as another user (the data dir's owner): they need to reach the
    # gunicorn socket and their temp dirs in here. Nothing in it is secret.
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _log_dir(cfg: Config, runtime: Path) -> Path:
    logs = cfg.data_dir / "log"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        return logs
    except OSError as exc:  # e.g. a full disk: serve anyway, logs are not worth an outage
        log.error("cannot create %s (%s); nginx logs go to %s", logs, exc.strerror, runtime)
        return runtime


def _nginx_argv(nginx: str, cfg: Config, bind: str, runtime: Path, upstream: str) -> list[str]:
    site = nginx_conf.site_config(cfg.data_dir.resolve(), [bind], upstream, tls.server_files(cfg))
    text = nginx_conf.main_config(
        nginx=nginx,
        site=site,
        runtime=runtime,
        logs=_log_dir(cfg, runtime),
        user=nginx_conf.worker_user(cfg.data_dir),
    )
    conf = runtime / "nginx.conf"
    conf.write_text(text)  # ephemeral, in the runtime dir: no durability needed
    # -e: the error log nginx opens before it has read the config (1.19.5+).
    return [nginx, "-p", str(runtime), "-c", str(conf), "-e", "stderr"]


def _gunicorn_argv(
    cfg: Config, bind: str, workers: int, runtime: Path, public: bool = False
) -> list[str]:
    """public: gunicorn listens on `bind` itself (no nginx), so it serves HTTPS when tls is on."""
    assert cfg.config_path is not None, "serve needs a config loaded from a file"
    config = str(cfg.config_path)
    argv = [sys.executable, "-m", "mirror.web.server", config, bind, str(workers), str(runtime)]
    return argv + (["tls"] if public and tls.enabled(cfg) else [])


def _wait_for_socket(sock: Path, child: _Child, stopping: threading.Event) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not sock.exists():
        if child.proc.poll() is not None:
            raise EnvironmentProblem(f"gunicorn exited with status {child.proc.returncode}")
        if stopping.is_set():
            return
        if time.monotonic() > deadline:
            raise EnvironmentProblem(f"gunicorn did not listen on {sock} in {START_TIMEOUT}s")
        time.sleep(0.05)


def _stop(children: list[_Child]) -> None:
    for child in children:
        if child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(child.stop_signal)
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in children:
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("%s did not stop in %ss; killing it", child.name, STOP_TIMEOUT)
            child.proc.kill()
            child.proc.wait()


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    stopping = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stopping.set()

    previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield stopping
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def run(
    cfg: Config,
    bind: str,
    workers: int,
    frontend: str = "auto",
    on_renewed: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; raises EnvironmentProblem when a server fails.
    `on_renewed` runs after the server certificate was renewed (restarts the registry)."""
    check_bind(bind)
    nginx = choose_nginx(frontend)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    children: list[_Child] = []
    with _stop_on_signals() as stopping, _runtime_dir() as runtime:
        metrics = runtime / "metrics"
        metrics.mkdir()
        # Counters from every gunicorn worker add up only in prometheus_client's
        # multiprocess mode; the directory must be empty when the server starts.
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
        renewal = _TlsRenewal(cfg, on_renewed)  # its SIGHUP handler before anything listens
        try:
            _start(children, cfg, bind, workers, nginx, runtime, env, stopping)
            _supervise(children, stopping, renewal)
        finally:
            renewal.close()
            _stop(children)


def _start(
    children: list[_Child],
    cfg: Config,
    bind: str,
    workers: int,
    nginx: str | None,
    runtime: Path,
    env: dict[str, str],
    stopping: threading.Event,
) -> None:
    """gunicorn (on `bind`, or on a private socket behind nginx), then nginx on `bind`.
    Each child is appended as soon as it runs, so the caller stops whatever did start."""
    if nginx is None:
        log.info("nginx not used: gunicorn alone on %s", bind)
        argv = _gunicorn_argv(cfg, bind, workers, runtime, public=True)
        children.append(_spawn("gunicorn", argv, env, signal.SIGTERM))
        return
    sock = runtime / "gunicorn.sock"
    argv = _gunicorn_argv(cfg, f"unix:{sock}", workers, runtime)
    children.append(_spawn("gunicorn", argv, env, signal.SIGTERM))
    _wait_for_socket(sock, children[0], stopping)
    if stopping.is_set():
        return
    argv = _nginx_argv(nginx, cfg, bind, runtime, f"unix:{sock}")
    # SIGQUIT: graceful, requests in flight finish (bounded by worker_shutdown_timeout).
    children.append(_spawn("nginx", argv, env, signal.SIGQUIT))


class _TlsRenewal:
    """Renews the server certificate while serving: every TLS_CHECK_SECONDS, and at once on
    SIGHUP. nginx is told to reload (SIGHUP) when the certificate changed; gunicorn reads
    it for every new connection; `on_renewed` restarts the embedded registry we started."""

    def __init__(self, cfg: Config, on_renewed: Callable[[], None] | None) -> None:
        self.cfg = cfg
        self.on_renewed = on_renewed
        self.due = time.monotonic() + TLS_CHECK_SECONDS
        self.now = threading.Event()
        self.previous: Callable[[int, FrameType | None], object] | int | None = None
        self.handling = tls.enabled(cfg) and threading.current_thread() is threading.main_thread()
        if self.handling:
            self.previous = signal.signal(signal.SIGHUP, lambda signum, frame: self.now.set())

    def close(self) -> None:
        if self.handling:
            previous = signal.SIG_DFL if self.previous is None else self.previous
            signal.signal(signal.SIGHUP, previous)

    def __call__(self, children: list[_Child]) -> None:
        if not tls.enabled(self.cfg) or not (self.now.is_set() or time.monotonic() > self.due):
            return
        self.now.clear()
        self.due = time.monotonic() + TLS_CHECK_SECONDS
        files = tls.server_files(self.cfg)
        assert files is not None
        before = files.cert.read_bytes() if files.cert.exists() else b""
        try:
            tls.ensure(self.cfg)
        except MirrorError as exc:  # e.g. the CA key went missing: keep serving what we have
            log.error("TLS certificate not renewed: %s", exc)
            return
        if files.cert.read_bytes() == before:
            return
        for child in children:
            if child.name == "nginx" and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGHUP)
                log.info("renewed server certificate: nginx reloaded")
        if self.on_renewed is not None:
            try:
                self.on_renewed()
                log.info("renewed server certificate: embedded registry restarted")
            except MirrorError as exc:
                log.error("embedded registry not restarted after the renewal: %s", exc)
        elif self.cfg.registry.embedded:
            log.warning(
                "renewed server certificate: restart mirror-registry.service (or whatever "
                "runs the registry) for it to present the new one"
            )


def _supervise(
    children: list[_Child], stopping: threading.Event, renew: Callable[[list[_Child]], None]
) -> None:
    while not stopping.wait(0.5):
        renew(children)
        for child in children:
            code = child.proc.poll()
            if code is not None:
                raise EnvironmentProblem(f"{child.name} exited with status {code}")
