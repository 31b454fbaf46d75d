"""Sync state on disk: one typed record per mirrored item (repo target, image, file, chart).

One small JSON file per item under data_dir/state/<kind>/, written atomically and durably
(mirror.fsutil), so `mirror status`, the web app and a running sync never see a half-written
record, not even after a crash or a power loss. Every kind's record extends `Record`; which
class a kind uses is declared once, in mirror.content.KINDS.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from mirror import fsutil

R = TypeVar("R", bound="Record")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Record:
    """What every kind records about one item."""

    key: str
    upstream: str = ""
    last_attempt: str | None = None
    last_success: str | None = None
    last_error: str | None = None
    duration_s: float | None = None
    fingerprint: str | None = None  # what was synced (e.g. upstream repomd hash + filter)

    @property
    def ok(self) -> bool:
        return self.last_success is not None and self.last_error is None


@dataclass
class RepoRecord(Record):
    packages: int | None = None  # published
    bytes: int | None = None


@dataclass
class ImageRecord(Record):
    digest: str | None = None  # what every mirrored name resolves to
    mirrored: list[str] = field(default_factory=list)  # names in our registry
    platforms: list[str] = field(default_factory=list)


def from_dict(cls: type[R], data: dict[str, Any]) -> R:
    """Fields this version knows; a state file written by a newer (or older) one still loads."""
    known = {f.name for f in fields(cls)}
    values = {k: v for k, v in data.items() if k in known}
    if isinstance(values.get("mirrored"), str):  # written before records were typed
        values["mirrored"] = values["mirrored"].split()
    return cls(**values)


def keyed_file(directory: Path, key: str) -> Path:
    """directory/KEY.json, KEY flattened to one file name ('a/9/x86_64' -> 'a%2F9%2Fx86_64')."""
    safe = key.replace("%", "%25").replace("/", "%2F").replace(":", "%3A")
    return directory / f"{safe}.json"


def record_type(kind: str) -> type[Record]:
    from mirror.content import record_type as declared

    return declared(kind)


def load(root: Path, kind: str, key: str) -> Any:
    """The record of `key` (the kind's record class), or a fresh one."""
    cls = record_type(kind)
    try:
        data = json.loads(keyed_file(root / kind, key).read_text())
        if isinstance(data, dict):
            return from_dict(cls, {**data, "key": key})
    except (FileNotFoundError, ValueError, TypeError):
        pass  # missing, or not a record (edited by hand, cut short): start afresh
    return cls(key=key)


def save(root: Path, kind: str, record: Record) -> None:
    fsutil.atomic_write_text(
        keyed_file(root / kind, record.key), json.dumps(asdict(record), indent=2, sort_keys=True)
    )


def load_all(root: Path, kind: str) -> list[Any]:
    cls = record_type(kind)
    directory = root / kind
    if not directory.is_dir():
        return []
    records = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("key"), str):
            try:
                records.append(from_dict(cls, data))
            except TypeError:  # a field of the wrong shape: not a record this version reads
                continue
    return records
