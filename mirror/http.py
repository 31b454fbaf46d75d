"""Pooled HTTP downloads: retries with backoff, resume, checksum verified while streaming.

A file is written to `<name>.part` in its final directory, checked against the expected
size and checksum as the bytes arrive, and renamed into place only when both match, so a
reader never sees a half-written or wrong file under the final name.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)
from urllib3.util.retry import Retry

from mirror import __version__

CHUNK = 64 * 1024  # small enough that a dropped connection loses little
USER_AGENT = f"airgap-mirror/{__version__}"
ProgressCallback = Callable[[int], None]


class FetchError(Exception):
    """A URL could not be fetched or its content did not verify. `url` says which."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(message)
        self.url = url


class ChecksumMismatch(FetchError):
    pass


class _StreamBroken(Exception):
    """The body stopped early; retried with a Range request from where it stopped."""


@dataclass(frozen=True)
class RequestOptions:
    """Per-repository knobs from the .repo file (sslverify, proxy, username/password)."""

    verify_tls: bool = True
    proxy: str | None = None
    username: str | None = None
    password: str | None = None

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"verify": self.verify_tls}
        if self.proxy and self.proxy not in ("_none_", "none"):
            kw["proxies"] = {"http": self.proxy, "https": self.proxy}
        if self.username:
            kw["auth"] = (self.username, self.password or "")
        return kw


@dataclass(frozen=True)
class Expected:
    """What a downloaded file must be; None means 'not known, do not check'."""

    checksum_type: str | None = None
    checksum: str | None = None
    size: int | None = None


class UnsupportedChecksum(ValueError):
    pass


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


class Fetcher:
    """One pooled session shared by all download threads of a sync."""

    def __init__(self, *, pool_size: int = 8, timeout: float = 60.0, retries: int = 5) -> None:
        self.timeout = timeout
        self.retries = retries
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        # requests re-reads proxy, CA bundle and netrc settings from the environment on every
        # request (a measurable share of CPU over thousands of packages); when none of them is
        # set, switching that off changes nothing but the cost.
        self.session.trust_env = _environment_matters()
        # Checksums and Range offsets are about the bytes on the server's disk: never let a
        # server (or requests) apply a Content-Encoding on top of them.
        self.session.headers["Accept-Encoding"] = "identity"
        # urllib3 retries connection errors and 5xx answers before any body is read.
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            backoff_factor=0.5,
            status_forcelist=(500, 502, 503, 504),
            allowed_methods=frozenset({"GET", "HEAD"}),
            raise_on_status=False,
            # A 503 with "Retry-After: 3600" must not hold the sync lock for an hour.
            respect_retry_after_header=False,
        )
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        self.session.close()

    def get_bytes(self, url: str, opts: RequestOptions, *, limit: int = 64 * 1024 * 1024) -> bytes:
        """Small documents (repomd.xml, keys, signatures), read up to `limit` bytes."""
        try:
            resp = self.session.get(url, timeout=self.timeout, stream=True, **opts.kwargs())
        except requests.RequestException as exc:
            raise FetchError(url, _describe(exc)) from None
        with resp:
            if resp.status_code != 200:
                raise FetchError(url, f"HTTP {resp.status_code}")
            data = bytearray()
            try:
                for chunk in resp.raw.stream(CHUNK, decode_content=False):
                    data += chunk
                    if len(data) > limit:
                        raise FetchError(url, f"larger than {limit} bytes")
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise FetchError(url, f"connection broke off ({exc.__class__.__name__})") from None
        return bytes(data)

    def download(
        self,
        url: str,
        dest: Path,
        expected: Expected,
        opts: RequestOptions,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Fetch `url` into `dest` atomically, verifying size and checksum while streaming.

        A `.part` file left by an interrupted run is resumed with a Range request.
        """
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=0.5, max=10),
            retry=retry_if_exception_type(_StreamBroken),
            reraise=False,
        )
        resumed = part.exists()
        try:
            try:
                for attempt in retrying:
                    with attempt:
                        self._stream_to(url, part, expected, opts, progress)
            except ChecksumMismatch:
                if not resumed:
                    raise
                # The .part came from an earlier run and upstream has since replaced the
                # file under the same name: the bytes we resumed after no longer fit.
                part.unlink(missing_ok=True)
                for attempt in retrying:
                    with attempt:
                        self._stream_to(url, part, expected, opts, progress)
        except RetryError as exc:
            reason = exc.last_attempt.exception()
            raise FetchError(url, f"download kept breaking off: {reason}") from None
        os.replace(part, dest)

    def _stream_to(
        self,
        url: str,
        part: Path,
        expected: Expected,
        opts: RequestOptions,
        progress: ProgressCallback | None,
    ) -> None:
        digest = new_hash(expected.checksum_type) if expected.checksum_type else None
        have = part.stat().st_size if part.exists() else 0
        if expected.size is not None and have > expected.size:
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            resp = self.session.get(
                url, stream=True, timeout=self.timeout, headers=headers, **opts.kwargs()
            )
        except requests.RequestException as exc:
            raise FetchError(url, _describe(exc)) from None
        with resp:
            if resp.status_code == 206 and have:
                mode = "ab"
                if digest is not None:
                    with part.open("rb") as fh:  # hash what we already have
                        while chunk := fh.read(CHUNK):
                            digest.update(chunk)
                if progress:
                    progress(have)
            elif resp.status_code == 200:  # fresh start, or a server that ignores Range
                mode, have = "wb", 0
            elif resp.status_code == 416 and have:  # stale .part: start over
                part.unlink(missing_ok=True)
                raise _StreamBroken("stale partial download")
            else:
                raise FetchError(url, f"HTTP {resp.status_code}")
            written = have
            try:
                with part.open(mode) as out:
                    for chunk in resp.raw.stream(CHUNK, decode_content=False):
                        written += len(chunk)
                        if expected.size is not None and written > expected.size:
                            part.unlink(missing_ok=True)
                            raise ChecksumMismatch(
                                url, f"larger than the expected {expected.size} bytes"
                            )
                        out.write(chunk)
                        if digest is not None:
                            digest.update(chunk)
                        if progress:
                            progress(len(chunk))
            except (urllib3.exceptions.HTTPError, requests.ConnectionError, OSError) as exc:
                raise _StreamBroken(exc.__class__.__name__) from None
        if expected.size is not None and written < expected.size:
            raise _StreamBroken(f"got {written} of {expected.size} bytes")
        if digest is not None and expected.checksum is not None:
            actual = digest.hexdigest()
            if actual != expected.checksum.lower():
                part.unlink(missing_ok=True)
                raise ChecksumMismatch(
                    url,
                    f"{expected.checksum_type} mismatch: want {expected.checksum}, got {actual}",
                )


_ENV_KNOBS = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "requests_ca_bundle",
    "curl_ca_bundle",
    "netrc",
)


def _environment_matters() -> bool:
    names = {k.lower() for k in os.environ}
    if any(knob in names for knob in _ENV_KNOBS):
        return True
    home = Path.home()
    return (home / ".netrc").exists() or (home / "_netrc").exists()


def _describe(exc: Exception) -> str:
    """One line for a requests exception, without the nested urllib3 reprs."""
    text = str(exc)
    if isinstance(exc, requests.ConnectionError):
        if "Connection refused" in text:
            return "connection refused"
        if "Name or service not known" in text or "getaddrinfo" in text:
            return "host name not found"
        if "timed out" in text.lower():
            return "timed out"
        return "connection failed"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return text.splitlines()[0][:200]
