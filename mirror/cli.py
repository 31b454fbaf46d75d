"""`mirror` command line: the one place typed errors become exit codes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from functools import wraps
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import click
from filelock import FileLock, Timeout

from mirror import __version__, fsutil, state
from mirror.config import Config, config_path_from_env, load_config
from mirror.errors import (
    EXIT_ENVIRONMENT,
    EXIT_OK,
    EXIT_SYNC_FAILED,
    ConfigError,
    LockedError,
    MirrorError,
)
from mirror.progress import human_bytes
from mirror.repofile import RepoTarget, expand_targets, load_definitions, select_targets
from mirror.retry import local_reason

if TYPE_CHECKING:
    from mirror.images.refs import ImageJob

log = logging.getLogger("mirror")
F = TypeVar("F", bound=Callable[..., Any])


def _setup_logging(verbose: bool, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    as_json = log_format == "json" or (log_format == "auto" and os.environ.get("MIRROR_LOG_JSON"))
    if as_json:
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", timestamp=True)
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # urllib3 logs every retry as a WARNING; the one line per failed repo is ours to print.
    logging.getLogger("urllib3").setLevel(logging.ERROR)


def _handle_errors(func: F) -> F:
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MirrorError as exc:
            click.echo(f"mirror: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:  # e.g. data_dir not creatable: one line, not a traceback
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"mirror: error: {where}{exc.strerror or exc}", err=True)
            sys.exit(EXIT_ENVIRONMENT)
        except subprocess.TimeoutExpired as exc:
            click.echo(f"mirror: error: {exc.cmd[0]} did not finish in {exc.timeout}s", err=True)
            sys.exit(EXIT_ENVIRONMENT)

    return wrapper  # type: ignore[return-value]


@contextmanager
def sync_lock(cfg: Config) -> Iterator[None]:
    """One sync at a time per data directory; a second one fails at once, touching nothing."""
    lock = FileLock(str(cfg.data_dir / ".sync.lock"))
    try:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:  # a filelock Timeout is an OSError too: it must come first
        raise LockedError(
            f"another mirror sync is running (lock held on {cfg.data_dir / '.sync.lock'}); "
            "try again later"
        ) from None
    except OSError as exc:  # a full or read-only data_dir is a sync failure (exit 1)
        reason = local_reason(exc)
        if reason is None:
            raise
        where = exc.filename or cfg.data_dir
        raise MirrorError(f"{reason} under data_dir ({where}); nothing was synced") from None
    try:
        yield
    finally:
        lock.release()


class _Ctx:
    def __init__(self, config: str | None) -> None:
        self.path = config_path_from_env(config)
        self._cfg: Config | None = None

    @property
    def cfg(self) -> Config:
        if self._cfg is None:
            self._cfg = load_config(self.path)
        return self._cfg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    metavar="CONFIG",
    help="Config file [default: $MIRROR_CONFIG or ./mirror.yaml]",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "text", "json"]),
    default="auto",
    show_default=True,
    help="json: one JSON object per line (for journald/ELK); auto: json if $MIRROR_LOG_JSON.",
)
@click.pass_context
def main(ctx: click.Context, config: str | None, verbose: bool, log_format: str) -> None:
    """Offline mirror node for air-gapped kubeadm clusters."""
    _setup_logging(verbose, log_format)
    ctx.obj = _Ctx(config)


@main.command()
@click.option(
    "--only", type=click.Choice(["repos", "images"]), help="Sync only yum repos or only images."
)
@click.option(
    "--repo", "repo_ids", multiple=True, metavar="ID", help="Only this repo id (repeatable)."
)
@click.option("--dry-run", is_flag=True, help="Fetch metadata and show the plan; change nothing.")
@click.pass_obj
@_handle_errors
def sync(obj: _Ctx, only: str | None, repo_ids: tuple[str, ...], dry_run: bool) -> None:
    """Mirror the configured yum repositories and container images."""
    cfg = obj.cfg
    # Validate everything requested before taking the lock or touching the network.
    targets = []
    if only in (None, "repos"):
        targets = select_targets(expand_targets(load_definitions(cfg), cfg), repo_ids)
    jobs = []
    if only in (None, "images") and not repo_ids:
        from mirror import nodeconfig  # image planning: not needed for a repos-only sync

        jobs = nodeconfig.image_jobs(cfg)
    failures: list[tuple[str, int]] = []  # (message, exit code)
    with sync_lock(cfg):
        if targets:
            failures += _sync_repos(cfg, targets, dry_run)
        if jobs:
            failures += _sync_images(cfg, jobs, dry_run)
        if not dry_run:
            failures += _render_node_files(cfg)
    if failures:
        click.echo(f"mirror sync: {len(failures)} failed:", err=True)
        for line, _ in failures:
            click.echo(f"  {line}", err=True)
        # A missing program or service (exit 3) needs a different fix than a bad upstream.
        codes = {code for _, code in failures}
        sys.exit(EXIT_ENVIRONMENT if EXIT_ENVIRONMENT in codes else EXIT_SYNC_FAILED)
    sys.exit(EXIT_OK)


def _sync_repos(cfg: Config, targets: list[RepoTarget], dry_run: bool) -> list[tuple[str, int]]:
    from mirror.http import Fetcher
    from mirror.yum.sync import sync_repos

    with Fetcher(
        parallel=cfg.download_workers, timeout=cfg.http_timeout, retries=cfg.http_retries
    ) as fetcher:
        results = sync_repos(cfg, targets, fetcher, dry_run=dry_run)
    _log_summary("repos", "changed", results)
    return [(r.error, r.exit_code) for r in results if r.error]


def _render_node_files(cfg: Config) -> list[tuple[str, int]]:
    """The static files nodes fetch (.repo files, hosts.toml, images.txt, ...) follow what was
    just synced; served by nginx from data_dir/www (mirror.web.static). Skipped when none of
    their inputs changed since the last rendering (a no-op sync stays one request per repo)."""
    from mirror.web.static import render_static

    stamp = cfg.data_dir / "state" / "rendered.sha256"
    inputs = _node_file_inputs(cfg)
    try:
        if stamp.is_file() and stamp.read_text() == inputs and (cfg.data_dir / "www").is_dir():
            return []
        render_static(cfg)
        fsutil.atomic_write_text(stamp, inputs)
    except ConfigError as exc:  # e.g. `--only images` with no repos_dir: nothing to render
        log.warning("node files not rendered: %s", exc)
    except OSError as exc:
        message = f"node files under {cfg.data_dir / 'www'}: {exc.strerror or exc}"
        log.error("%s", message)
        return [(message, EXIT_SYNC_FAILED)]
    return []


def _node_file_inputs(cfg: Config) -> str:
    """A digest of everything the rendered node files are made from: the config, the .repo
    definitions and the image state (mirrored names and digests)."""
    digest = hashlib.sha256(__version__.encode())
    paths = [p for p in (cfg.config_path, cfg.images_file) if p is not None]
    if cfg.repos_dir.is_dir():
        paths += sorted(cfg.repos_dir.glob("*.repo"))
    for path in paths:
        with contextlib.suppress(OSError):
            digest.update(str(path).encode() + b"\0" + path.read_bytes())
    for record in state.load_all(cfg.state_root, "images"):
        digest.update(f"{record.key} {record.mirrored} {record.digest}\n".encode())
    return digest.hexdigest()


def _sync_images(cfg: Config, jobs: list[ImageJob], dry_run: bool) -> list[tuple[str, int]]:
    from mirror.images.registry import ensure_registry
    from mirror.images.sync import sync_images

    try:
        # A sync from cron must not fail because the web service (and with it the
        # embedded registry) is down: ensure_registry starts it for the duration.
        with ensure_registry(cfg):
            results = sync_images(cfg, jobs, dry_run=dry_run)
    except MirrorError as exc:  # registry missing or unreachable: every image failed
        log.error("%s", exc)
        return [(f"images: {exc}", exc.exit_code)]
    _log_summary("images", "copied", results)
    return [(r.error, EXIT_SYNC_FAILED) for r in results if r.error]


class _Outcome(Protocol):
    @property
    def error(self) -> str | None: ...
    @property
    def changed(self) -> bool: ...


def _log_summary(kind: str, verb: str, results: Sequence[_Outcome]) -> None:
    ok = [r for r in results if not r.error]
    changed = sum(1 for r in ok if r.changed)
    unchanged, failed = len(ok) - changed, len(results) - len(ok)
    log.info(
        "%s: %d ok (%d %s, %d unchanged), %d failed",
        kind,
        len(ok),
        changed,
        verb,
        unchanged,
        failed,
    )


@main.command()
@click.option("--bind", default="0.0.0.0:8080", show_default=True, metavar="HOST:PORT")
@click.option("--workers", default=4, show_default=True, type=int)
@click.option(
    "--frontend",
    type=click.Choice(["auto", "nginx", "gunicorn"]),
    default="auto",
    show_default=True,
    envvar="MIRROR_FRONTEND",
    help="auto: nginx in front of gunicorn when nginx is installed, else gunicorn alone "
    "[env: MIRROR_FRONTEND].",
)
@click.pass_obj
@_handle_errors
def serve(obj: _Ctx, bind: str, workers: int, frontend: str) -> None:
    """Serve repos, .repo files, keys and node configs over HTTP (nginx + gunicorn).

    Renders the static node files into <data_dir>/www/ first. With registry.embedded, also
    runs the registry when nothing answers on registry.url yet, and stops it again on exit.
    """
    cfg = obj.cfg
    definitions = load_definitions(cfg)  # fail here, with the config error, not in a worker
    from mirror.images.registry import ensure_registry
    from mirror.web import frontend as web_frontend
    from mirror.web.static import render_static

    try:
        render_static(cfg, definitions)
    except OSError as exc:  # e.g. a full disk: the app renders those files itself
        log.error("node files not rendered into %s: %s", cfg.data_dir, exc.strerror or exc)
    with ExitStack() as stack:
        if cfg.registry.embedded:
            try:
                stack.enter_context(ensure_registry(cfg))
            except MirrorError as exc:
                # Repos are still worth serving; the status page shows the registry down.
                log.error("embedded registry not started: %s", exc)
        web_frontend.run(cfg, bind, workers, frontend)


@main.command()
@click.pass_obj
@_handle_errors
def registry(obj: _Ctx) -> None:
    """Run the embedded registry in the foreground (for mirror-registry.service)."""
    from mirror.images.registry import run_foreground

    sys.exit(run_foreground(obj.cfg))


@main.group()
def images() -> None:
    """Container image lists."""


@images.command("list")
@click.option("--kubernetes-version", "version", metavar="V", help="e.g. v1.28.4")
@click.option("--mirrored", is_flag=True, help="Names in the local registry instead.")
@click.pass_obj
@_handle_errors
def images_list(obj: _Ctx, version: str | None, mirrored: bool) -> None:
    """Images kubeadm needs for V (as `kubeadm config images list` prints them)."""
    from mirror import kubeadm_images, nodeconfig
    from mirror.images.refs import plan_jobs

    if version is not None and not mirrored:
        # Needs no config at all: the table is compiled in.
        for ref in kubeadm_images.image_set(version).images():
            click.echo(ref)
        return
    cfg = obj.cfg
    if version is not None:
        jobs = plan_jobs(cfg.registry.url, [kubeadm_images.normalize_version(version)], [])
    else:
        jobs = nodeconfig.image_jobs(cfg)
    for job in jobs:
        for name in job.destinations if mirrored else [job.source.upstream]:
            click.echo(name)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@_handle_errors
def status(obj: _Ctx, as_json: bool) -> None:
    """What is mirrored, when, and the last errors."""
    cfg = obj.cfg
    repos = state.load_all(cfg.state_root, "repos")
    imgs = state.load_all(cfg.state_root, "images")
    if as_json:
        doc = {"repos": [asdict(r) for r in repos], "images": [asdict(i) for i in imgs]}
        click.echo(json.dumps(doc, indent=2))
        sys.exit(EXIT_OK if all(r.ok for r in [*repos, *imgs]) else EXIT_SYNC_FAILED)
    if not repos:
        click.echo(f"nothing synced yet into {cfg.data_dir}")
    for r in repos:
        size = human_bytes(r.bytes) if r.bytes is not None else "-"
        flag = "ok" if r.ok else "FAILED"
        click.echo(
            f"{r.key:40} {flag:6} packages={r.packages if r.packages is not None else '-':<6} "
            f"size={size:>10} last_success={r.last_success or 'never'}"
        )
        if r.last_error:
            click.echo(f"{'':40} last error: {r.last_error}")
    for i in imgs:
        flag = "ok" if i.ok else "FAILED"
        click.echo(
            f"{i.key:60} {flag:6} {i.digest or '-'}  last_success={i.last_success or 'never'}"
        )
        if i.last_error:
            click.echo(f"{'':60} last error: {i.last_error}")
    if any(not r.ok for r in [*repos, *imgs]):
        sys.exit(EXIT_SYNC_FAILED)


def run() -> None:
    main(prog_name="mirror")


if __name__ == "__main__":
    run()
