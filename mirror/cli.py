"""`mirror` command line: the one place typed errors become exit codes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from functools import wraps
from typing import Any, TypeVar

import click

from mirror import __version__, content, fsutil, state
from mirror.config import Config, config_path_from_env, load_config
from mirror.errors import (
    EXIT_ENVIRONMENT,
    EXIT_OK,
    EXIT_SYNC_FAILED,
    ConfigError,
    MirrorError,
)
from mirror.repofile import load_definitions

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
    "--only", type=click.Choice(content.names()), help="Sync only this kind of content."
)
@click.option(
    "--repo", "repo_ids", multiple=True, metavar="ID", help="Only this repo id (repeatable)."
)
@click.option("--dry-run", is_flag=True, help="Fetch metadata and show the plan; change nothing.")
@click.pass_obj
@_handle_errors
def sync(obj: _Ctx, only: str | None, repo_ids: tuple[str, ...], dry_run: bool) -> None:
    """Mirror everything configured: yum repositories, container images, ..."""
    from mirror.content.kind import SyncRequest
    from mirror.content.runner import run, sync_lock

    cfg = obj.cfg
    request = SyncRequest(dry_run=dry_run, repo_ids=repo_ids)
    # Validate everything requested before taking the lock or touching the network.
    kinds = [content.get(name) for name in content.names() if only in (None, name)]
    planned = [(kind, kind.plan(cfg, request)) for kind in kinds]
    with sync_lock(cfg):
        results = run(cfg, planned, request)
        failures = [(r.error, r.exit_code) for r in results if r.error]
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
    paths.append(cfg.data_dir / "tls" / "ca" / "ca.crt")  # /ca.crt, bootstrap.sh's pinned hash
    if cfg.registry.ca_file is not None:  # /registry-ca.crt, embedded in containerd setup.sh
        paths.append(cfg.registry.ca_file)
    if cfg.repos_dir.is_dir():
        paths += sorted(cfg.repos_dir.glob("*.repo"))
    paths += sorted((cfg.state_root / "kubeadm").glob("*.json"))  # kubeadm's own image lists
    if cfg.upstream_mirror is not None:  # the .repo definitions of the upstream mirror
        from mirror.downstream.client import store_dir

        paths.append(store_dir(cfg) / "mirror.repo")
    for path in paths:
        with contextlib.suppress(OSError):
            digest.update(str(path).encode() + b"\0" + path.read_bytes())
    for record in state.load_all(cfg.state_root, "images"):
        digest.update(f"{record.key} {record.mirrored} {record.digest}\n".encode())
    return digest.hexdigest()


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
    from mirror import tls
    from mirror.images.registry import ensure_registry
    from mirror.web import frontend as web_frontend
    from mirror.web.static import render_static

    tls.ensure(cfg)  # the CA and a current server certificate, before /ca.crt is rendered
    try:
        render_static(cfg, definitions)
    except OSError as exc:  # e.g. a full disk: the app renders those files itself
        log.error("node files not rendered into %s: %s", cfg.data_dir, exc.strerror or exc)
    with ExitStack() as stack:
        embedded = None
        if cfg.registry.embedded:
            try:
                embedded = stack.enter_context(ensure_registry(cfg))
            except MirrorError as exc:
                # Repos are still worth serving; the status page shows the registry down.
                log.error("embedded registry not started: %s", exc)
        # A renewed certificate (mirror.tls) reaches the registry only through a restart.
        restart = embedded.restart if embedded is not None else None
        web_frontend.run(cfg, bind, workers, frontend, on_renewed=restart)


@main.group(invoke_without_command=True)
@click.pass_context
def registry(ctx: click.Context) -> None:
    """The registry: bare `mirror registry` (as mirror-registry.service runs it) is
    `mirror registry run`; `mirror registry check` tests an external one."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(registry_run)


@registry.command("run")
@click.pass_obj
@_handle_errors
def registry_run(obj: _Ctx) -> None:
    """Run the embedded registry in the foreground (for mirror-registry.service)."""
    from mirror.images.registry import run_foreground

    sys.exit(run_foreground(obj.cfg))


@registry.command("check")
@click.pass_obj
@_handle_errors
def registry_check(obj: _Ctx) -> None:
    """Check registry.url: reachable (TLS with registry.ca_file), credentials from
    registry.authfile accepted, push allowed. One line per failure, exit 3."""
    from mirror.images.regcheck import check_registry

    cfg = obj.cfg
    for line in check_registry(cfg):
        click.echo(f"registry {cfg.registry.url}: {line}")


@main.group()
def images() -> None:
    """Container image lists."""


@images.command("list")
@click.option("--kubernetes-version", "version", metavar="V", help="e.g. v1.28.4")
@click.option("--mirrored", is_flag=True, help="Names in the local registry instead.")
@click.option(
    "--why", is_flag=True, help="With each image, where it comes from (kubeadm, images.txt, ...)."
)
@click.pass_obj
@_handle_errors
def images_list(obj: _Ctx, version: str | None, mirrored: bool, why: bool) -> None:
    """Images kubeadm needs for V (as `kubeadm config images list` prints them), or without
    V every image the mirror syncs: kubeadm sets, images.txt, images found in files/charts."""
    from mirror import kubeadm_images, nodeconfig
    from mirror.images.refs import RegistryLayout, plan_jobs
    from mirror.images.sources import found_in_content, image_sources, with_found_images
    from mirror.kubernetes.images import image_list

    if version is not None and not mirrored and not why:
        # Without a config file the compiled-in table answers; with one, the mirrored kubeadm.
        if not obj.path.exists():
            refs = kubeadm_images.image_set(version).images()
        else:
            refs = list(image_list(obj.cfg, version, run_kubeadm=False).images)
        for ref in refs:
            click.echo(ref)
        return
    cfg = obj.cfg
    if version is not None:
        listed = image_list(cfg, version, run_kubeadm=False)
        layout = RegistryLayout.of(cfg.registry)
        jobs = plan_jobs(layout, [listed.version], [], {listed.version: listed.images})
    else:
        # Listing runs no kubeadm (it writes a cache; only a sync, under its lock, does).
        jobs = nodeconfig.image_jobs(cfg, run_kubeadm=False)
        jobs = with_found_images(cfg, jobs, found_in_content(cfg))
    sources = image_sources(cfg) if why else {}
    for job in jobs:
        for name in job.destinations if mirrored else [job.source.upstream]:
            if why:
                found = sources.get(job.source.upstream) or [f"kubeadm {version}"]
                click.echo(f"{name}  ({'; '.join(found)})")
            else:
                click.echo(name)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@_handle_errors
def status(obj: _Ctx, as_json: bool) -> None:
    """What is mirrored, when, and the last errors."""
    from mirror.content import report

    cfg = obj.cfg
    if as_json:
        doc = report.status_document(cfg, check_registry=False)
        click.echo(json.dumps(doc, indent=2))
        sys.exit(EXIT_OK if doc["ok"] else EXIT_SYNC_FAILED)
    lines, ok = report.status_lines(cfg)
    for line in lines:
        click.echo(line)
    if not ok:
        sys.exit(EXIT_SYNC_FAILED)


from mirror.kubernetes.cli import upgrade_plan  # noqa: E402 - after main is defined

main.add_command(upgrade_plan)

from mirror.prune.cli import prune  # noqa: E402

main.add_command(prune)

from mirror.transfer.cli import export_command, import_command  # noqa: E402

main.add_command(export_command)
main.add_command(import_command)


def run() -> None:
    main(prog_name="mirror")


if __name__ == "__main__":
    run()
