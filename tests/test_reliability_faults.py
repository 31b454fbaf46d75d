"""Issue 8.1: every request is retried the same way, proven through a fault-injecting proxy.

The fixture upstream sits behind tests.fixtures.FaultProxy and the .repo files point at the
proxy, the way a user points baseurl/gpgkey at a mirror. Every kind of request a repo sync
makes (repomd.xml, repomd.xml.asc with repo_gpgcheck=1, the gpg key, each metadata file, every
package) gets every transient fault on its first request; `mirror sync` (the real CLI) must
then succeed with a published tree byte-identical to upstream. Permanent faults must fail the
repo with one line naming repo, url and reason while the other repos sync and the previous
snapshot keeps serving.

Faults that only a declared size or checksum can expose (truncated, over-long, corrupted
body) are injected into metadata files and packages; repomd.xml, its signature and the key
have no declared size, so a body that is short but well-formed there is indistinguishable
from a real change upstream and is not claimed to be transient.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import Mirror, Upstream, free_port, stop_process
from tests.fixtures import (
    Fault,
    FaultProxy,
    GpgKey,
    Pkg,
    Rule,
    build_rpms,
    make_repo,
    remove_package,
)
from tests.fixtures.registry import push_image, start_registry, write_mirror_config
from tests.fixtures.yumrepo import K8S_RELEASE

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

RETRIES = 3
TIMEOUT = 2  # http_timeout; stalls last longer
STALL = 60.0  # far past http_timeout: a client that never times out hangs the sync
K8S = "/core:/stable:/v1.28/rpm"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class SessionMirror(Mirror):
    """A Mirror whose CLI runs in its own session (killed by pid on timeout), optionally
    with every upstream URL in its .repo files pointing at a FaultProxy."""

    proxy: FaultProxy | None = None

    def write(self) -> None:
        super().write()
        text = self.config.read_text()
        tuned = text.replace(
            "http_timeout: 10\nhttp_retries: 2\n",
            f"http_timeout: {TIMEOUT}\nhttp_retries: {RETRIES}\n",
        )
        assert tuned != text, "conftest's Mirror.write() changed: retune this subclass"
        self.config.write_text(tuned)
        if self.proxy is None:
            return
        for repo in (self.dir / "repos").glob("*.repo"):
            body = repo.read_text()
            assert self.upstream.server.url in body
            repo.write_text(body.replace(self.upstream.server.url, self.proxy.url))

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_cli(["-c", str(self.config), *args], self.dir, timeout)


def run_cli(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mirror", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        text=True,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"mirror {' '.join(args)} still running after {timeout}s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture
def proxied(tmp_path: Path, upstream: Upstream) -> Iterator[SessionMirror]:
    with FaultProxy(upstream.server.url) as proxy:
        m = SessionMirror(tmp_path / "mirror", upstream, free_port(), proxy=proxy)
        m.write()
        yield m
        for proc in m.procs:
            stop_process(proc)


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"mirror exited {proc.returncode}\n{proc.stderr[-3000:]}"


def digests(root: Path) -> dict[str, str]:
    """sha256 of every rpm and repodata file below root (the key is published elsewhere)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
        and (p.suffix == ".rpm" or p.parent.name == "repodata")
        and p.name != "repomd.xml.key"
    }


def assert_mirrors(
    published: Path, upstream: Path, signed: bool = True, first: bool = True
) -> None:
    """Every upstream rpm and repodata file is published byte for byte (repomd.xml.asc only
    where repo_gpgcheck=1); after a first sync no other rpm (later, dropped packages may
    stay a generation longer)."""
    up, pub = digests(upstream), digests(published)
    if not signed:
        up.pop("repodata/repomd.xml.asc")
    assert {k: pub.get(k) for k in up} == up
    if first:
        assert {k for k in pub if k.endswith(".rpm")} == {k for k in up if k.endswith(".rpm")}


DOCS = rf"^{K8S}/repodata/repomd\.xml(\.asc|\.key)?$"  # repomd.xml, its signature, the key
METADATA = rf"^{K8S}/repodata/(?!repomd\.xml)[^/]+$"  # primary, filelists, other
PACKAGES = rf"^{K8S}/.*\.rpm$"
TRANSIENT = {
    "500": Fault("status", 500),
    "502": Fault("status", 502),
    "503": Fault("status", 503),
    "504": Fault("status", 504),
    "429-retry-after": Fault("status", 429, retry_after=1),
    "reset": Fault("reset"),
    "reset-rst": Fault("reset", rst=True),
    "drop-half": Fault("drop"),
    "stall": Fault("stall", seconds=STALL),
    "stall-mid-body": Fault("stall", seconds=STALL, at=0.5),
    "stray-bytes": Fault("overlong", beyond_length=True),
    "truncated": Fault("truncate"),
    "overlong": Fault("overlong"),
    "corrupt": Fault("corrupt"),
}
NEEDS_DECLARED_SIZE = {"truncated", "overlong", "corrupt"}


def break_first_requests(proxy: FaultProxy, kind: str) -> list[tuple[Rule, int]]:
    """Break the first request of every distinct path of every kind of request (each stall
    costs a whole timeout: there, only the first of some kinds); returns each rule with how
    many requests it must have broken."""
    fault = TRANSIENT[kind]
    groups: list[tuple[str, int, int | None]] = [
        (DOCS, 3, None),
        (METADATA, 3, None),
        (PACKAGES, 22, None),
    ]
    if kind in NEEDS_DECLARED_SIZE:
        groups = groups[1:]
    elif kind == "stall":
        groups = [(DOCS, 3, None), (METADATA, 1, 1), (PACKAGES, 1, 1)]
    elif kind == "stall-mid-body":  # same document code path as above: repomd.xml stands for it
        groups = [(DOCS, 1, 1), (METADATA, 1, 1), (PACKAGES, 1, 1)]
    return [
        (proxy.add(fault, pattern, numbers={1}, count="path", times=times), least)
        for pattern, least, times in groups
    ]


@pytest.mark.parametrize("kind", list(TRANSIENT))
def test_transient_fault_on_first_request_is_retried(proxied: SessionMirror, kind: str) -> None:
    proxy = proxied.proxy
    assert proxy is not None
    rules = break_first_requests(proxy, kind)
    assert_ok(proxied.run("sync", "--repo", "kubernetes", timeout=STALL))

    for rule, least in rules:
        assert rule.applied >= least, (rule.path, rule.applied)
    faulted = {e.path for e in proxy.entries() if e.fault}
    for path in faulted if kind != "stray-bytes" else ():  # that reply itself is fine
        tries = [e for e in proxy.entries() if e.path == path and e.method == "GET"]
        assert tries[-1].fault is None and tries[-1].status in (200, 206), tries
    assert_mirrors(proxied.data / "repos" / "kubernetes", proxied.upstream.k8s_repo)
    key = (proxied.data / "keys" / "kubernetes.gpg").read_bytes()
    assert key.strip() == proxied.upstream.key.public_key.read_bytes().strip()
    if kind == "429-retry-after":  # "Retry-After: 1" was honoured, not the 0.5 s backoff
        for path in faulted:
            tries = [e for e in proxy.entries() if e.path == path and e.method == "GET"]
            assert tries[1].at - tries[0].at >= 0.95, (path, tries[1].at - tries[0].at)
    if kind == "drop-half":  # packages resume where they broke off
        for path in {p for p in faulted if p.endswith(".rpm")}:
            retry = [e for e in proxy.entries() if e.path == path and e.fault is None][0]
            assert re.fullmatch(r"bytes=[1-9]\d*-", retry.range or ""), (path, retry)
            assert retry.status == 206


# --- permanent faults ----------------------------------------------------------------------

NEW_PKG = Pkg("kubectl", "1.28.9", K8S_RELEASE)
NEW_RPM = f"{K8S}/x86_64/{NEW_PKG.filename('x86_64')}"


@pytest.fixture(scope="module")
def new_rpm(tmp_path_factory: pytest.TempPathFactory, gpg_key: GpgKey) -> Path:
    """One extra signed rpm, built once: added upstream to make a sync download something."""
    out = tmp_path_factory.mktemp("new-rpm")
    (path,) = build_rpms([NEW_PKG], "x86_64", out, gpg_key, out / "work")
    return path


def change_upstream(up: Upstream, rpm: Path) -> None:
    """kubernetes gains a package; docker-ce-stable/9/x86_64 loses docker-ce-cli."""
    shutil.copy2(rpm, up.k8s_repo / "x86_64" / rpm.name)
    make_repo(up.k8s_repo, up.key)
    remove_package(up.docker_repo(), "docker-ce-cli-*", up.key)


PERMANENT = {  # id: (path regex, fault, reason pattern, GETs of that url expected)
    "repomd-404": (rf"^{K8S}/repodata/repomd\.xml$", Fault("status", 404), r"HTTP 404", 1),
    "key-404": (rf"^{K8S}/repodata/repomd\.xml\.key$", Fault("status", 404), r"HTTP 404", 1),
    "asc-503": (
        rf"^{K8S}/repodata/repomd\.xml\.asc$",
        Fault("status", 503),
        r"HTTP 503",
        RETRIES + 1,
    ),
    "primary-corrupt": (rf"^{K8S}/repodata/[^/]*primary\.xml", Fault("corrupt"), "mismatch", 2),
    "package-404": (f"^{re.escape(NEW_RPM)}$", Fault("status", 404), r"HTTP 404", 1),
    "package-corrupt": (f"^{re.escape(NEW_RPM)}$", Fault("corrupt"), r"mismatch", 2),
    "package-reset": (
        f"^{re.escape(NEW_RPM)}$",
        Fault("reset", rst=True),
        r"retr(y|ies|ied)|attempts",
        RETRIES + 1,
    ),
}


def failure_lines(stderr: str) -> list[str]:
    """The per-failure lines of the summary after "mirror sync: N failed:"."""
    _, sep, tail = stderr.partition(" failed:\n")
    assert sep, f"no failure summary on stderr:\n{stderr[-3000:]}"
    return [line.strip() for line in tail.splitlines() if line.strip()]


@pytest.mark.parametrize("case", list(PERMANENT))
def test_permanent_fault_fails_only_that_repo(
    proxied: SessionMirror, new_rpm: Path, case: str
) -> None:
    pattern, fault, reason, gets = PERMANENT[case]
    proxy, up = proxied.proxy, proxied.upstream
    assert proxy is not None
    assert_ok(proxied.sync())
    k8s = proxied.data / "repos" / "kubernetes"
    before = digests(k8s)
    change_upstream(up, new_rpm)
    rule = proxy.add(fault, pattern, times=None)
    proxy.clear_log()

    proc = proxied.sync()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = failure_lines(proc.stderr)
    (path,) = {e.path for e in proxy.entries(pattern)}
    assert "kubernetes" in line and f"{proxy.url}{path}" in line, line
    assert re.search(reason, line), line
    assert rule.applied == gets and len(proxy.entries(pattern, "GET")) == gets
    assert digests(k8s) == before  # untouched
    docker = proxied.data / "repos/docker-ce-stable/9/x86_64"
    assert_mirrors(docker, up.docker_repo(), signed=False, first=False)
    if case == "package-404":  # what was published before still serves
        proxied.serve()
        for rel, digest in before.items():
            got = requests.get(f"{proxied.base_url}/repos/kubernetes/{rel}", timeout=10)
            assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == digest


# --- the registry API ----------------------------------------------------------------------

IMAGE = "docker.io/library/nginx:1.25"


def test_image_sync_survives_manifest_503_and_reset(tmp_path: Path) -> None:
    reg = start_registry(tmp_path / "upstream")
    try:
        digest = push_image(reg, IMAGE, tmp_path / "work")
        with FaultProxy(f"http://{reg.host}") as proxy:
            manifests = r"^/v2/docker\.io/library/nginx/manifests/"
            proxy.add(Fault("status", 503), manifests, numbers={1})
            proxy.add(Fault("reset", rst=True), manifests, numbers={2})
            config = write_mirror_config(tmp_path / "m", reg, "nginx:1.25\n", [], "all")
            (tmp_path / "m" / "registries.conf").write_text(
                '[[registry]]\nprefix = "docker.io"\n'
                f'location = "{proxy.host}/docker.io"\ninsecure = true\n'
            )
            proc = run_cli(["-c", str(config), "sync", "--only", "images"], tmp_path / "m", 120)
            assert_ok(proc)
            broken = [e for e in proxy.entries(manifests) if e.fault]
            assert [e.fault for e in broken] == ["status 503", "reset rst"]
            status = run_cli(["-c", str(config), "status", "--json"], tmp_path / "m", 60)
            assert digest in status.stdout, status.stdout[-3000:]
    finally:
        reg.stop()
