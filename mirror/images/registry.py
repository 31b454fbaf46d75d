"""The local registry: probe it, or run the embedded CNCF distribution registry.

The embedded registry is the distro's own binary: `docker-registry` (Debian/Ubuntu package
docker-registry) or `registry` (EL package docker-distribution, EPEL), with a config we write
to data_dir/registry/config.yml: filesystem storage under data_dir/registry/storage, deletes
enabled, on every interface at the port of registry.url, no auth; plain HTTP, or HTTPS with
the mirror's certificate when `tls.mode` is not off (mirror.tls; probes and pushes then
verify it with the mirror's CA).

Never two on one address: whatever answers on registry.url (ours from `mirror serve` or
`mirror registry`, or a site registry) is used as is.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import yaml

from mirror import fsutil, tls
from mirror.config import Config
from mirror.errors import EnvironmentProblem

log = logging.getLogger("mirror.registry")

BINARY_NAMES = ("docker-registry", "registry")
MISSING_BINARY = (
    "registry binary not found: install docker-registry (Debian/Ubuntu) "
    "or docker-distribution (EL, EPEL)"
)
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_LOG_TAIL_LINES = 15


def _base_urls(url: str, tls: bool) -> list[str]:
    """Where to probe: https only when verifying TLS; otherwise http, then https (skopeo with
    tls-verify=false falls back the same way, and a self-signed https registry is fine)."""
    if "://" in url:
        return [url.rstrip("/")]
    return [f"https://{url}"] if tls else [f"http://{url}", f"https://{url}"]


def registry_answers(url: str, tls: bool, timeout: float = 2.0) -> bool:
    """True when a registry answers GET /v2/ on `url` ("host:port") with 200 or 401."""
    from mirror.http import Fetcher, FetchError, RequestOptions

    # Only "is something there": no retries, and no certificate check (skopeo and the
    # registry API client verify certificates when it matters).
    with Fetcher(timeout=timeout, retries=0) as fetcher:
        for base in _base_urls(url, tls):
            try:
                status = fetcher.request("GET", f"{base}/v2/", RequestOptions(verify_tls=False))
            except FetchError:
                continue
            if status.status in (200, 401):
                return True
    return False


def port_of(url: str, tls: bool) -> int:
    """The port in registry.url; 443/80 (https/http) when it names none."""
    hostport = url.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if sep and port.isdigit() and not host.endswith(":"):  # not an IPv6 literal's last group
        return int(port)
    return 443 if tls else 80


def registry_binary() -> str:
    """docker-registry (Debian) or registry (EL docker-distribution), searched on PATH."""
    for name in BINARY_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise EnvironmentProblem(MISSING_BINARY)


def registry_dir(cfg: Config) -> Path:
    return cfg.data_dir / "registry"


def write_config(cfg: Config) -> Path:
    """data_dir/registry/config.yml for the embedded registry; returns its path."""
    root = registry_dir(cfg)
    storage = root / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    http: dict[str, object] = {
        "addr": f":{port_of(cfg.registry.url, tls.local_registry_verify(cfg))}",
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    files = tls.ensure(cfg) if tls.local_registry_ca(cfg) is not None else None
    if files is not None:
        http["tls"] = {"certificate": str(files.cert), "key": str(files.key)}
    config = {
        "version": 0.1,
        "log": {"level": "info", "fields": {"service": "registry"}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
        },
        "http": http,
    }
    path = root / "config.yml"
    fsutil.atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
    return path


def _check_embeddable(cfg: Config) -> None:
    if cfg.registry.tls_verify and not tls.enabled(cfg):
        raise EnvironmentProblem(
            f"registry {cfg.registry.url}: the embedded registry serves plain HTTP with "
            "tls.mode off, but registry.tls_verify is true; set tls.mode (generate or files), "
            "or registry.tls_verify: false"
        )


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process we started (its own session: by pid/pgid), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait(timeout=STOP_TIMEOUT)


def _wait_ready(cfg: Config, proc: subprocess.Popen[bytes], logfile: Path) -> None:
    url = cfg.registry.url
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EnvironmentProblem(
                f"embedded registry for {url} exited with code {proc.returncode}; "
                f"last lines of {logfile}:\n{_tail(logfile)}"
            )
        if registry_answers(url, tls.local_registry_verify(cfg), timeout=1.0):
            return
        time.sleep(0.05)
    _stop(proc)
    raise EnvironmentProblem(
        f"embedded registry did not answer on {url} within {START_TIMEOUT:.0f}s; "
        f"last lines of {logfile}:\n{_tail(logfile)}"
    )


class EmbeddedRegistry:
    """The embedded registry ensure_registry started (own session, log in
    data_dir/registry/registry.log)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.logfile = registry_dir(cfg) / "registry.log"
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        binary = registry_binary()
        config = write_config(self.cfg)  # also makes or renews its certificate (mirror.tls)
        with self.logfile.open("ab") as out:
            proc = subprocess.Popen(
                [binary, "serve", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            _wait_ready(self.cfg, proc, self.logfile)
        except BaseException:
            _stop(proc)
            raise
        url = self.cfg.registry.url
        log.info("started embedded registry on %s (pid %d, log %s)", url, proc.pid, self.logfile)
        return proc

    def restart(self) -> None:
        """Stop and start again: distribution reads its certificate only at start, so a
        renewed one (mirror.tls) is presented after this."""
        _stop(self.proc)
        self.proc = self._start()

    def stop(self) -> None:
        _stop(self.proc)
        log.debug("stopped embedded registry (pid %d)", self.proc.pid)


@contextmanager
def ensure_registry(cfg: Config) -> Iterator[EmbeddedRegistry | None]:
    """A registry answering on registry.url for the duration of the block.

    Something already answers: used as is, nothing started (None). Otherwise, with
    registry.embedded, the embedded registry is started and stopped again on exit.
    embedded: false and nothing answers: EnvironmentProblem.
    """
    url, verify = cfg.registry.url, tls.local_registry_verify(cfg)
    if registry_answers(url, verify):
        log.debug("registry answers on %s; using it", url)
        yield None
        return
    if not cfg.registry.embedded:
        scheme = "https" if verify else "http"
        raise EnvironmentProblem(
            f"registry {url} does not answer (GET {scheme}://{url}/v2/) and "
            "registry.embedded is false: start it, or fix registry.url"
        )
    _check_embeddable(cfg)
    registry = EmbeddedRegistry(cfg)
    try:
        yield registry
    finally:
        registry.stop()


def run_foreground(cfg: Config) -> int:
    """`mirror registry` (mirror-registry.service): the embedded registry in the foreground,
    logging to our stdout/stderr (the journal). SIGTERM/SIGINT/SIGHUP are passed on to it.
    Returns its exit code (0 after a stop we passed on). Refuses when something already
    answers on registry.url."""
    url = cfg.registry.url
    if registry_answers(url, tls.local_registry_verify(cfg)):
        raise EnvironmentProblem(
            f"a registry already answers on {url}; not starting a second one "
            "(is mirror-registry.service or `mirror serve` already running?)"
        )
    _check_embeddable(cfg)
    binary = registry_binary()
    config = write_config(cfg)
    # Own session like the embedded one, so _stop can always signal it by pid; a terminal's
    # Ctrl-C reaches it through the forwarding handler below.
    proc = subprocess.Popen(
        [binary, "serve", str(config)], stdin=subprocess.DEVNULL, start_new_session=True
    )
    log.info("registry on %s (pid %d, storage %s)", url, proc.pid, registry_dir(cfg) / "storage")

    stop_requested: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGHUP:
            stop_requested.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, forward) for s in handled}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop(proc)
    if code < 0:  # killed by a signal: one we passed on is a clean stop (systemd, Ctrl-C)
        return 0 if -code in stop_requested else 128 - code
    return code
