"""Files, chart repositories and repo targets `mirror prune` removes: recorded, no longer
configured. A sync only ever adds and replaces these (a repo drops what upstream dropped, a
chart repo the versions no longer wanted), so an entry removed from the config stayed
published with its state record until now. What is wanted is what the kinds' own plans
sync (mirror.files.kind, mirror.charts.kind, mirror.yum.kind): on a downstream node that
includes what its upstream mirror's stored index lists, and without that index prune
refuses (check_upstream_index).

Candidates come from the state records (what this mirror published), each checked to be a
plain name strictly inside its root with no symlink on the way (a tampered record must not
make prune delete outside data_dir). A tree is first renamed to data_dir/.staging/prune/
(one atomic step: nothing half deleted is ever served), then deleted; the record goes last,
so a prune cut short is finished by the next one.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirror import diskuse, fsutil, state
from mirror.config import Config
from mirror.errors import PruneError

if TYPE_CHECKING:
    from mirror.content.kind import Kind

_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+~@=,-]*$")


@dataclass(frozen=True)
class ContentRemoval:
    label: str  # "file", "chart repo", "repo"
    key: str
    root: Path  # the tree it is published in (data_dir/files, ...): empty parents go up to it
    paths: tuple[Path, ...]  # published tree or file, staging leftovers
    records: tuple[Path, ...]  # state files
    bytes: int


def _checked(cfg: Config, root: Path, key: str) -> Path:
    """root/key, refused unless every segment is a plain name and nothing from data_dir down
    is a symlink."""
    segments = key.split("/")
    if not all(_SEGMENT_RE.match(s) and s not in (".", "..") for s in segments):
        raise PruneError(f"state record {key!r} under {root}: not a plain name; remove it by hand")
    path = root.joinpath(*segments)
    probe = cfg.data_dir
    for part in path.relative_to(cfg.data_dir).parts:
        probe = probe / part
        if probe.is_symlink():
            raise PruneError(f"refusing to prune through {probe}: it is a symlink")
    return path


def _removal(
    label: str, key: str, root: Path, paths: list[Path], records: list[Path]
) -> ContentRemoval:
    size = sum(diskuse.tree_bytes(p) if p.is_dir() else diskuse.file_bytes(p) for p in paths)
    return ContentRemoval(label, key, root, tuple(paths), tuple(records), size)


def _planned(cfg: Config, kind: Kind) -> list[Any]:
    """What `kind`'s own plan syncs now (a whole sync, no `--repo`): a downstream mirror's
    entries from its upstream mirror's stored index included, exactly as the sync has them."""
    from mirror.content.kind import SyncRequest

    return list(kind.plan(cfg, SyncRequest()))


def check_upstream_index(cfg: Config) -> None:
    """A downstream mirror's wanted sets include what its upstream mirror's stored index
    lists: without it (never fetched, removed, unreadable) they cannot be told, and
    pruning would remove everything that came from there. Refused before anything."""
    from mirror.downstream.client import load_stored, store_dir

    if cfg.upstream_mirror is None:
        return
    stored = store_dir(cfg)
    if load_stored(cfg) is None or not (stored / "mirror.repo").is_file():
        raise PruneError(
            f"cannot tell what upstream_mirror {cfg.upstream_mirror} provides: its index "
            f"{stored / 'index.json'} is missing or unreadable (run mirror sync first); "
            "nothing was pruned"
        )


def stale_files(cfg: Config) -> list[ContentRemoval]:
    from mirror.files.kind import KIND
    from mirror.files.record import files_root

    wanted = {entry.path for entry in _planned(cfg, KIND)}
    found = []
    for record in state.load_all(cfg.state_root, "files"):
        if record.key in wanted:
            continue
        path = _checked(cfg, files_root(cfg), record.key)
        staged = path.with_name(f".{path.name}.download")
        paths = [staged, staged.with_name(staged.name + ".part")]
        if not path.is_dir():  # a directory there holds configured files (`a` -> `a/b`)
            paths.insert(0, path)
        records = [state.keyed_file(cfg.state_root / "files", record.key)]
        found.append(_removal("file", record.key, files_root(cfg), paths, records))
    return found


def stale_charts(cfg: Config) -> list[ContentRemoval]:
    from mirror.charts.kind import KIND
    from mirror.charts.sync import charts_root

    wanted = {repo.key for repo in _planned(cfg, KIND)}
    found = []
    for record in state.load_all(cfg.state_root, "charts"):
        if record.key in wanted or "/" in record.key:
            continue
        path = _checked(cfg, charts_root(cfg), record.key)
        staging = cfg.data_dir / ".staging" / "charts" / record.key
        records = [state.keyed_file(cfg.state_root / "charts", record.key)]
        found.append(_removal("chart repo", record.key, charts_root(cfg), [path, staging], records))
    return found


def stale_repos(cfg: Config) -> tuple[list[ContentRemoval], list[str]]:
    """Repo targets whose definition (or $releasever/$basearch value) left the config (or a
    downstream mirror's upstream mirror's index). Without a repos_dir nothing is pruned (an
    unreadable config must not look like "no repos"), unless upstream_mirror is set: such a
    node may have no repos of its own (mirror.repofile.load_definitions)."""
    from mirror.yum.kind import KIND

    no_repos_dir = not cfg.repos_dir.is_dir()
    if no_repos_dir and cfg.upstream_mirror is None:
        return [], [f"repos not pruned: repos_dir {cfg.repos_dir} is not a directory"]
    targets = _planned(cfg, KIND)
    wanted = {t.key for t in targets}
    live = [cfg.repos_root.joinpath(*t.subpath) for t in targets]
    found: list[ContentRemoval] = []
    notes: list[str] = []
    from_upstream = f"{cfg.upstream_mirror}/"
    for record in state.load_all(cfg.state_root, "repos"):
        if record.key in wanted:
            continue
        if no_repos_dir and not (record.upstream or "").startswith(from_upstream):
            # A downstream node without (a readable) repos_dir: only what came from the
            # upstream mirror may go; its own repos might just be unmounted.
            notes.append(
                f"repo {record.key}: not pruned, repos_dir {cfg.repos_dir} is not a directory"
            )
            continue
        path = _checked(cfg, cfg.repos_root, record.key)
        if any(p == path or p.is_relative_to(path) for p in live):
            notes.append(f"repo {record.key}: left in place, a configured repo is published inside")
            continue
        paths = [path, cfg.data_dir / ".staging" / "repos" / record.key]
        records = [
            state.keyed_file(cfg.state_root / "published", record.key),
            state.keyed_file(cfg.state_root / "repos", record.key),
        ]
        found.append(_removal("repo", record.key, cfg.repos_root, paths, records))
    return found + _stale_keys(cfg, {t.key_file for t in targets}), notes


def _stale_keys(cfg: Config, wanted: set[str]) -> list[ContentRemoval]:
    """Key files below keys/ no configured target publishes (`kubernetes/v1.35.gpg` after
    that minor left the config): served to nodes and checked for expiry until removed."""
    root = cfg.keys_root
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(fsutil.walk(root), key=lambda e: e.path):
        name = Path(entry.path).relative_to(root).as_posix()
        if not entry.is_file(follow_symlinks=False) or not name.endswith(".gpg"):
            continue
        if name not in wanted:
            path = _checked(cfg, root, name)
            found.append(_removal("repo key", name, root, [path], []))
    return found


def _dispose(cfg: Config, path: Path) -> None:
    """Make `path` disappear in one rename, then delete it at leisure."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():  # a link itself goes, never what it names
        fsutil.unlink_durable(path)
        return
    trash = cfg.data_dir / ".staging" / "prune"
    fsutil.ensure_dir(trash)
    moved = trash / f"{path.name}.{os.getpid()}.{len(os.listdir(trash))}"
    os.rename(path, moved)
    fsutil.fsync_dir(path.parent)
    shutil.rmtree(moved)


def _remove_empty_parents(path: Path, root: Path) -> None:
    parent = path.parent
    while parent != root and parent.is_relative_to(root):
        try:
            parent.rmdir()
        except OSError:  # not empty (or gone): stop here
            return
        fsutil.fsync_dir(parent.parent)
        parent = parent.parent


def remove(cfg: Config, removal: ContentRemoval) -> None:
    for path in removal.paths:
        _dispose(cfg, path)
    _remove_empty_parents(removal.paths[0], removal.root)
    for record in removal.records:
        fsutil.unlink_durable(record)
