"""mirror.content.runner: how failures of one item are named and classified."""

from __future__ import annotations

import errno
from pathlib import Path

from mirror.config import Config
from mirror.content.runner import as_error
from mirror.errors import LocalDiskError, RepoSyncError
from mirror.http import LocalWriteError
from mirror.yum.kind import KIND


def test_local_disk_errors_only_under_data_dir(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path / "data")
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "data" / "x"))
    disk = as_error(cfg, KIND, "kubernetes", full)
    assert isinstance(disk, LocalDiskError)
    assert str(disk).startswith("repo kubernetes: no space left on device under data_dir")
    # A download that the disk refused is local whatever the errno's file name says.
    part = tmp_path / "data" / ".staging" / "a.rpm.part"
    refused = LocalWriteError("http://u/a.rpm", part, OSError(errno.EROFS, "Read-only"))
    assert isinstance(as_error(cfg, KIND, "kubernetes", refused), LocalDiskError)
    # Elsewhere (gpg's scratch in /tmp, a skopeo that cannot be run): that item's problem only.
    scratch = OSError(errno.ENOSPC, "No space left on device", "/tmp/mirror-gpg-x/pubring")
    denied = OSError(errno.EACCES, "Permission denied", "/usr/bin/skopeo")
    for exc in (scratch, denied):
        error = as_error(cfg, KIND, "kubernetes", exc)
        assert not isinstance(error, LocalDiskError), exc
        assert str(error).startswith("repo kubernetes: ") and exc.filename in str(error)


def test_errors_are_prefixed_once(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path)
    own = RepoSyncError("kubernetes", "HTTP 404", "http://u/repomd.xml")
    assert as_error(cfg, KIND, "kubernetes", own) is own
    wrapped = as_error(cfg, KIND, "kubernetes", ValueError("odd"))
    assert str(wrapped) == "repo kubernetes: odd"
