"""The files kind end to end: real `mirror sync`, a real loopback upstream, real nginx.

Manifests (calico-like tigera-operator.yaml, a DaemonSet with initContainers, a List, a Job as
JSON) and a tool tarball are mirrored, verified, published atomically, served at /files/ by
nginx and by the app alike, and their images found (issue 9, parts 2 and 4).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests

from mirror.config import load_config
from tests.conftest import Mirror, Upstream, free_port, stop_process
from tests.fixtures import GpgKey, UpstreamServer
from tests.fixtures import manifests as mf
from tests.fixtures.endless import EndlessServer

SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "mirror/web/status_schema.json").read_text()
)
TARBALL = "tools/helm-v3.16.2-linux-amd64.tar.gz"
OPERATOR = "calico/tigera-operator.yaml"
DAEMONSET = "calico/calico-node.yml"
JOB = "manifests/job.json"


@dataclass
class Env:
    m: Mirror
    up: UpstreamServer
    src: dict[str, Path]

    @property
    def list_path(self) -> str:  # no `path:` given: host + URL path
        return f"127.0.0.1:{self.up.port}/manifests/flannel-list.yaml"

    @property
    def paths(self) -> list[str]:
        return [OPERATOR, DAEMONSET, self.list_path, JOB, TARBALL]

    def published(self, path: str) -> Path:
        return self.m.data / "files" / path

    def configure(self, operator_sha256: str | None = None, extra: str = "") -> None:
        url = self.up.url
        pin = f", sha256: {operator_sha256}" if operator_sha256 else ""
        tar = f"{url}/helm/helm-v3.16.2-linux-amd64.tar.gz"
        self.m.extra_config = (
            "files:\n"
            f"  - {{url: '{url}/projectcalico/calico/v3.28.2/manifests/tigera-operator.yaml',"
            f" path: {OPERATOR}{pin}}}\n"
            f"  - {{url: '{url}/manifests/calico-node.yml', path: {DAEMONSET}}}\n"
            f"  - {{url: '{url}/manifests/flannel-list.yaml'}}\n"
            f"  - {{url: '{url}/manifests/job.json', path: {JOB}}}\n"
            f"  - {{url: '{tar}', sha256_url: '{tar}.sha256sum', path: '{TARBALL}'}}\n" + extra
        )
        self.m.write()

    def change(self, name: str, text: bytes) -> None:
        """New upstream content, with an mtime the server's If-Modified-Since sees as newer."""
        target = self.src[name]
        target.write_bytes(text)
        later = time.time() + 5
        os.utime(target, (later, later))

    def status(self) -> dict[str, Any]:
        result = self.m.run("status", "--json")
        document: dict[str, Any] = json.loads(result.stdout)
        jsonschema.validate(document, SCHEMA)
        return document


def _write_sums(src: dict[str, Path]) -> None:
    tar = src["tarball"]
    digest = hashlib.sha256(tar.read_bytes()).hexdigest()
    # A release checksum file may list several names; ours must be picked by name.
    other = "0" * 64
    Path(f"{tar}.sha256sum").write_text(f"{other}  helm-other.tar.gz\n{digest}  {tar.name}\n")


@pytest.fixture
def env(tmp_path: Path, gpg_key: GpgKey) -> Iterator[Env]:
    root = tmp_path / "files-upstream"
    src = mf.write_upstream(root)
    _write_sums(src)
    with UpstreamServer(root) as server:
        # Only files are synced here: the .repo files point at a tree that is never fetched.
        m = Mirror(tmp_path / "mirror", Upstream(root, server, gpg_key), free_port())
        e = Env(m, server, src)
        e.configure()
        yield e
        for proc in m.procs:
            stop_process(proc)


def _sync_ok(e: Env) -> str:
    result = e.m.sync("--only", "files")
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def _app(e: Env) -> Any:
    from mirror.web import create_app

    return create_app(load_config(e.m.config)).test_client()


# --- sync -----------------------------------------------------------------------------------


def test_files_mirrored_verified_and_one_conditional_request_when_unchanged(env: Env) -> None:
    e = env
    stderr = _sync_ok(e)
    for path, name in zip(
        e.paths, ["operator", "daemonset", "list", "job", "tarball"], strict=True
    ):
        assert e.published(path).read_bytes() == e.src[name].read_bytes(), path
    # The templated image is a warning naming the file and the YAML path; the sync is fine.
    assert f"files:{e.list_path}: document 1 (List): items[1].spec.template.spec" in stderr
    assert "containers[1].image: unparsable image reference" in stderr
    assert e.up.count("/helm/helm-v3.16.2-linux-amd64.tar.gz.sha256sum", "GET") == 1
    assert not list((e.m.data / "files").rglob(".*")), "no staging file left behind"

    e.up.clear_log()
    _sync_ok(e)
    # Exactly one request per file, a conditional one answered 304; no checksum file fetched.
    assert sorted(e.up.requests) == sorted(
        ("HEAD", p, 304)
        for p in (
            "/projectcalico/calico/v3.28.2/manifests/tigera-operator.yaml",
            "/manifests/calico-node.yml",
            "/manifests/flannel-list.yaml",
            "/manifests/job.json",
            "/helm/helm-v3.16.2-linux-amd64.tar.gz",
        )
    )

    rows = {row["path"]: row for row in e.status()["files"]}
    tar = rows[TARBALL]
    assert tar["sha256"] == hashlib.sha256(e.src["tarball"].read_bytes()).hexdigest()
    assert tar["size"] == e.src["tarball"].stat().st_size
    assert tar["verified_by"] == "sha256_url" and tar["ok"]
    assert rows[OPERATOR]["verified_by"] == "first digest"
    assert rows[OPERATOR]["images"] == ["quay.io/tigera/operator:v1.34.5"]
    assert tar["images"] == []  # not a manifest: never scanned


def test_discovered_images_name_their_sources(env: Env) -> None:
    from mirror.files.discover import discovered_images

    _sync_ok(env)
    found = [(str(ref), source) for ref, source in discovered_images(load_config(env.m.config))]
    assert found == [
        ("quay.io/tigera/operator:v1.34.5", f"files:{OPERATOR}"),
        ("docker.io/calico/cni:v3.28.2", f"files:{DAEMONSET}"),  # initContainers, listed once
        ("docker.io/calico/node:v3.28.2", f"files:{DAEMONSET}"),
        ("docker.io/library/busybox:latest", f"files:{DAEMONSET}"),  # CronJob jobTemplate
        (f"registry.k8s.io/pause@{mf.DIGEST}", f"files:{env.list_path}"),
        ("docker.io/library/busybox:latest", f"files:{env.list_path}"),  # ephemeralContainers
        ("ghcr.io/flannel-io/flannel:v0.25.6", f"files:{env.list_path}"),
        ("registry.k8s.io/e2e-test-images/agnhost:2.52", f"files:{JOB}"),
    ]


def test_sha256_mismatch_fails_that_file_and_keeps_the_previous_copy(env: Env) -> None:
    e = env
    old_operator = e.src["operator"].read_bytes()
    old_tar = e.src["tarball"].read_bytes()
    e.configure(operator_sha256=hashlib.sha256(old_operator).hexdigest())
    _sync_ok(e)

    e.change("operator", old_operator + b"# tampered\n")
    e.change("tarball", old_tar[:-10] + b"0123456789")  # the .sha256sum still lists the old one
    e.change("daemonset", e.src["daemonset"].read_bytes() + b"# new release\n")
    result = e.m.sync("--only", "files")
    assert result.returncode == 1, result.stderr
    failed = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
    assert len(failed) == 2, result.stderr
    assert failed[0].startswith(f"file {OPERATOR}: sha256 mismatch"), failed
    assert failed[1].startswith(f"file {TARBALL}: sha256 mismatch"), failed
    # The previous copies are still what is published and served; the rest synced.
    assert e.published(OPERATOR).read_bytes() == old_operator
    assert e.published(TARBALL).read_bytes() == old_tar
    assert e.published(DAEMONSET).read_bytes().endswith(b"# new release\n")
    client = _app(e)
    assert client.get(f"/files/{OPERATOR}").data == old_operator
    rows = {row["path"]: row for row in e.status()["files"]}
    assert not rows[OPERATOR]["ok"] and "sha256 mismatch" in rows[OPERATOR]["last_error"]
    assert rows[DAEMONSET]["ok"]
    assert not list((e.m.data / "files").rglob(".*")), "a failed download leaves nothing"


def test_a_change_upstream_without_sha256_is_reported(env: Env) -> None:
    e = env
    _sync_ok(e)
    first = hashlib.sha256(e.src["daemonset"].read_bytes()).hexdigest()
    e.change("daemonset", e.src["daemonset"].read_bytes().replace(b"v3.28.2", b"v3.29.0"))
    dry = e.m.sync("--only", "files", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert hashlib.sha256(e.published(DAEMONSET).read_bytes()).hexdigest() == first
    stderr = _sync_ok(e)
    assert f"file {DAEMONSET}: changed upstream: sha256 was {first}" in stderr
    assert e.published(DAEMONSET).read_bytes() == e.src["daemonset"].read_bytes()
    row = next(r for r in e.status()["files"] if r["path"] == DAEMONSET)
    assert row["changed_upstream"] and first in row["changed_upstream"]
    assert "docker.io/calico/node:v3.29.0" in row["images"]  # found again in the new copy
    assert "changed upstream" in e.m.run("status").stdout
    metrics = _app(e).get("/metrics").get_data(as_text=True)
    assert f'mirror_file_changed_upstream{{file="{DAEMONSET}"}} 1.0' in metrics


# --- serving --------------------------------------------------------------------------------


def _same(nginx: requests.Response, app: Any, path: str) -> None:
    assert nginx.status_code == app.status_code, path
    assert nginx.content == app.data, path
    assert nginx.headers["Content-Type"] == app.headers["Content-Type"], path
    assert "Content-Encoding" not in nginx.headers and "Content-Encoding" not in app.headers


def test_files_and_charts_served_alike_by_nginx_and_the_app(env: Env) -> None:
    e = env
    _sync_ok(e)
    charts = e.m.data / "charts" / "stable"
    charts.mkdir(parents=True)
    (charts / "index.yaml").write_text("apiVersion: v1\nentries: {}\n")
    tgz = mf.tool_tarball(charts / "demo-1.0.0.tgz", 20_000)
    e.m.serve()
    client = _app(e)
    base = e.m.base_url
    types = {
        f"/files/{OPERATOR}": "application/yaml",
        f"/files/{DAEMONSET}": "application/yaml",
        f"/files/{JOB}": "application/json",
        f"/files/{TARBALL}": "application/gzip",
        "/charts/stable/index.yaml": "application/yaml",
        "/charts/stable/demo-1.0.0.tgz": "application/gzip",
    }
    gzip = {"Accept-Encoding": "gzip"}
    for path, mime in types.items():
        nginx = requests.get(base + path, headers=gzip, timeout=10)
        _same(nginx, client.get(path, headers=gzip), path)
        assert nginx.headers["Content-Type"] == mime, path
        # index.yaml changes in place: like repomd.xml, no mtime-size ETag from nginx.
        assert ("ETag" in nginx.headers) != path.endswith("index.yaml"), path
        assert nginx.headers["X-Content-Type-Options"] == "nosniff"
    assert requests.get(base + "/charts/stable/demo-1.0.0.tgz", timeout=10).content == tgz
    assert (
        requests.get(base + "/charts/stable/index.yaml", timeout=10).headers["Cache-Control"]
        == "no-cache"
    )

    tar = e.src["tarball"].read_bytes()
    ranged = {"Range": "bytes=1000-1999"}
    nginx = requests.get(f"{base}/files/{TARBALL}", headers=ranged, timeout=10)
    app = client.get(f"/files/{TARBALL}", headers=ranged)
    assert nginx.status_code == app.status_code == 206
    assert nginx.content == app.data == tar[1000:2000]
    etag = requests.head(f"{base}/files/{TARBALL}", timeout=10).headers["ETag"]
    again = requests.get(f"{base}/files/{TARBALL}", headers={"If-None-Match": etag}, timeout=10)
    assert again.status_code == 304

    # Never served: downloads in progress, hidden files, symlinks, paths out of the tree.
    (e.published(OPERATOR).parent / ".tigera-operator.yaml.download.part").write_text("half")
    (e.m.data / "files" / "calico" / "leak.yaml").symlink_to(e.m.config)
    for path in (
        "/files/calico/.tigera-operator.yaml.download.part",
        "/files/calico/leak.yaml",
        "/files/%2e%2e/mirror.yaml",
        "/files/calico/..%2f..%2fstate/files",
        "/charts/stable/.hidden",
    ):
        nginx = requests.get(base + path, timeout=10)
        # nginx answers a refused symlink 403 (disable_symlinks), the app 404.
        assert nginx.status_code in (403, 404) and b"base_url" not in nginx.content, path
        assert client.get(path).status_code == 404, path


# --- hostile input --------------------------------------------------------------------------


def test_a_path_with_dotdot_is_a_config_error(env: Env) -> None:
    env.m.extra_config = (
        f"files:\n  - {{url: '{env.up.url}/manifests/job.json', path: ../job.json}}\n"
    )
    env.m.write()
    result = env.m.sync("--only", "files")
    assert result.returncode == 2, result.stderr
    assert "files.0.path" in result.stderr and "'..'" in result.stderr
    assert not (env.m.data / "files").exists()


def test_a_body_that_never_ends_is_cut_off_at_max_size(env: Env) -> None:
    with EndlessServer() as endless:
        env.m.extra_config = (
            f"files:\n  - {{url: '{endless.url}/forever.bin', path: endless.bin,"
            " max_size: 1048576}\n"
            f"  - {{url: '{env.up.url}/manifests/job.json', path: {JOB}}}\n"
        )
        env.m.write()
        started = time.monotonic()
        result = env.m.sync("--only", "files")
        assert time.monotonic() - started < 20
        assert endless.bytes_sent < 64 << 20
    assert result.returncode == 1, result.stderr
    assert "file endless.bin: larger than 1048576 bytes" in result.stderr
    assert not any((env.m.data / "files").glob("*endless*")), "nothing of it kept"
    assert env.published(JOB).is_file()  # the other file synced


def test_a_symlink_planted_in_the_files_tree_is_refused(env: Env, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (env.m.data / "files").mkdir(parents=True)
    (env.m.data / "files" / "calico").symlink_to(outside)
    result = env.m.sync("--only", "files")
    assert result.returncode == 1
    assert f"file {OPERATOR}: refusing to publish:" in result.stderr
    assert "is a symlink" in result.stderr
    assert list(outside.iterdir()) == []


def test_the_status_page_lists_files_with_size_sha256_and_source(env: Env) -> None:
    _sync_ok(env)
    page = _app(env).get("/").get_data(as_text=True)
    digest = hashlib.sha256(env.src["tarball"].read_bytes()).hexdigest()
    assert '<table id="files">' in page and '<table id="charts">' not in page
    assert f'href="/files/{TARBALL}"' in page and digest in page
    assert f"{env.up.url}/helm/helm-v3.16.2-linux-amd64.tar.gz" in page  # the source
    assert "sha256_url" in page and "1 image found" in page


@pytest.mark.parametrize(
    ("entries", "key", "message"),
    [
        (
            "[{url: 'https://a/x.yaml', path: p.yaml}, {url: 'https://b/y.yaml', path: p.yaml}]",
            "files",
            "used by two entries",
        ),
        ("[{url: 'https://a/x', path: a}, {url: 'https://a/y', path: a/b}]", "files", "directory"),
        (
            "[{url: 'https://a/x', sha256: " + "a" * 64 + ", sha256_url: 'https://a/x.sum'}]",
            "files.0",
            "not both",
        ),
        ("[{url: 'file:///etc/passwd'}]", "files.0.url", "http"),
        ("[{url: 'https://a/x', path: /etc/x}]", "files.0.path", "relative"),
        ("[{url: 'https://a/x', path: 'a\\\\b'}]", "files.0.path", "backslash"),
        ("[{url: 'https://a/x', path: a/.hidden}]", "files.0.path", "not starting with '.'"),
        ("[{url: 'https://a/x', sha256: abc}]", "files.0.sha256", "64 hex"),
        ("[{url: 'https://a/x', shasum: abc}]", "files.0.shasum", "unknown key"),
    ],
)
def test_bad_files_entries_are_config_errors(
    tmp_path: Path, entries: str, key: str, message: str
) -> None:
    from mirror.errors import ConfigError

    config = tmp_path / "mirror.yaml"
    config.write_text(f"files: {entries}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert f"key '{key}'" in str(caught.value) and message in str(caught.value)


def test_defaults_and_sha256sum_formats() -> None:
    from mirror.files.config import DEFAULT_MAX_SIZE, FileEntry
    from mirror.files.sync import parse_sha256sum

    entry = FileEntry(url="https://get.helm.sh/helm-v3.16.2-linux-amd64.tar.gz")
    assert entry.path == "get.helm.sh/helm-v3.16.2-linux-amd64.tar.gz"
    assert not entry.discover and entry.max_size == DEFAULT_MAX_SIZE == 2 << 30
    assert FileEntry(url="https://x/a/b.YML").discover
    digest = "c" * 64
    assert parse_sha256sum(f"{digest}\n", "anything") == digest
    assert parse_sha256sum(f"{'0' * 64}  other\n{digest} *helm.tgz\n", "helm.tgz") == digest
    assert parse_sha256sum(f"SHA256 (helm.tgz) = {digest.upper()}\n", "helm.tgz") == digest
    assert parse_sha256sum(f"{'0' * 64}  other\n", "helm.tgz") is None


def test_etag_validation_and_a_server_that_refuses_head(env: Env) -> None:
    from tests.fixtures.etagserver import ETagServer

    manifest = mf.tigera_operator().encode()
    with ETagServer({"/op.yaml": manifest}) as up:
        env.m.extra_config = f"files:\n  - {{url: '{up.url}/op.yaml', path: gh/op.yaml}}\n"
        env.m.write()
        _sync_ok(env)
        assert [r[:3] for r in up.requests] == [("HEAD", "/op.yaml", 200), ("GET", "/op.yaml", 200)]
        up.requests.clear()
        _sync_ok(env)
        # The ETag recorded from the HEAD comes back as If-None-Match: one request, 304.
        assert len(up.requests) == 1 and up.requests[0][:3] == ("HEAD", "/op.yaml", 304)
        assert up.requests[0][3] is not None

        # HEAD refused (405): the file is still mirrored, by a plain GET every time.
        up.head_status = 405
        up.files["/op.yaml"] = manifest + b"# v2\n"
        up.requests.clear()
        _sync_ok(env)
        assert [r[:3] for r in up.requests] == [("HEAD", "/op.yaml", 405), ("GET", "/op.yaml", 200)]
    assert env.published("gh/op.yaml").read_bytes() == manifest + b"# v2\n"


def test_the_status_page_lists_charts_versions_and_digests(env: Env) -> None:
    from mirror import state
    from mirror.content import record_type

    digest = "d" * 64
    chart_record: Any = record_type("charts")  # the charts kind's own record class
    record = chart_record(
        key="stable",
        upstream="https://kubernetes.github.io/ingress-nginx",
        last_attempt=state.now_iso(),
        last_success=state.now_iso(),
    )
    record.charts = [{"name": "ingress-nginx", "version": "4.11.3", "digest": digest}]
    state.save(env.m.data / "state", "charts", record)
    page = _app(env).get("/").get_data(as_text=True)
    assert '<table id="charts">' in page and '<tr class="chart">' in page
    assert "ingress-nginx" in page and "4.11.3" in page and digest in page
    assert 'href="/charts/stable/index.yaml"' in page
