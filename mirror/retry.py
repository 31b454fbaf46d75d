"""The one retry policy for every HTTP request the mirror makes.

What is transient (worth another try) and what is not is decided here, once, for small
documents, bulk downloads and registry API calls alike:
- transient: connection refused/reset, a stall past the timeout, a body cut short or longer
  than announced, HTTP 408/425/429/500/502/503/504;
- permanent: any other HTTP status (404, 401, ...), TLS verification failures, malformed URLs,
  a checksum mismatch after a clean re-fetch, and every local error (disk full, read-only
  file system, permissions): those are the caller's to report, never to retry.
Backoff is exponential and bounded; `Retry-After` is honoured up to a cap, so a 503 with
"Retry-After: 3600" cannot hold the sync lock for an hour.
"""

from __future__ import annotations

import errno
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

# OSError numbers that mean "this machine cannot write there": retrying cannot help, and every
# other file on the same file system will fail the same way.
LOCAL_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "I/O error",
}


def local_reason(exc: OSError) -> str | None:
    """The one-line reason for a local disk error, or None when `exc` is not one."""
    return LOCAL_ERRNOS.get(exc.errno or 0)


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5  # further attempts after the first
    backoff: float = 0.5  # first wait, doubled every attempt
    backoff_max: float = 10.0
    retry_after_cap: float = 30.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before attempt number `attempt + 1` (attempt counts from 1)."""
        hinted = parse_retry_after(retry_after)
        if hinted is not None:
            return min(hinted, self.retry_after_cap)
        base = min(self.backoff * 2.0 ** (attempt - 1), self.backoff_max)
        # A little jitter so that many transfers failing together do not retry in lockstep.
        return base * (0.8 + 0.4 * random.random())

    def may_retry(self, attempt: int) -> bool:
        return attempt <= self.retries


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP-date; None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
