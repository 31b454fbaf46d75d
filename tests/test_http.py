"""The transfer engine (mirror.http + mirror.transfers) against a real loopback HTTP server.

Fault kinds beyond what UpstreamServer injects (resets, stalls, over-long bodies, Retry-After)
are covered through the fault proxy in tests/test_reliability_faults.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mirror.http import (
    DownloadJob,
    Expected,
    Fetcher,
    FetchError,
    LocalWriteError,
    RequestOptions,
)
from mirror.retry import RetryPolicy, parse_retry_after
from tests.fixtures import UpstreamServer

OPTS = RequestOptions()


@pytest.fixture
def served(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    files = {}
    for i in range(40):
        data = hashlib.shake_256(str(i).encode()).digest(1000 + i * 997)
        (root / f"f{i:02}.bin").write_bytes(data)
        files[f"f{i:02}.bin"] = data
    (root / "empty.bin").write_bytes(b"")
    files["empty.bin"] = b""
    with UpstreamServer(root) as server:
        yield server, files


def fast_fetcher(retries: int = 3) -> Fetcher:
    return Fetcher(timeout=5, parallel=4, policy=RetryPolicy(retries=retries, backoff=0.01))


def expected_for(data: bytes) -> Expected:
    return Expected("sha256", hashlib.sha256(data).hexdigest(), len(data))


def test_request_and_get_bytes(served) -> None:
    server, files = served
    with fast_fetcher() as fetcher:
        assert fetcher.get_bytes(f"{server.url}/f01.bin", OPTS) == files["f01.bin"]
        head = fetcher.request("HEAD", f"{server.url}/f02.bin", OPTS)
        assert head.status == 200 and head.body == b""
        assert head.headers["content-length"] == str(len(files["f02.bin"]))
        assert fetcher.request("GET", f"{server.url}/missing", OPTS).status == 404
        with pytest.raises(FetchError, match="HTTP 404") as err:
            fetcher.get_bytes(f"{server.url}/missing", OPTS)
        assert err.value.url.endswith("/missing")
        with pytest.raises(FetchError, match="larger than 100 bytes"):
            fetcher.get_bytes(f"{server.url}/f03.bin", OPTS, limit=100)


def test_transient_status_is_retried_then_given_up(served) -> None:
    server, files = served
    server.fail_next("/f04.bin", status=503, times=2)
    with fast_fetcher(retries=3) as fetcher:
        assert fetcher.get_bytes(f"{server.url}/f04.bin", OPTS) == files["f04.bin"]
    server.fail_next("/f05.bin", status=502, times=10)
    with fast_fetcher(retries=2) as fetcher, pytest.raises(FetchError, match="gave up after 3"):
        fetcher.get_bytes(f"{server.url}/f05.bin", OPTS)
    assert server.count("/f05.bin") == 3


def test_download_many_verifies_and_renames(served, tmp_path: Path) -> None:
    server, files = served
    out = tmp_path / "out"
    jobs = [
        DownloadJob(f"{server.url}/{name}", out / "sub" / name, expected_for(data), OPTS, name)
        for name, data in files.items()
    ]
    done = []
    with fast_fetcher() as fetcher:
        failures = fetcher.download_many(jobs, on_done=lambda job: done.append(job.label))
    assert failures == []
    assert sorted(done) == sorted(files)
    for name, data in files.items():
        assert (out / "sub" / name).read_bytes() == data
    assert not list(out.rglob("*.part"))


def test_dropped_body_resumes_with_range(served, tmp_path: Path) -> None:
    server, files = served
    data = files["f39.bin"]
    server.drop_after("/f39.bin", nbytes=len(data) // 2)
    with fast_fetcher() as fetcher:
        fetcher.download(f"{server.url}/f39.bin", tmp_path / "f", expected_for(data), OPTS)
    assert (tmp_path / "f").read_bytes() == data
    ranged = [r for r in server.requests if r[1] == "/f39.bin"]
    assert len(ranged) == 2


def test_permanent_failures_are_reported_per_job(served, tmp_path: Path) -> None:
    server, files = served
    good, bad = files["f06.bin"], Expected("sha256", "0" * 64, len(files["f07.bin"]))
    jobs = [
        DownloadJob(f"{server.url}/f06.bin", tmp_path / "a", expected_for(good), OPTS, "a"),
        DownloadJob(f"{server.url}/f07.bin", tmp_path / "b", bad, OPTS, "b"),
        DownloadJob(f"{server.url}/nope", tmp_path / "c", expected_for(b"x"), OPTS, "c"),
    ]
    with fast_fetcher() as fetcher:
        failures = {job.label: str(err) for job, err in fetcher.download_many(jobs)}
    assert set(failures) == {"b", "c"}
    assert "mismatch after a clean re-fetch" in failures["b"]
    assert failures["c"] == "HTTP 404"
    assert (tmp_path / "a").read_bytes() == good
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.part").exists()
    assert server.count("/f07.bin") == 2  # the clean re-fetch, then give up


def test_local_write_error_is_not_retried(served, tmp_path: Path) -> None:
    server, files = served
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory must go")
    job = DownloadJob(
        f"{server.url}/f08.bin", blocker / "x" / "f08", expected_for(files["f08.bin"]), OPTS
    )
    with fast_fetcher() as fetcher, pytest.raises(LocalWriteError):
        fetcher.download_many([job])
    assert server.count("/f08.bin") == 0


def test_retry_after_is_capped() -> None:
    policy = RetryPolicy(retry_after_cap=30)
    assert policy.delay(1, "3600") == 30
    assert policy.delay(1, "2") == 2
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None
    assert 0.0 < policy.delay(1) <= 0.6


def test_partial_content_answers_never_loop(tmp_path: Path) -> None:
    """A server answering every GET with 206 (whole file, or a range nobody asked for) must
    neither spin nor be taken for a resume: the whole-file 206 is accepted, the odd range
    fails within the retry budget."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = b"x" * 5000
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            hits.append(self.path)
            start = 0 if self.path == "/whole" else 100
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            self.wfile.write(body[start:])

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with fast_fetcher(retries=2) as fetcher:
            fetcher.download(f"{base}/whole", tmp_path / "whole", expected_for(body), OPTS)
            assert (tmp_path / "whole").read_bytes() == body
            with pytest.raises(FetchError, match="gave up after 3 attempts"):
                fetcher.download(f"{base}/odd", tmp_path / "odd", expected_for(body), OPTS)
    finally:
        server.shutdown()
    assert hits.count("/odd") == 3


class _AuthRecorder:
    """A loopback server recording each request's Authorization header; `redirect_to` makes
    it answer 302 to that URL (another host name) for /start."""

    def __init__(self, redirect_to: str | None = None) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen: list[str | None] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.headers.get("Authorization"))
                if redirect_to and self.path == "/start":
                    self.send_response(302)
                    self.send_header("Location", redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_credentials_are_not_sent_to_the_host_a_redirect_points_at() -> None:
    # A .repo file's username/password belong to its baseurl's host; a redirect to a CDN (here
    # "localhost" instead of "127.0.0.1") must not receive them (libcurl's default, which we
    # rely on: no UNRESTRICTED_AUTH).
    other = _AuthRecorder()
    origin = _AuthRecorder(redirect_to=f"http://localhost:{other.port}/file")
    try:
        with Fetcher(retries=0) as fetcher:
            opts = RequestOptions(username="repo-user", password="s3cret")
            body = fetcher.get_bytes(f"http://127.0.0.1:{origin.port}/start", opts)
        assert body == b"ok"
        assert origin.seen and origin.seen[0] is not None and origin.seen[0].startswith("Basic ")
        assert other.seen == [None]
    finally:
        origin.close()
        other.close()
