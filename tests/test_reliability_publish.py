"""Publishing under load and in a hostile data_dir.

- 64 concurrent clients loop against a real `mirror serve` (whatever it runs: gunicorn, or
  nginx in front of it) while three syncs publish upstream states that add and remove
  packages: every repomd.xml -> primary -> package chain verifies, no error, no 404.
- Packages the new metadata drops stay downloadable for one more generation.
- Durability as syscalls: every package and metadata file is fsynced (or, many at once, its
  file system syncfs'ed) before the rename that
  makes it live, its directory after, and all of it before repomd.xml switches.
- Symlinks planted in data_dir make the sync refuse, naming the path; nothing outside data_dir
  is written or deleted.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from mirror import fsutil
from mirror.config import load_config
from mirror.errors import RepoSyncError
from mirror.web import create_app
from mirror.yum import publish
from mirror.yum.metadata import PackageRef
from tests.conftest import Mirror
from tests.fixtures.churn import DOCKER_PREFIX, K8S_PREFIX, Churn, churn_for
from tests.fixtures.snapshot import Fetch, FileRef, Inconsistent, check_repo
from tests.fixtures.syscalls import first, strace_usable, trace_syscalls

pytestmark = pytest.mark.reliability

CLIENTS = 64
PACKAGES_PER_ROUND = 4


def _assert_ok(proc: subprocess.CompletedProcess[str], what: str) -> None:
    assert proc.returncode == 0, f"{what} exited {proc.returncode}\n{proc.stderr[-3000:]}"


@pytest.fixture
def churned(mirror: Mirror) -> Iterator[tuple[Mirror, Churn]]:
    churn = churn_for(mirror)
    _assert_ok(mirror.sync("--only", "repos"), "first sync")
    yield mirror, churn


@dataclass
class Clients:
    """CLIENTS threads, each looping repomd.xml -> primary -> a few packages."""

    base_url: str
    failures: list[str] = field(default_factory=list)
    rounds: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each
    started: list[float] = field(default_factory=lambda: [0.0] * CLIENTS)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, index: int) -> None:
        rng = random.Random(index)
        prefix = K8S_PREFIX if index % 2 == 0 else DOCKER_PREFIX
        with requests.Session() as session:

            def fetch(path: str) -> tuple[int, bytes]:
                resp = session.get(self.base_url + path, timeout=30)
                return resp.status_code, resp.content

            def sample(packages: list[FileRef]) -> list[FileRef]:
                return rng.sample(packages, min(PACKAGES_PER_ROUND, len(packages)))

            while not self.stop.is_set():
                begin = time.monotonic()
                self.started[index] = begin
                try:
                    check_repo(fetch, prefix, sample=sample)
                except Inconsistent as exc:
                    self._fail(f"client {index}: {exc}")
                except requests.RequestException as exc:
                    self._fail(f"client {index}: {type(exc).__name__}: {exc}")
                with self.lock:
                    self.rounds.append((begin, time.monotonic()))

    def _fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)

    def wait_for_fresh_rounds(self, since: float, timeout: float = 30) -> None:
        """Until every client has begun a round after `since`: then no round in flight read a
        repomd.xml older than the last publish."""
        deadline = time.monotonic() + timeout
        while min(self.started) <= since:
            assert time.monotonic() < deadline, "clients stopped making progress"
            time.sleep(0.05)

    def overlapping(self, start: float, end: float) -> int:
        with self.lock:
            return sum(1 for b, e in self.rounds if b < end and e > start)


@pytest.mark.slow
def test_clients_in_the_middle_of_publishes_see_no_error(churned: tuple[Mirror, Churn]) -> None:
    """The one-generation guarantee holds for a client whose repomd.xml -> packages round is
    shorter than the time between two publishes (for dnf: minutes against hours); the test
    makes that true by letting every client start a fresh round before the next sync. The
    signature is not checked here: dnf's two requests for repomd.xml and repomd.xml.asc can
    straddle a switch (a documented limit)."""
    mirror, churn = churned
    mirror.serve()
    clients = Clients(mirror.base_url)
    threads = [threading.Thread(target=clients.run, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    windows = []
    try:
        clients.wait_for_fresh_rounds(0.0)
        for _ in range(3):
            churn.use(churn.other())
            start = time.monotonic()
            _assert_ok(mirror.sync("--only", "repos"), f"sync to state {churn.current}")
            end = time.monotonic()
            windows.append((churn.current, start, end))
            clients.wait_for_fresh_rounds(end)
    finally:
        clients.stop.set()
        for thread in threads:
            thread.join(timeout=60)
    took = [(n, round(e - s, 2)) for n, s, e in windows]
    print(f"{len(clients.rounds)} client rounds; syncs (state, seconds): {took}")
    assert not clients.failures, f"{len(clients.failures)} failures: {clients.failures[:20]}"
    # Rounds must really have been in flight while each sync published, or nothing was shown.
    for name, start, end in windows:
        assert clients.overlapping(start, end) >= CLIENTS, f"too few rounds during sync {name}"
    fetch = _http_fetch(mirror.base_url)
    assert check_repo(fetch, K8S_PREFIX) == churn.expected_k8s[churn.current]


def _http_fetch(base_url: str) -> Fetch:
    def fetch(path: str) -> tuple[int, bytes]:
        resp = requests.get(base_url + path, timeout=30)
        return resp.status_code, resp.content

    return fetch


def _bulk(mirror: Mirror, tag: str) -> list[Path]:
    return sorted((mirror.data / "repos/kubernetes/x86_64").glob(f"fixture-bulk{tag}-*.rpm"))


@pytest.mark.slow
def test_dropped_packages_stay_for_exactly_one_generation(churned: tuple[Mirror, Churn]) -> None:
    mirror, churn = churned
    fetch = _http_fetch(mirror.base_url)
    mirror.serve()
    dropped_by_b = "x86_64/kubectl-1.28.0-150500.1.1.x86_64.rpm"
    for name in ("B", "C"):
        churn.use(name)
        _assert_ok(mirror.sync("--only", "repos"), f"sync to {name}")
    # C is live, B previous: B's bulk is served though the live metadata no longer names it.
    live = check_repo(fetch, K8S_PREFIX)
    assert not any("bulkb" in h for h in live.package_hrefs)
    assert _bulk(mirror, "b") and all(
        fetch(K8S_PREFIX + "x86_64/" + p.name)[0] == 200 for p in _bulk(mirror, "b")
    )
    assert fetch(K8S_PREFIX + dropped_by_b)[0] == 200  # back in C
    churn.use("D")
    _assert_ok(mirror.sync("--only", "repos"), "sync to D")
    assert not _bulk(mirror, "b"), "two generations old, still on disk"
    assert fetch(K8S_PREFIX + "x86_64/fixture-bulkb-000-1.0-1.x86_64.rpm")[0] == 404
    assert _bulk(mirror, "c"), "the previous generation's packages were pruned"

    # A tree without a matching record (published by an older version): nothing is pruned
    # that round, the next one prunes as usual.
    shutil.rmtree(mirror.data / "state" / "published")
    churn.use("B")
    _assert_ok(mirror.sync("--only", "repos"), "sync to B without a record")
    assert _bulk(mirror, "c") and _bulk(mirror, "d")
    churn.use("C")
    _assert_ok(mirror.sync("--only", "repos"), "sync to C")
    assert not _bulk(mirror, "d") and _bulk(mirror, "b")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_publish_fsyncs_every_file_before_and_its_directory_after_the_rename(
    churned: tuple[Mirror, Churn], tmp_path: Path
) -> None:
    """Seen as syscalls of a real sync: each new package and metadata file fsynced before the
    rename that makes it live, its directory fsynced after, all before repomd.xml.asc and
    repomd.xml switch; and those two fsynced before and their directory after."""
    reason = strace_usable()
    if reason:
        pytest.skip(reason)
    mirror, churn = churned
    churn.use("B")
    cmd = [*mirror_cmd(mirror), "sync", "--only", "repos", "--repo", "kubernetes"]
    proc, raw = trace_syscalls(cmd, tmp_path / "strace.log", cwd=mirror.dir, follow=False)
    _assert_ok(proc, "traced sync")
    events = [type(e)(e.kind, _real(e.path), _real(e.src)) for e in raw]
    repo = _real(str(mirror.data / "repos" / "kubernetes"))
    switch = first(events, "rename", f"{repo}/repodata/repomd.xml")
    signed = first(events, "rename", f"{repo}/repodata/repomd.xml.asc")
    assert 0 <= signed < switch, "repomd.xml.asc must switch just before repomd.xml"
    live = [i for i, e in enumerate(events) if e.kind == "rename" and e.path.startswith(repo)]
    moved = [i for i in live if i not in (switch, signed)]
    bulk = [i for i in moved if "fixture-bulkb-" in events[i].path]
    assert len(bulk) == len(_bulk(mirror, "b")) > 0
    assert any("/repodata/" in events[i].path for i in moved), "no metadata file moved in"
    for i in [*moved, signed, switch]:
        event = events[i]
        # Its own fsync, or (many files at once) a syncfs of its file system before the
        # renames started: either way its data is on disk before it goes live.
        synced = first(events, "fsync", event.src)
        flushed = [j for j, e in enumerate(events) if e.kind == "syncfs" and j < i]
        assert 0 <= synced < i or flushed, f"{event.path} renamed before its data was fsynced"
        parent = str(Path(event.path).parent)
        after = first(events, "fsync", parent, i)
        assert after > i, f"{parent} not fsynced after {event.path} moved in"
        if i in moved:
            assert after < signed, f"{parent} fsynced only after the switch"


def mirror_cmd(mirror: Mirror) -> list[str]:
    return [sys.executable, "-m", "mirror", "-c", str(mirror.config)]


def _real(path: str) -> str:
    return os.path.realpath(path) if path else path


def _plant(data: Path, where: str, evil: Path) -> Path:
    """Put a symlink at data/where pointing at `evil` (outside data_dir), moving what was
    there into `evil`, plus a sentinel file prune would delete were it to follow the link."""
    link = data / where
    if link.exists():
        shutil.move(str(link), str(evil))
    evil.mkdir(exist_ok=True)
    (evil / "sentinel-0-1.x86_64.rpm").write_bytes(b"not in any metadata")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(evil, target_is_directory=True)
    return link


@pytest.mark.slow
@pytest.mark.parametrize(
    "where",
    ["repos/kubernetes/x86_64", "keys", ".staging/repos/docker-ce-stable/9/x86_64/generated"],
)
def test_symlink_planted_in_data_dir_is_refused_and_nothing_outside_is_touched(
    churned: tuple[Mirror, Churn], tmp_path: Path, where: str
) -> None:
    mirror, churn = churned
    evil = tmp_path / "evil"
    link = _plant(mirror.data, where, evil)
    before = _tree(evil)
    churn.use("B")  # adds packages to x86_64 and removes some: publish and prune both needed
    proc = mirror.sync("--only", "repos")
    assert proc.returncode == 1, proc.stderr
    refusals = [line for line in proc.stderr.splitlines() if "refusing to publish" in line]
    assert refusals and all(str(link) in line for line in refusals), proc.stderr
    assert _tree(evil) == before, "publish or prune wrote or deleted outside data_dir"
    if where.startswith("repos/kubernetes"):  # the other repo is not held up
        served = check_repo(_client_fetch(mirror), DOCKER_PREFIX)
        assert served.package_hrefs == churn.expected_docker["B"]


def _client_fetch(mirror: Mirror) -> Fetch:
    client = create_app(load_config(mirror.config)).test_client()

    def fetch(path: str) -> tuple[int, bytes]:
        resp = client.get(path)
        return resp.status_code, resp.get_data()

    return fetch


def test_refuse_symlinks_names_the_link_wherever_it_points(tmp_path: Path) -> None:
    data = tmp_path / "data"
    tree = data / "repos" / "kubernetes"
    (tree / "repodata").mkdir(parents=True)
    (data / "repos" / "other").mkdir()
    publish.refuse_symlinks("kubernetes", data, [tree, data / ".staging" / "absent"])
    inside = tree / "x86_64"
    inside.symlink_to(data / "repos" / "other")  # inside data_dir, yet another repo's files
    with pytest.raises(RepoSyncError) as caught:
        publish.refuse_symlinks("kubernetes", data, [tree])
    message = str(caught.value)
    assert str(inside) in message and "\n" not in message
    inside.unlink()
    (data / "repos" / "kubernetes").rename(data / "repos" / "k8s-real")
    (data / "repos" / "kubernetes").symlink_to(tmp_path)  # an ancestor of the tree
    with pytest.raises(RepoSyncError, match="repos/kubernetes is a symlink"):
        publish.refuse_symlinks("kubernetes", data, [tree])


def _generation(root: Path, target: Path, repomd: bytes, hrefs: list[str]) -> publish.Generation:
    """A generation of stand-in packages (publish moves and prunes files; it never opens an
    rpm), staged like the download stage leaves them: only what the target lacks."""
    staging = root / "staging" / hashlib.sha256(repomd).hexdigest()[:8]
    (staging / "meta" / "repodata").mkdir(parents=True, exist_ok=True)
    refs = []
    for href in hrefs:
        data = href.encode()
        ref = PackageRef(href, "0", "1", "1", "x86_64", href, "sha256", _sha(data), len(data))
        refs.append(ref)
        if not (target / href).exists():
            (staging / "packages" / href).parent.mkdir(parents=True, exist_ok=True)
            (staging / "packages" / href).write_bytes(data)
    to_move = tuple(r for r in refs if not (target / r.href).exists())
    return publish.Generation(
        repomd, None, staging / "meta", (), tuple(refs), to_move, staging / "packages"
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_repeated_publish_after_a_crash_does_not_count_as_a_generation(tmp_path: Path) -> None:
    target, record = tmp_path / "repo", tmp_path / "state" / "published.json"

    def publish_(repomd: bytes, *names: str) -> list[str]:
        hrefs = [f"x86_64/{n}.rpm" for n in names]
        publish.publish(target, _generation(tmp_path, target, repomd, hrefs), record)
        return sorted(p.name for p in (target / "x86_64").iterdir())

    publish_(b"r1", "a", "b")
    assert publish_(b"r2", "b", "c") == ["a.rpm", "b.rpm", "c.rpm"]  # r1 is the previous one
    # The same generation again (a sync repeated after a crash past the switch), and one with
    # regenerated metadata but the same packages (a filtered repo): r1 stays the previous.
    assert publish_(b"r2", "b", "c") == ["a.rpm", "b.rpm", "c.rpm"]
    assert publish_(b"r2'", "b", "c") == ["a.rpm", "b.rpm", "c.rpm"]
    stale = target / "x86_64" / f".a.rpm{fsutil.TMP_MARK}{_dead_pid()}"
    stale.write_bytes(b"left by a killed writer")
    # a: two generations old, gone; b: in the previous generation, kept; the temp collected.
    assert publish_(b"r3", "c", "d") == ["b.rpm", "c.rpm", "d.rpm"]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
