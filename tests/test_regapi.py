"""Images compared over the registry API, against REAL registries on loopback: digests are read
with manifest HEAD requests (one per name on each side), skopeo runs only to copy.

skopeo runs are counted with a wrapper script on PATH that logs its arguments and execs the
real skopeo; registry requests are counted in each registry's access log. Auth is tested with
a distribution registry in `auth: token` mode behind a loopback token server signing JWTs with
a throwaway RSA key (openssl), and with an htpasswd registry as our own registry.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mirror import state
from mirror.config import Config, load_config
from mirror.errors import EnvironmentProblem
from mirror.http import Fetcher
from mirror.images import registries_conf
from mirror.images.manifest import ACCEPT, digest_of
from mirror.images.refs import ImageJob, parse_reference, plan_jobs
from mirror.images.regapi import RegistryAPI
from mirror.images.regauth import AuthFile, Credentials, parse_challenges
from mirror.images.registry import ensure_registry
from mirror.images.sync import sync_images
from tests.fixtures.registry import (
    RegistryProcess,
    blob_gets,
    manifest_requests,
    move_tag,
    push_images,
    read_requests,
    start_registry,
    write_mirror_config,
)
from tests.fixtures.tokenserver import NoDigestRegistry, TokenServer, redirector, serve

pytestmark = pytest.mark.skipif(
    not (shutil.which("skopeo") and shutil.which("docker-registry") and shutil.which("openssl")),
    reason="skopeo, docker-registry and openssl are needed",
)
IMAGES = [
    "docker.io/library/nginx:1.25",
    "quay.io/coreos/etcd:v3.5.0",
    "registry.k8s.io/coredns/coredns:v1.10.1",  # two names in our registry (the kubeadm alias)
]
IMAGES_TXT = "".join(f"{ref}\n" for ref in IMAGES)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("regapi-pristine")
    reg = start_registry(root / "registry")
    try:
        digests = push_images(reg, IMAGES, root / "work")
    finally:
        reg.stop()
    return reg.storage, digests


def serve_copy(
    tmp: Path, pristine: tuple[Path, dict[str, str]], auth: Mapping[str, object] | None = None
) -> RegistryProcess:
    shutil.copytree(pristine[0], tmp / "storage")
    return start_registry(tmp, auth=auth)


@pytest.fixture
def upstream(tmp_path: Path, pristine: tuple[Path, dict[str, str]]) -> Iterator[RegistryProcess]:
    reg = serve_copy(tmp_path / "upstream", pristine)
    yield reg
    reg.stop()


_VERBS = {"copy", "inspect", "delete", "sync", "list-tags", "login"}


@dataclass
class SkopeoRuns:
    log: Path

    def verbs(self) -> list[str]:
        """The skopeo subcommand of every run so far ("copy", "inspect", ...)."""
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        return [next((w for w in ln.split() if w in _VERBS), ln) for ln in lines]

    def reset(self) -> None:
        self.log.unlink(missing_ok=True)


@pytest.fixture
def skopeo_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SkopeoRuns:
    """The real skopeo behind a logging wrapper first on PATH."""
    real = shutil.which("skopeo")
    assert real
    wrapper_dir = tmp_path / "skopeo-wrapper"
    wrapper_dir.mkdir()
    log = tmp_path / "skopeo-runs.log"
    wrapper = wrapper_dir / "skopeo"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper_dir}:{Path(real).parent}")
    return SkopeoRuns(log)


def make_cfg(
    tmp: Path, upstream: RegistryProcess, platforms: Any = "all", **registry: Any
) -> Config:
    return load_config(write_mirror_config(tmp, upstream, IMAGES_TXT, [], platforms, **registry))


def local_log(cfg: Config) -> Path:
    return cfg.data_dir / "registry" / "registry.log"


def names(jobs: list[ImageJob]) -> list[str]:
    return [n for j in jobs for n in j.destinations]


def ok(results: list[Any]) -> bool:
    errors = [r.error for r in results if r.error]
    assert errors == []
    return True


def test_noop_sync_is_one_head_per_name_and_no_skopeo(
    tmp_path: Path, upstream: RegistryProcess, skopeo_runs: SkopeoRuns
) -> None:
    cfg = make_cfg(tmp_path / "m", upstream)
    jobs = plan_jobs(cfg.registry.url, [], [parse_reference(r) for r in IMAGES])
    assert len(names(jobs)) == len(IMAGES) + 1
    with ensure_registry(cfg):
        mark = upstream.mark()
        assert ok(sync_images(cfg, jobs))
        # Cold: one GET upstream per image (the document), one copy per name.
        by_tag = [r for r in manifest_requests(upstream.requests(mark)) if "sha256:" not in r.path]
        assert [r.method for r in by_tag] == ["GET"] * len(jobs)  # skopeo reads by digest
        assert skopeo_runs.verbs() == ["copy"] * len(names(jobs))

        skopeo_runs.reset()
        mark, local_mark = upstream.mark(), local_log(cfg).stat().st_size
        results = sync_images(cfg, jobs)
        assert ok(results) and not any(r.changed for r in results)
        assert skopeo_runs.verbs() == []
        up, local = upstream.requests(mark), read_requests(local_log(cfg), local_mark)
        assert blob_gets(up) == [] and blob_gets(local) == []
        assert [(r.method, r.status) for r in manifest_requests(up)] == [("HEAD", 200)] * len(jobs)
        assert [(r.method, r.status) for r in manifest_requests(local)] == [("HEAD", 200)] * len(
            names(jobs)
        )
        # Beyond the manifests, only the once-per-run ping of each registry.
        assert {r.path for r in up if "/manifests/" not in r.path} <= {"/v2/"}
        assert [r.platforms for r in results] == [("linux/amd64", "linux/arm64")] * len(jobs)

        # State lost: the upstream documents are read again (GET), still nothing copied.
        shutil.rmtree(cfg.state_root / "images")
        mark = upstream.mark()
        assert ok(sync_images(cfg, jobs))
        assert skopeo_runs.verbs() == []
        assert [r.method for r in manifest_requests(upstream.requests(mark))] == ["GET"] * len(jobs)

        # A name deleted from our registry is copied again, the rest untouched.
        alias = jobs[2].destinations[1]
        subprocess.run(
            ["skopeo", "delete", "--tls-verify=false", f"docker://{alias}"],
            check=True,
            capture_output=True,
        )
        skopeo_runs.reset()
        results = sync_images(cfg, jobs)
        assert ok(results) and [r.changed for r in results] == [False, False, True]
        assert skopeo_runs.verbs() == ["copy"]


def test_moved_tag_single_platform_and_pinned(
    tmp_path: Path,
    upstream: RegistryProcess,
    skopeo_runs: SkopeoRuns,
    pristine: tuple[Path, dict[str, str]],
) -> None:
    cfg = make_cfg(tmp_path / "m", upstream, platforms=["linux/arm64"])
    nginx_index = pristine[1]["docker.io/library/nginx:1.25"]
    refs = [parse_reference(r) for r in IMAGES] + [parse_reference(f"nginx@{nginx_index}")]
    jobs = plan_jobs(cfg.registry.url, [], refs)
    with ensure_registry(cfg):
        first = sync_images(cfg, jobs)
        assert ok(first)
        assert first[-1].digest == nginx_index  # pinned: the whole index
        assert all(r.platforms == ("linux/arm64",) for r in first[:-1])
        record = state.load(cfg.state_root, "images", IMAGES[0])
        assert record.fingerprint and record.fingerprint.startswith("linux/arm64 sha256:")

        # No-op: HEAD only upstream, also for the single platform (no index read), no skopeo.
        skopeo_runs.reset()
        mark = upstream.mark()
        again = sync_images(cfg, jobs)
        assert ok(again) and not any(r.changed for r in again)
        assert [r.digest for r in again] == [r.digest for r in first]
        assert [r.platforms for r in again] == [r.platforms for r in first]
        assert skopeo_runs.verbs() == []
        up = manifest_requests(upstream.requests(mark))
        assert [r.method for r in up] == ["HEAD"] * len(jobs)
        assert any(r.path.endswith(f"/manifests/{nginx_index}") for r in up)

        # The tag moves upstream: HEAD names a new digest, its index is read, one copy.
        moved = "quay.io/coreos/etcd:v3.5.0"
        move_tag(upstream, moved, tmp_path / "work", seed="etcd rebuilt")
        skopeo_runs.reset()
        mark = upstream.mark()
        results = {r.upstream: r for r in sync_images(cfg, jobs)}
        assert ok(list(results.values()))
        assert [k for k, r in results.items() if r.changed] == [moved]
        assert skopeo_runs.verbs() == ["copy"]
        etcd = [r for r in manifest_requests(upstream.requests(mark)) if "/coreos/etcd/" in r.path]
        assert [r.method for r in etcd[:2]] == ["HEAD", "GET"]
        index = json.loads(read_manifest(upstream.host, "quay.io/coreos/etcd", "v3.5.0"))
        arm = next(
            m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == "arm64"
        )
        assert results[moved].digest == arm
        assert state.load(cfg.state_root, "images", moved).digest == arm


def read_manifest(host: str, repo: str, ref: str) -> bytes:
    with Fetcher(retries=0) as fetcher:
        url = f"http://{host}/v2/{repo}/manifests/{ref}"
        reply = fetcher.request("GET", url, headers={"Accept": ACCEPT})
    assert reply.status == 200, (url, reply.status)
    return reply.body


# ------------------------------------------------------------------------------------------
# Auth: a token registry upstream, an htpasswd registry as ours
# ------------------------------------------------------------------------------------------


@pytest.fixture
def token_upstream(
    tmp_path: Path, pristine: tuple[Path, dict[str, str]]
) -> Iterator[tuple[RegistryProcess, TokenServer]]:
    tokens = TokenServer(tmp_path)
    tokens.start()
    reg = serve_copy(tmp_path / "token-upstream", pristine, auth=tokens.auth_config())
    try:
        yield reg, tokens
    finally:
        reg.stop()
        tokens.stop()


def test_bearer_token_upstream(
    tmp_path: Path, token_upstream: tuple[RegistryProcess, TokenServer], skopeo_runs: SkopeoRuns
) -> None:
    upstream, tokens = token_upstream
    cfg = make_cfg(tmp_path / "m", upstream)
    jobs = plan_jobs(cfg.registry.url, [], [parse_reference(r) for r in IMAGES])
    with ensure_registry(cfg):
        assert ok(sync_images(cfg, jobs))  # skopeo gets its own tokens for the copies
        ours = [q for q in tokens.requests if q.get("service") == [tokens.service]]
        assert ours
        skopeo_runs.reset()
        tokens.requests.clear()
        mark = upstream.mark()
        results = sync_images(cfg, jobs)
        assert ok(results) and not any(r.changed for r in results)
        assert skopeo_runs.verbs() == []
        reqs = upstream.requests(mark)
        # The ping was challenged; every manifest HEAD came with its token: one each, no 401.
        assert [(r.method, r.status) for r in manifest_requests(reqs)] == [("HEAD", 200)] * len(
            jobs
        )
        assert [(r.path, r.status) for r in reqs if "/manifests/" not in r.path] == [("/v2/", 401)]
        # One anonymous token per repository, scoped to pull it.
        scopes = sorted(s for q in tokens.requests for s in q["scope"])
        assert scopes == sorted(f"repository:{r.rsplit(':', 1)[0]}:pull" for r in IMAGES)
        assert all(q["authorization"] == [""] for q in tokens.requests)


def write_authfile(path: Path, host: str, user: str, password: str) -> Path:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return path


def test_basic_auth_registry_from_authfile(
    tmp_path: Path, upstream: RegistryProcess, skopeo_runs: SkopeoRuns
) -> None:
    entry = subprocess.run(
        ["htpasswd", "-Bbn", "mirror", "s3cret"], check=True, capture_output=True, text=True
    ).stdout
    (tmp_path / "htpasswd").write_text(entry)
    auth = {"htpasswd": {"realm": "fixture", "path": str(tmp_path / "htpasswd")}}
    ours = start_registry(tmp_path / "ours", auth=auth)
    try:
        authfile = write_authfile(tmp_path / "auth.json", ours.host, "mirror", "s3cret")
        cfg = make_cfg(
            tmp_path / "m", upstream, url=ours.host, embedded=False, authfile=str(authfile)
        )
        jobs = plan_jobs(cfg.registry.url, [], [parse_reference(r) for r in IMAGES])
        with ensure_registry(cfg):
            assert ok(sync_images(cfg, jobs))
            skopeo_runs.reset()
            mark = ours.mark()
            results = sync_images(cfg, jobs)
            assert ok(results) and not any(r.changed for r in results)
            assert skopeo_runs.verbs() == []
            reqs = ours.requests(mark)
            assert [(r.method, r.status) for r in manifest_requests(reqs)] == [("HEAD", 200)] * len(
                names(jobs)
            )
            # A wrong password: one line naming the registry and the reason, from the check
            # before any image (mirror.images.regcheck), not one per image.
            write_authfile(authfile, ours.host, "mirror", "wrong")
            mark = ours.mark()
            with pytest.raises(EnvironmentProblem) as err:
                sync_images(cfg, jobs)
            line = str(err.value)
            assert line.startswith(f"registry {ours.host}: credentials of user 'mirror' from ")
            assert "HTTP 401" in line and "\n" not in line
            assert manifest_requests(ours.requests(mark)) == []
    finally:
        ours.stop()


# ------------------------------------------------------------------------------------------
# registries.conf, a registry that names no digest on HEAD, parsing
# ------------------------------------------------------------------------------------------


def test_registries_conf_mirror_tried_first_then_primary(
    tmp_path: Path, upstream: RegistryProcess, skopeo_runs: SkopeoRuns
) -> None:
    """A mirror without the image: asked first, then the primary location (like skopeo)."""
    empty = start_registry(tmp_path / "empty-mirror")
    try:
        cfg = make_cfg(tmp_path / "m", upstream)
        assert cfg.upstream.registries_conf
        cfg.upstream.registries_conf.write_text(
            '[[registry]]\nprefix = "docker.io"\n'
            f'location = "{upstream.host}/docker.io"\ninsecure = true\n'
            f'[[registry.mirror]]\nlocation = "{empty.host}/hub"\ninsecure = true\n'
            # the longest prefix wins over this one
            '[[registry]]\nprefix = "docker.io/library"\n'
            f'location = "{upstream.host}/docker.io/library"\ninsecure = true\n'
            '[[registry]]\nprefix = "quay.io"\n'
            f'location = "{upstream.host}/quay.io"\ninsecure = true\n'
            '[[registry]]\nprefix = "registry.k8s.io"\n'
            f'location = "{upstream.host}/registry.k8s.io"\ninsecure = true\n'
            '[[registry]]\nprefix = "*.example.com"\nblocked = true\n'
        )
        conf = registries_conf.load(cfg.upstream.registries_conf)
        [nginx] = conf.locations("docker.io/library/nginx", by_digest=False)
        assert (nginx.host, nginx.path, nginx.insecure) == (
            upstream.host,
            "docker.io/library/nginx",
            True,
        )
        calico = conf.locations("docker.io/calico/node", by_digest=False)
        assert [(loc.host, loc.path) for loc in calico] == [
            (empty.host, "hub/calico/node"),
            (upstream.host, "docker.io/calico/node"),
        ]
        with pytest.raises(registries_conf.Blocked):
            conf.locations("a.example.com/x", by_digest=False)
        [plain] = registries_conf.RegistriesConf().locations("docker.io/x/y", by_digest=True)
        assert plain.endpoint == "registry-1.docker.io" and not plain.insecure

        push_images(upstream, ["docker.io/calico/node:v3.26.1"], tmp_path / "work")
        skopeo_runs.reset()
        (cfg.images_file or tmp_path).write_text("calico/node:v3.26.1\n")
        jobs = plan_jobs(cfg.registry.url, [], [parse_reference("calico/node:v3.26.1")])
        with ensure_registry(cfg):
            mark, empty_mark = upstream.mark(), empty.mark()
            assert ok(sync_images(cfg, jobs))
            asked = manifest_requests(empty.requests(empty_mark))
            assert asked and asked[0].path == "/v2/hub/calico/node/manifests/v3.26.1"
            assert asked[0].status == 404
            assert manifest_requests(upstream.requests(mark))
            assert skopeo_runs.verbs() == ["copy"]
    finally:
        empty.stop()


def test_head_without_digest_falls_back_to_get(tmp_path: Path) -> None:
    server = serve(NoDigestRegistry)
    host = f"127.0.0.1:{server.server_address[1]}"
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nprefix = "quay.io"\nlocation = "{host}"\ninsecure = true\n')
    try:
        with Fetcher(retries=0) as fetcher, Fetcher(retries=0) as probe:
            api = RegistryAPI(
                fetcher,
                probe,
                registries_conf=registries_conf.load(conf),
                upstream_auth=AuthFile(None),
                local_url="127.0.0.1:1",
                local_tls_verify=False,
                local_auth=AuthFile(None),
            )
            got = api.upstream(parse_reference("quay.io/org/app:1"), "1")
        assert got.digest == digest_of(NoDigestRegistry.body)
        assert NoDigestRegistry.seen[-2:] == [
            "HEAD /v2/org/app/manifests/1",
            "GET /v2/org/app/manifests/1",
        ]
    finally:
        server.shutdown()
        server.server_close()


def test_challenge_and_authfile_parsing(tmp_path: Path) -> None:
    [bearer] = parse_challenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull"'
    )
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/nginx:pull",
    }
    both = parse_challenges('Basic realm="r \\"x\\"", Bearer realm="https://t/token"')
    assert [(c.scheme, c.params["realm"]) for c in both] == [
        ("basic", 'r "x"'),
        ("bearer", "https://t/token"),
    ]

    def enc(user: str, password: str) -> dict[str, str]:
        return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}

    path = tmp_path / "auth.json"
    path.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": enc("hub", "a"),
                    "quay.io": enc("quay", "b"),
                    "quay.io/team": enc("team", "c:with:colons"),
                }
            }
        )
    )
    auth = AuthFile(path)
    assert auth.lookup("docker.io", "library/nginx") == Credentials("hub", "a")
    assert auth.lookup("quay.io", "team/app") == Credentials("team", "c:with:colons")
    assert auth.lookup("quay.io", "other/app") == Credentials("quay", "b")
    assert auth.lookup("ghcr.io", "x/y") is None


def test_redirect_to_a_token_registry(
    tmp_path: Path, token_upstream: tuple[RegistryProcess, TokenServer]
) -> None:
    """A front redirecting to a backend that challenges (libcurl drops Authorization across
    hosts): the backend is asked directly with a token for its repository name."""
    backend, tokens = token_upstream
    front = serve(redirector(f"http://{backend.host}"))
    host = f"127.0.0.1:{front.server_address[1]}"
    conf = tmp_path / "registries.conf"
    conf.write_text(
        f'[[registry]]\nprefix = "docker.io"\nlocation = "{host}/docker.io"\ninsecure = true\n'
    )
    try:
        with Fetcher(retries=0) as fetcher, Fetcher(retries=0) as probe:
            api = RegistryAPI(
                fetcher,
                probe,
                registries_conf=registries_conf.load(conf),
                upstream_auth=AuthFile(None),
                local_url="127.0.0.1:1",
                local_tls_verify=False,
                local_auth=AuthFile(None),
            )
            got = api.upstream(parse_reference(IMAGES[0]), "1.25")
        index = read_manifest_via_token(backend, tokens, "docker.io/library/nginx", "1.25")
        assert got.digest == digest_of(index)
        assert ["repository:docker.io/library/nginx:pull"] in [q["scope"] for q in tokens.requests]
    finally:
        front.shutdown()
        front.server_close()


def read_manifest_via_token(
    registry: RegistryProcess, tokens: TokenServer, repo: str, ref: str
) -> bytes:
    token = tokens.sign([f"repository:{repo}:pull"])
    with Fetcher(retries=0) as fetcher:
        url = f"http://{registry.host}/v2/{repo}/manifests/{ref}"
        reply = fetcher.request(
            "GET", url, headers={"Accept": ACCEPT, "Authorization": f"Bearer {token}"}
        )
    assert reply.status == 200, (url, reply.status)
    return reply.body
