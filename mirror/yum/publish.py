"""Stage 6 of a repo sync: make the new repo live, metadata last, then prune what it dropped.

Order matters for nodes running dnf while we publish:
1. new packages are moved in (new paths appear; nothing old disappears);
2. the generation record is written (state/published/<target>.json): the package lists of
   the new generation and of the previous one, each tagged with its repomd.xml's sha256;
3. metadata files are moved in (upstream names them by checksum, so old ones stay valid);
4. repomd.xml.asc, then repomd.xml are renamed into place, back to back: the switch;
5. only then is anything removed, and only files named by neither the new generation nor
   the previous one (the one live until step 4): packages and metadata a client read from
   the previous repomd.xml a moment before the switch stay downloadable until the next
   publish. The previous generation's package list comes from the record, matched by the
   live repomd.xml's sha256 (a publish repeating the live package set, as after a crash
   past the switch, keeps the one before instead); when none matches (a tree published by
   an older version of this program) no package is removed this round.
A client therefore reads either the old or the new complete repo. The one unavoidable gap
is between the two requests dnf makes for repomd.xml and repomd.xml.asc.

Durability (mirror.fsutil): every file is fsynced before the rename that makes it live and
every directory after it, so a power loss leaves the old or the new generation, never an
empty repomd.xml. A crash (even SIGKILL) at any point leaves a tree the next sync completes.

Nothing below data_dir may be a symlink on the paths publish writes or prunes: one planted
there (data/repos/kubernetes/x86_64 -> /tmp/evil) would turn moves and deletes into writes
outside data_dir, so the sync is refused with the path named (refuse_symlinks).
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import createrepo_c as cr

from mirror import fsutil
from mirror.errors import RepoSyncError
from mirror.yum.metadata import REPOMD, PackageRef, UpstreamMetadata, plain_metadata

SIGNATURE = REPOMD + ".asc"
# Metadata that stays valid for a subset of packages; the rest (updateinfo, modules)
# describes packages a filter may have dropped, so it is not carried into filtered repos.
_CARRIED_INTO_FILTERED = ("group", "group_gz")


@dataclass(frozen=True)
class Generation:
    """Everything one publish makes live."""

    repomd: bytes
    signature: bytes | None  # repomd.xml.asc; None removes a stale one
    metadata_root: Path  # where the metadata files (hrefs) are now, in staging
    metadata: tuple[str, ...]  # hrefs repomd.xml names
    packages: tuple[PackageRef, ...]  # every package the new primary names
    to_move: tuple[PackageRef, ...]  # the subset downloaded into packages_root
    packages_root: Path


def refuse_symlinks(repo: str, data_dir: Path, roots: Iterable[Path]) -> None:
    """Raise RepoSyncError naming the first symlink on, or anywhere below, each root (which
    must lie inside data_dir): moves and deletes through it would leave data_dir."""
    link = fsutil.first_symlink(data_dir, roots)
    if link is not None:
        raise RepoSyncError(repo, fsutil.symlink_refusal(link))


def move_packages(packages: Iterable[PackageRef], staging: Path, target: Path) -> None:
    fsutil.durable_move_all((staging / pkg.href, target / pkg.href) for pkg in packages)


def generate_filtered_metadata(
    repo: str, meta: UpstreamMetadata, selected: Iterable[PackageRef], outdir: Path
) -> tuple[bytes, list[str]]:
    """Fresh primary/filelists/other for a subset, with createrepo_c. Returns repomd, hrefs."""
    wanted = {p.href for p in selected}
    paths = {}
    for kind in ("primary", "filelists", "other"):
        record = meta.record(kind)
        if record is None:
            raise RepoSyncError(repo, f"cannot filter: upstream has no {kind} metadata")
        # The verified plain XML, inflated under its open-size cap (a bomb never reaches
        # createrepo_c's parser).
        paths[kind] = str(plain_metadata(repo, meta, kind))
    repodata = outdir / "repodata"
    if outdir.exists():
        shutil.rmtree(outdir)
    repodata.mkdir(parents=True)
    files = {
        "primary": cr.PrimaryXmlFile(str(repodata / "primary.xml.gz")),
        "filelists": cr.FilelistsXmlFile(str(repodata / "filelists.xml.gz")),
        "other": cr.OtherXmlFile(str(repodata / "other.xml.gz")),
    }
    for xml in files.values():
        xml.set_num_of_pkgs(len(wanted))
    try:
        for pkg in cr.PackageIterator(paths["primary"], paths["filelists"], paths["other"]):
            if pkg.location_href in wanted:
                for xml in files.values():
                    xml.add_pkg(pkg)
    except Exception as exc:
        raise RepoSyncError(repo, f"cannot regenerate metadata: {exc}") from None
    finally:
        for xml in files.values():
            xml.close()
    repomd = cr.Repomd()
    hrefs = []
    for kind in files:
        rec = cr.RepomdRecord(kind, str(repodata / f"{kind}.xml.gz"))
        rec.fill(cr.SHA256)
        rec.rename_file()
        repomd.set_record(rec)
        hrefs.append(rec.location_href)
    for kind in _CARRIED_INTO_FILTERED:
        record = meta.record(kind)
        if record is not None:
            shutil.copy2(meta.path(record), outdir / record.href)
            rec = cr.RepomdRecord(kind, str(outdir / record.href))
            rec.fill(cr.SHA256)
            repomd.set_record(rec)
            hrefs.append(record.href)
    repomd.sort_records()
    return repomd.xml_dump().encode(), hrefs


def switch_metadata(
    target: Path, source_root: Path, hrefs: Iterable[str], repomd: bytes, signature: bytes | None
) -> None:
    """Steps 3 and 4: metadata files in, then the signature, then repomd.xml itself."""
    moves = []
    for href in hrefs:
        dest = target / href
        src = source_root / href
        # Compared in chunks (filelists can be hundreds of MB): equal files stay as they are.
        if dest.exists() and filecmp.cmp(dest, src, shallow=False):
            continue
        moves.append((src, dest))
    fsutil.durable_move_all(moves)
    if signature is None:
        fsutil.atomic_write(target / REPOMD, repomd)
        # A stale signature of an older repomd.xml would fail every repo_gpgcheck client.
        fsutil.unlink_durable(target / SIGNATURE)
    else:
        fsutil.atomic_write_all([(target / SIGNATURE, signature), (target / REPOMD, repomd)])


def live_metadata(target: Path) -> list[str]:
    """Metadata files the currently published repomd.xml names ([] when nothing is published).

    They are kept for one more generation: a node that read the old repomd.xml a moment
    before the switch can still fetch the primary/filelists it names.
    """
    path = target / REPOMD
    if not path.is_file():
        return []
    try:
        return [r.location_href for r in cr.Repomd(str(path)).records]
    except Exception:  # an unreadable old repomd.xml is replaced anyway
        return []


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Gen(NamedTuple):
    repomd_sha256: str
    packages: tuple[str, ...]


def _load_record(record: Path) -> list[_Gen] | None:
    try:
        data = json.loads(record.read_text())
        return [_Gen(str(g["repomd_sha256"]), tuple(map(str, g["packages"]))) for g in data]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def previous_generation(record: Path, live_repomd: bytes | None, new: Generation) -> _Gen | None:
    """The generation whose packages stay one more round (None when unknown: no record
    matches the live repomd.xml, e.g. a tree published by an older version).

    Usually the live one. When the new generation publishes exactly the live one's packages
    (a sync repeated after a crash that came after the switch), the live one is no news to
    any client and the one before it is kept instead, so a repeated publish does not count.
    The record holds the last two generations written, found by their repomd.xml's sha256.
    """
    if live_repomd is None:
        return _Gen("", ())
    generations = _load_record(record) or []
    digest = _sha256(live_repomd)
    for index, gen in enumerate(generations):
        if gen.repomd_sha256 != digest:
            continue
        if set(gen.packages) == set(_hrefs(new.packages)) and index + 1 < len(generations):
            return generations[index + 1]
        return gen
    return None


def _record_generations(record: Path, new: Generation, previous: _Gen | None) -> None:
    """Written before the switch: whether a crash comes before or after it, the generation
    live afterwards is in the record."""
    generations = [_Gen(_sha256(new.repomd), tuple(_hrefs(new.packages)))]
    if previous is not None and previous.repomd_sha256:
        generations.append(previous)
    body = [{"repomd_sha256": g.repomd_sha256, "packages": list(g.packages)} for g in generations]
    fsutil.atomic_write_text(record, json.dumps(body))


def _hrefs(packages: Iterable[PackageRef]) -> list[str]:
    return sorted({p.href for p in packages})


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def publish(target: Path, new: Generation, record: Path) -> int:
    """Steps 1-5 (see the module docstring); returns how many files were pruned."""
    previous_meta = live_metadata(target)
    previous = previous_generation(record, _read(target / REPOMD), new)
    move_packages(new.to_move, new.packages_root, target)
    _record_generations(record, new, previous)
    switch_metadata(target, new.metadata_root, new.metadata, new.repomd, new.signature)
    keep: set[str] | None = None
    if previous is not None:
        keep = {Path(h).as_posix() for h in (*_hrefs(new.packages), *previous.packages)}
    return prune(target, keep, [*new.metadata, *previous_meta])


def prune(target: Path, keep_packages: set[str] | None, keep_metadata: Iterable[str]) -> int:
    """Step 5: remove packages (hrefs; None keeps every one) and metadata files not kept, and
    temp files a killed writer left. Deletions are not fsynced: one undone by a power loss
    only leaves a file the next publish removes again."""
    keep_meta = {str(target / h) for h in keep_metadata}
    keep_meta |= {str(target / REPOMD), str(target / SIGNATURE)}
    repodata, prefix = str(target / "repodata"), str(target) + os.sep
    removed = 0
    directories = []
    # os.scandir entries carry the file type: a repo of thousands of rpms costs no stat each.
    for entry in fsutil.walk(target):
        if entry.is_dir(follow_symlinks=False):
            directories.append(entry.path)
            continue
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            continue
        parent, name = os.path.split(entry.path)
        if fsutil.is_temp_name(name):
            drop = fsutil.is_stale_temp(Path(entry.path))
        elif parent == repodata:
            drop = entry.path not in keep_meta
        else:
            rel = entry.path.removeprefix(prefix)
            drop = name.endswith(".rpm") and keep_packages is not None and rel not in keep_packages
        if drop:
            os.unlink(entry.path)
            removed += 1
    for directory in sorted(directories, reverse=True):  # children before their parents
        with contextlib.suppress(OSError):  # not empty (or gone): keep it
            os.rmdir(directory)
    return removed
