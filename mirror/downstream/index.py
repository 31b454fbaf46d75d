"""What a mirror node serves its downstream mirrors: one JSON document, `GET /downstream.json`.

Built from the published trees and sync state on every request (a few file reads and one
sha256 per repomd.xml), so it is never older than what /repos/, /files/ and the registry
serve. The body is deterministic (sorted keys): its sha256 is the ETag, and an unchanged
mirror answers a downstream's If-None-Match with 304 and no body.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from mirror import state, tls
from mirror.config import Config
from mirror.repofile import RepoDefinition, expand_targets

FORMAT = 1
PATH = "/downstream.json"


def _sha256_of(path: Any) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _repos(cfg: Config, definitions: Sequence[RepoDefinition]) -> dict[str, str]:
    """repo target key -> sha256 of its published repomd.xml (published targets only)."""
    from mirror.yum.metadata import REPOMD

    repos = {}
    for target in expand_targets(definitions, cfg):
        digest = _sha256_of(cfg.repos_root.joinpath(*target.subpath) / REPOMD)
        if digest is not None:
            repos[target.key] = digest
    return repos


def _images(cfg: Config) -> list[dict[str, Any]]:
    """Every image synced at least once: what the registry holds under its names."""
    rows = []
    for record in state.load_all(cfg.state_root, "images"):
        if record.last_success and record.digest and record.mirrored:
            rows.append(
                {
                    "upstream": record.upstream or record.key,
                    "mirrored": list(record.mirrored),  # the first is the image's own name
                    "digest": record.digest,
                }
            )
    return sorted(rows, key=lambda row: str(row["upstream"]))


def _files(cfg: Config) -> list[dict[str, Any]]:
    from mirror.files.record import files_root

    rows = []
    for record in state.load_all(cfg.state_root, "files"):
        published = files_root(cfg) / record.key
        if record.last_success and record.sha256 and published.is_file():
            rows.append({"path": record.key, "sha256": record.sha256, "size": record.size})
    return sorted(rows, key=lambda row: str(row["path"]))


def _charts(cfg: Config) -> list[dict[str, Any]]:
    """Every chart repository published: its name, the sha256 of our index.yaml, and the
    chart versions it holds."""
    from mirror.charts.sync import INDEX, charts_root

    rows = []
    for record in state.load_all(cfg.state_root, "charts"):
        digest = _sha256_of(charts_root(cfg) / record.key / INDEX)
        charts = [
            {"name": str(c["name"]), "version": str(c["version"])}
            for c in record.charts
            if isinstance(c, dict) and c.get("name") and c.get("version")
        ]
        if record.last_success and digest and charts:
            rows.append({"repo_name": record.key, "index_sha256": digest, "charts": charts})
    return sorted(rows, key=lambda row: str(row["repo_name"]))


def build(cfg: Config, definitions: Sequence[RepoDefinition]) -> dict[str, Any]:
    from mirror.web import repofiles

    return {
        "format": FORMAT,
        "base_url": cfg.base_url,
        # The same text as /repofiles/mirror.repo: baseurls at this node's /repos/.
        "repofile": repofiles.render(definitions, cfg),
        "repos": _repos(cfg, definitions),
        # Verified TLS also when the embedded registry serves it with our generated CA.
        "registry": {"url": cfg.registry.url, "insecure": not tls.local_registry_verify(cfg)},
        "images": _images(cfg),
        "files": _files(cfg),
        "charts": _charts(cfg),
    }


def render(cfg: Config, definitions: Sequence[RepoDefinition]) -> tuple[bytes, str]:
    """(body, etag): the document as served and its strong validator."""
    body = json.dumps(build(cfg, definitions), sort_keys=True, indent=1).encode() + b"\n"
    return body, hashlib.sha256(body).hexdigest()
