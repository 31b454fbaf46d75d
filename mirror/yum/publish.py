"""Stage 6 of a repo sync: make the new repo live, metadata last, then prune what it dropped.

Order matters for nodes running dnf while we publish:
1. new packages are moved in (new paths appear; nothing old disappears);
2. metadata files are moved in (upstream names them by checksum, so old ones stay valid);
3. repomd.xml.asc, then repomd.xml are renamed into place: the switch;
4. only then are packages the new repomd.xml no longer names removed, and metadata files
   named by neither the new nor the previous repomd.xml (a client that read the previous
   one just before the switch still finds every file it names).
A client therefore reads either the old or the new complete repo. The one unavoidable gap
is between the two requests dnf makes for repomd.xml and repomd.xml.asc.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import createrepo_c as cr

from mirror.errors import RepoSyncError
from mirror.yum.metadata import REPOMD, PackageRef, UpstreamMetadata

SIGNATURE = REPOMD + ".asc"
# Metadata that stays valid for a subset of packages; the rest (updateinfo, modules)
# describes packages a filter may have dropped, so it is not carried into filtered repos.
_CARRIED_INTO_FILTERED = ("group", "group_gz")


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _move_in(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)


def move_packages(packages: Iterable[PackageRef], staging: Path, target: Path) -> None:
    for pkg in packages:
        _move_in(staging / pkg.href, target / pkg.href)


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
        paths[kind] = str(meta.path(record))
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
    """Steps 2 and 3: metadata files in, then the signature, then repomd.xml itself."""
    for href in hrefs:
        dest = target / href
        src = source_root / href
        if dest.exists() and dest.read_bytes() == src.read_bytes():
            continue
        _move_in(src, dest)
    if signature is not None:
        atomic_write(target / SIGNATURE, signature)
    atomic_write(target / REPOMD, repomd)
    if signature is None:
        # A stale signature of an older repomd.xml would fail every repo_gpgcheck client.
        (target / SIGNATURE).unlink(missing_ok=True)


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


def prune(target: Path, keep_packages: Iterable[PackageRef], keep_metadata: Iterable[str]) -> int:
    """Step 4: remove packages and metadata the live repomd.xml no longer names."""
    keep = {str(target / p.href) for p in keep_packages}
    keep_meta = {str(target / h) for h in keep_metadata}
    keep_meta.update(str(target / n) for n in (REPOMD, SIGNATURE))
    removed = 0
    for path in target.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        spath = str(path)
        is_meta = path.parent == target / "repodata"
        if (is_meta and spath not in keep_meta) or (
            path.suffix == ".rpm" and not is_meta and spath not in keep
        ):
            path.unlink()
            removed += 1
    for directory in sorted((d for d in target.rglob("*") if d.is_dir()), reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()
    return removed
