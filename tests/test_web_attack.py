"""The web side under load and attack, against nginx in front and against gunicorn alone.

200 concurrent clients, path traversal (plain, percent-encoded, double-encoded, NUL bytes,
backslashes, symlinks planted in the served trees), huge headers and slowloris clients: no
5xx, no byte of a file outside what is published, and the service keeps answering. Requests
go out over raw sockets where a client library would normalize the path first.
"""

from __future__ import annotations

import hashlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import Mirror, stop_process
from tests.test_web_static import FRONTENDS, on_port, start_serve, synced  # noqa: F401

pytestmark = pytest.mark.reliability

SECRET = b"TOP-SECRET-8d1f0c"  # in a file next to data_dir, never published
STATE_SECRET = b"STATE-SECRET-51aa"  # inside data_dir, but not a published tree
PASSWD = b"root:x:0:0:"


@pytest.fixture(scope="module", params=FRONTENDS)
def target(request: pytest.FixtureRequest, synced: Mirror) -> Iterator[tuple[str, Mirror]]:  # noqa: F811
    m = on_port(synced)
    start_serve(m, request.param)
    _plant(m)
    yield request.param, m
    for p in m.procs:
        stop_process(p)


def _plant(m: Mirror) -> None:
    """A secret outside data_dir, one inside it but unpublished, and symlinks to them in
    every tree the front end serves (after `mirror serve` rendered www/, which would remove
    strangers)."""
    secret = m.dir.parent / "secret.txt"
    secret.write_bytes(SECRET + b"\n")
    (m.data / "state").mkdir(exist_ok=True)
    (m.data / "state" / "planted.txt").write_bytes(STATE_SECRET + b"\n")
    links = {
        m.data / "repos" / "kubernetes" / "evil.rpm": secret,
        m.data / "repos" / "kubernetes" / "evil-dir": secret.parent,
        m.data / "repos" / "evil-root": Path("/"),
        m.data / "repos" / "evil-state": m.data / "state",
        m.data / "keys" / "evil.gpg": secret,
        m.data / "www" / "repofiles" / "evil.repo": secret,
        m.data / "www" / "crio" / "evil-dir": secret.parent,
    }
    for link, dest in links.items():
        if not link.is_symlink():
            link.symlink_to(dest)


def raw(m: Mirror, request: bytes, timeout: float = 10) -> tuple[int | None, bytes]:
    """Send `request` as is; (status or None if the server closed without one, response)."""
    data = b""
    with socket.create_connection(("127.0.0.1", m.port), timeout=timeout) as s:
        try:
            s.sendall(request)
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass  # refused mid-request: allowed, as long as the service stays up
    if not data.startswith(b"HTTP/"):
        return None, data
    return int(data.split(b" ", 2)[1]), data


def get_raw(m: Mirror, path: str | bytes) -> tuple[int | None, bytes]:
    target = path.encode() if isinstance(path, str) else path
    return raw(m, b"GET " + target + b" HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n")


def assert_up(m: Mirror) -> None:
    assert requests.get(f"{m.base_url}/healthz", timeout=10).status_code == 200
    repomd = requests.get(f"{m.base_url}/repos/kubernetes/repodata/repomd.xml", timeout=10)
    assert repomd.status_code == 200
    assert m.procs[-1].poll() is None


TRAVERSALS = [
    "/repos/../../etc/passwd",
    "/repos/../../../../../../../../etc/passwd",
    "/repos/kubernetes/../../../../../../etc/passwd",
    "/repos/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/repos/%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/repos/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/repos/%252e%252e/%252e%252e/%252e%252e/etc/passwd",
    "/repos/%252e%252e%252f%252e%252e%252f%252e%252e%252fetc%252fpasswd",
    "/repos/..%5c..%5c..%5c..%5c..%5cetc%5cpasswd",
    "/repos/..\\..\\..\\..\\..\\etc\\passwd",
    "/repos/%c0%ae%c0%ae/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    "/repos/kubernetes/repodata/repomd.xml%00.txt",
    "/repos/kubernetes/%00/../../../../etc/passwd",
    "/repos/%00",
    "/repos//etc/passwd",
    "/repos/../state/planted.txt",
    "/repos/%2e%2e/state/planted.txt",
    "/repos/kubernetes/evil.rpm",
    "/repos/kubernetes/evil-dir/secret.txt",
    "/repos/kubernetes/evil-dir/",
    "/repos/evil-root/etc/passwd",
    "/repos/evil-root/",
    "/repos/evil-state/planted.txt",
    "/keys/evil.gpg",
    "/keys/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/keys/%2e%2e%2fstate%2fplanted.txt",
    "/keys/a%00.gpg",
    "/repofiles/evil.repo",
    "/repofiles/evil.repo?x=1",
    "/repofiles/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/repofiles/%2e%2e/%2e%2e/%2e%2e/secret.txt",
    "/repofiles/%00.repo",
    "/crio/evil-dir/secret.txt",
    "/containerd/certs.d/..%2f..%2f..%2f..%2f..%2fetc/hosts.toml",
    "/containerd/certs.d/%00/hosts.toml",
    "/bootstrap.sh/../../../etc/passwd",
    "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "//etc/passwd",
    "/state/planted.txt",
    "/log/nginx-access.log",
    "../../etc/passwd",
    "http://mirror/../../../etc/passwd",
    "/./../../etc/passwd",
]


def test_traversal_and_planted_symlinks(target: tuple[str, Mirror]) -> None:
    frontend, m = target
    served: list[str] = []
    for path in TRAVERSALS:
        status, data = get_raw(m, path)
        assert status is None or status < 500, (frontend, path, data[:300])
        for needle in (SECRET, STATE_SECRET, PASSWD):
            if needle in data:
                served.append(f"{path} -> {needle!r}")
    # Raw NUL and control bytes in the request line itself.
    for path in (b"/repos/\x00/etc/passwd", b"/keys/\x00.gpg", b"/repos/\r/x"):
        status, data = get_raw(m, path)
        assert status is None or status < 500, (frontend, path, data[:300])
        assert SECRET not in data and PASSWD not in data
    assert not served, served
    assert_up(m)


def test_huge_headers_and_request_lines(target: tuple[str, Mirror]) -> None:
    frontend, m = target
    head = b"GET /repos/kubernetes/repodata/repomd.xml HTTP/1.1\r\nHost: mirror\r\n"
    cases = {
        "one 64 KiB header": head + b"X-Big: " + b"a" * 65536 + b"\r\n",
        "one 1 MiB header": head + b"X-Big: " + b"a" * (1 << 20) + b"\r\n",
        "500 headers": head + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 100) for i in range(500)),
        "150 small headers, proxied": b"GET /healthz HTTP/1.1\r\nHost: mirror\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(150)),
        "100 KiB URL": b"GET /repos/" + b"a" * 102400 + b" HTTP/1.1\r\nHost: mirror\r\n",
        "100 KiB query, proxied": b"GET /kubeadm/config.yaml?pod_subnet="
        + b"1" * 102400
        + b" HTTP/1.1\r\nHost: mirror\r\n",
        "256 KiB cookie": head + b"Cookie: " + b"c=" * (128 * 1024) + b"\r\n",
    }
    for name, request in cases.items():
        status, data = raw(m, request + b"Connection: close\r\n\r\n")
        assert status is None or status < 500, (frontend, name, data[:300])
    assert_up(m)


def test_200_concurrent_clients(target: tuple[str, Mirror]) -> None:
    frontend, m = target
    k8s = m.data / "repos" / "kubernetes"
    rpms = sorted(p for p in k8s.rglob("*.rpm") if not p.is_symlink())[:5]
    expected = {
        f"/repos/{p.relative_to(m.data / 'repos').as_posix()}": hashlib.sha256(
            p.read_bytes()
        ).hexdigest()
        for p in [*rpms, k8s / "repodata" / "repomd.xml"]
    }
    repo = (m.data / "www" / "repofiles" / "mirror.repo").read_bytes()
    expected["/repofiles/mirror.repo"] = hashlib.sha256(repo).hexdigest()
    urls = [*expected, "/healthz", "/kubeadm/config.yaml?pod_subnet=10.244.0.0/16"]
    clients = 200
    barrier = threading.Barrier(clients, timeout=30)

    def client(i: int) -> list[str]:
        errors = []
        with requests.Session() as s:
            barrier.wait()  # all connect at once
            for k in range(len(urls)):
                url = urls[(i + k) % len(urls)]
                try:
                    r = s.get(m.base_url + url, timeout=30)
                except requests.RequestException as exc:
                    errors.append(f"{url}: {exc}")
                    continue
                if r.status_code != 200:
                    errors.append(f"{url}: {r.status_code}")
                elif url in expected and hashlib.sha256(r.content).hexdigest() != expected[url]:
                    errors.append(f"{url}: wrong body ({len(r.content)} bytes)")
        return errors

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(client, range(clients)))
    errors = [e for r in results for e in r]
    assert not errors, (frontend, len(errors), errors[:10])
    assert time.monotonic() - started < 60
    assert_up(m)


def test_slowloris_clients_do_not_starve_the_service(target: tuple[str, Mirror]) -> None:
    """60 clients trickle a request head a byte or so per second (far more than gunicorn has
    threads); meanwhile normal requests keep being answered, and the server drops each slow
    client within its request read timeout (10 s, both front ends)."""
    frontend, m = target
    slow: list[socket.socket] = []
    for i in range(60):
        s = socket.create_connection(("127.0.0.1", m.port), timeout=5)
        path = b"/healthz" if i % 2 else b"/repos/kubernetes/repodata/repomd.xml"
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: mirror\r\n")
        slow.append(s)
    opened = time.monotonic()
    closed_at: dict[int, float] = {}
    slowest_answer = 0.0
    try:
        while time.monotonic() - opened < 14 and len(closed_at) < len(slow):
            for n, s in enumerate(slow):
                if n in closed_at:
                    continue
                readable, _, _ = select.select([s], [], [], 0)
                try:
                    if readable and not s.recv(4096):
                        closed_at[n] = time.monotonic() - opened
                        continue
                    if readable:  # a 408 before closing is fine too
                        closed_at[n] = time.monotonic() - opened
                        continue
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:  # reset: dropped
                    closed_at[n] = time.monotonic() - opened
            t0 = time.monotonic()
            assert requests.get(f"{m.base_url}/healthz", timeout=5).status_code == 200
            r = requests.get(f"{m.base_url}/repos/kubernetes/repodata/repomd.xml", timeout=5)
            assert r.status_code == 200
            slowest_answer = max(slowest_answer, time.monotonic() - t0)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
    finally:
        for s in slow:
            s.close()
    assert slowest_answer < 3, f"{frontend}: a normal request took {slowest_answer:.1f}s"
    assert len(closed_at) == len(slow), f"{frontend}: {len(slow) - len(closed_at)} never dropped"
    assert max(closed_at.values()) < 13.5
    assert_up(m)


def test_silent_connections_do_not_starve_the_service(target: tuple[str, Mirror]) -> None:
    """Connections that send nothing at all (gthread would give each a thread for 5 s)."""
    frontend, m = target
    idle = [socket.create_connection(("127.0.0.1", m.port), timeout=5) for _ in range(60)]
    try:
        time.sleep(0.5)
        for _ in range(3):
            t0 = time.monotonic()
            assert requests.get(f"{m.base_url}/healthz", timeout=5).status_code == 200
            assert time.monotonic() - t0 < 3, frontend
            time.sleep(0.5)
    finally:
        for s in idle:
            s.close()
    assert_up(m)
