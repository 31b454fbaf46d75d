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
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from mirror import fsutil, tls
from mirror.config import Config
from mirror.errors import EnvironmentProblem, MirrorError

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
    url = url.partition("/")[0]  # registry.url's path (a project) is not where /v2/ is
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


def write_config(cfg: Config, addr: str | None = None, name: str = "config.yml") -> Path:
    """data_dir/registry/config.yml for the embedded registry; returns its path. `addr`
    (default: every interface at registry.url's port) and `name` for mirror prune's own
    loopback instance."""
    root = registry_dir(cfg)
    http: dict[str, object] = {
        "addr": addr or f":{port_of(cfg.registry.url, tls.local_registry_verify(cfg))}",
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    # A private loopback instance (`addr`, mirror prune's) stays plain HTTP: only prune talks
    # to it, and the certificate names the hosts nodes use, not 127.0.0.1:<random port>.
    serve_tls = addr is None and tls.enabled(cfg)
    files = tls.ensure(cfg) if serve_tls else None
    if files is not None:
        http["tls"] = {"certificate": str(files.cert), "key": str(files.key)}
    config = {
        "version": 0.1,
        "log": {"level": "info", "fields": {"service": "registry"}},
        "storage": _storage(cfg, root),
        "http": http,
    }
    path = root / name
    fsutil.atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
    return path


def _storage(cfg: Config, root: Path) -> dict[str, Any]:
    """distribution's `storage:`: registry.storage handed through as written (e.g. its `s3`
    driver with `redirect: {disable: true}`), else the filesystem under data_dir. Deletes stay
    enabled either way: replacing a moved tag's manifest needs them."""
    if cfg.registry.storage is not None:
        return {**cfg.registry.storage, "delete": {"enabled": True}}
    storage = root / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    return {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}}


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


def _wait_ready(
    cfg: Config, proc: subprocess.Popen[bytes], logfile: Path, url: str | None = None
) -> None:
    url = url or cfg.registry.url
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EnvironmentProblem(
                f"embedded registry for {url} exited with code {proc.returncode}; "
                f"last lines of {logfile}:\n{_tail(logfile)}"
            )
        if registry_answers(url, tls.local_registry_verify(cfg) and url == cfg.registry.url, 1.0):
            return
        time.sleep(0.05)
    _stop(proc)
    raise EnvironmentProblem(
        f"embedded registry did not answer on {url} within {START_TIMEOUT:.0f}s; "
        f"last lines of {logfile}:\n{_tail(logfile)}"
    )


def _serve(cfg: Config, config: Path, logfile: Path, url: str) -> subprocess.Popen[bytes]:
    """`registry serve CONFIG` in its own session (so _stop can always signal it by pid),
    logging to `logfile`; returns once it answers on `url`, else stops it and raises."""
    binary = registry_binary()
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            [binary, "serve", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_ready(cfg, proc, logfile, url)
    except BaseException:
        _stop(proc)
        raise
    return proc


class EmbeddedRegistry:
    """The embedded registry ensure_registry started (own session, log in
    data_dir/registry/registry.log)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.logfile = registry_dir(cfg) / "registry.log"
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        config = write_config(self.cfg)  # also makes or renews its certificate (mirror.tls)
        proc = _serve(self.cfg, config, self.logfile, self.cfg.registry.url)
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
            f"registry {url} does not answer (GET {scheme}://{cfg.registry.host}/v2/) and "
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


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def private_registry(cfg: Config) -> Iterator[str]:
    """The embedded registry's storage served on a loopback port nobody else knows, for the
    block (mirror prune deletes manifests through it, then collects garbage with it stopped);
    yields its "127.0.0.1:PORT". The caller has made sure nothing else serves the storage."""
    _check_embeddable(cfg)
    addr = f"127.0.0.1:{_free_loopback_port()}"
    config = write_config(cfg, addr, "prune-config.yml")
    proc = _serve(cfg, config, registry_dir(cfg) / "registry.log", addr)
    log.debug("registry storage served on %s for prune (pid %d)", addr, proc.pid)
    try:
        yield addr
    finally:
        _stop(proc)


GC_TIMEOUT = 6 * 3600.0  # a mark and sweep over a few TB of blobs; never forever
_GC_SUMMARY_RE = re.compile(r"(\d+) blobs marked, (\d+) blobs and (\d+) manifests eligible")


@dataclass(frozen=True)
class GarbageCollection:
    marked: int | None  # blobs still referenced
    blobs_deleted: int | None
    manifests_deleted: int | None


def garbage_collect(cfg: Config) -> GarbageCollection:
    """`registry garbage-collect CONFIG` on the embedded storage; the registry must not be
    running (distribution's requirement: stopped or read-only). Never --delete-untagged: in
    distribution 2.8 it deletes the platform manifests of every multi-arch index (they are
    untagged) and every image mirrored by digest only."""
    binary = registry_binary()
    v2 = registry_dir(cfg) / "storage" / "docker" / "registry" / "v2"
    if not ((v2 / "repositories").is_dir() and (v2 / "blobs").is_dir()):
        return GarbageCollection(0, 0, 0)  # nothing was ever pushed (2.8 fails on that)
    config = write_config(cfg)
    proc = subprocess.run(
        [binary, "garbage-collect", str(config)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=GC_TIMEOUT,
        check=False,
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-_LOG_TAIL_LINES:])
        raise MirrorError(
            f"registry garbage-collect {config} failed (exit {proc.returncode}):\n{tail}"
        )
    found = _GC_SUMMARY_RE.search(output)
    if found is None:
        return GarbageCollection(None, None, None)
    return GarbageCollection(int(found[1]), int(found[2]), int(found[3]))
