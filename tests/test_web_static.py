"""Static serving: render_static, `mirror serve` with nginx in front and the gunicorn fallback.

Real parts only: a synced fixture mirror, `mirror serve` (real nginx, real gunicorn), real HTTP.
Both front ends answer the same bytes and types; nginx serves the rendered files itself and
sends the rest (and anything with a query string) to the app.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from mirror.config import load_config
from mirror.web import create_app
from mirror.web.nginx import find_nginx
from mirror.web.static import render_static, static_root
from tests.conftest import Mirror, Upstream, free_port, stop_process
from tests.fixtures import GpgKey, UpstreamServer

FRONTENDS = ["nginx", "gunicorn"]
K8S_VERSION = "v1.28.4"
RENDERED = [
    "/repofiles/mirror.repo",
    "/repofiles/kubernetes.repo",
    "/repofiles/docker-ce-stable.repo",
    "/containerd/setup.sh",
    "/containerd/certs.d/registry.k8s.io/hosts.toml",
    "/crio/registries.conf",
    "/crio/crio.conf",
    "/bootstrap.sh",
    "/images.txt",
]


def start_serve(m: Mirror, frontend: str) -> None:
    """`mirror serve` with the front end chosen the documented way (MIRROR_FRONTEND)."""
    if frontend == "nginx" and find_nginx() is None:
        pytest.skip("nginx not installed (Debian package: nginx-light)")
    old = os.environ.get("MIRROR_FRONTEND")
    os.environ["MIRROR_FRONTEND"] = frontend
    try:
        m.serve()
    finally:
        if old is None:
            os.environ.pop("MIRROR_FRONTEND", None)
        else:
            os.environ["MIRROR_FRONTEND"] = old


@pytest.fixture(scope="module")
def synced(
    tmp_path_factory: pytest.TempPathFactory, pristine_upstream: Path, gpg_key: GpgKey
) -> Iterator[Mirror]:
    """One synced mirror per module (serving it is up to each fixture or test)."""
    root = tmp_path_factory.mktemp("web")
    shutil.copytree(pristine_upstream, root / "upstream")
    with UpstreamServer(root / "upstream") as server:
        m = Mirror(
            root / "mirror",
            Upstream(root / "upstream", server, gpg_key),
            free_port(),
            extra_config=f"kubernetes_versions: [{K8S_VERSION}]\n",
        )
        m.write()
        proc = m.sync("--only", "repos")
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield m
        for p in m.procs:
            stop_process(p)


def on_port(synced: Mirror, port: int | None = None) -> Mirror:
    """The synced mirror, to be served on another port. Its config (base_url included) stays
    as synced wrote it, so every server renders the same files into the shared data dir."""
    return Mirror(synced.dir, synced.upstream, port or free_port())


@pytest.fixture(scope="module", params=FRONTENDS)
def served(request: pytest.FixtureRequest, synced: Mirror) -> Iterator[tuple[str, Mirror]]:
    m = on_port(synced)
    start_serve(m, request.param)
    yield request.param, m
    for p in m.procs:
        stop_process(p)


# --- render_static -----------------------------------------------------------------------------


def test_render_static_matches_the_app_and_only_rewrites_changes(synced: Mirror) -> None:
    cfg = load_config(synced.config)
    render_static(cfg)
    www = static_root(cfg)
    client = create_app(cfg).test_client()
    for url in RENDERED:
        path = www / url.lstrip("/")
        resp = client.get(url)
        assert resp.status_code == 200, url
        assert path.read_bytes() == resp.data, url
        assert path.stat().st_mode & 0o777 == 0o644
    before = {url: (www / url.lstrip("/")).stat().st_mtime_ns for url in RENDERED}
    stale = www / "repofiles" / "gone.repo"
    stale.write_text("[gone]\n")
    leftover = www / "crio" / ".crio.conf.tmp-99999999"  # its writer is gone
    leftover.write_text("half")
    time.sleep(0.01)
    render_static(cfg)
    after = {url: (www / url.lstrip("/")).stat().st_mtime_ns for url in RENDERED}
    assert after == before  # unchanged content: not rewritten, ETags stay
    assert not stale.exists() and not leftover.exists()
    # A same-size change within the same second still gets a new (mtime-size) validator.
    images = www / "images.txt"
    good = images.read_bytes()
    images.write_bytes(b"x" * len(good))
    touched = int(images.stat().st_mtime)
    render_static(cfg)
    assert images.read_bytes() == good and int(images.stat().st_mtime) > touched


def test_render_static_leaves_out_what_needs_a_version(tmp_path: Path, synced: Mirror) -> None:
    config = tmp_path / "mirror.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\nrepos_dir: {synced.dir / 'repos'}\nimages_file: null\n"
    )
    cfg = load_config(config)
    render_static(cfg)
    www = static_root(cfg)
    assert (www / "repofiles" / "mirror.repo").is_file()
    assert not (www / "containerd" / "setup.sh").exists()  # the app answers it (400)
    assert create_app(cfg).test_client().get("/containerd/setup.sh").status_code == 400


# --- served --------------------------------------------------------------------------------------


def test_rendered_files_from_disk_query_strings_to_the_app(served: tuple[str, Mirror]) -> None:
    frontend, m = served
    client = create_app(load_config(m.config)).test_client()
    for url in RENDERED:
        resp = requests.get(m.base_url + url, timeout=10)
        app = client.get(url)
        assert resp.status_code == 200 and resp.content == app.data, url
        assert resp.headers["Content-Type"] == app.headers["Content-Type"], url
        if frontend == "nginx":
            # From disk: nginx's ETag; the app sends none for rendered documents.
            assert "ETag" in resp.headers and resp.headers["Server"] == "nginx", url
    url = "/containerd/setup.sh?kubernetes_version=v1.28.0"
    resp = requests.get(m.base_url + url, timeout=10)
    assert resp.status_code == 200 and "ETag" not in resp.headers  # rendered by the app
    assert resp.content == client.get(url).data
    assert b"pause:3.9" in resp.content or b"pause:" in resp.content
    kubeadm = requests.get(f"{m.base_url}/kubeadm/config.yaml?pod_subnet=10.244.0.0/16", timeout=10)
    assert kubeadm.status_code == 200 and "podSubnet: 10.244.0.0/16" in kubeadm.text
    bad = requests.get(f"{m.base_url}/kubeadm/config.yaml?pod_subnet=nope", timeout=10)
    assert bad.status_code == 400
    assert requests.get(f"{m.base_url}/repofiles/nope.repo", timeout=10).status_code == 404
    metrics = requests.get(f"{m.base_url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "mirror_http_requests" in metrics.text
    assert metrics.headers["Content-Type"].count("charset") == 1
    assert requests.get(f"{m.base_url}/api/status", timeout=10).json()["repos"]


def test_repo_tree_ranges_etags_listing(served: tuple[str, Mirror]) -> None:
    frontend, m = served
    k8s = m.data / "repos" / "kubernetes"
    rpm = next(k8s.rglob("*.rpm"))
    rel = rpm.relative_to(m.data / "repos").as_posix()
    url = f"{m.base_url}/repos/{rel}"
    body = rpm.read_bytes()
    full = requests.get(url, timeout=10)
    assert full.status_code == 200 and full.content == body
    assert full.headers["Content-Type"] == "application/x-rpm"
    etag = full.headers["ETag"]
    assert requests.get(url, headers={"If-None-Match": etag}, timeout=10).status_code == 304
    part = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=10)
    assert part.status_code == 206 and part.content == body[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(body)}"
    repomd = requests.get(f"{m.base_url}/repos/kubernetes/repodata/repomd.xml", timeout=10)
    assert repomd.status_code == 200
    assert repomd.content == (k8s / "repodata" / "repomd.xml").read_bytes()
    assert "no-cache" in repomd.headers["Cache-Control"]
    hidden = k8s / "repodata" / ".repomd.xml.tmp-99"
    hidden.write_text("half written")
    part_file = rpm.with_name(rpm.name + ".part")
    part_file.write_bytes(b"partial")
    try:
        for name in (hidden, part_file):
            rel_name = name.relative_to(m.data / "repos").as_posix()
            got = requests.get(f"{m.base_url}/repos/{rel_name}", timeout=10)
            assert got.status_code == 404, (frontend, rel_name)
    finally:
        hidden.unlink()
        part_file.unlink()
    listing = requests.get(f"{m.base_url}/repos/kubernetes/repodata/", timeout=10)
    assert listing.status_code == 200 and "repomd.xml" in listing.text
    assert requests.get(f"{m.base_url}/repos/kubernetes", timeout=10).status_code == 200
    key = requests.get(f"{m.base_url}/keys/kubernetes.gpg", timeout=10)
    assert key.status_code == 200 and b"PGP PUBLIC KEY" in key.content


def test_repomd_replaced_by_rename_is_never_mixed(served: tuple[str, Mirror]) -> None:
    """The atomic-publish guarantee through the front end: a reader gets the old or the new
    repomd.xml, complete, and the new one as soon as the rename happened (no fd cache)."""
    frontend, m = served
    target = m.data / "repos" / "kubernetes" / "repodata" / "repomd.xml"
    original = target.read_bytes()
    versions = [original, original + b"<!-- a longer generation -->\n" * 40, original[:200]]
    digests = {hashlib.sha256(v).hexdigest() for v in versions}
    url = f"{m.base_url}/repos/kubernetes/repodata/repomd.xml"
    bad: list[str] = []
    done = threading.Event()

    def reader() -> None:
        with requests.Session() as s:
            while not done.is_set():
                r = s.get(url, timeout=10)
                if r.status_code != 200 or hashlib.sha256(r.content).hexdigest() not in digests:
                    bad.append(f"{r.status_code} {len(r.content)} bytes")

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        for i in range(150):
            tmp = target.with_name(f".repomd.xml.tmp-{i}")
            tmp.write_bytes(versions[i % len(versions)])
            os.replace(tmp, target)
            time.sleep(0.005)
        tmp = target.with_name(".repomd.xml.tmp-last")
        tmp.write_bytes(versions[1])
        os.replace(tmp, target)
        assert requests.get(url, timeout=10).content == versions[1]
    finally:
        done.set()
        for t in threads:
            t.join(timeout=20)
        tmp = target.with_name(".repomd.xml.tmp-restore")
        tmp.write_bytes(original)
        os.replace(tmp, target)
    assert not bad, bad[:5]


# --- one command starts and stops everything ------------------------------------------------------


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields: state ppid pgrp session
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_server_that_cannot_start_is_one_error(
    synced: Mirror, frontend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if frontend == "nginx" and find_nginx() is None:
        pytest.skip("nginx not installed")
    monkeypatch.setenv("MIRROR_FRONTEND", frontend)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        m = on_port(synced, busy.getsockname()[1])
        # capture_output: a child left running would hold the pipes and time this out.
        proc = m.run("serve", "--bind", f"127.0.0.1:{m.port}", "--workers", "1", timeout=60)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert f"mirror: error: {frontend} exited with status" in proc.stderr
    assert "Address already in use" in proc.stdout + proc.stderr


def _runtime_dirs_of(pid: int, base: Path) -> list[Path]:
    found = []
    for d in base.glob("mirror-serve-*"):
        try:
            if (d / "serve.pid").read_text().strip() == str(pid):
                found.append(d)
        except OSError:
            pass
    return found


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_one_signal_stops_everything(
    synced: Mirror, frontend: str, how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A runtime base of this test's own: any other `mirror serve` starting on the machine
    # meanwhile (another test, another run) removes stale dirs of dead servers in $TMPDIR,
    # the very dirs the SIGKILL case checks are left behind.
    base = tmp_path / "run"
    base.mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(base))
    m = on_port(synced)
    start_serve(m, frontend)
    proc = m.procs[-1]
    try:
        _stop_and_check(m, proc, frontend, how, base)
    finally:
        stop_process(proc)  # a failed check must not leave a server running
        for pid in _session_pids(proc.pid):
            os.kill(pid, signal.SIGKILL)


def _stop_and_check(
    m: Mirror, proc: subprocess.Popen[str], frontend: str, how: str, base: Path
) -> None:
    children = [p for p in _session_pids(proc.pid) if p != proc.pid]
    assert len(children) >= (5 if frontend == "nginx" else 3), children  # masters + workers
    runtime = _runtime_dirs_of(proc.pid, base)
    os.kill(proc.pid, getattr(signal, how))  # the main process only, not its group
    proc.wait(timeout=20)
    deadline = time.monotonic() + 15
    while _session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _session_pids(proc.pid) == [], "processes outlived mirror serve"
    assert runtime
    if how == "SIGTERM":
        assert proc.returncode == 0, m.logs[proc.pid].read_text()[-2000:]
        assert not any(d.exists() for d in runtime)  # runtime dir removed
    else:  # no chance to clean up: the next `mirror serve` removes what it left
        assert all(d.exists() for d in runtime)
        again = on_port(m)
        start_serve(again, frontend)
        try:
            assert not any(d.exists() for d in runtime)
        finally:
            stop_process(again.procs[-1])
