"""The published-package checksum cache: hash once, trust (size, mtime, inode) afterwards."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mirror.yum.checksums import ChecksumCache
from mirror.yum.metadata import PackageRef


def package(root: Path, data: bytes) -> PackageRef:
    (root / "x86_64").mkdir(exist_ok=True)
    (root / "x86_64" / "a.rpm").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    return PackageRef("a", "0", "1", "1", "x86_64", "x86_64/a.rpm", "sha256", digest, len(data))


def test_cache_hashes_once_and_rehashes_when_the_file_changes(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    pkg = package(root, b"A" * 1000)
    cache = ChecksumCache(tmp_path / "c.json")
    assert cache.matches(root, pkg)
    cache.save([pkg])

    path = root / pkg.href
    st = path.stat()
    path.write_bytes(b"B" * 1000)  # same size, same inode; mtime put back
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    reloaded = ChecksumCache(tmp_path / "c.json")
    assert reloaded.matches(root, pkg)  # trusted from the cache: no read of the file

    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # now it looks changed
    assert not reloaded.matches(root, pkg)  # rehashed, and the bytes are wrong


def test_cache_drops_packages_no_longer_published(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    pkg = package(root, b"A" * 10)
    cache = ChecksumCache(tmp_path / "c.json")
    cache.record(root, [pkg])
    cache.save([])
    assert ChecksumCache(tmp_path / "c.json").entries == {}
    assert not ChecksumCache(tmp_path / "missing.json").matches(tmp_path / "nowhere", pkg)
