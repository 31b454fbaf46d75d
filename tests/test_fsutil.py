"""mirror.fsutil, the one atomic-write helper: atomic under SIGKILL, durable (fsync order seen
with strace), and temp files of killed writers collected by the next write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mirror import fsutil
from tests.fixtures.syscalls import first, strace_usable, trace_syscalls


def test_atomic_write_replaces_content_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "f.json"
    fsutil.atomic_write(path, b"one")
    fsutil.atomic_write_text(path, "two", mode=0o600)
    assert path.read_text() == "two"
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.json"]


def test_failed_batch_renames_nothing_and_cleans_its_temps(tmp_path: Path) -> None:
    first_file = tmp_path / "repomd.xml.asc"
    first_file.write_bytes(b"old")
    (tmp_path / "blocker").write_bytes(b"a file where a directory is needed")
    with pytest.raises(OSError):
        fsutil.atomic_write_all(
            [(first_file, b"new"), (tmp_path / "blocker" / "repomd.xml", b"new")]
        )
    assert first_file.read_bytes() == b"old"  # nothing was switched: the batch is all or none
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "repomd.xml.asc"]


_WRITER = """
import sys
from pathlib import Path
from mirror import fsutil
path, size = Path(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
n = 0
while True:
    n += 1
    fsutil.atomic_write(path, bytes([n % 251]) * size)
"""


def _start_writer(path: Path, size: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(size)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_sigkill_mid_write_leaves_old_or_new_and_next_write_collects_the_temp(
    tmp_path: Path,
) -> None:
    """A writer rewriting 1 MiB in a loop is SIGKILLed at 10 moments: the file is always
    complete (one byte value, full size), and the temp the killed writer left goes away with
    the next write of that file. A temp of a writer still alive is left alone."""
    path = tmp_path / "big"
    size = 1024 * 1024
    fsutil.atomic_write(path, b"\0" * size)
    leftovers = 0
    for delay in (0.05, 0.11, 0.17, 0.23, 0.29, 0.31, 0.37, 0.41, 0.43, 0.47):
        proc = _start_writer(path, size)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        data = path.read_bytes()
        assert len(data) == size and data == data[:1] * size, f"torn file after {delay}s"
        temps = [p for p in tmp_path.iterdir() if fsutil.is_temp_name(p.name)]
        leftovers += len(temps)
        fsutil.atomic_write(path, b"\1" * size)
        assert [p.name for p in tmp_path.iterdir()] == ["big"], f"after {delay}s"
    assert leftovers > 0, "no kill landed mid-write: the collection was never exercised"

    live = _start_writer(tmp_path / "other", 16)
    try:
        foreign = fsutil.temp_path(path).with_name(f".big{fsutil.TMP_MARK}{live.pid}")
        foreign.write_bytes(b"being written by a live process")
        fsutil.atomic_write(path, b"x")
        assert foreign.exists()
    finally:
        os.killpg(live.pid, signal.SIGKILL)
        live.wait(timeout=10)


def test_durable_move_all_creates_directories(tmp_path: Path) -> None:
    src = tmp_path / "staging"
    src.mkdir()
    (src / "a.rpm").write_bytes(b"a")
    (src / "b.rpm").write_bytes(b"b")
    dest = tmp_path / "repo" / "x86_64"
    fsutil.durable_move_all([(src / "a.rpm", dest / "a.rpm"), (src / "b.rpm", dest / "b.rpm")])
    assert sorted(p.name for p in dest.iterdir()) == ["a.rpm", "b.rpm"]
    assert not any(src.iterdir())


def test_fsync_before_and_after_every_rename(tmp_path: Path) -> None:
    """The durability contract, observed as syscalls: file data fsynced before the rename
    that makes it live, the directory fsynced after it (and new directories' parents)."""
    reason = strace_usable()
    if reason:
        pytest.skip(reason)
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from mirror import fsutil
        root = Path({str(tmp_path)!r})
        fsutil.atomic_write(root / "new" / "f", b"data")
        (root / "s").write_bytes(b"pkg")
        fsutil.durable_move_all([(root / "s", root / "d" / "s")])
        """
    )
    proc, events = trace_syscalls(
        [sys.executable, "-c", script],
        tmp_path / "strace.log",
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 0, proc.stderr
    root = str(tmp_path)
    target = f"{root}/new/f"
    rename = first(events, "rename", target)
    assert rename >= 0, events
    assert 0 <= first(events, "fsync", events[rename].src) < rename
    assert first(events, "fsync", f"{root}/new", rename) > rename
    assert 0 <= first(events, "fsync", root) < rename  # the new directory's entry
    moved = first(events, "rename", f"{root}/d/s")
    assert 0 <= first(events, "fsync", f"{root}/s") < moved
    assert first(events, "fsync", f"{root}/d", moved) > moved


def test_first_symlink_finds_links_on_and_deep_below_each_root(tmp_path: Path) -> None:
    data = tmp_path / "data"
    root = data / "charts" / "stable"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "x.tgz").write_bytes(b"x")
    published_file = data / "files" / "calico.yaml"
    assert fsutil.first_symlink(data, [root, published_file]) is None  # absent roots are fine
    # Two levels below the root (the charts copy of this check used to look one level down).
    deep = root / "a" / "b" / "evil"
    deep.symlink_to(tmp_path)
    assert fsutil.first_symlink(data, [root]) == deep
    deep.unlink()
    # On the way down from data_dir to a root.
    (data / "files").symlink_to(tmp_path)
    assert fsutil.first_symlink(data, [root, published_file]) == data / "files"
    message = fsutil.symlink_refusal(data / "files")
    assert str(data / "files") in message and str(tmp_path) in message
