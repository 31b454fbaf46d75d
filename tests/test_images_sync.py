"""Image sync against REAL registries on loopback: a fixture upstream (CNCF distribution holding
multi-arch OCI images under their real names) and the embedded registry that ensure_registry,
the code under test, starts. Every check reads the local registry back with skopeo."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mirror import nodeconfig, state
from mirror.config import Config, RegistryConfig, load_config
from mirror.errors import EnvironmentProblem, ImageSyncError
from mirror.images import manifest
from mirror.images import registry as regmod
from mirror.images.manifest import Platform
from mirror.images.refs import ImageJob, parse_reference, plan_jobs
from mirror.images.registry import ensure_registry, registry_answers, run_foreground
from mirror.images.skopeo import one_line
from mirror.images.sync import mirrored_images, sync_images
from tests.fixtures.registry import (
    RegistryProcess,
    blob_gets,
    delete_image,
    log_size,
    manifest_requests,
    move_tag,
    populate_kubeadm,
    raw_manifest,
    read_requests,
    start_registry,
    write_mirror_config,
)
from tests.fixtures.registry import manifest_digest as local_manifest_digest

VERSION = "v1.28.4"
IMAGES_TXT = "# extra images\nnginx:1.25\ncalico/node:v3.26.1  # short docker name\n"
IMAGES_TXT += "quay.io/coreos/etcd:v3.5.0\n"
EXTRA_UPSTREAM = ["docker.io/library/nginx:1.25", "docker.io/calico/node:v3.26.1"]
EXTRA_UPSTREAM += ["quay.io/coreos/etcd:v3.5.0"]
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Pristine:
    storage: Path
    digests: dict[str, str]  # upstream ref -> index digest


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    """The kubeadm set for VERSION plus the images.txt images, pushed once; tests serve a copy."""
    root = tmp_path_factory.mktemp("pristine-registry")
    reg = start_registry(root / "registry")
    try:
        digests = populate_kubeadm(reg, VERSION, root / "work", EXTRA_UPSTREAM)
    finally:
        reg.stop()
    return Pristine(reg.storage, digests)


@pytest.fixture
def upstream(tmp_path: Path, pristine: Pristine) -> Iterator[RegistryProcess]:
    root = tmp_path / "upstream"
    shutil.copytree(pristine.storage, root / "storage")
    reg = start_registry(root)
    yield reg
    reg.stop()


def make_cfg(tmp: Path, upstream: RegistryProcess, platforms: Any = "all", **reg: Any) -> Config:
    path = write_mirror_config(tmp, upstream, IMAGES_TXT, [VERSION], platforms, **reg)
    return load_config(path)


def local_log(cfg: Config) -> Path:
    return cfg.data_dir / "registry" / "registry.log"


def all_names(jobs: list[ImageJob]) -> list[str]:
    return [name for job in jobs for name in job.destinations]


def errors(results: list[Any]) -> list[str]:
    return [r.error for r in results if r.error]


@pytest.mark.slow
def test_sync_all_platforms_then_noop_resync(
    tmp_path: Path, upstream: RegistryProcess, pristine: Pristine
) -> None:
    cfg = make_cfg(tmp_path / "m", upstream)
    jobs = nodeconfig.image_jobs(cfg)
    assert len(jobs) == 7 + 3
    coredns = next(j for j in jobs if "coredns" in j.source.path)
    assert coredns.destinations == (
        f"{cfg.registry.url}/registry.k8s.io/coredns/coredns:v1.10.1",
        f"{cfg.registry.url}/registry.k8s.io/coredns:v1.10.1",
    )
    with ensure_registry(cfg):
        results = sync_images(cfg, jobs)
        assert errors(results) == []
        assert all(r.changed for r in results)
        # Every kubeadm name (coredns under both) and images.txt entry, with upstream's index.
        for job, result in zip(jobs, results, strict=True):
            want = pristine.digests[job.source.upstream]
            assert result.digest == want
            assert result.platforms == ("linux/amd64", "linux/arm64")
            for name in job.destinations:
                raw = raw_manifest(name)
                assert manifest.digest_of(raw) == want, name
                assert json.loads(raw)["mediaType"] == manifest.OCI_INDEX_TYPE
        record = state.load(cfg.state_root, "images", coredns.source.upstream)
        assert record.ok and record.digest == pristine.digests[coredns.source.upstream]
        assert record.mirrored == list(coredns.destinations) and record.duration_s
        assert record.platforms == ["linux/amd64", "linux/arm64"]

        # No-op resync: one manifest HEAD per image upstream (Docker Hub counts no pull), one
        # per name locally, and not a single blob anywhere.
        up_mark, local_mark = upstream.mark(), log_size(local_log(cfg))
        again = sync_images(cfg, jobs)
        assert errors(again) == [] and not any(r.changed for r in again)
        up_requests = upstream.requests(up_mark)
        local_requests = read_requests(local_log(cfg), local_mark)
        assert blob_gets(up_requests) == [] and blob_gets(local_requests) == []
        assert [r.method for r in manifest_requests(up_requests)] == ["HEAD"] * len(jobs)
        assert [r.method for r in manifest_requests(local_requests)] == ["HEAD"] * len(
            all_names(jobs)
        )
        assert not [r for r in local_requests if r.method in ("PUT", "POST", "PATCH")]

    rows = mirrored_images(cfg)
    assert len(rows) == len(all_names(jobs))
    assert (
        "registry.k8s.io/coredns/coredns:v1.10.1",
        f"{cfg.registry.url}/registry.k8s.io/coredns:v1.10.1",
        pristine.digests["registry.k8s.io/coredns/coredns:v1.10.1"],
    ) in rows
    # ensure_registry stopped the registry it started.
    assert not registry_answers(cfg.registry.url, tls=False)


@pytest.mark.slow
def test_single_platform_copies_that_platform_only(
    tmp_path: Path, upstream: RegistryProcess, pristine: Pristine
) -> None:
    cfg = make_cfg(tmp_path / "m", upstream, platforms=("linux/arm64",))
    url = cfg.registry.url
    jobs = [j for j in nodeconfig.image_jobs(cfg) if j.source.path in ("pause", "coredns/coredns")]
    with ensure_registry(cfg):
        results = sync_images(cfg, jobs)
        assert errors(results) == []
        skipped = []
        for job, result in zip(jobs, results, strict=True):
            index = json.loads(raw_manifest(f"{upstream.host}/{job.source.upstream}"))
            by_arch = {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}
            skipped.append(by_arch["amd64"])
            assert result.digest == by_arch["arm64"] and result.platforms == ("linux/arm64",)
            for name in job.destinations:
                raw = raw_manifest(name)
                assert manifest.digest_of(raw) == by_arch["arm64"]
                assert json.loads(raw)["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        # The amd64 manifests were never even read from upstream.
        paths = [r.path for r in upstream.requests()]
        assert not [p for p in paths for digest in skipped if digest in p]
        again = sync_images(cfg, jobs)
        assert errors(again) == [] and not any(r.changed for r in again)
        # Pinned references are copied whole, so the pinned (index) digest resolves here.
        nginx = pristine.digests["docker.io/library/nginx:1.25"]
        calico = pristine.digests["docker.io/calico/node:v3.26.1"]
        pinned = plan_jobs(
            cfg.registry.url,
            [],
            [parse_reference(f"nginx@{nginx}"), parse_reference(f"calico/node:v3.26.1@{calico}")],
        )
        assert pinned[0].destinations == (f"{cfg.registry.url}/docker.io/library/nginx@{nginx}",)
        results = sync_images(cfg, pinned)
        assert errors(results) == [] and [r.digest for r in results] == [nginx, calico]
        assert results[0].platforms == ("linux/amd64", "linux/arm64")
        assert local_manifest_digest(pinned[0].destinations[0]) == nginx
        assert local_manifest_digest(f"{cfg.registry.url}/docker.io/calico/node:v3.26.1") == calico
        # Several platforms: skopeo 1.9 cannot copy a subset, so the whole index (digest kept).
        multi = make_cfg(tmp_path / "multi", upstream, ["linux/amd64", "linux/s390x"], url=url)
        etcd = plan_jobs(url, [], [parse_reference("quay.io/coreos/etcd:v3.5.0")])
        [res] = sync_images(multi, etcd)
        assert res.error is None and res.digest == pristine.digests["quay.io/coreos/etcd:v3.5.0"]
        # A platform the index lacks: a clear per-image error.
        odd = make_cfg(tmp_path / "odd", upstream, platforms=("linux/s390x",), url=url)
        failed = sync_images(odd, jobs[:1])
        assert failed[0].error is not None
        assert "no linux/s390x image in the index (has: linux/amd64, linux/arm64)" in (
            failed[0].error
        )


@pytest.mark.slow
def test_moved_tag_is_copied_again(tmp_path: Path, upstream: RegistryProcess) -> None:
    cfg = make_cfg(tmp_path / "m", upstream)
    jobs = [j for j in nodeconfig.image_jobs(cfg) if j.source.host != "registry.k8s.io"]
    with ensure_registry(cfg):
        assert errors(sync_images(cfg, jobs)) == []
        moved = "docker.io/calico/node:v3.26.1"
        new_digest = move_tag(upstream, moved, tmp_path / "work", seed="calico rebuilt")
        mark = upstream.mark()
        results = {r.upstream: r for r in sync_images(cfg, jobs)}
        assert errors(list(results.values())) == []
        assert results[moved].changed and results[moved].digest == new_digest
        assert [r.changed for k, r in results.items() if k != moved] == [False, False]
        assert local_manifest_digest(f"{cfg.registry.url}/{moved}") == new_digest
        # Only the moved image's new blobs were fetched.
        fetched = blob_gets(upstream.requests(mark))
        assert fetched and all(r.path.startswith("/v2/docker.io/calico/node/") for r in fetched)
        assert state.load(cfg.state_root, "images", moved).digest == new_digest


@pytest.mark.slow
def test_missing_upstream_image_fails_alone(
    tmp_path: Path, upstream: RegistryProcess, pristine: Pristine
) -> None:
    cfg = make_cfg(tmp_path / "m", upstream)
    (cfg.images_file or tmp_path).write_text(IMAGES_TXT + "docker.io/library/nosuch:1.0\n")
    jobs = [j for j in nodeconfig.image_jobs(cfg) if j.source.host != "registry.k8s.io"]
    with ensure_registry(cfg):
        results = {r.upstream: r for r in sync_images(cfg, jobs)}
        bad = results.pop("docker.io/library/nosuch:1.0")
        assert bad.error is not None and not bad.changed
        assert bad.error.startswith("image docker.io/library/nosuch:1.0: ")
        assert "manifest unknown" in bad.error and "\n" not in bad.error
        assert "level=fatal" not in bad.error and "time=" not in bad.error
        assert errors(list(results.values())) == []
        record = state.load(cfg.state_root, "images", "docker.io/library/nosuch:1.0")
        assert record.last_error == bad.error and record.last_success is None

        # An image mirrored before and then gone upstream: fails, but its copy stays.
        gone = "docker.io/calico/node:v3.26.1"
        delete_image(upstream, gone)
        results = {r.upstream: r for r in sync_images(cfg, jobs)}
        assert f"image {gone}: " in str(results[gone].error)
        assert "manifest unknown" in str(results[gone].error)
        assert results["quay.io/coreos/etcd:v3.5.0"].error is None
        old = pristine.digests[gone]
        assert local_manifest_digest(f"{cfg.registry.url}/{gone}") == old
        record = state.load(cfg.state_root, "images", gone)
        assert record.digest == old and record.last_error and record.last_success
        assert (gone, f"{cfg.registry.url}/{gone}", old) in mirrored_images(cfg)


@pytest.mark.slow
def test_cli_sync_images_exits_nonzero_listing_failures(
    tmp_path: Path, upstream: RegistryProcess
) -> None:
    cfg = make_cfg(tmp_path / "m", upstream)
    (cfg.images_file or tmp_path).write_text("nginx:1.25\nregistry.k8s.io/nosuch:1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mirror", "-c", str(cfg.config_path), "sync", "--only", "images"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.returncode == 1, proc.stderr
    assert "mirror sync: 1 failed:" in proc.stderr
    assert "image registry.k8s.io/nosuch:1: " in proc.stderr
    kubeadm = {j.source.upstream for j in plan_jobs(cfg.registry.url, [VERSION], [])}
    assert {row[0] for row in mirrored_images(cfg)} == {"docker.io/library/nginx:1.25", *kubeadm}
    assert not registry_answers(cfg.registry.url, tls=False)


@pytest.mark.slow
def test_registry_down_and_not_embedded(tmp_path: Path, upstream: RegistryProcess) -> None:
    cfg = make_cfg(tmp_path / "m", upstream, embedded=False)
    url = re.escape(cfg.registry.url)
    with (
        pytest.raises(EnvironmentProblem, match=f"registry {url} does not answer"),
        ensure_registry(cfg),
    ):
        pass
    assert not (cfg.data_dir / "registry").exists()


@pytest.mark.slow
def test_never_a_second_registry(
    tmp_path: Path, upstream: RegistryProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[list[str]] = []
    real_popen = subprocess.Popen

    def spy(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(list(args))
        return real_popen(args, **kwargs)

    monkeypatch.setattr("mirror.images.registry.subprocess.Popen", spy)
    # Something (here: the upstream fixture) already answers on registry.url: used as is.
    busy = make_cfg(tmp_path / "busy", upstream, url=upstream.host)
    with ensure_registry(busy):
        assert started == []
    assert upstream.proc.poll() is None and registry_answers(upstream.host, tls=False)
    assert not (busy.data_dir / "registry" / "config.yml").exists()

    # Ours: started once, reused by a nested sync, stopped on exit.
    cfg = make_cfg(tmp_path / "m", upstream)
    with ensure_registry(cfg):
        assert len(started) == 1 and started[0][1:] == [
            "serve",
            str(cfg.data_dir / "registry" / "config.yml"),
        ]
        with ensure_registry(cfg):
            assert len(started) == 1
        assert registry_answers(cfg.registry.url, tls=False)  # the inner exit stopped nothing
        config = (cfg.data_dir / "registry" / "config.yml").read_text()
        assert f"rootdirectory: {cfg.data_dir / 'registry' / 'storage'}" in config
        assert f"addr: :{cfg.registry.url.rsplit(':', 1)[1]}" in config
    assert not registry_answers(cfg.registry.url, tls=False)

    # run_foreground refuses to start a second one too.
    with pytest.raises(EnvironmentProblem, match="already answers"):
        run_foreground(busy)


def test_registry_that_cannot_start_shows_its_log(tmp_path: Path) -> None:
    with socket.socket() as busy:  # bound, not listening: nothing answers, bind fails
        busy.bind(("", 0))
        url = f"127.0.0.1:{busy.getsockname()[1]}"
        cfg = Config(data_dir=tmp_path, registry=RegistryConfig(url=url))
        with pytest.raises(EnvironmentProblem) as info, ensure_registry(cfg):
            pass
    assert f"embedded registry for {url} exited with code 1" in str(info.value)
    assert "bind: address already in use" in str(info.value)


@pytest.mark.slow
def test_run_foreground_passes_sigterm_on(tmp_path: Path, upstream: RegistryProcess) -> None:
    cfg = make_cfg(tmp_path / "m", upstream)
    log = tmp_path / "foreground.log"
    with log.open("w") as out:  # `mirror registry` is what mirror-registry.service runs
        proc = subprocess.Popen(
            [sys.executable, "-m", "mirror", "-c", str(cfg.config_path), "registry"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
    try:
        deadline = time.monotonic() + 20
        while not registry_answers(cfg.registry.url, tls=False):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)  # what systemd sends to the main process
        assert proc.wait(timeout=15) == 0  # a clean stop for systemd
        assert not registry_answers(cfg.registry.url, tls=False)
        assert "GET /v2/" in log.read_text()  # its log went to our stdout (the journal)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_missing_binaries_give_install_hints(
    tmp_path: Path, upstream: RegistryProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_cfg(tmp_path / "m", upstream)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(EnvironmentProblem) as info, ensure_registry(cfg):
        pass
    assert str(info.value) == (
        "registry binary not found: install docker-registry (Debian/Ubuntu) "
        "or docker-distribution (EL, EPEL)"
    )
    with pytest.raises(EnvironmentProblem, match="install the skopeo package"):
        sync_images(cfg, nodeconfig.image_jobs(cfg))


def test_one_line_keeps_the_meaningful_part() -> None:
    stderr = (
        'time="2026-11-29T08:10:17Z" level=fatal msg="Error parsing image name '
        '\\"docker://registry.k8s.io/nope:3.9\\": reading manifest 3.9 in '
        '127.0.0.1:41695/registry.k8s.io/nope: manifest unknown: manifest unknown"\n'
    )
    assert one_line(stderr, 1) == (
        "reading manifest 3.9 in 127.0.0.1:41695/registry.k8s.io/nope: manifest unknown"
    )
    refused = (
        'time="x" level=fatal msg="copying system image from manifest list: trying to reuse '
        "blob sha256:ac at destination: pinging container registry 127.0.0.1:1: Get "
        '\\"http://127.0.0.1:1/v2/\\": dial tcp 127.0.0.1:1: connect: connection refused"'
    )
    line = one_line(refused, 1)
    assert line.endswith("connect: connection refused") and line.startswith("trying to reuse")
    multi = 'level=fatal msg="Uploading manifest list failed:\\nmanifest blob unknown\\n"'
    assert "\n" not in one_line(multi, 1)
    assert one_line("", 2) == "skopeo exited with code 2"
    assert one_line("panic: boom\n\n", 2) == "panic: boom"


def test_platform_selection() -> None:
    assert str(Platform.parse("linux/arm/v7")) == "linux/arm/v7"
    with pytest.raises(ValueError):
        Platform.parse("linux")

    def entry(digest: str, os_name: str, arch: str, **more: str) -> dict[str, Any]:
        return {"digest": digest, "platform": {"os": os_name, "architecture": arch, **more}}

    index = {
        "mediaType": manifest.OCI_INDEX_TYPE,
        "manifests": [
            entry("sha256:a", "linux", "amd64"),
            entry("sha256:v8", "linux", "arm64", variant="v8"),
            entry("sha256:b", "linux", "arm64"),
            entry("sha256:att", "unknown", "unknown"),  # an attestation, not a platform
        ],
    }
    assert manifest.is_index(index)
    assert manifest.select_platform(index, Platform("linux", "arm64"), "x")[1] == "sha256:b"
    assert manifest.select_platform(index, Platform("linux", "arm64", "v8"), "x")[1] == "sha256:v8"
    with pytest.raises(ImageSyncError, match=r"has: linux/amd64, linux/arm64, linux/arm64/v8"):
        manifest.select_platform(index, Platform("linux", "ppc64le"), "x")


def test_config_problems(tmp_path: Path) -> None:
    # A bad platform is refused by the config object itself, before any sync (issue 9).
    with pytest.raises(ValidationError, match="platforms"):
        Config(data_dir=tmp_path, platforms=("amd64",))
    cfg = Config(data_dir=tmp_path, registry=RegistryConfig(url="127.0.0.1:1", tls_verify=True))
    with pytest.raises(EnvironmentProblem, match="plain HTTP"), ensure_registry(cfg):
        pass
    assert regmod.port_of("127.0.0.1:5000", tls=False) == 5000
    assert regmod.port_of("utility.example", tls=False) == 80
    assert regmod.port_of("utility.example", tls=True) == 443
    assert regmod.port_of("[::1]:5001", tls=False) == 5001
