"""What the mirror holds and how it is doing: status page, /api/status, /metrics, POST /api/sync.

Every view reads the same sync state files (mirror/state.py) through `collect_status`, so
the page, the JSON and the metrics always agree, in every gunicorn worker.
"""

from __future__ import annotations

import hmac
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from typing import Any

from filelock import FileLock, Timeout
from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from mirror.config import Config
from mirror.content import report
from mirror.progress import human_bytes

bp = Blueprint("status", __name__)
SCHEMA_VERSION = report.SCHEMA_VERSION


def _cfg() -> Config:
    cfg: Config = current_app.config["MIRROR"]
    return cfg


def collect_status(cfg: Config, check_registry: bool = True) -> dict[str, Any]:
    """The documented /api/status document (one renderer for every view: mirror.content)."""
    return report.status_document(cfg, check_registry)


# --- page ---------------------------------------------------------------------------------


def ago(iso: str | None, now: float | None = None) -> str:
    if not iso:
        return "never"
    seconds = max(0, int((now or time.time()) - datetime.fromisoformat(iso).timestamp()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return "just now"


def local_time(iso: str | None) -> str:
    if not iso:
        return "never"
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M %Z")


@bp.get("/")
def page() -> str:
    status = collect_status(_cfg())
    return render_template(
        "status.html", s=status, ago=ago, local_time=local_time, size=human_bytes
    )


@bp.get("/api/status")
def api_status() -> Response:
    return jsonify(collect_status(_cfg()))


# --- metrics ------------------------------------------------------------------------------


class StateCollector:
    """Sync metrics computed from the state files at scrape time (same in every worker)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def collect(self) -> Any:
        yield from report.metric_families(self.cfg)


@bp.get("/metrics")
def metrics() -> Response:
    registry = CollectorRegistry()
    registry.register(StateCollector(_cfg()))
    if os.path.isdir(os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        from mirror.web.http_metrics import HTTP_REGISTRY

        registry = _merge(registry, HTTP_REGISTRY)
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def _merge(*registries: CollectorRegistry) -> CollectorRegistry:
    class _Both:
        def collect(self) -> Any:
            for reg in registries:
                yield from reg.collect()

    merged = CollectorRegistry()
    merged.register(_Both())
    return merged


# --- trigger ------------------------------------------------------------------------------


@bp.post("/api/sync")
def trigger_sync() -> tuple[Response, int]:
    """Start `mirror sync` in the background. Exists only when sync_token is configured."""
    cfg = _cfg()
    if not cfg.sync_token:
        abort(404)
    header = request.headers.get("Authorization", "")
    given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    if not given or not hmac.compare_digest(given.encode(), cfg.sync_token.encode()):
        return jsonify({"error": "missing or wrong bearer token"}), 401
    lock = FileLock(str(cfg.data_dir / ".sync.lock"))
    try:  # a courtesy answer; the CLI's own lock is what guarantees one sync at a time
        lock.acquire(timeout=0)
        lock.release()
    except Timeout:
        return jsonify({"error": "a sync is already running"}), 409
    assert cfg.config_path is not None
    log_path = cfg.data_dir / "last-web-sync.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mirror", "-c", str(cfg.config_path), "sync"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # Reap the child when it ends, so no zombie outlives the sync in this worker.
    threading.Thread(target=proc.wait, daemon=True).start()
    return jsonify({"started": True, "pid": proc.pid, "log": str(log_path)}), 202
