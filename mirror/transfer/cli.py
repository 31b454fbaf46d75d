"""`mirror export` and `mirror import`: click commands the main group registers.

Errors go through mirror.cli's `_handle_errors` (looked up at call time: mirror.cli imports
this module while it is being defined), so exit codes are the same as everywhere: 0 ok,
1 failed, 2 bad input or archive (ArchiveError), 3 missing program, 75 locked.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import click

from mirror.errors import EXIT_OK, EXIT_SYNC_FAILED, ConfigError

if TYPE_CHECKING:
    from mirror.config import Config

_SIZE_RE = re.compile(r"^(\d+)([KMGT]?)i?B?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class _HasConfig(Protocol):
    @property
    def cfg(self) -> Config: ...


def parse_size(text: str) -> int:
    """ "4G", "700M", "512k", "1048576" -> bytes (binary units)."""
    m = _SIZE_RE.match(text.strip())
    if m is None or int(m[1]) <= 0:
        raise ConfigError("--split-size", f"bad size {text!r} (e.g. 4G, 700M)")
    return int(m[1]) * _UNITS[m[2].upper()]


def _guarded(func: Any, *args: Any) -> Any:
    from mirror.cli import _handle_errors

    return _handle_errors(func)(*args)


def _export(obj: _HasConfig, dest: str, since: str | None, split: str | None, zstd: bool) -> None:
    from mirror.content.runner import sync_lock
    from mirror.transfer.export import export

    size = parse_size(split) if split else None
    cfg = obj.cfg
    with sync_lock(cfg):
        result = export(cfg, Path(dest), Path(since) if since else None, size, zstd)
    for path in result.files:
        click.echo(str(path))


def _import(obj: _HasConfig, files: tuple[str, ...], dry_run: bool) -> None:
    from mirror.cli import _render_node_files
    from mirror.content.runner import sync_lock
    from mirror.transfer.importer import import_archive, summary

    cfg = obj.cfg
    with sync_lock(cfg):
        result = import_archive(cfg, [Path(f) for f in files], dry_run)
        failures = [] if dry_run else _render_node_files(cfg)
    click.echo(summary(result))
    sys.exit(EXIT_SYNC_FAILED if failures else EXIT_OK)


@click.command("export")
@click.argument("dest", metavar="DEST.tar")
@click.option(
    "--since",
    metavar="BASE.tar|BASE-MANIFEST.json",
    help="Delta: carry only packages, blobs and files this earlier export lacks.",
)
@click.option(
    "--split-size", "split", metavar="SIZE", help="Write DEST.000, DEST.001, ... (4G, 700M)."
)
@click.option("--zstd", is_flag=True, help="Compress the tar stream with zstd.")
@click.pass_obj
def export_command(
    obj: _HasConfig, dest: str, since: str | None, split: str | None, zstd: bool
) -> None:
    """Write everything mirrored (repos, keys, images, files, charts) into one archive."""
    _guarded(_export, obj, dest, since, split, zstd)


@click.command("import")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--dry-run", is_flag=True, help="Verify the whole archive; publish nothing.")
@click.pass_obj
def import_command(obj: _HasConfig, files: tuple[str, ...], dry_run: bool) -> None:
    """Load an export (its parts in any order): every checksum verified before anything is
    published; repos through the same atomic publish as sync, images pushed to the registry."""
    _guarded(_import, obj, files, dry_run)
