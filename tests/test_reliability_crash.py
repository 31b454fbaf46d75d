"""Crash at any moment: `mirror sync` SIGKILLed at random points of a sync that changes the repos.

Real parts only: fixture upstreams built with rpmbuild/createrepo_c and served over HTTP, real
`mirror sync` processes, a real SIGKILL of the whole process group. After every kill, what the
web app serves (create_app(cfg).test_client(), i.e. the code `mirror serve` runs) must be one
complete, consistent snapshot per repo: repomd.xml parses and its signature verifies, every
file it names has the right checksum, every package the primary names has the right size and
sha256, and it is exactly the upstream state before or after the change. The next,
uninterrupted sync must heal without manual clean-up: it serves the new state and leaves no
`.part`, temp or staging file anywhere under data_dir.

Scope: yum repos only (one unfiltered, byte-identical repo and one filtered repo whose metadata
is regenerated). Crash consistency of image syncs belongs to the image sync engineer's tests.

Kill points are drawn from a seeded RNG (RELIABILITY_SEED overrides the seed; the seed and
every point are printed on failure). Half are random delays over a whole sync (timed on this
machine): SIGKILL of the process group. The publish itself takes milliseconds, which random
delays rarely hit, so the other half are random positions among the renames and fsyncs the
sync's main thread makes (counted in one traced run): strace injects SIGKILL as the process
enters that syscall. Every step of download, publish and state writing is such a call.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mirror import gpg
from mirror.config import load_config
from mirror.web import create_app
from tests.conftest import Mirror
from tests.fixtures.churn import Churn, churn_for, leftovers
from tests.fixtures.snapshot import Fetch, Inconsistent
from tests.fixtures.syscalls import KILLABLE, kill_on, strace_usable, trace_syscalls

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

POINTS = 24


def _assert_ok(proc: subprocess.CompletedProcess[str], what: str) -> None:
    assert proc.returncode == 0, f"{what} exited {proc.returncode}\n{proc.stderr[-3000:]}"


def _processes_using(directory: Path) -> list[int]:
    """Pids whose command line names `directory` (a dir only this test uses)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(directory).encode() in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def private_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """TMPDIR for the syncs this test kills. A killed sync never stops the gpg-agent its gpg
    calls started (the agent daemonizes out of the process group); with the sync's temp
    homes in a directory of our own, those agents are found and stopped by pid afterwards.
    Short, because gpg-agent's socket path must fit in 108 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="relcrash-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(directory))
    yield directory
    for pid in _processes_using(directory):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def churn_mirror(mirror: Mirror, private_tmpdir: Path) -> tuple[Mirror, Churn]:
    churn = churn_for(mirror)
    _assert_ok(mirror.sync("--only", "repos"), "first sync")
    return mirror, churn


def _fetcher(mirror: Mirror) -> Fetch:
    client = create_app(load_config(mirror.config)).test_client()

    def fetch(path: str) -> tuple[int, bytes]:
        resp = client.get(path)
        try:
            return resp.status_code, resp.get_data()
        finally:
            resp.close()

    return fetch


def _signature_check(fetch: Fetch) -> Callable[[bytes, bytes], None]:
    def verify(repomd: bytes, asc: bytes) -> None:
        status, keys = fetch("/keys/kubernetes.gpg")
        if status != 200:
            raise Inconsistent(f"/keys/kubernetes.gpg: HTTP {status}")
        try:
            gpg.verify_detached(repomd, asc, keys)
        except gpg.SignatureError as exc:
            message = f"repomd.xml.asc does not sign the served repomd.xml: {exc}"
            raise Inconsistent(message) from None

    return verify


@dataclass(frozen=True)
class Point:
    """One kill: after `delay` seconds, or as the sync enters its `nth` `syscall`."""

    delay: float = 0.0
    syscall: str = ""
    nth: int = 0

    def __str__(self) -> str:
        return f"at {self.syscall} #{self.nth}" if self.syscall else f"after {self.delay:.3f}s"


def _sync_cmd(mirror: Mirror) -> list[str]:
    return [sys.executable, "-m", "mirror", "-c", str(mirror.config), "sync", "--only", "repos"]


def _crash(mirror: Mirror, point: Point) -> int:
    """Run `mirror sync` until `point` kills it; its return code (-9 when the kill landed)."""
    if point.syscall:
        cmd = [*kill_on(point.syscall, point.nth), *_sync_cmd(mirror)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=mirror.dir, timeout=120)
        return proc.returncode
    started = mirror.start("sync", "--only", "repos")
    timer = threading.Timer(point.delay, lambda: _killpg(started.pid))
    timer.start()
    try:
        return started.wait(timeout=120)
    finally:
        timer.cancel()


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # finished before the kill
        os.killpg(pid, signal.SIGKILL)


def _points(rng: random.Random, total: float, counts: Counter[str]) -> list[Point]:
    """Stratified (each draw inside its own slice), so every stretch of the sync gets points
    whatever the RNG says: half over the sync's duration, half over its renames and fsyncs
    (each one is a step of download or publish) when strace can inject the kill."""
    timed = POINTS // 2 if counts else POINTS
    points = [Point(delay=total * (i + rng.random()) / timed) for i in range(timed)]
    for syscall, n in ((s, (POINTS - timed) // len(KILLABLE)) for s in KILLABLE if counts):
        for i in range(n):
            nth = 1 + int(counts[syscall] * (i + rng.random()) / n)
            points.append(Point(syscall=syscall, nth=nth))
    rng.shuffle(points)
    return points


def _measure(mirror: Mirror, churn: Churn, log: Path) -> tuple[float, Counter[str]]:
    """Two changing syncs: one timed, one counting its main thread's renames and fsyncs."""
    churn.use(churn.other())
    started = time.monotonic()
    _assert_ok(mirror.sync("--only", "repos"), "timed sync")
    total = time.monotonic() - started
    counts: Counter[str] = Counter()
    if strace_usable() is None:
        churn.use(churn.other())
        proc, events = trace_syscalls(_sync_cmd(mirror), log, cwd=mirror.dir, follow=False)
        _assert_ok(proc, "traced sync")
        counts.update(e.kind for e in events)
    return total, counts


def test_sigkill_at_random_points_always_serves_a_consistent_snapshot(
    churn_mirror: tuple[Mirror, Churn], tmp_path: Path
) -> None:
    mirror, churn = churn_mirror
    seed = int(os.environ.get("RELIABILITY_SEED", "8034"))
    fetch = _fetcher(mirror)
    signature = _signature_check(fetch)
    assert churn.served_states(fetch, signature) == ("A", "A")
    total, counts = _measure(mirror, churn, tmp_path / "strace.log")
    points = _points(random.Random(seed), total, counts)
    context = f"seed {seed}, sync {total:.2f}s, {dict(counts)}, points {[str(p) for p in points]}"
    outcomes: Counter[str] = Counter()

    for index, point in enumerate(points):
        before = churn.current
        churn.use(churn.other())
        where = f"point {index} ({point}, {before} -> {churn.current}); {context}"
        code = _crash(mirror, point)
        try:
            states = churn.served_states(fetch, signature)
        except Inconsistent as exc:
            pytest.fail(f"after the kill, {where}: {exc}")
        assert set(states) <= {before, churn.current}, where
        switched = sum(s == churn.current for s in states)
        how = "killed" if code == -signal.SIGKILL else f"exit {code}"
        outcomes[f"{how}, {switched}/2 repos switched"] += 1

        _assert_ok(mirror.sync("--only", "repos"), f"healing sync after {where}")
        try:
            healed = churn.served_states(fetch, signature)
        except Inconsistent as exc:
            pytest.fail(f"after the healing sync, {where}: {exc}")
        assert healed == (churn.current, churn.current), where
        left = sorted(str(p.relative_to(mirror.data)) for p in leftovers(mirror.data))
        assert not left, f"left behind after healing, {where}: {left}"

    print(f"crash points: {dict(outcomes)}; {context}")
    # A run where the kills all missed (sync too fast, timer broken) tests nothing.
    killed = sum(n for k, n in outcomes.items() if k.startswith("killed"))
    assert killed >= POINTS // 2, f"only {killed} kills landed mid-sync: {dict(outcomes)}"
    # Kills must have landed both before a switch and after one (the second repo still
    # syncing, or pruning), or the points missed the publish the test is about.
    assert outcomes["killed, 0/2 repos switched"], dict(outcomes)
    after_a_switch = outcomes["killed, 1/2 repos switched"] + outcomes["killed, 2/2 repos switched"]
    assert after_a_switch, dict(outcomes)
