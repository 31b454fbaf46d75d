"""Checksums of published packages, remembered by (size, mtime, inode).

Planning must know which published files already have the checksum primary.xml asks for.
Hashing every rpm on every changed sync costs a full read of the repo (gigabytes for a
Kubernetes repo); dnf's librepo avoids it with a checksum cached in file attributes. This is
the portable equivalent: a JSON file per repo target under data_dir/state/checksums/. A file
rewritten in place with the same size, mtime and inode would go unnoticed, as with rsync.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from mirror import fsutil
from mirror.http import file_matches
from mirror.yum.metadata import PackageRef

# relpath -> [size, mtime_ns, inode, checksum_type, hexdigest]
Entry = list[int | str]


class ChecksumCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            loaded = json.loads(path.read_text())
            self.entries: dict[str, Entry] = loaded if isinstance(loaded, dict) else {}
        except (FileNotFoundError, ValueError):
            self.entries = {}

    def matches(self, root: Path, pkg: PackageRef) -> bool:
        """True when root/href holds exactly the package primary.xml describes."""
        path = root / pkg.href
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        if st.st_size != pkg.size:
            return False
        key: Entry = [st.st_size, st.st_mtime_ns, st.st_ino, pkg.checksum_type]
        entry = self.entries.get(pkg.href)
        if entry is not None and entry[:4] == key:
            return entry[4] == pkg.checksum
        if not file_matches(path, pkg.expected):
            return False
        self.entries[pkg.href] = [*key, pkg.checksum]
        return True

    def record(self, root: Path, packages: Iterable[PackageRef]) -> None:
        """Remember packages just published (verified while they were downloaded)."""
        for pkg in packages:
            st = (root / pkg.href).stat()
            self.entries[pkg.href] = [
                st.st_size,
                st.st_mtime_ns,
                st.st_ino,
                pkg.checksum_type,
                pkg.checksum,
            ]

    def save(self, keep: Iterable[PackageRef]) -> None:
        hrefs = {p.href for p in keep}
        self.entries = {k: v for k, v in self.entries.items() if k in hrefs}
        fsutil.atomic_write_text(self.path, json.dumps(self.entries, separators=(",", ":")))
