"""HTTP request metrics. Under gunicorn, `mirror serve` sets PROMETHEUS_MULTIPROC_DIR before
this is imported, so counts from every worker add up on /metrics."""

from __future__ import annotations

from flask import Flask, Response, request
from prometheus_client import CollectorRegistry, Counter

HTTP_REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "mirror_http_requests",
    "HTTP requests served, by route and status",
    ["route", "status"],
    registry=HTTP_REGISTRY,
)


def install(app: Flask) -> None:
    @app.after_request
    def _count(resp: Response) -> Response:
        # The route pattern, not the path: /repos/<path:subpath> is one series, not millions.
        route = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
        REQUESTS.labels(route=route, status=str(resp.status_code)).inc()
        return resp
