"""Bulk downloads over one `pycurl.CurlMulti`: many transfers from one thread, no GIL fight.

Each job is written to `<dest>.part` in its destination directory, verified while the bytes
arrive (size never exceeded, checksum over every byte), and renamed to `<dest>` only when both
match. Faults are handled here, once, per mirror.retry:
- transient (reset, stall, short body, 5xx/429): retried with backoff, resumed with `Range`
  from what the .part already holds (a server answering 200 instead of 206 starts it over);
- a body longer than expected: the .part is dropped and the file fetched again from zero;
- a checksum mismatch: one clean re-fetch from zero (the resumed bytes may have come from an
  older file of that name); a second mismatch fails the job;
- permanent (404, 403, TLS, too many redirects, retries exhausted): the job fails, the others go on;
- a local write error (disk full, read-only, ...): everything stops at once (LocalWriteError),
  since every other file on that disk would fail the same way.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO, Any

import pycurl

from mirror.http import (
    TRANSIENT_CURL,
    ChecksumMismatch,
    DownloadJob,
    Fetcher,
    FetchError,
    HeaderCollector,
    LocalWriteError,
    ProgressCallback,
    StallGuard,
    configure,
    describe_curl_error,
    new_hash,
    stall_reason,
)
from mirror.retry import TRANSIENT_STATUS

_ERROR_BODY_LIMIT = 64 * 1024  # of a 404 page: read and dropped, never written to disk
_HASH_CHUNK = 1024 * 1024


class _Transfer:
    """One job across its attempts."""

    def __init__(self, job: DownloadJob, progress: ProgressCallback | None, timeout: float) -> None:
        self.job = job
        self.timeout = timeout
        self.part = job.dest.with_name(job.dest.name + ".part")
        self.progress = progress
        self.attempt = 0
        self.clean_refetch_done = False
        self._reset(0)

    def _reset(self, offset: int) -> None:
        self.offset = offset  # bytes already in the .part when this attempt started
        self.written = 0
        self.fh: IO[bytes] | None = None
        self.digest: Any = None
        self.collector = HeaderCollector()
        self.guard = StallGuard(self.timeout)
        self.local_error: OSError | None = None
        self.overlong = False
        self.too_large = False  # past job.limit: permanent, not retried
        self.opened = False  # the .part was opened for this attempt's body
        self.discarded = 0

    def begin(self) -> int:
        """Prepare the next attempt; returns the Range offset (0 = whole file)."""
        self.attempt += 1
        size = self.job.expected.size
        try:
            self.part.parent.mkdir(parents=True, exist_ok=True)
            have = self.part.stat().st_size if self.part.exists() else 0
            if have and size is not None and have >= size:  # cannot be resumed: start over
                self.part.unlink()
                have = 0
        except OSError as exc:
            raise LocalWriteError(self.job.url, self.part, exc) from None
        self._reset(have)
        return have

    def on_data(self, chunk: bytes) -> int | None:
        """WRITEFUNCTION: returning 0 aborts the transfer (libcurl's CURLE_WRITE_ERROR)."""
        if self.fh is None and not self._open_for(self.collector.status):
            self.discarded += len(chunk)
            return None if self.discarded <= _ERROR_BODY_LIMIT and not self.local_error else 0
        size, total = self.job.expected.size, self.offset + self.written + len(chunk)
        if size is not None and total > size:
            self.overlong = True
            return 0
        if size is None and self.job.limit is not None and total > self.job.limit:
            self.too_large = True
            return 0
        try:
            assert self.fh is not None
            self.fh.write(chunk)
        except OSError as exc:
            self.local_error = exc
            return 0
        if self.digest is not None:
            self.digest.update(chunk)
        self.written += len(chunk)
        if self.progress:
            self.progress(len(chunk))
        return None

    def _open_for(self, status: int) -> bool:
        """Open the .part on the first body byte of a 200/206; False for an error page."""
        if status == 206 and self.offset and self._range_starts_at_offset():
            mode = "ab"
        elif status == 206 and not self.offset and self._range_starts_at_offset():
            mode = "wb"  # a 206 for the whole file (some CDNs answer every GET that way)
        elif status == 200:
            mode, self.offset = "wb", 0  # fresh start, or a server that ignores Range
        else:
            return False
        expected = self.job.expected
        try:
            self.digest = new_hash(expected.checksum_type) if expected.checksum_type else None
            if mode == "ab" and self.digest is not None:
                with self.part.open("rb") as old:  # hash what the .part already holds
                    while block := old.read(_HASH_CHUNK):
                        self.digest.update(block)
            self.fh = self.part.open(mode)
            self.opened = True
        except OSError as exc:
            self.local_error = exc
            return False
        return True

    def _range_starts_at_offset(self) -> bool:
        content_range = self.collector.headers.get("content-range", "")
        return content_range.startswith(f"bytes {self.offset}-")

    def close_file(self) -> None:
        if self.fh is not None:
            try:
                self.fh.close()
            except OSError as exc:  # a delayed ENOSPC shows up on close
                self.local_error = self.local_error or exc
            self.fh = None

    def drop_part(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.part.unlink()


class MultiDownloader:
    def __init__(
        self,
        fetcher: Fetcher,
        progress: ProgressCallback | None,
        on_done: Callable[[DownloadJob], None] | None,
    ) -> None:
        self.fetcher = fetcher
        self.policy = fetcher.policy
        self.progress = progress
        self.on_done = on_done
        self.failures: list[tuple[DownloadJob, FetchError]] = []
        self.queue: deque[_Transfer] = deque()
        self.delayed: list[tuple[float, int, _Transfer]] = []
        self._seq = itertools.count()

    def run(self, jobs: Sequence[DownloadJob]) -> list[tuple[DownloadJob, FetchError]]:
        if not jobs:
            return []
        timeout = self.fetcher.timeout
        self.queue.extend(_Transfer(job, self.progress, timeout) for job in jobs)
        multi = pycurl.CurlMulti()
        handles = [pycurl.Curl() for _ in range(min(self.fetcher.parallel, len(jobs)))]
        free = list(handles)
        active: dict[pycurl.Curl, _Transfer] = {}
        try:
            while self.queue or self.delayed or active:
                self._promote_delayed()
                while free and self.queue:
                    handle, transfer = free.pop(), self.queue.popleft()
                    self._start(handle, transfer)
                    multi.add_handle(handle)
                    active[handle] = transfer
                if not active:
                    time.sleep(max(0.0, self.delayed[0][0] - time.monotonic()))
                    continue
                for handle, code, message in _step(multi):
                    transfer = active.pop(handle)
                    multi.remove_handle(handle)
                    free.append(handle)
                    self._finish(transfer, handle, code, message)
        finally:
            for handle, transfer in active.items():
                multi.remove_handle(handle)
                transfer.close_file()
            for handle in handles:
                handle.close()
            multi.close()
        return self.failures

    def _promote_delayed(self) -> None:
        now = time.monotonic()
        while self.delayed and self.delayed[0][0] <= now:
            self.queue.append(heapq.heappop(self.delayed)[2])

    def _start(self, handle: pycurl.Curl, transfer: _Transfer) -> None:
        offset = transfer.begin()
        job = transfer.job
        ranged = [f"Range: bytes={offset}-"] if offset else []
        configure(handle, job.url, job.opts, transfer.guard, [*ranged, *job.headers])
        handle.setopt(pycurl.HEADERFUNCTION, transfer.collector)
        handle.setopt(pycurl.WRITEFUNCTION, transfer.on_data)

    def _finish(self, transfer: _Transfer, handle: pycurl.Curl, code: int, message: str) -> None:
        transfer.close_file()
        job = transfer.job
        if transfer.local_error is not None:
            raise LocalWriteError(job.url, transfer.part, transfer.local_error)
        status = int(handle.getinfo(pycurl.RESPONSE_CODE)) or transfer.collector.status
        if transfer.too_large:
            transfer.drop_part()
            self._fail(transfer, FetchError(job.url, f"larger than {job.limit} bytes"))
        elif transfer.overlong:
            transfer.drop_part()
            self._retry(transfer, f"longer than the expected {job.expected.size} bytes")
        elif code != 0:
            reason = describe_curl_error(code, message)
            if transfer.guard.stalled:
                self._retry(transfer, stall_reason(transfer.timeout))
            elif code in TRANSIENT_CURL:
                self._retry(transfer, reason)
            else:
                self._fail(transfer, FetchError(job.url, reason))
        elif status == 206 and not transfer.opened:  # a range we did not ask for
            transfer.drop_part()
            self._retry(transfer, "server answered a different byte range", immediately=True)
        elif status in (200, 206):
            self._complete(transfer, status)
        elif status == 416 and transfer.offset:  # the .part no longer fits the file
            transfer.drop_part()
            self._retry(transfer, "HTTP 416 for a resumed download", immediately=True)
        elif status in TRANSIENT_STATUS:
            retry_after = transfer.collector.headers.get("retry-after")
            self._retry(transfer, f"HTTP {status}", retry_after=retry_after)
        else:
            self._fail(transfer, FetchError(job.url, f"HTTP {status}"))

    def _complete(self, transfer: _Transfer, status: int) -> None:
        job, expected = transfer.job, transfer.job.expected
        if transfer.written == 0 and status == 200:
            if not transfer._open_for(200):  # an empty body: the file is empty
                raise LocalWriteError(job.url, transfer.part, transfer.local_error or OSError())
            transfer.close_file()
        total = transfer.offset + transfer.written
        if expected.size is not None and total < expected.size:
            self._retry(transfer, f"got {total} of {expected.size} bytes")
            return
        if transfer.digest is not None and expected.checksum is not None:
            actual = transfer.digest.hexdigest()
            if actual != expected.checksum.lower():
                transfer.drop_part()
                if not transfer.clean_refetch_done:
                    transfer.clean_refetch_done = True
                    self._retry(transfer, "checksum mismatch", immediately=True, free=True)
                    return
                want = f"want {expected.checksum}, got {actual}"
                reason = f"{expected.checksum_type} mismatch after a clean re-fetch: {want}"
                self._fail(transfer, ChecksumMismatch(job.url, reason))
                return
        try:
            os.replace(transfer.part, job.dest)
        except OSError as exc:
            raise LocalWriteError(job.url, job.dest, exc) from None
        if self.on_done:
            self.on_done(job)

    def _retry(
        self,
        transfer: _Transfer,
        reason: str,
        *,
        retry_after: str | None = None,
        immediately: bool = False,
        free: bool = False,
    ) -> None:
        """Schedule another attempt within the retry budget; `free`: the one clean re-fetch
        after a checksum mismatch, which the budget does not count (it is bounded by
        clean_refetch_done)."""
        if immediately and (free or self.policy.may_retry(transfer.attempt)):
            self.queue.appendleft(transfer)
            return
        if not self.policy.may_retry(transfer.attempt):
            message = f"{reason} (gave up after {transfer.attempt} attempts)"
            self._fail(transfer, FetchError(transfer.job.url, message))
            return
        ready = time.monotonic() + self.policy.delay(transfer.attempt, retry_after)
        heapq.heappush(self.delayed, (ready, next(self._seq), transfer))

    def _fail(self, transfer: _Transfer, error: FetchError) -> None:
        self.failures.append((transfer.job, error))


def _step(multi: pycurl.CurlMulti) -> list[tuple[pycurl.Curl, int, str]]:
    """Let libcurl work; return the transfers that finished (possibly none, after waiting at
    most a second, so that the caller can start retries that became due)."""
    for _ in range(2):
        while True:
            ret, _running = multi.perform()
            if ret != pycurl.E_CALL_MULTI_PERFORM:
                break
        finished: list[tuple[pycurl.Curl, int, str]] = []
        while True:
            queued, ok, failed = multi.info_read()
            finished.extend((handle, 0, "") for handle in ok)
            finished.extend((handle, code, message) for handle, code, message in failed)
            if queued == 0:
                break
        if finished:
            return finished
        # Sleep until a socket is ready or libcurl's own timer (a timeout) is due.
        wait_ms = multi.timeout()
        if wait_ms != 0:
            multi.select(min(wait_ms, 1000) / 1000 if wait_ms > 0 else 1.0)
    return []
