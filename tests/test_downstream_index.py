"""The pieces of upstream_mirror without running mirrors: A's /downstream.json (its ETag and
304), B's validation of what it receives, the registries.conf B generates, and how A's
definitions join B's own. End to end (two real nodes, dnf, skopeo): tests/test_downstream.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import ssl
import subprocess
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mirror import state
from mirror.config import Config, load_config
from mirror.content.kind import SyncRequest
from mirror.downstream import client, document
from mirror.errors import ConfigError
from mirror.repofile import load_definitions
from mirror.web import create_app

REPOMD = b"<repomd>one</repomd>\n"


def _node_a(tmp_path: Path) -> Config:
    """A published repo, an image and a file, as state and trees on disk."""
    root = tmp_path / "a"
    (root / "repos").mkdir(parents=True)
    (root / "repos" / "k8s.repo").write_text(
        "[kubernetes]\nname=Kubernetes\nbaseurl=http://up.example/k8s/\ngpgcheck=1\n"
        "repo_gpgcheck=1\ngpgkey=http://up.example/k8s/key\n"
    )
    (root / "mirror.yaml").write_text(
        "data_dir: ./data\nbase_url: http://a.example:8080\nregistry: {url: 'a.example:5000'}\n"
    )
    cfg = load_config(root / "mirror.yaml")
    repodata = cfg.repos_root / "kubernetes" / "repodata"
    repodata.mkdir(parents=True)
    (repodata / "repomd.xml").write_bytes(REPOMD)
    image = state.ImageRecord(
        key="docker.io/library/nginx:1.25",
        upstream="docker.io/library/nginx:1.25",
        last_success=state.now_iso(),
        digest="sha256:" + "a" * 64,
        mirrored=["a.example:5000/docker.io/library/nginx:1.25"],
    )
    state.save(cfg.state_root, "images", image)
    from mirror.files.record import FileRecord

    published = cfg.data_dir / "files" / "tools" / "x.tgz"
    published.parent.mkdir(parents=True)
    published.write_bytes(b"x" * 10)
    record = FileRecord(
        key="tools/x.tgz",
        last_success=state.now_iso(),
        sha256=hashlib.sha256(b"x" * 10).hexdigest(),
        size=10,
    )
    state.save(cfg.state_root, "files", record)
    return cfg


def test_index_lists_what_a_serves_with_an_etag_and_304(tmp_path: Path) -> None:
    cfg = _node_a(tmp_path)
    app = create_app(cfg).test_client()
    first = app.get("/downstream.json")
    assert first.status_code == 200 and first.headers["Cache-Control"] == "no-cache"
    etag = first.headers["ETag"]
    doc = json.loads(first.data)
    assert doc["repos"] == {"kubernetes": hashlib.sha256(REPOMD).hexdigest()}
    assert "baseurl=http://a.example:8080/repos/kubernetes/" in doc["repofile"]
    assert doc["images"] == [
        {
            "upstream": "docker.io/library/nginx:1.25",
            "mirrored": ["a.example:5000/docker.io/library/nginx:1.25"],
            "digest": "sha256:" + "a" * 64,
        }
    ]
    assert [row["path"] for row in doc["files"]] == ["tools/x.tgz"]
    assert doc["registry"] == {"url": "a.example:5000", "insecure": True}
    again = app.get("/downstream.json", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    # A newly published repomd.xml is a new document.
    (cfg.repos_root / "kubernetes" / "repodata" / "repomd.xml").write_bytes(b"<repomd>two</repomd>")
    changed = app.get("/downstream.json", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    document.parse(changed.data)  # what A serves, B reads


def _index(**changes: object) -> bytes:
    doc: dict[str, object] = {
        "format": 1,
        "base_url": "http://a.example:8080",
        "repofile": "[kubernetes]\nname=Kubernetes (mirror)\n"
        "baseurl=http://a.example:8080/repos/kubernetes/\ngpgcheck=1\nrepo_gpgcheck=1\n"
        "gpgkey=http://a.example:8080/keys/kubernetes.gpg\n",
        "repos": {"kubernetes": "b" * 64},
        "registry": {"url": "a.example:5000", "insecure": True},
        "images": [
            {
                "upstream": "docker.io/library/nginx:1.25",
                "mirrored": ["a.example:5000/docker.io/library/nginx:1.25"],
                "digest": "sha256:" + "c" * 64,
            }
        ],
        "files": [],
        "charts": [],
    }
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>", "not JSON"),
        (_index(format=2), "format 2, this mirror reads format 1"),
        (_index(repos={"kubernetes": "nope"}), "repos['kubernetes']: not a sha256"),
        (_index(images=[{"upstream": "x", "mirrored": ["y"], "digest": "md5:1"}]), "digest"),
        (
            _index(images=[{"upstream": "x", "mirrored": [], "digest": "sha256:" + "c" * 64}]),
            "no names",
        ),
        (_index(files=[{"path": "a", "sha256": 5}]), "files[].sha256: expected str"),
        (_index(repofile=None), "repofile: expected str"),
    ],
)
def test_bad_index_is_refused_naming_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match="^.*" + message.replace("[", r"\[").replace("]", r"\]")):
        document.parse(body)


def _node_b(tmp_path: Path, extra: str = "") -> Config:
    root = tmp_path / "b"
    root.mkdir(parents=True)
    (root / "a-ca.pem").write_text("not checked until used\n")
    (root / "mirror.yaml").write_text(
        "data_dir: ./data\nbase_url: http://b.example:8080\nupstream_mirror: http://a.example:8080\n"
        "upstream_mirror_ca: ./a-ca.pem\n" + extra
    )
    return load_config(root / "mirror.yaml")


def test_definitions_of_the_upstream_mirror_join_b_own(tmp_path: Path) -> None:
    cfg = _node_b(tmp_path, "repo_filters: {kubernetes: {newest: 1}}\n")
    # No repos_dir and nothing fetched yet: no repos, and the filter cannot be checked yet.
    assert load_definitions(cfg) == []
    client.store(cfg, _index())
    (definition,) = load_definitions(cfg)
    assert definition.id == "kubernetes" and definition.name == "Kubernetes"
    assert definition.baseurls == ("http://a.example:8080/repos/kubernetes/",)
    assert definition.repo_gpgcheck and definition.gpgcheck
    assert definition.sslcacert == tmp_path / "b" / "a-ca.pem"
    # Once A's repos are known, a filter naming none of them is the usual error.
    bad = _node_b(tmp_path / "2", "repo_filters: {nosuch: {newest: 1}}\n")
    client.store(bad, _index())
    with pytest.raises(ConfigError, match="repo_filters.nosuch"):
        load_definitions(bad)


def test_own_repo_wins_over_the_upstream_mirror(tmp_path: Path) -> None:
    cfg = _node_b(tmp_path)
    assert cfg.repos_dir is not None
    cfg.repos_dir.mkdir()
    (cfg.repos_dir / "k.repo").write_text("[kubernetes]\nbaseurl=http://own.example/k/\n")
    client.store(cfg, _index())
    (definition,) = load_definitions(cfg)
    assert definition.baseurls == ("http://own.example/k/",)


def test_bad_repofile_keeps_the_stored_index(tmp_path: Path) -> None:
    cfg = _node_b(tmp_path)
    client.store(cfg, _index())
    before = (client.store_dir(cfg) / "index.json").read_bytes()
    with pytest.raises(client.UpstreamIndexError, match="bad repofile in the index: .*mirrorlist"):
        client.store(cfg, _index(repofile="[x]\nmirrorlist=http://m/\n"))
    assert (client.store_dir(cfg) / "index.json").read_bytes() == before


def test_registries_conf_sends_a_repositories_to_a_registry(tmp_path: Path) -> None:
    own = tmp_path / "own.conf"
    own.write_text(
        '[[registry]]\nprefix = "docker.io/library/nginx"\nlocation = "own.example/nginx"\n'
    )
    cfg = _node_b(tmp_path, f"upstream: {{registries_conf: {own}}}\n")
    images = [
        {
            "upstream": "docker.io/library/nginx:1.25",
            "mirrored": ["a.example:5000/docker.io/library/nginx:1.25"],
            "digest": "sha256:" + "c" * 64,
        },
        {
            "upstream": "quay.io/x/y@sha256:" + "d" * 64,
            "mirrored": ["a.example:5000/quay.io/x/y@sha256:" + "d" * 64],
            "digest": "sha256:" + "d" * 64,
        },
    ]
    client.store(cfg, _index(images=images))
    copy_cfg = client.image_config(cfg)
    assert copy_cfg.upstream.registries_conf == client.store_dir(cfg) / "registries.conf"
    assert copy_cfg.upstream.registries_conf is not None
    entries = tomllib.loads(copy_cfg.upstream.registries_conf.read_text())["registry"]
    assert [(e["prefix"], e["location"], e.get("insecure")) for e in entries] == [
        ("docker.io/library/nginx", "own.example/nginx", None),  # B's own entry wins
        ("quay.io/x/y", "a.example:5000/quay.io/x/y", True),
    ]
    # ... and A's digest is no shortcut for an image B pulls from elsewhere.
    from mirror.images.refs import ImageJob, parse_reference

    request = SyncRequest()
    state.save(
        cfg.state_root,
        client.KIND_NAME,
        state.Record(key="http://a.example:8080", last_success=request.started),
    )
    jobs = [ImageJob(parse_reference(i["upstream"]), ()) for i in images]
    known = client.with_known_digests(cfg, jobs, request)
    assert [job.known_digest for job in known] == [None, "sha256:" + "d" * 64]


def test_a_with_tls_says_its_registry_is_verified(tmp_path: Path) -> None:
    """The embedded registry serving TLS with A's generated CA is no `insecure` one: B's
    registries.conf then makes skopeo verify it (with upstream_mirror_ca)."""
    from mirror.downstream.index import build

    (tmp_path / "mirror.yaml").write_text(
        "data_dir: ./data\nbase_url: https://a.example:8443\nregistry: {url: 'a.example:5000'}\n"
        "tls: {mode: generate}\n"
    )
    cfg = load_config(tmp_path / "mirror.yaml")
    assert build(cfg, [])["registry"] == {"url": "a.example:5000", "insecure": False}
    b = _node_b(tmp_path)
    client.store(b, _index(registry={"url": "a.example:5000", "insecure": False}))
    conf = client.registries_conf(b)
    assert conf is not None
    assert [e["insecure"] for e in tomllib.loads(conf.read_text())["registry"]] == [False]


def test_a_registry_is_verified_with_upstream_mirror_ca_and_only_it(tmp_path: Path) -> None:
    """RegistryAPI and skopeo's --src-cert-dir get upstream_mirror_ca for A's registry host
    only (other upstreams keep the system trust), from a directory holding just that CA."""
    from mirror.http import Fetcher
    from mirror.images.refs import parse_reference
    from mirror.images.sync import open_api, upstream_endpoint

    cfg = _node_b(tmp_path)
    assert client.registry_cas(cfg) == {}  # no index yet
    client.store(cfg, _index())
    cas = client.registry_cas(cfg)
    ca = client.store_dir(cfg) / "registry-ca" / "ca.crt"
    assert cas == {"a.example:5000": ca}
    assert ca.read_bytes() == b"not checked until used\n"
    assert [p.name for p in ca.parent.iterdir()] == ["ca.crt"]
    with Fetcher() as fetcher, Fetcher() as probe:
        api = open_api(client.image_config(cfg), fetcher, probe)
        assert api.upstream_ca(parse_reference("docker.io/library/nginx:1.25")) == ca
        assert api.upstream_ca(parse_reference("quay.io/other/tool:v1")) is None
    assert upstream_endpoint(cfg, ca).cert_dir == ca.parent
    assert upstream_endpoint(cfg).cert_dir is None
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "mirror.yaml").write_text("data_dir: ./data\nupstream_mirror: http://a.example:8080\n")
    no_ca = load_config(plain / "mirror.yaml")
    client.store(no_ca, _index())
    assert client.registry_cas(no_ca) == {}


def test_known_digests_only_from_an_index_fetched_by_this_run(tmp_path: Path) -> None:
    from mirror.images.refs import ImageJob, parse_reference

    cfg = _node_b(tmp_path)
    client.store(cfg, _index())
    job = ImageJob(parse_reference("nginx:1.25"), ("b.example:5000/docker.io/library/nginx:1.25",))
    request = SyncRequest()
    assert client.with_known_digests(cfg, [job], request) == [job]  # not fetched by this run
    record = state.Record(key="http://a.example:8080", last_success=request.started)
    state.save(cfg.state_root, client.KIND_NAME, record)
    (known,) = client.with_known_digests(cfg, [job], request)
    assert known.known_digest == "sha256:" + "c" * 64


def test_upstream_mirror_is_validated_like_base_url(tmp_path: Path) -> None:
    path = tmp_path / "mirror.yaml"
    path.write_text("upstream_mirror: 'ftp://a.example/'\n")
    with pytest.raises(ConfigError, match="key 'upstream_mirror': .*http:// or https://"):
        load_config(path)
    path.write_text("base_url: http://b:8080\nupstream_mirror: http://b:8080/\n")
    with pytest.raises(ConfigError, match="key 'upstream_mirror': is this node's own base_url"):
        load_config(path)
    path.write_text("upstream_mirror: http://a:8080\nupstream_mirror_ca: ./nosuch.pem\n")
    with pytest.raises(ConfigError, match="key 'upstream_mirror_ca': no such file .*nosuch.pem"):
        load_config(path)
    path.write_text("repos_dir: ./nosuch\n")
    with pytest.raises(ConfigError, match="key 'repos_dir'"):
        load_definitions(load_config(path))


def _tls_server(tmp_path: Path, body: bytes) -> tuple[ThreadingHTTPServer, Path]:
    """An https server (a throwaway CA made with openssl, a cert for 127.0.0.1) answering
    every GET with `body`; returns it and the CA file."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
    )
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "srv.pem",
    )

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("ETag", '"e1"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, tmp_path / "ca.pem"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed")
def test_https_upstream_mirror_is_trusted_through_upstream_mirror_ca(tmp_path: Path) -> None:
    from mirror.http import Fetcher
    from mirror.repofile import expand_targets
    from mirror.yum.sync import _options

    server, ca = _tls_server(tmp_path, _index())
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        for name, with_ca in (("without", False), ("with", True)):
            root = tmp_path / name
            root.mkdir()
            ca_line = f"upstream_mirror_ca: {ca}\n" if with_ca else ""
            (root / "mirror.yaml").write_text(
                f"data_dir: ./data\nupstream_mirror: {url}\n{ca_line}"
            )
            cfg = load_config(root / "mirror.yaml")
            with Fetcher(retries=0, timeout=10) as fetcher:
                if not with_ca:
                    with pytest.raises(
                        client.UpstreamIndexError, match="cannot fetch .*(certificate|SSL)"
                    ):
                        client.fetch(cfg, fetcher, None)
                    continue
                body, etag = client.fetch(cfg, fetcher, None)
            assert body == _index() and etag == "e1"
            client.store(cfg, body)
            (target,) = expand_targets(load_definitions(cfg), cfg)
            assert _options(target).ca_file == ca  # repos, keys: the same CA
    finally:
        server.shutdown()
        server.server_close()


def test_hostile_names_in_the_index_are_skipped_not_followed(tmp_path: Path) -> None:
    """Paths and names from A pass B's own checks: a file path with '..' or a chart repo
    name with '/' is skipped (with a warning), an image name that is no reference never
    reaches the generated registries.conf."""
    cfg = _node_b(tmp_path)
    files = [
        {"path": "../../etc/cron.d/x", "sha256": "e" * 64, "size": 1},
        {"path": "ok/tool.tgz", "sha256": "f" * 64, "size": 1},
    ]
    charts = [
        {"repo_name": "../up", "index_sha256": "a" * 64, "charts": [{"name": "w", "version": "1"}]}
    ]
    images = [
        {
            "upstream": "docker.io/x/y:1",
            "mirrored": ['evil"\n[[registry]]'],
            "digest": "sha256:" + "c" * 64,
        }
    ]
    client.store(cfg, _index(files=files, charts=charts, images=images))
    assert [entry.path for entry in client.file_entries(cfg)] == ["ok/tool.tgz"]
    assert client.with_upstream_charts(cfg).charts == ()
    conf = client.registries_conf(cfg)
    assert conf is not None and "evil" not in conf.read_text()
    assert tomllib.loads(conf.read_text()).get("registry") is None
