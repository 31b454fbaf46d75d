"""Files as a kind of content (mirror.content): one item per `files:` entry of the config,
published under data_dir/files/<path> and served at /files/<path> (mirror.files.sync)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from mirror.config import Config
from mirror.content.kind import Outcome, SyncRequest, configured_fetcher, outcome_fields
from mirror.files.record import FileRecord
from mirror.progress import human_bytes


class FileKind:
    name = "files"
    label = "file"
    record_type = FileRecord
    gauges = {
        "bytes": "Size of the published file",
        "changed_upstream": "1 if the file changed upstream since first mirrored (no sha256)",
    }
    # Planned again under the lock: an upstream mirror's index fetched by this run may
    # bring files (mirror.downstream).
    plan_after_earlier_kinds = True

    def discovered_images(self, cfg: Config) -> list[tuple[Any, str]]:
        """(ImageRef, source) of every image referenced by what this kind mirrored: the
        images kind mirrors them too (mirror.images.sources)."""
        from mirror.files.discover import discovered_images

        return discovered_images(cfg)

    def plan(self, cfg: Config, request: SyncRequest) -> Sequence[Any]:
        if request.repo_ids:  # `--repo ID` narrows the sync to those repos
            return []
        if cfg.upstream_mirror is not None:  # and the upstream mirror's files
            from mirror.downstream.client import file_entries

            return [*cfg.files, *file_entries(cfg)]
        return list(cfg.files)  # validated by the config (mirror.files.config)

    def workers(self, cfg: Config, items: Sequence[Any]) -> int:
        # Each file is one transfer; a handful at once, like download_workers for packages.
        return max(1, min(cfg.download_workers, len(items)))

    @contextmanager
    def session(self, cfg: Config, dry_run: bool) -> Iterator[Any]:
        from mirror.files.sync import FileSession

        with configured_fetcher(cfg, parallel=1) as fetcher:
            yield FileSession(cfg, fetcher)

    def sync_one(self, session: Any, item: Any, record: Any, request: SyncRequest) -> Outcome:
        from mirror.downstream.client import file_unchanged
        from mirror.files.sync import sync_file

        known = file_unchanged(session.cfg, item, record, request)
        result = sync_file(session, item, record, request.dry_run, known_unchanged=known)
        return Outcome(changed=result.changed, warnings=result.warnings, detail=result)

    def cleanup_failed(self, cfg: Config, item: Any, error: Exception) -> None:
        from mirror.errors import LocalDiskError
        from mirror.files.sync import published_path, staging_path

        # A checksum-verified .part resumes on the next run; on a full disk it is what keeps
        # the disk full, so it goes (the published copy is never touched).
        if isinstance(error, LocalDiskError):
            staged = staging_path(published_path(cfg, item))
            for leftover in (staged, staged.with_name(staged.name + ".part")):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def describe(self, cfg: Config, record: Any) -> dict[str, Any]:
        return {
            "key": record.key,
            "path": record.key,
            "url": f"/files/{record.key}",
            "upstream": record.upstream,
            "size": record.size,
            "sha256": record.sha256,
            "verified_by": record.verified_by,
            "changed_upstream": record.changed_upstream,
            "images": list(record.images),
            "image_warnings": list(record.image_warnings),
            **outcome_fields(record),
        }

    def gauge_values(self, record: Any) -> dict[str, float | None]:
        changed = None if record.sha256 is None else float(record.changed_upstream is not None)
        return {"bytes": record.size, "changed_upstream": changed}

    def status_line(self, record: Any) -> str:
        flag = "ok" if record.ok else "FAILED"
        size = human_bytes(record.size) if record.size is not None else "-"
        digest = (record.sha256 or "-")[:16]
        line = (
            f"{record.key:40} {flag:6} size={size:>10} sha256={digest:16} "
            f"last_success={record.last_success or 'never'}"
        )
        if record.changed_upstream:
            line += f"\n{'':40} changed upstream: {record.changed_upstream}"
        if record.last_error:
            line += f"\n{'':40} last error: {record.last_error}"
        return line


KIND = FileKind()
