"""Sync state on disk: what was mirrored, when, and the last error, per repo target and image.

One small JSON file per item under data_dir/state/, written atomically and durably
(mirror.fsutil), so `mirror status`, the web app and a running sync never see a half-written
record, not even after a crash or a power loss.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from mirror import fsutil

Kind = Literal["repos", "images"]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class ItemState:
    """One repo target (key 'docker-ce-stable/9/x86_64') or one image (its upstream ref)."""

    key: str
    upstream: str = ""
    last_attempt: str | None = None
    last_success: str | None = None
    last_error: str | None = None
    duration_s: float | None = None
    # repos: packages and bytes published; images: digest and platforms in the registry
    packages: int | None = None
    bytes: int | None = None
    digest: str | None = None
    mirrored: str | None = None
    platforms: list[str] = field(default_factory=list)
    fingerprint: str | None = None  # what was synced: upstream repomd hash + filter

    @property
    def ok(self) -> bool:
        return self.last_success is not None and self.last_error is None


def _from_dict(data: dict[str, Any]) -> ItemState:
    """Fields this version knows; a state file written by a newer one still loads."""
    known = set(ItemState.__dataclass_fields__)
    return ItemState(**{k: v for k, v in data.items() if k in known})


def keyed_file(directory: Path, key: str) -> Path:
    """directory/KEY.json, KEY flattened to one file name ('a/9/x86_64' -> 'a%2F9%2Fx86_64')."""
    safe = key.replace("%", "%25").replace("/", "%2F").replace(":", "%3A")
    return directory / f"{safe}.json"


def _file(root: Path, kind: Kind, key: str) -> Path:
    return keyed_file(root / kind, key)


def load(root: Path, kind: Kind, key: str) -> ItemState:
    try:
        data: dict[str, Any] = json.loads(_file(root, kind, key).read_text())
    except (FileNotFoundError, ValueError):
        return ItemState(key=key)
    return _from_dict(data)


def save(root: Path, kind: Kind, state: ItemState) -> None:
    fsutil.atomic_write_text(
        _file(root, kind, state.key), json.dumps(asdict(state), indent=2, sort_keys=True)
    )


def load_all(root: Path, kind: Kind) -> list[ItemState]:
    directory = root / kind
    if not directory.is_dir():
        return []
    states = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        states.append(_from_dict(data))
    return states
