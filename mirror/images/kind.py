"""Images as a kind of content (mirror.content): the kubeadm sets, images.txt and what else
the config asks for, copied into the registry by mirror.images.sync."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from mirror import state
from mirror.config import Config
from mirror.content.kind import Outcome, PlanProblem, SyncRequest, outcome_fields

log = logging.getLogger("mirror.images")


class ImageKind:
    name = "images"
    label = "image"
    record_type = state.ImageRecord
    gauges: dict[str, str] = {}
    # The runner plans images again after files and charts synced (images found in them).
    plan_after_earlier_kinds = True

    def plan(self, cfg: Config, request: SyncRequest) -> Sequence[Any]:
        if request.repo_ids:  # `--repo ID` narrows the sync to those repos
            return []
        from mirror import nodeconfig
        from mirror.images.sources import found_in_content, with_found_images

        # kubeadm runs (and its cache is written) only under the sync lock, never in a dry run
        # or in the validation plan made before the lock.
        plan = nodeconfig.image_plan(cfg, run_kubeadm=request.under_lock and not request.dry_run)
        for line in plan.warnings:  # kubeadm disagreeing with the table, ...
            log.warning("%s", line)
        jobs = with_found_images(cfg, plan.jobs, found_in_content(cfg))
        if cfg.upstream_mirror is not None:  # digests its upstream mirror's index names
            from mirror.downstream.client import with_known_digests

            jobs = with_known_digests(cfg, jobs, request)
        # A version without an image list fails the sync with its own line; the rest syncs.
        problems = [PlanProblem(line.split(":", 1)[0], line) for line in plan.failures]
        return [*jobs, *problems]

    def workers(self, cfg: Config, items: Sequence[Any]) -> int:
        return max(1, min(cfg.image_workers, len(items)))

    @contextmanager
    def session(self, cfg: Config, dry_run: bool) -> Iterator[Any]:
        from mirror.downstream.client import image_config
        from mirror.images.registry import ensure_registry
        from mirror.images.sync import image_session

        # A downstream mirror copies its upstream mirror's images from that one's registry.
        copy_cfg = image_config(cfg)
        # A sync from cron must not fail because the web service (and with it the embedded
        # registry) is down: ensure_registry starts it for the duration.
        with ensure_registry(cfg), image_session(copy_cfg, cfg.image_workers) as session:
            yield session

    def sync_one(self, session: Any, item: Any, record: Any, request: SyncRequest) -> Outcome:
        from mirror.images.sync import sync_one

        result = sync_one(session, item, record, request.dry_run)
        return Outcome(changed=result.changed, detail=result)

    def cleanup_failed(self, cfg: Config, item: Any, error: Exception) -> None:
        pass  # skopeo leaves nothing of ours behind; the registry keeps what it had

    def describe(self, cfg: Config, record: Any) -> dict[str, Any]:
        return {
            "upstream": record.key,
            "mirrored": " ".join(record.mirrored) or None,
            "digest": record.digest,
            "platforms": record.platforms,
            **outcome_fields(record),
        }

    def gauge_values(self, record: Any) -> dict[str, float | None]:
        return {}

    def status_line(self, record: Any) -> str:
        flag = "ok" if record.ok else "FAILED"
        line = f"{record.key:60} {flag:6} {record.digest or '-'}  "
        line += f"last_success={record.last_success or 'never'}"
        if record.last_error:
            line += f"\n{'':60} last error: {record.last_error}"
        return line


KIND = ImageKind()
