"""The fault-injecting proxy's own checks: real sockets on loopback, one raw HTTP client.

Each fault is read back byte by byte from a raw socket, so a proxy that silently stops
injecting (and makes the reliability tests pass for nothing) fails here.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures import Fault, FaultProxy, UpstreamServer

pytestmark = pytest.mark.reliability

SIZE = 3 * 1024 * 1024 + 17  # several chunks, odd length


@dataclass
class Setup:
    proxy: FaultProxy
    upstream: UpstreamServer
    data: bytes


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    data = os.urandom(SIZE)
    (tmp_path / "big.bin").write_bytes(data)
    (tmp_path / "small.txt").write_bytes(b"hello, small document\n")
    with UpstreamServer(tmp_path) as up, FaultProxy(up.url) as proxy:
        yield Setup(proxy, up, data)


@dataclass
class Raw:
    status: int | None
    headers: dict[str, str]
    body: bytes
    error: str | None  # "reset", "timeout" or None (clean EOF)


def raw_get(proxy: FaultProxy, path: str, timeout: float = 5.0, method: str = "GET") -> Raw:
    """One request with `Connection: close`; read until EOF, reset or timeout."""
    data, error = b"", None
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            error = "reset"
        except TimeoutError:
            error = "timeout"
    if b"\r\n\r\n" not in data:
        return Raw(None, {}, data, error)
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return Raw(int(lines[0].split()[1]), headers, body, error)


def test_passes_through_range_head_and_streams(setup: Setup) -> None:
    url = setup.proxy.url + "/big.bin"
    full = requests.get(url, timeout=10)
    assert full.status_code == 200 and full.content == setup.data
    part = requests.get(url, headers={"Range": "bytes=1000-"}, timeout=10)
    assert part.status_code == 206 and part.content == setup.data[1000:]
    assert part.headers["Content-Range"] == f"bytes 1000-{SIZE - 1}/{SIZE}"
    head = requests.head(url, timeout=10)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(SIZE)
    assert requests.get(setup.proxy.url + "/nope", timeout=10).status_code == 404
    log = [(e.method, e.path, e.range, e.status, e.fault) for e in setup.proxy.entries()]
    assert log == [
        ("GET", "/big.bin", None, 200, None),
        ("GET", "/big.bin", "bytes=1000-", 206, None),
        ("HEAD", "/big.bin", None, 200, None),
        ("GET", "/nope", None, 404, None),
    ]
    assert [m for m, _, _ in setup.upstream.requests] == ["GET", "GET", "HEAD", "GET"]


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        body = json.dumps({k: self.headers.get_all(k) for k in self.headers}).encode()
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")  # no Content-Length upstream
        self.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(body).hexdigest())
        self.end_headers()
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))


def raw_request(port: int, head: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_request_headers_reach_upstream_and_reply_headers_come_back() -> None:
    echo = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    try:
        with FaultProxy(f"http://127.0.0.1:{echo.server_address[1]}") as proxy:
            accept = "application/vnd.oci.image.index.v1+json, application/json"
            reply = requests.get(
                proxy.url + "/v2/x/manifests/1", headers={"Accept": accept}, timeout=10
            )
            seen = reply.json()
            assert seen["Accept"] == [accept]
            assert seen["Host"] == [f"127.0.0.1:{proxy.upstream_port}"]
            assert reply.headers["Content-Length"] == str(len(reply.content))
            digest = "sha256:" + hashlib.sha256(reply.content).hexdigest()
            assert reply.headers["Docker-Content-Digest"] == digest
            # Repeated header lines (skopeo sends one Accept: per media type) stay repeated.
            raw = raw_request(
                proxy.port,
                "GET /v2/x/manifests/1 HTTP/1.1\r\nHost: x\r\nAccept: a/1\r\nAccept: b/2\r\n"
                "Connection: close\r\n\r\n",
            )
            assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["Accept"] == ["a/1", "b/2"]
    finally:
        echo.shutdown()
        echo.server_close()


def test_status_faults_first_n_then_pass_through(setup: Setup) -> None:
    setup.proxy.add(Fault("status", 429, retry_after=7), r"^/small", times=2)
    replies = [requests.get(setup.proxy.url + "/small.txt", timeout=5) for _ in range(3)]
    assert [r.status_code for r in replies] == [429, 429, 200]
    assert replies[0].headers["Retry-After"] == "7"
    assert replies[2].content == b"hello, small document\n"
    assert setup.upstream.count("/small.txt") == 1  # faulted requests never went upstream
    assert [e.fault for e in setup.proxy.entries()] == ["status 429 Retry-After 7"] * 2 + [None]


@pytest.mark.parametrize("rst", [False, True])
def test_reset_before_headers(setup: Setup, rst: bool) -> None:
    setup.proxy.add(Fault("reset", rst=rst), r"small")
    got = raw_get(setup.proxy, "/small.txt")
    assert got.status is None and got.body == b""
    assert got.error == ("reset" if rst else None)
    assert raw_get(setup.proxy, "/small.txt").status == 200


def test_drop_sends_half_the_body_then_closes(setup: Setup) -> None:
    setup.proxy.add(Fault("drop"), r"big")
    got = raw_get(setup.proxy, "/big.bin")
    assert got.status == 200 and got.headers["Content-Length"] == str(SIZE)
    assert got.body == setup.data[: SIZE // 2] and got.error is None


def test_stall_before_headers_and_mid_body(setup: Setup) -> None:
    setup.proxy.add(Fault("stall", seconds=1.5), r"small")
    setup.proxy.add(Fault("stall", seconds=1.5, at=0.5), r"big")
    started = time.monotonic()
    got = raw_get(setup.proxy, "/small.txt", timeout=0.5)
    assert got.status is None and got.error == "timeout"
    got = raw_get(setup.proxy, "/big.bin", timeout=0.5)
    assert got.status == 200 and got.error == "timeout" and got.body == setup.data[: SIZE // 2]
    got = raw_get(setup.proxy, "/small.txt", timeout=5)  # the stall was for the first only
    assert got.status == 200 and time.monotonic() - started < 5


def test_truncate_overlong_corrupt(setup: Setup) -> None:
    proxy, data = setup.proxy, setup.data
    proxy.add(Fault("truncate", extra=100), r"big", numbers={1}, count="global")
    proxy.add(Fault("overlong", extra=10), r"big", numbers={2}, count="global")
    proxy.add(Fault("overlong", extra=5, beyond_length=True), r"big", numbers={3}, count="global")
    proxy.add(Fault("corrupt"), r"big", numbers={4}, count="global")
    short, longer, beyond, corrupt = (raw_get(proxy, "/big.bin") for _ in range(4))
    assert short.headers["Content-Length"] == str(SIZE - 100) and short.body == data[:-100]
    assert longer.headers["Content-Length"] == str(SIZE + 10)
    assert longer.body == data + b"\0" * 10
    assert beyond.headers["Content-Length"] == str(SIZE) and beyond.body == data + b"\0" * 5
    assert len(corrupt.body) == SIZE and corrupt.body != data
    assert sum(a != b for a, b in zip(corrupt.body, data, strict=True)) == 1
    assert raw_get(proxy, "/big.bin").body == data


def test_body_faults_skip_head_and_errors(setup: Setup) -> None:
    rule = setup.proxy.add(Fault("drop"), r"\.(bin|txt)$|nope")
    assert requests.head(setup.proxy.url + "/big.bin", timeout=5).status_code == 200
    assert requests.get(setup.proxy.url + "/nope", timeout=5).status_code == 404
    assert rule.applied == 0
    assert len(raw_get(setup.proxy, "/big.bin").body) == SIZE // 2 and rule.applied == 1


def test_selection_by_number_per_path(setup: Setup) -> None:
    setup.proxy.add(Fault("status", 500), r"\.(bin|txt)$", numbers={2}, count="path", times=None)
    codes = [
        requests.get(setup.proxy.url + p, timeout=10).status_code
        for p in ("/small.txt", "/big.bin", "/small.txt", "/big.bin", "/small.txt")
    ]
    assert codes == [200, 200, 500, 500, 200]
    setup.proxy.clear_rules()
    setup.proxy.add(Fault("status", 502), numbers={7}, count="global")
    codes = [requests.get(setup.proxy.url + "/small.txt", timeout=5).status_code for _ in range(2)]
    assert codes == [200, 502]  # the 7th request the proxy received


def test_throttle_delivers_intact_but_slowly(setup: Setup) -> None:
    setup.proxy.add(Fault("throttle", seconds=0.05), r"big", times=None)
    started = time.monotonic()
    assert requests.get(setup.proxy.url + "/big.bin", timeout=10).content == setup.data
    assert time.monotonic() - started >= 0.05 * (SIZE // (64 * 1024))
    assert [e.fault for e in setup.proxy.entries()] == ["throttle"]
