"""Freshness: configured Kubernetes patches vs what upstream has, and repo key expiry.

- Per configured minor: the newest patch in the mirrored primary (an unfiltered repo's primary
  is upstream's, byte for byte) vs the newest configured one. `behind` counts patch releases.
- Per repo key in data_dir/keys/: when it expires. pkgs.k8s.io's key expired in November 2024
  and broke every installer that had cached it; a warning 30 days ahead leaves time to fetch
  the renewed key (a sync after upstream re-publishes it does that).

Data for `mirror status`, the status page and /metrics; nothing here touches the network.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from mirror import gpg
from mirror.config import Config
from mirror.errors import MirrorError
from mirror.kubernetes.packages import newest_patch
from mirror.kubernetes.resolve import resolve_versions
from mirror.kubernetes.versions import KubeVersion, configured_minors

log = logging.getLogger("mirror.kubernetes")
WARN_DAYS = 30
DAY = 86400


@dataclass(frozen=True)
class PatchFreshness:
    minor: str  # "v1.36"
    newest_mirrored: str | None  # newest kubeadm patch in the published primary
    newest_configured: str | None  # newest configured (ranges resolved) patch of the minor
    behind: int | None  # patch releases between the two; None when either is unknown


@dataclass(frozen=True)
class KeyExpiry:
    repo: str  # the repo id: data_dir/keys/<repo>.gpg or keys/<repo>/<minor>.gpg
    fingerprint: str
    uid: str
    expires: int | None  # seconds since the epoch; None: never
    days_left: int | None
    level: str  # "ok", "warning" (<= WARN_DAYS), "expired"


def patch_freshness(cfg: Config) -> list[PatchFreshness]:
    configured = [KubeVersion.parse(v) for v in resolve_versions(cfg).versions]
    out = []
    for minor in configured_minors(cfg.kubernetes_versions):
        mine = [v for v in configured if v.minor_name == minor]
        newest_mine = max(mine) if mine else None
        upstream = newest_patch(cfg, minor)
        behind = None
        if upstream is not None and newest_mine is not None:
            behind = max(0, upstream.patch - newest_mine.patch)
        out.append(
            PatchFreshness(
                minor,
                str(upstream) if upstream else None,
                str(newest_mine) if newest_mine else None,
                behind,
            )
        )
    return out


def expiry_level(expires: int | None, now: float) -> tuple[int | None, str]:
    """(days left, rounded up; level). "in 10 days" for a key made to last 10 days."""
    if expires is None:
        return None, "ok"
    left = math.ceil((expires - now) / DAY)
    if expires <= now:
        return left, "expired"
    return left, "warning" if expires - now <= WARN_DAYS * DAY else "ok"


@functools.lru_cache(maxsize=64)
def _key_info(path: str, mtime_ns: int, size: int) -> tuple[gpg.KeyInfo, ...]:
    """Per key file generation: /metrics is scraped often and gpg is a process per file."""
    del mtime_ns, size  # only part of the cache key
    return tuple(gpg.key_info(Path(path).read_bytes()))


def key_expiries(cfg: Config, now: float | None = None) -> list[KeyExpiry]:
    """Every primary key of every repo key file, soonest expiry first. Keys are stored per
    target when they vary (keys/cri-o/v1.36.gpg); one key in several minors' files is
    listed once, under its repo id."""
    moment = time.time() if now is None else now
    out: dict[tuple[str, str], KeyExpiry] = {}
    for path in sorted(cfg.keys_root.rglob("*.gpg")) if cfg.keys_root.is_dir() else []:
        try:
            st = path.stat()
            keys = _key_info(str(path), st.st_mtime_ns, st.st_size)
        except (OSError, MirrorError) as exc:  # unreadable file, or no gpg on this host
            log.warning("%s: cannot read keys: %s", path, exc)
            continue
        repo = path.relative_to(cfg.keys_root).parts[0].removesuffix(".gpg")
        for key in keys:
            days, level = expiry_level(key.expires, moment)
            found = KeyExpiry(repo, key.fingerprint, key.uid, key.expires, days, level)
            out.setdefault((repo, key.fingerprint), found)
    return sorted(out.values(), key=lambda k: (k.expires is None, k.expires or 0, k.repo))


def freshness(cfg: Config) -> dict[str, Any]:
    """JSON-ready: {"kubernetes": [...per minor], "gpg_keys": [...], "warnings": [...]}."""
    patches = patch_freshness(cfg)
    keys = key_expiries(cfg)
    return {
        "kubernetes": [asdict(p) for p in patches],
        "gpg_keys": [asdict(k) for k in keys],
        "warnings": warnings(patches, keys),
    }


def _date(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d")


def warnings(patches: list[PatchFreshness], keys: list[KeyExpiry]) -> list[str]:
    out = []
    for p in patches:
        if p.behind:
            out.append(
                f"kubernetes {p.minor}: {p.newest_mirrored} is out, the newest configured is "
                f"{p.newest_configured} ({p.behind} patch{'es' if p.behind > 1 else ''} behind)"
            )
    for k in keys:
        if k.level == "expired" and k.expires is not None:
            out.append(f"gpg key of {k.repo} ({k.fingerprint}) EXPIRED on {_date(k.expires)}")
        elif k.level == "warning" and k.expires is not None:
            out.append(
                f"gpg key of {k.repo} ({k.fingerprint}) expires on {_date(k.expires)}, in "
                f"{k.days_left} days: fetch the renewed key before then (mirror sync)"
            )
    return out


def status_lines(cfg: Config) -> list[str]:
    """For `mirror status`: one line per minor and per key, then the warnings."""
    patches = patch_freshness(cfg)
    keys = key_expiries(cfg)
    lines = []
    for p in patches:
        behind = "?" if p.behind is None else str(p.behind)
        lines.append(
            f"kubernetes {p.minor:8} newest mirrored {p.newest_mirrored or '-':10} "
            f"newest configured {p.newest_configured or '-':10} behind {behind}"
        )
    for k in keys:
        when = "never expires" if k.expires is None else f"expires {_date(k.expires)}"
        lines.append(f"gpg key {k.repo:24} {k.fingerprint[-16:]} {when} ({k.level})")
    lines += [f"WARNING: {w}" for w in warnings(patches, keys)]
    return lines


def metric_families(cfg: Config) -> list[GaugeMetricFamily]:
    """For the /metrics collector: patch lag per minor, key expiry per repo key, and whether
    each configured range's upgrade plan is fully mirrored."""
    from mirror.kubernetes.upgrade import configured_plans

    behind = GaugeMetricFamily(
        "mirror_kubernetes_patch_behind",
        "Patch releases between the newest mirrored and the newest configured of a minor",
        labels=["minor"],
    )
    for p in patch_freshness(cfg):
        if p.behind is not None:
            behind.add_metric([p.minor], p.behind)
    expiry = GaugeMetricFamily(
        "mirror_gpg_key_expiry_timestamp_seconds",
        "When a repo's GPG key expires (keys that never expire are not listed)",
        labels=["repo", "fingerprint"],
    )
    for k in key_expiries(cfg):
        if k.expires is not None:
            expiry.add_metric([k.repo, k.fingerprint], k.expires)
    plans = GaugeMetricFamily(
        "mirror_kubernetes_upgrade_plan_ok",
        "1 if every rpm and image of a configured range's upgrade plan is mirrored",
        labels=["range"],
    )
    for plan in configured_plans(cfg):
        plans.add_metric([plan["range"]], 1.0 if plan["ok"] else 0.0)
    return [behind, expiry, plans]
