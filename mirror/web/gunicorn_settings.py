"""The one gunicorn configuration. `mirror serve` (mirror/web/server.py) and the systemd unit's
deploy/gunicorn.conf.py both start from SHARED; each adds only where it listens and how many
workers it runs."""

from __future__ import annotations

from typing import Any

# gthread that gathers each request head without a thread (mirror.web.server): dnf, curl and
# containerd keep connections open, and slow or silent clients must not take all threads.
WORKER_CLASS = "mirror.web.server.BoundedThreadWorker"

SHARED: dict[str, Any] = {
    "worker_class": WORKER_CLASS,
    # Large rpms and image blobs over slow links: a worker busy sending must not be killed.
    "timeout": 120,
    "graceful_timeout": 10,
    "keepalive": 5,
    # Logs go to stdout/stderr (the journal under systemd).
    "accesslog": "-",
    "errorlog": "-",
    "loglevel": "info",
    # Combined log format, plus the client nginx saw (X-Forwarded-For) and the time taken.
    "access_log_format": '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" '
    'xff="%({x-forwarded-for}i)s" %(M)sms',
    # Trust X-Forwarded-* only from nginx on this host.
    "forwarded_allow_ips": "127.0.0.1,::1",
    # No "sendfile" key: it is a store_const setting, so setting it to anything, even True,
    # turns sendfile off. Left unset, gunicorn uses sendfile(2) for file bodies.
}
