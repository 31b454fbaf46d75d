"""What `mirror status`, /api/status and the status page show about imports (kept free of
heavy imports: the web app loads it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mirror.config import Config


def transfer_dir(cfg: Config) -> Path:
    """state/transfer/: last_import.json and manifests/<sha256>.json of every import."""
    return cfg.state_root / "transfer"


def last_import(cfg: Config) -> dict[str, Any] | None:
    """The last `mirror import` (archive, manifest_sha256, imported_at, created, base,
    members); None when nothing was ever imported."""
    try:
        data = json.loads((transfer_dir(cfg) / "last_import.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
