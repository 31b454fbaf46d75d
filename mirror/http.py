"""All HTTP of the mirror, on libcurl (pycurl): the transfer library dnf itself uses (librepo).

One module owns every request, so small documents (repomd.xml, signatures, keys, registry API
calls) and bulk downloads share the same options (proxy, credentials, TLS verification,
timeouts, user agent) and the same retry policy (mirror.retry).

- `Fetcher.request()`: one request, body in memory, for documents and API calls; any thread.
- `Fetcher.download_many()`: many files at once from one thread over `pycurl.CurlMulti`
  (mirror.transfers): each file is written to `<name>.part` next to its destination, checked
  against the expected size and checksum while the bytes arrive, resumed with `Range` after
  a break, and renamed into place only when it verifies.
Per request, Python does almost nothing: libcurl parses, pools connections and moves bytes;
the write callback hashes and writes each chunk. That is what makes 2,000 small rpms cheap.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycurl

from mirror import __version__
from mirror.retry import TRANSIENT_STATUS, RetryPolicy

CHUNK = 256 * 1024
USER_AGENT = f"airgap-mirror/{__version__}"
DOCUMENT_LIMIT = 64 * 1024 * 1024
ProgressCallback = Callable[[int], None]

# libcurl results worth another try: the network or the server hiccuped.
TRANSIENT_CURL = frozenset(
    {
        pycurl.E_COULDNT_RESOLVE_PROXY,
        pycurl.E_COULDNT_RESOLVE_HOST,
        pycurl.E_COULDNT_CONNECT,
        8,  # CURLE_WEIRD_SERVER_REPLY (pycurl names it E_FTP_WEIRD_SERVER_REPLY)
        pycurl.E_HTTP2,
        pycurl.E_PARTIAL_FILE,
        pycurl.E_OPERATION_TIMEDOUT,
        pycurl.E_SSL_CONNECT_ERROR,
        pycurl.E_GOT_NOTHING,
        pycurl.E_SEND_ERROR,
        pycurl.E_RECV_ERROR,
        getattr(pycurl, "E_HTTP2_STREAM", 92),
    }
)
_CURL_REASONS = {
    pycurl.E_COULDNT_RESOLVE_HOST: "host name not found",
    pycurl.E_COULDNT_RESOLVE_PROXY: "proxy host name not found",
    pycurl.E_COULDNT_CONNECT: "connection refused",
    pycurl.E_PARTIAL_FILE: "connection closed before the whole body arrived",
    pycurl.E_GOT_NOTHING: "server closed the connection without answering",
    pycurl.E_RECV_ERROR: "connection broke off",
    pycurl.E_SEND_ERROR: "connection broke off while sending",
    pycurl.E_TOO_MANY_REDIRECTS: "too many redirects",
    pycurl.E_PEER_FAILED_VERIFICATION: "TLS certificate not trusted",
    pycurl.E_UNSUPPORTED_PROTOCOL: "unsupported URL scheme",
    pycurl.E_URL_MALFORMAT: "malformed URL",
}
_SYSTEM_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian/Ubuntu
    "/etc/pki/tls/certs/ca-bundle.crt",  # EL/Fedora
)


class FetchError(Exception):
    """A URL could not be fetched or its content did not verify. `url` says which."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(message)
        self.url = url


class ChecksumMismatch(FetchError):
    pass


class LocalWriteError(Exception):
    """Writing a download to local disk failed (disk full, read-only, ...): never retried.

    Deliberately not a FetchError: callers that turn fetch failures into "this repo failed"
    must not swallow it; the sync stops every repo on that disk. `error` is the OSError,
    `path` the file that could not be written."""

    def __init__(self, url: str, path: Path, error: OSError) -> None:
        super().__init__(f"{error.strerror or error} ({path})")
        self.url = url
        self.path = path
        self.error = error


class UnsupportedChecksum(ValueError):
    pass


@dataclass(frozen=True)
class RequestOptions:
    """Per-repository knobs from the .repo file (sslverify, proxy, username/password)."""

    verify_tls: bool = True
    proxy: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None


@dataclass(frozen=True)
class Expected:
    """What a downloaded file must be; None means 'not known, do not check'."""

    checksum_type: str | None = None
    checksum: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names; the last value of a repeated header wins
    body: bytes
    url: str  # after redirects


@dataclass(frozen=True)
class DownloadJob:
    url: str
    dest: Path
    expected: Expected
    opts: RequestOptions
    label: str = ""  # for messages and progress (a package's NEVRA)
    limit: int | None = None  # refuse a body past this when expected.size is not known
    # Extra request headers ("Authorization: Bearer ..."): never in a repr or a log line.
    headers: tuple[str, ...] = field(default=(), repr=False)


def new_hash(checksum_type: str) -> Any:
    # repomd/primary say "sha" for sha1 in old repos.
    name = "sha1" if checksum_type == "sha" else checksum_type
    try:
        return hashlib.new(name)
    except ValueError:  # unknown, or disabled (md5 on a FIPS host)
        raise UnsupportedChecksum(f"unsupported checksum type {checksum_type!r}") from None


def file_matches(path: Path, expected: Expected) -> bool:
    """True when `path` exists with the expected size and checksum."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if expected.size is not None and size != expected.size:
        return False
    if expected.checksum is None or expected.checksum_type is None:
        return expected.size is not None
    digest = new_hash(expected.checksum_type)
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return bool(digest.hexdigest() == expected.checksum.lower())


def describe_curl_error(code: int, message: str) -> str:
    """One line for a libcurl failure, without libcurl's internals."""
    if code == pycurl.E_OPERATION_TIMEDOUT:
        return "timed out (no data within the timeout)"
    return _CURL_REASONS.get(code) or (message.splitlines()[0][:200] if message else f"curl {code}")


def _ca_bundle() -> str | None:
    for name in ("CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(name):
            return os.environ[name]
    return next((p for p in _SYSTEM_CA_BUNDLES if os.path.exists(p)), None)


class StallGuard:
    """XFERINFOFUNCTION: abort (E_ABORTED_BY_CALLBACK) when no byte moved for `timeout` s."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.last = time.monotonic()
        self.seen = (0, 0)
        self.stalled = False

    def __call__(self, dltotal: int, dlnow: int, ultotal: int, ulnow: int) -> int:
        now = time.monotonic()
        if (dlnow, ulnow) != self.seen:
            self.seen, self.last = (dlnow, ulnow), now
        elif now - self.last > self.timeout:
            self.stalled = True
            return 1
        return 0


def stall_reason(timeout: float) -> str:
    return f"stalled: no data for {timeout:g} s"


class HeaderCollector:
    """HEADERFUNCTION: the status and headers of the last response (redirects reset it)."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}

    def __call__(self, line: bytes) -> None:
        text = line.decode("iso-8859-1").rstrip("\r\n")
        if text.startswith("HTTP/"):
            parts = text.split(" ", 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            self.headers = {}
        elif ":" in text:
            name, _, value = text.partition(":")
            self.headers[name.strip().lower()] = value.strip()


def configure(
    handle: pycurl.Curl,
    url: str,
    opts: RequestOptions,
    guard: StallGuard,
    headers: Sequence[str] = (),
) -> None:
    """The options every request gets, documents and bulk alike."""
    handle.reset()
    handle.setopt(pycurl.URL, url)
    handle.setopt(pycurl.NOSIGNAL, 1)
    handle.setopt(pycurl.FOLLOWLOCATION, 1)
    handle.setopt(pycurl.MAXREDIRS, 10)
    # Only http(s), also after a redirect: an upstream must not point us at file:// or worse.
    handle.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
    handle.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
    handle.setopt(pycurl.CONNECTTIMEOUT_MS, int(guard.timeout * 1000))
    # A stall (no byte for `timeout` seconds, before or inside the body) aborts the transfer;
    # a slow but moving large download does not. libcurl's LOW_SPEED_* averages over a window,
    # so a burst hides a stall for a long while: StallGuard watches the last byte instead.
    handle.setopt(pycurl.NOPROGRESS, 0)
    handle.setopt(pycurl.XFERINFOFUNCTION, guard)
    handle.setopt(pycurl.USERAGENT, USER_AGENT)
    handle.setopt(pycurl.TCP_NODELAY, 1)
    # Checksums and Range offsets are about the bytes on the server's disk: libcurl sends no
    # Accept-Encoding unless asked, so no server applies a Content-Encoding on top of them.
    handle.setopt(pycurl.HTTPHEADER, ["Expect:", *headers])
    handle.setopt(pycurl.NETRC, pycurl.NETRC_OPTIONAL)
    if opts.proxy in ("_none_", "none"):
        handle.setopt(pycurl.PROXY, "")  # also ignores http_proxy from the environment
    elif opts.proxy:
        handle.setopt(pycurl.PROXY, opts.proxy)
    if opts.username:
        handle.setopt(pycurl.USERPWD, f"{opts.username}:{opts.password or ''}")
    if not opts.verify_tls:
        handle.setopt(pycurl.SSL_VERIFYPEER, 0)
        handle.setopt(pycurl.SSL_VERIFYHOST, 0)
    else:
        bundle = str(opts.ca_file) if opts.ca_file else _ca_bundle()
        if bundle:
            handle.setopt(pycurl.CAINFO, bundle)


class Fetcher:
    """The HTTP client of one sync: a curl handle per thread for documents, a CurlMulti pool
    (`parallel` transfers at once) for downloads. Close it when done."""

    def __init__(
        self,
        *,
        timeout: float = 60.0,
        retries: int = 5,
        parallel: int = 8,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.timeout = timeout
        self.parallel = parallel
        self.policy = policy or RetryPolicy(retries=retries)
        self._local = threading.local()
        self._handles: list[pycurl.Curl] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for handle in self._handles:
                handle.close()
            self._handles.clear()
            self._local = threading.local()  # no thread may reuse a closed handle

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handle(self) -> pycurl.Curl:
        handle: pycurl.Curl | None = getattr(self._local, "handle", None)
        if handle is None:
            handle = pycurl.Curl()
            self._local.handle = handle
            with self._lock:
                self._handles.append(handle)
        return handle

    def request(
        self,
        method: str,
        url: str,
        opts: RequestOptions | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        limit: int = DOCUMENT_LIMIT,
    ) -> Reply:
        """One request, retried per the policy on transient faults; the final Reply for any
        other status. FetchError when retries are exhausted or the body exceeds `limit`."""
        opts = opts or RequestOptions()
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            try:
                reply = self._perform(method, url, opts, headers or {}, limit)
            except _Transient as exc:
                reason = str(exc)
            else:
                if reply.status not in TRANSIENT_STATUS:
                    return reply
                reason, retry_after = f"HTTP {reply.status}", reply.headers.get("retry-after")
            if not self.policy.may_retry(attempt):
                raise FetchError(url, f"{reason} (gave up after {attempt} attempts)")
            time.sleep(self.policy.delay(attempt, retry_after))

    def _perform(
        self, method: str, url: str, opts: RequestOptions, headers: Mapping[str, str], limit: int
    ) -> Reply:
        handle = self._handle()
        guard = StallGuard(self.timeout)
        configure(handle, url, opts, guard, [f"{k}: {v}" for k, v in headers.items()])
        if method == "HEAD":
            handle.setopt(pycurl.NOBODY, 1)
        elif method != "GET":
            handle.setopt(pycurl.CUSTOMREQUEST, method)
        collector = HeaderCollector()
        body = io.BytesIO()

        too_large = False

        def on_data(chunk: bytes) -> int | None:
            nonlocal too_large
            if body.tell() + len(chunk) > limit:
                too_large = True  # an exception here would be printed by pycurl
                return 0  # abort: E_WRITE_ERROR
            body.write(chunk)
            return None

        handle.setopt(pycurl.HEADERFUNCTION, collector)
        handle.setopt(pycurl.WRITEFUNCTION, on_data)
        try:
            handle.perform()
        except pycurl.error as exc:
            code, message = exc.args[0], exc.args[1] if len(exc.args) > 1 else ""
            if too_large:
                raise FetchError(url, f"larger than {limit} bytes") from None
            if guard.stalled:
                raise _Transient(stall_reason(self.timeout)) from None
            if code in TRANSIENT_CURL:
                raise _Transient(describe_curl_error(code, message)) from None
            raise FetchError(url, describe_curl_error(code, message)) from None
        status = int(handle.getinfo(pycurl.RESPONSE_CODE)) or collector.status
        effective = str(handle.getinfo(pycurl.EFFECTIVE_URL) or url)
        return Reply(status, collector.headers, body.getvalue(), effective)

    def get_bytes(self, url: str, opts: RequestOptions, *, limit: int = DOCUMENT_LIMIT) -> bytes:
        """Small documents (repomd.xml, keys, signatures): 200 or FetchError."""
        reply = self.request("GET", url, opts, limit=limit)
        if reply.status != 200:
            raise FetchError(url, f"HTTP {reply.status}")
        return reply.body

    def download_many(
        self,
        jobs: Sequence[DownloadJob],
        progress: ProgressCallback | None = None,
        on_done: Callable[[DownloadJob], None] | None = None,
    ) -> list[tuple[DownloadJob, FetchError]]:
        """Download every job (up to `parallel` at once); returns the ones that failed for
        good, each with its error. Raises LocalWriteError at once when the disk refuses a
        write: the other transfers are stopped, since they would fail the same way."""
        from mirror.transfers import MultiDownloader

        return MultiDownloader(self, progress, on_done).run(jobs)

    def download(
        self,
        url: str,
        dest: Path,
        expected: Expected,
        opts: RequestOptions,
        progress: ProgressCallback | None = None,
    ) -> None:
        """One file, as download_many does it; raises its FetchError."""
        failed = self.download_many([DownloadJob(url, dest, expected, opts)], progress)
        if failed:
            raise failed[0][1]


class _Transient(Exception):
    """A fault the retry policy may retry (its str() is the reason)."""
