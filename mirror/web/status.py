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
from prometheus_client.core import GaugeMetricFamily

from mirror import __version__, nodeconfig, state
from mirror.config import Config

bp = Blueprint("status", __name__)
SCHEMA_VERSION = 1


def _cfg() -> Config:
    cfg: Config = current_app.config["MIRROR"]
    return cfg


def _ts(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def registry_health(cfg: Config) -> dict[str, Any]:
    from mirror.images.registry import registry_answers

    started = time.monotonic()
    up = registry_answers(cfg.registry.url, cfg.registry.tls_verify)
    return {
        "url": cfg.registry.url,
        "embedded": cfg.registry.embedded,
        "up": up,
        "checked_in_ms": round((time.monotonic() - started) * 1000),
    }


def collect_status(cfg: Config, check_registry: bool = True) -> dict[str, Any]:
    """The documented /api/status document (schema in mirror/web/status_schema.json)."""
    repos = [
        {
            "key": r.key,
            "repo_id": r.key.split("/")[0],
            "upstream": r.upstream,
            "packages": r.packages,
            "bytes": r.bytes,
            "last_attempt": r.last_attempt,
            "last_success": r.last_success,
            "last_error": r.last_error,
            "duration_s": r.duration_s,
            "ok": r.ok,
        }
        for r in state.load_all(cfg.state_root, "repos")
    ]
    images = [
        {
            "upstream": i.key,
            "mirrored": i.mirrored,
            "digest": i.digest,
            "platforms": i.platforms,
            "last_attempt": i.last_attempt,
            "last_success": i.last_success,
            "last_error": i.last_error,
            "duration_s": i.duration_s,
            "ok": i.ok,
        }
        for i in state.load_all(cfg.state_root, "images")
    ]
    version = nodeconfig.default_version(cfg) if cfg.kubernetes_versions else None
    base = cfg.base_url
    commands = {
        "repo_file": f"curl -o /etc/yum.repos.d/mirror.repo {base}/repofiles/mirror.repo",
        "bootstrap": f"curl -fsS {base}/bootstrap.sh | sudo bash -s -- --runtime containerd",
    }
    if version:
        commands["kubeadm_init"] = f"kubeadm init --config <(curl -fsS {base}/kubeadm/config.yaml)"
    return {
        "schema_version": SCHEMA_VERSION,
        "mirror_version": __version__,
        "generated_at": state.now_iso(),
        "base_url": base,
        "kubernetes_version": version,
        "registry": registry_health(cfg) if check_registry else None,
        "repos": repos,
        "images": images,
        "commands": commands,
        "ok": all(r["ok"] for r in repos) and all(i["ok"] for i in images),
    }


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
    return render_template("status.html", s=status, ago=ago, local_time=local_time)


@bp.get("/api/status")
def api_status() -> Response:
    return jsonify(collect_status(_cfg()))


# --- metrics ------------------------------------------------------------------------------


class StateCollector:
    """Sync metrics computed from the state files at scrape time (same in every worker)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def collect(self) -> Any:
        s = collect_status(self.cfg, check_registry=False)
        g = GaugeMetricFamily
        repo_success = g(
            "mirror_repo_last_success_timestamp_seconds",
            "Last successful sync of a repo target",
            labels=["repo"],
        )
        repo_ok = g(
            "mirror_repo_sync_ok", "1 if the last sync of the repo succeeded", labels=["repo"]
        )
        repo_pkgs = g("mirror_repo_packages", "Packages published", labels=["repo"])
        repo_bytes = g("mirror_repo_bytes", "Bytes of packages published", labels=["repo"])
        repo_dur = g(
            "mirror_repo_sync_duration_seconds", "Duration of the last sync", labels=["repo"]
        )
        for r in s["repos"]:
            labels = [r["key"]]
            repo_ok.add_metric(labels, 1.0 if r["ok"] else 0.0)
            if (ts := _ts(r["last_success"])) is not None:
                repo_success.add_metric(labels, ts)
            if r["packages"] is not None:
                repo_pkgs.add_metric(labels, r["packages"])
            if r["bytes"] is not None:
                repo_bytes.add_metric(labels, r["bytes"])
            if r["duration_s"] is not None:
                repo_dur.add_metric(labels, r["duration_s"])
        img_success = g(
            "mirror_image_last_success_timestamp_seconds",
            "Last successful sync of an image",
            labels=["image"],
        )
        img_ok = g(
            "mirror_image_sync_ok", "1 if the last sync of the image succeeded", labels=["image"]
        )
        img_dur = g(
            "mirror_image_sync_duration_seconds",
            "Duration of the last image sync",
            labels=["image"],
        )
        for i in s["images"]:
            labels = [i["upstream"]]
            img_ok.add_metric(labels, 1.0 if i["ok"] else 0.0)
            if (ts := _ts(i["last_success"])) is not None:
                img_success.add_metric(labels, ts)
            if i["duration_s"] is not None:
                img_dur.add_metric(labels, i["duration_s"])
        yield from (repo_success, repo_ok, repo_pkgs, repo_bytes, repo_dur)
        yield from (img_success, img_ok, img_dur)


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
