"""Issue 8.2: local errors fail fast, on a real small (and then read-only) tmpfs as data_dir.

ENOSPC and EROFS are real here: data_dir is a 24 MiB tmpfs (root and mount(8) needed; the
tests skip with the reason otherwise) and upstream grows past what fits. A full or read-only
disk is not transient: the sync must stop at once (the subprocess timeout is only a bound),
name the reason and the repo, exit 1, fetch no package twice, keep the previous snapshot
serving, leave readable state and an empty staging area, and complete once space is back.
The disk fills two ways: a plan larger than the free space (refused before any download), and
a tmpfs shrunk under a running sync whose downloads a throttling FaultProxy keeps slow, so
the packages hit a real ENOSPC mid-stream.

Not injected: EDQUOT and EIO. This kernel refuses tmpfs `usrquota`; ext4 on a loop device
would need the quota tools (not installed) and a non-root sync, since root's CAP_SYS_RESOURCE
ignores quota limits. EIO needs a failing block device (dm-error/dm-flakey), and this kernel
has no device-mapper. In the product both are OSError errnos on the same never-retried path as
ENOSPC and EROFS (mirror.retry.LOCAL_ERRNOS), which these tests exercise.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import Upstream, free_port, stop_process, wait_http
from tests.fixtures import Fault, FaultProxy, GpgKey, Pkg, build_rpms, make_repo
from tests.fixtures.yumrepo import K8S_RELEASE
from tests.test_reliability_faults import (
    SessionMirror,
    assert_mirrors,
    assert_ok,
    digests,
    failure_lines,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

BOUND = 60  # seconds: a sync that retries a full disk instead of stopping overruns this
BIG = 7 * 1024 * 1024  # incompressible payload per package; four of them exceed the disk


def mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def disk_mirror(tmp_path: Path, upstream: Upstream) -> Iterator[SessionMirror]:
    """A mirror whose data_dir is a fresh 24 MiB tmpfs, fetching through a FaultProxy."""
    with FaultProxy(upstream.server.url) as proxy:
        m = SessionMirror(tmp_path / "mirror", upstream, free_port(), proxy=proxy)
        m.write()
        m.data.mkdir(parents=True)
        proc = mount("-t", "tmpfs", "-o", "size=24m", "tmpfs", str(m.data))
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs as data_dir (needs root): {proc.stderr.strip()}")
        try:
            yield m
        finally:
            for p in m.procs:
                stop_process(p)
            subprocess.run(["umount", "-l", str(m.data)], capture_output=True, timeout=30)


def remount(m: SessionMirror, opts: str) -> None:
    proc = mount("-o", f"remount,{opts}", str(m.data))
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def big_rpms(tmp_path_factory: pytest.TempPathFactory, gpg_key: GpgKey) -> list[Path]:
    """Four signed ~7 MiB kubectl rpms (random payload), built once."""
    out = tmp_path_factory.mktemp("big-rpms")
    pkgs = [Pkg("kubectl", f"1.28.{n}", K8S_RELEASE, payload_size=BIG) for n in range(10, 14)]
    return build_rpms(pkgs, "x86_64", out, gpg_key, out / "work")


def grow(up: Upstream, rpms: list[Path]) -> None:
    for rpm in rpms:
        shutil.copy2(rpm, up.k8s_repo / "x86_64" / rpm.name)
    make_repo(up.k8s_repo, up.key)


def rpm_gets(m: SessionMirror) -> Counter[str]:
    assert m.proxy is not None
    return Counter(e.path for e in m.proxy.entries(r"\.rpm$", "GET"))


def assert_disk_failure(m: SessionMirror, output: str, reason: str) -> None:
    """Exit 1 came with one failure line naming the repo, the reason and data_dir, and no
    package was fetched twice (a local error is never retried)."""
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in failure_lines(output) if "kubernetes" in line]
    assert len(lines) == 1, output[-3000:]
    assert reason in lines[0].lower(), lines[0]
    assert str(m.data) in lines[0] or "data_dir" in lines[0], lines[0]
    assert {p: n for p, n in rpm_gets(m).items() if n > 1} == {}, "retried after a disk error"


def assert_state_and_staging_clean(m: SessionMirror) -> None:
    states = [p for p in (m.data / "state").rglob("*.json") if p.is_file()]
    assert any("kubernetes" in p.name for p in states), states
    for path in states:
        try:
            json.loads(path.read_text())  # readable, complete JSON
        except ValueError as exc:
            pytest.fail(f"state file {path} is not JSON ({exc}): {path.read_text()[:200]!r}")
    staging = m.data / ".staging"
    assert not [p for p in staging.rglob("*") if p.is_file()] if staging.exists() else True
    assert not list(m.data.rglob("*.part"))


def fill(path: Path) -> None:
    """Write `path` until the file system is full."""
    with path.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * (1 << 20))
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def assert_serves(m: SessionMirror, published: dict[str, str]) -> None:
    """`mirror serve` starts and serves every published file byte for byte."""
    proc = m.start("serve", "--bind", f"127.0.0.1:{m.port}", "--workers", "2")
    try:
        wait_http(m.base_url + "/healthz", timeout=30)
    except TimeoutError:
        pytest.fail(f"mirror serve did not start:\n{m.logs[proc.pid].read_text()[-3000:]}")
    for rel, digest in published.items():
        got = requests.get(f"{m.base_url}/repos/kubernetes/{rel}", timeout=10)
        assert got.status_code == 200, rel
        assert hashlib.sha256(got.content).hexdigest() == digest, rel
    stop_process(proc)


def test_plan_that_cannot_fit_fails_before_downloading(
    disk_mirror: SessionMirror, big_rpms: list[Path]
) -> None:
    m, up = disk_mirror, disk_mirror.upstream
    assert_ok(m.run("sync", "--repo", "kubernetes", timeout=BOUND))
    k8s = m.data / "repos" / "kubernetes"
    before = digests(k8s)
    grow(up, big_rpms)  # 28 MiB of packages for a 24 MiB disk
    proc = m.run("sync", "--repo", "kubernetes", timeout=BOUND)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert_disk_failure(m, proc.stderr, "no space left on device")
    assert digests(k8s) == before
    assert_state_and_staging_clean(m)


def shrink_once_downloading(m: SessionMirror, headroom: int = 3 << 20) -> None:
    """As soon as the first package GET arrives (space was checked, the plan fits), shrink
    the tmpfs to what is in use plus `headroom`: the downloads then hit a real ENOSPC."""
    assert m.proxy is not None
    deadline = time.monotonic() + BOUND
    while not m.proxy.entries(r"\.rpm$", "GET"):
        assert time.monotonic() < deadline, "no package download started"
        time.sleep(0.01)
    for _ in range(50):
        size = (shutil.disk_usage(m.data).used + headroom) // 1024
        if mount("-o", f"remount,size={size}k", str(m.data)).returncode == 0:
            return
    pytest.fail("could not shrink the tmpfs under the running sync")


def test_disk_filling_during_downloads_fails_fast_keeps_snapshot_and_recovers(
    disk_mirror: SessionMirror, big_rpms: list[Path]
) -> None:
    m, up = disk_mirror, disk_mirror.upstream
    assert m.proxy is not None
    assert_ok(m.run("sync", timeout=BOUND))
    k8s = m.data / "repos" / "kubernetes"
    before = digests(k8s)
    grow(up, big_rpms[:2])  # 14 MiB: fits the disk when the sync checks
    m.proxy.add(Fault("throttle", seconds=0.03), r"\.rpm$", times=None)  # ~2 MiB/s each
    m.proxy.clear_log()

    sync = m.start("sync")
    shrink_once_downloading(m)
    try:
        code = sync.wait(timeout=BOUND)
    except subprocess.TimeoutExpired:
        stop_process(sync)
        pytest.fail(f"sync still running {BOUND}s after the disk filled")
    output = m.logs[sync.pid].read_text()
    assert code == 1, output[-3000:]
    assert_disk_failure(m, output, "no space left on device")
    assert digests(k8s) == before
    assert_state_and_staging_clean(m)

    filler = m.data / "zz-filler"
    fill(filler)  # serve must start on a disk that is full to the last block
    assert_serves(m, before)
    filler.unlink()

    m.proxy.clear_rules()
    remount(m, "size=200m")
    assert_ok(m.run("sync", timeout=BOUND))
    assert_mirrors(k8s, up.k8s_repo, first=False)
    assert_state_and_staging_clean(m)


def test_read_only_data_dir_fails_fast_then_recovers(
    disk_mirror: SessionMirror, big_rpms: list[Path]
) -> None:
    m, up = disk_mirror, disk_mirror.upstream
    assert_ok(m.run("sync", "--repo", "kubernetes", timeout=BOUND))
    k8s = m.data / "repos" / "kubernetes"
    before = digests(k8s)
    grow(up, big_rpms[:1])
    remount(m, "ro")
    assert m.proxy is not None
    m.proxy.clear_log()

    proc = m.run("sync", "--repo", "kubernetes", timeout=BOUND)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "read-only file system" in proc.stderr.lower(), proc.stderr[-3000:]
    assert "kubernetes" in proc.stderr or str(m.data) in proc.stderr, proc.stderr[-3000:]
    assert all(n == 1 for n in rpm_gets(m).values()), rpm_gets(m)
    assert digests(k8s) == before

    remount(m, "rw")
    assert_ok(m.run("sync", "--repo", "kubernetes", timeout=BOUND))
    assert_mirrors(k8s, up.k8s_repo, first=False)
    assert_state_and_staging_clean(m)
