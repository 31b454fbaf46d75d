"""One view of sync state for everyone: `mirror status`, /api/status, /metrics, the status page.

Every kind's records are loaded from data_dir/state/<kind>/ and described by the kind itself
(`Kind.describe`, `Kind.status_line`, `Kind.gauges`), so the four outputs always agree.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from mirror import __version__, content, diskuse, state, tls
from mirror.config import Config
from mirror.transfer.status import last_import

SCHEMA_VERSION = 1


def registry_health(cfg: Config) -> dict[str, Any]:
    from mirror.images.registry import registry_answers

    started = time.monotonic()
    up = registry_answers(cfg.registry.url, tls.local_registry_verify(cfg))
    return {
        "url": cfg.registry.url,
        "embedded": cfg.registry.embedded,
        "up": up,
        "checked_in_ms": round((time.monotonic() - started) * 1000),
    }


def records(cfg: Config) -> dict[str, list[Any]]:
    """Every kind's records, in KINDS order."""
    return {name: state.load_all(cfg.state_root, name) for name in content.names()}


def status_document(cfg: Config, check_registry: bool = True) -> dict[str, Any]:
    """The documented /api/status document (schema in mirror/web/status_schema.json); also
    `mirror status --json`."""
    rows = {
        name: [content.get(name).describe(cfg, record) for record in found]
        for name, found in records(cfg).items()
    }
    from mirror import nodeconfig

    version = nodeconfig.default_version(cfg) if cfg.kubernetes_versions else None
    base = cfg.base_url
    commands = {
        "repo_file": f"curl -o /etc/yum.repos.d/mirror.repo {base}/repofiles/mirror.repo",
        "bootstrap": f"curl -fsS {base}/bootstrap.sh | sudo bash -s -- --runtime containerd",
    }
    tls_doc = tls.status(cfg)
    if tls_doc is not None and tls_doc["ok"]:
        # Trust first: fetch the CA unverified, check the hash printed here, then bootstrap
        # with it (every later step verifies TLS).
        commands["bootstrap"] = f"{tls_doc['pin_command']} --runtime containerd"
    if version:
        commands["kubeadm_init"] = f"kubeadm init --config <(curl -fsS {base}/kubeadm/config.yaml)"
    return {
        "kubernetes": kubernetes_status(cfg),
        "schema_version": SCHEMA_VERSION,
        "mirror_version": __version__,
        "generated_at": state.now_iso(),
        "base_url": base,
        "kubernetes_version": version,
        "registry": registry_health(cfg) if check_registry else None,
        "disk_use": diskuse.disk_use(cfg),
        "tls": tls_doc,
        **rows,
        "commands": commands,
        "last_import": last_import(cfg),  # mirror.transfer: the last `mirror import`
        "ok": all(row["ok"] for kind_rows in rows.values() for row in kind_rows),
    }


def kubernetes_status(cfg: Config) -> dict[str, Any]:
    """Freshness (patches behind per minor, GPG key expiry) and the configured upgrade paths
    (mirror.kubernetes); never runs kubeadm (this also serves web requests)."""
    from mirror.kubernetes.freshness import freshness
    from mirror.kubernetes.upgrade import configured_plans

    fresh = freshness(cfg)
    return {
        "minors": fresh["kubernetes"],
        "gpg_keys": fresh["gpg_keys"],
        "warnings": fresh["warnings"],
        "upgrade_plans": configured_plans(cfg),
    }


def status_lines(cfg: Config) -> tuple[list[str], bool]:
    """`mirror status`: one line (or two, with the last error) per item; and whether all ok."""
    lines: list[str] = []
    found = records(cfg)
    if not any(found.values()):
        lines.append(f"nothing synced yet into {cfg.data_dir}")
    for name, kind_records in found.items():
        kind = content.get(name)
        lines += [kind.status_line(record) for record in kind_records]
    from mirror.kubernetes.freshness import status_lines as freshness_lines

    lines += freshness_lines(cfg)
    lines += diskuse.disk_use_lines(diskuse.disk_use(cfg))
    lines += tls.status_lines(cfg)
    imported = last_import(cfg)
    if imported:
        lines.append(
            f"last import: {imported['archive']} at {imported['imported_at']} "
            f"(manifest sha256 {imported['manifest_sha256'][:16]})"
        )
    return lines, all(r.ok for kind_records in found.values() for r in kind_records)


def _ts(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def metric_families(cfg: Config) -> Iterator[GaugeMetricFamily]:
    """Per kind: last success, ok, duration (mirror_<label>_..., labelled by the item key),
    plus the kind's own gauges (e.g. mirror_repo_packages)."""
    for name, kind_records in records(cfg).items():
        kind = content.get(name)
        label = kind.label
        success = GaugeMetricFamily(
            f"mirror_{label}_last_success_timestamp_seconds",
            f"Last successful sync of a {label}",
            labels=[label],
        )
        ok = GaugeMetricFamily(
            f"mirror_{label}_sync_ok",
            f"1 if the last sync of the {label} succeeded",
            labels=[label],
        )
        duration = GaugeMetricFamily(
            f"mirror_{label}_sync_duration_seconds",
            f"Duration of the last {label} sync",
            labels=[label],
        )
        extras = {
            gauge: GaugeMetricFamily(f"mirror_{label}_{gauge}", text, labels=[label])
            for gauge, text in kind.gauges.items()
        }
        for record in kind_records:
            key = [record.key]
            ok.add_metric(key, 1.0 if record.ok else 0.0)
            if (ts := _ts(record.last_success)) is not None:
                success.add_metric(key, ts)
            if record.duration_s is not None:
                duration.add_metric(key, record.duration_s)
            for gauge, value in kind.gauge_values(record).items():
                if value is not None:
                    extras[gauge].add_metric(key, float(value))
        yield success
        yield ok
        yield from extras.values()
        yield duration
    from mirror.kubernetes.freshness import metric_families as freshness_metrics

    yield from freshness_metrics(cfg)  # patches behind per minor, GPG key expiry
    yield from diskuse.metric_families(cfg)
    yield from tls.metric_families(cfg)  # CA and server certificate expiry
