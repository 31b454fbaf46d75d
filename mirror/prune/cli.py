"""`mirror prune [--dry-run]`: a click command the main group registers (`main.add_command`).

Under the sync lock (no sync or prune pushes or publishes meanwhile):
1. plan: stale files, chart repos and repo targets (mirror.prune.content); images recorded
   but no longer configured (mirror.prune.images), read from the registry;
2. refuse before changing anything when manifests must go but the embedded registry is
   running (`mirror serve` or mirror-registry.service): distribution's garbage collection
   needs it stopped or read-only, and we do not own that process. Exit 3, with the fix;
3. remove content; DELETE the manifests through a registry of our own on a loopback port
   (the embedded storage, nobody else connected), stop it, then `garbage-collect`;
4. one line per removed item, and a summary with the bytes freed (storage measured before
   and after).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import click

from mirror import fsutil
from mirror.errors import EXIT_OK

if TYPE_CHECKING:
    from mirror.config import Config
    from mirror.images.regapi import RegistryAPI
    from mirror.prune.content import ContentRemoval
    from mirror.prune.images import ImagePlan

log = logging.getLogger("mirror")
_REPOSITORIES = Path("docker/registry/v2/repositories")  # distribution's storage layout
# Keys of distribution's `storage:` that configure it rather than name a driver.
_NOT_DRIVERS = {"delete", "redirect", "cache", "maintenance", "tag"}


class _HasConfig(Protocol):
    @property
    def cfg(self) -> Config: ...


@contextmanager
def _registry_api(cfg: Config, url: str) -> Iterator[RegistryAPI]:
    from mirror import tls
    from mirror.http import Fetcher
    from mirror.images import registries_conf
    from mirror.images.regapi import RegistryAPI
    from mirror.images.regauth import AuthFile

    fetcher = Fetcher(timeout=cfg.http_timeout, retries=cfg.http_retries, parallel=1)
    probe = Fetcher(timeout=min(cfg.http_timeout, 10.0), retries=0, parallel=1)
    with fetcher, probe:
        yield RegistryAPI(
            fetcher,
            probe,
            registries_conf=registries_conf.load(cfg.upstream.registries_conf),
            upstream_auth=AuthFile(cfg.upstream.authfile),
            local_url=url,
            # prune's private loopback instance (private_registry) is plain HTTP; the running
            # registry on registry.url's host is verified as the sync verifies it.
            local_tls_verify=url == cfg.registry.host and tls.local_registry_verify(cfg),
            local_ca_file=tls.local_registry_ca(cfg) if url == cfg.registry.host else None,
            local_auth=AuthFile(cfg.registry.authfile),
        )


def _running_message(cfg: Config) -> str:
    return (
        f"the embedded registry's storage is in use: a registry answers on {cfg.registry.host} "
        "(mirror serve or mirror-registry.service); garbage collection needs it stopped. "
        "Stop it (systemctl stop mirror-registry, or stop mirror serve), run mirror prune, "
        "start it again (mirror prune --dry-run works while it runs)"
    )


def _content_lines(removals: list[ContentRemoval], verb: str) -> list[str]:
    from mirror.progress import human_bytes

    return [f"{verb} {r.label} {r.key} ({human_bytes(r.bytes)})" for r in removals]


def _image_lines(cfg: Config, plan: ImagePlan, verb: str) -> list[str]:
    from mirror.progress import human_bytes

    lines = []
    for r in plan.removals:
        if r.digest is None:
            lines.append(f"forget image {r.name} (not in the registry any more)")
        elif r.kept_by is not None:
            lines.append(
                f"keep image {r.name}: {r.digest} is also {cfg.registry.host}/{r.kept_by}, "
                "which stays "
                "(distribution deletes by digest only; the tag stays)"
            )
        else:
            lines.append(f"{verb} image {r.name} {r.digest} (up to {human_bytes(r.size)})")
    for r in plan.untagged:
        lines.append(
            f"{verb} untagged manifest {r.name} (no staying tag or configured digest names "
            f"it, e.g. left by a tag that moved; up to {human_bytes(r.size)})"
        )
    return lines + [f"note: {n}" for n in plan.notes]


def _registry_part(cfg: Config, dry_run: bool) -> tuple[ImagePlan | None, bool, list[str]]:
    """Plan the images (None: not pruned here) and, unless a dry run, DELETE their manifests;
    whether the registry was running; notes. No registry is started when no recorded image
    left the config, or when the storage holds nothing."""
    from mirror.errors import EnvironmentProblem
    from mirror.images.registry import private_registry, registry_answers
    from mirror.prune.images import apply_deletes, candidates, plan_images, wanted_images

    if not cfg.registry.embedded:
        note = "images not pruned: registry.embedded is false (the site registry's own "
        return None, False, [note + "retention and garbage collection apply)"]
    if cfg.registry.storage is not None:
        # Planning reads the filesystem storage's own index (untagged revisions), and its
        # absence would make every record look "not in the registry any more": records stay.
        drivers = ", ".join(sorted(k for k in cfg.registry.storage if k not in _NOT_DRIVERS))
        note = (
            f"images not pruned: registry.storage is set ({drivers or 'custom'}); prune "
            "only handles the default filesystem storage under data_dir/registry/storage "
            "(the storage's own lifecycle rules, or distribution's garbage-collect, apply); "
            "image records kept"
        )
        return None, False, [note]
    wanted = wanted_images(cfg)
    found = candidates(cfg, wanted)
    # "Is anything serving the storage?" over either scheme: a registry still on plain HTTP
    # after tls was turned on (not restarted yet) is running all the same.
    online = registry_answers(cfg.registry.host, False)
    if not found.repositories or not (_storage(cfg) / _REPOSITORIES).is_dir():
        return plan_images(cfg, None, wanted, found), online, []
    context = nullcontext(cfg.registry.host) if online else private_registry(cfg)
    with context as url, _registry_api(cfg, url) as api:
        plan = plan_images(cfg, api, wanted, found)
        if plan.deletes and online and not dry_run:
            raise EnvironmentProblem(_running_message(cfg) + "; nothing was removed")
        if plan.deletes and not dry_run:
            fsutil.atomic_write_text(_gc_pending(cfg), "manifests deleted\n")
            apply_deletes(api, plan)
    return plan, online, []


def _storage(cfg: Config) -> Path:
    return cfg.data_dir / "registry" / "storage"


def _gc_pending(cfg: Config) -> Path:
    """Written before the first manifest is deleted, removed once garbage was collected: a
    prune cut short (or refused at the collection) collects on the next run."""
    return cfg.data_dir / "registry" / "gc-pending"


def run_prune(cfg: Config, dry_run: bool) -> list[str]:
    """Everything above; returns the output lines (the summary last)."""
    from mirror import diskuse
    from mirror.content.runner import sync_lock
    from mirror.prune import content

    verb = "would remove" if dry_run else "remove"
    storage = _storage(cfg)
    with sync_lock(cfg):
        content.check_upstream_index(cfg)  # a downstream node's wanted sets need it
        removals = content.stale_files(cfg) + content.stale_charts(cfg)
        repos, notes = content.stale_repos(cfg)
        removals += repos
        before = diskuse.tree_bytes(storage)
        # Images first: a refusal (registry running) must leave everything as it was.
        plan, online, image_notes = _registry_part(cfg, dry_run)
        lines = _image_lines(cfg, plan, verb) if plan else []
        lines += _content_lines(removals, verb)
        if not dry_run:
            for removal in removals:
                content.remove(cfg, removal)
            if plan is not None:
                lines += _finish_images(cfg, plan, online)
            if removals or (plan is not None and (plan.records or plan.removals)):
                _render_node_files(cfg)
        after = diskuse.tree_bytes(storage)
    if dry_run and _gc_pending(cfg).exists():
        notes.append("registry garbage collection pending from an earlier prune")
    lines += [f"note: {n}" for n in notes + image_notes]
    lines.append(_summary(plan, removals, before, after, dry_run))
    return lines


def _finish_images(cfg: Config, plan: ImagePlan, online: bool) -> list[str]:
    """Records of removed images go; garbage is collected with nothing serving the storage."""
    from mirror.errors import EnvironmentProblem
    from mirror.images.registry import garbage_collect, registry_answers
    from mirror.prune.images import drop_records

    drop_records(cfg, plan.records)
    if not _gc_pending(cfg).exists():
        return []
    if online:  # manifests deleted by an earlier run: collect when it is stopped
        return ["note: garbage collection still pending: the registry is running"]
    if registry_answers(cfg.registry.host, False):
        raise EnvironmentProblem(
            _running_message(cfg) + "; it started while pruning: manifests were deleted but "
            "their blobs not collected yet"
        )
    gc = garbage_collect(cfg)
    fsutil.unlink_durable(_gc_pending(cfg))
    if gc.blobs_deleted is None:
        return ["registry garbage collection done"]
    return [
        f"registry garbage collection: {gc.blobs_deleted} blobs and {gc.manifests_deleted} "
        f"manifests deleted, {gc.marked} blobs in use"
    ]


def _render_node_files(cfg: Config) -> None:
    """images.txt and friends served to nodes follow the image state just changed."""
    from mirror.errors import ConfigError
    from mirror.web.static import render_static

    try:
        render_static(cfg)
    except (ConfigError, OSError) as exc:
        log.warning("node files not rendered: %s", exc)


def _counts(images: int, untagged: int, removals: list[ContentRemoval]) -> str:
    labels = {"image": images, "untagged manifest": untagged}
    for label in ("file", "chart repo", "repo", "repo key"):
        labels[label] = sum(1 for r in removals if r.label == label)
    return ", ".join(f"{n} {label}{'' if n == 1 else 's'}" for label, n in labels.items())


def _summary(
    plan: ImagePlan | None,
    removals: list[ContentRemoval],
    before: int,
    after: int,
    dry_run: bool,
) -> str:
    from mirror.progress import human_bytes

    deleted = [r for r in plan.removals if r.digest and not r.kept_by] if plan else []
    estimate_bytes = sum(r.size for r in deleted + (plan.untagged if plan else []))
    content_bytes = sum(r.bytes for r in removals)
    counts = _counts(len(deleted), len(plan.untagged) if plan else 0, removals)
    if dry_run:
        estimate = f"up to {human_bytes(estimate_bytes)} of registry storage, "
        return (
            f"prune (dry run): would remove {counts}; {estimate if plan else ''}"
            f"{human_bytes(content_bytes)} of content; nothing changed"
        )
    registry = ""
    if plan is not None:
        registry = (
            f"registry storage {human_bytes(before)} -> {human_bytes(after)} "
            f"({before - after} bytes freed); "
        )
    return f"prune: removed {counts}; {registry}content {content_bytes} bytes freed"


@click.command("prune")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; change nothing.")
@click.pass_obj
def prune(obj: _HasConfig, dry_run: bool) -> None:
    """Remove what is no longer configured: images from the embedded registry (then its
    garbage collection, with the registry stopped), files, chart repos and repo targets."""
    from mirror.cli import _handle_errors  # the one place typed errors become exit codes

    def run() -> None:
        for line in run_prune(obj.cfg, dry_run):
            click.echo(line)

    _handle_errors(run)()
    sys.exit(EXIT_OK)
