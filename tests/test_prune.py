"""`mirror prune` (issue 11) with real parts: a real upstream distribution registry holding
images pushed with skopeo, `mirror sync` into the embedded registry (the distro's
docker-registry, started by the code), the config shrunk, then `mirror prune --dry-run` and
`mirror prune`; the rest is checked with skopeo inspect/copy against the embedded registry
and its storage is measured before and after. Files, chart repos and repo targets removed
from the config are pruned through the same command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mirror.diskuse import tree_bytes
from tests.conftest import Mirror, free_port, stop_process
from tests.fixtures import UpstreamServer
from tests.fixtures.helmrepo import HelmRepo
from tests.fixtures.registry import (
    RegistryProcess,
    manifest_digest,
    move_tag,
    push_image,
    skopeo,
    start_registry,
    wait_registry,
    write_mirror_config,
)

_tools = pytest.mark.skipif(
    not (shutil.which("skopeo") and shutil.which("docker-registry")),
    reason="skopeo and docker-registry are needed",
)


def needs_registry(test):  # type: ignore[no-untyped-def]
    """Real registries and skopeo: slow."""
    return pytest.mark.slow(_tools(test))

KEEP = "docker.io/library/app:1"
ALIAS = "docker.io/library/app:alias"  # same content as app:1: one digest, two tags
DROP = "docker.io/library/app:2"
DROP_REPO = "quay.io/team/tool:1"  # the only image of its repository
PINNED_SEED = "registry.k8s.io/pinned:1"
NOTHING = "removed 0 images, 0 untagged manifests, 0 files, 0 chart repos, 0 repos, 0 repo keys;"


def run_mirror(cfg: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mirror", "-c", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cfg.parent,
    )


@pytest.fixture
def images_upstream(tmp_path: Path) -> Iterator[tuple[RegistryProcess, dict[str, str]]]:
    registry = start_registry(tmp_path / "upstream")
    work = tmp_path / "build"
    try:
        digests = {ref: push_image(registry, ref, work) for ref in (KEEP, DROP, DROP_REPO)}
        digests[ALIAS] = push_image(registry, ALIAS, work, seed=KEEP)
        digests[PINNED_SEED] = push_image(registry, PINNED_SEED, work)
        yield registry, digests
    finally:
        registry.stop()


def _inspect(ref: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["skopeo", "inspect", "--raw", "--no-tags", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _tree(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()
    }


@needs_registry
def test_prune_removes_exactly_the_images_no_longer_configured(
    tmp_path: Path, images_upstream: tuple[RegistryProcess, dict[str, str]]
) -> None:
    registry, digests = images_upstream
    assert digests[ALIAS] == digests[KEEP]  # the shared-digest case is real
    pinned = f"registry.k8s.io/pinned@{digests[PINNED_SEED]}"  # mirrored untagged
    images = [KEEP, ALIAS, DROP, DROP_REPO, pinned]
    cfg = write_mirror_config(tmp_path / "m", registry, "\n".join(images) + "\n", [], "all")
    local = yaml.safe_load(cfg.read_text())["registry"]["url"]
    (cfg.parent / "repos").mkdir()  # no yum repos, but node files (images.txt) are rendered
    proc = run_mirror(cfg, "sync", "--only", "images")
    assert proc.returncode == 0, proc.stderr[-3000:]
    storage = cfg.parent / "data" / "registry" / "storage"
    full = tree_bytes(storage)
    served = cfg.parent / "data" / "www" / "images.txt"
    assert f"{DROP} {local}/{DROP}@" in served.read_text()

    # Shrunk: app:2 and the whole tool repository go; app:alias goes from the config but
    # shares its digest with app:1, which stays; the untagged pinned image stays.
    (cfg.parent / "images.txt").write_text(f"{KEEP}\n{pinned}\n")
    before = _tree(storage)
    records = sorted(os.listdir(cfg.parent / "data" / "state" / "images"))
    proc = run_mirror(cfg, "prune", "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert f"would remove image {local}/{DROP} {digests[DROP]}" in out
    assert f"would remove image {local}/{DROP_REPO} {digests[DROP_REPO]}" in out
    assert f"keep image {local}/{ALIAS}: {digests[KEEP]} is also {local}/{KEEP}, " in out
    assert f"{local}/{KEEP} " not in out and "pinned" not in out
    assert "untagged manifest " not in out
    assert "nothing changed" in out.splitlines()[-1]
    assert _tree(storage) == before  # not one byte changed
    assert sorted(os.listdir(cfg.parent / "data" / "state" / "images")) == records

    # With the registry running (mirror-registry.service), prune refuses and changes nothing.
    service = subprocess.Popen(
        [sys.executable, "-m", "mirror", "-c", str(cfg), "registry"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_registry(local)
        proc = run_mirror(cfg, "prune")
        assert proc.returncode == 3, proc.stderr
        assert "mirror-registry" in proc.stderr and "nothing was removed" in proc.stderr
        assert _inspect(f"{local}/{DROP}").returncode == 0
    finally:
        stop_process(service)
    assert sorted(os.listdir(cfg.parent / "data" / "state" / "images")) == records

    proc = run_mirror(cfg, "prune")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"remove image {local}/{DROP} {digests[DROP]}" in proc.stdout
    assert f"remove image {local}/{DROP_REPO}" in proc.stdout
    assert "registry garbage collection:" in proc.stdout
    pruned = tree_bytes(storage)
    assert pruned < full
    listed = served.read_text()  # what nodes are told is mirrored follows
    assert f"{KEEP} {local}/{KEEP}@{digests[KEEP]}" in listed
    assert DROP not in listed and DROP_REPO not in listed and ALIAS not in listed
    assert f"({full - pruned} bytes freed)" in proc.stdout.splitlines()[-1]

    # What stays is served whole, with the same digests; what went is gone.
    service = subprocess.Popen(
        [sys.executable, "-m", "mirror", "-c", str(cfg), "registry"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_registry(local)
        assert manifest_digest(f"{local}/{KEEP}") == digests[KEEP]
        assert manifest_digest(f"{local}/{ALIAS}") == digests[KEEP]  # the tag survived too
        assert manifest_digest(f"{local}/registry.k8s.io/pinned@{digests[PINNED_SEED]}")
        for gone in (DROP, DROP_REPO):
            assert _inspect(f"{local}/{gone}").returncode != 0
        # Every blob of what stays is still there: a whole copy out of the registry works.
        for name in (KEEP, f"registry.k8s.io/pinned@{digests[PINNED_SEED]}"):
            dest = tmp_path / "out" / name.replace("/", "_").replace(":", "_")
            dest.parent.mkdir(exist_ok=True)
            src = f"docker://{local}/{name}"
            skopeo("copy", "--all", "--preserve-digests", "--quiet", "--src-tls-verify=false",
                   src, f"oci:{dest}:x")
            index = json.loads((dest / "index.json").read_text())
            assert index["manifests"][0]["digest"] == digests[
                KEEP if name == KEEP else PINNED_SEED
            ]
    finally:
        stop_process(service)

    # State follows: the removed images' records are gone, a second prune has nothing to do.
    status = run_mirror(cfg, "status", "--json")
    keys = {row["upstream"] for row in json.loads(status.stdout)["images"]}
    assert keys == {KEEP, pinned}
    again = run_mirror(cfg, "prune")
    assert again.returncode == 0, again.stderr[-3000:]
    assert NOTHING in again.stdout.splitlines()[-1]
    assert tree_bytes(storage) == pruned


@needs_registry
def test_prune_refuses_when_the_image_set_is_unknowable(
    tmp_path: Path, images_upstream: tuple[RegistryProcess, dict[str, str]]
) -> None:
    """A configured version without an image list: prune cannot tell that version's images
    from stale ones, so it removes nothing (rather than that version's images)."""
    registry, _ = images_upstream
    cfg = write_mirror_config(tmp_path / "m", registry, f"{KEEP}\n", [], "all")
    raw = yaml.safe_load(cfg.read_text())
    raw["kubernetes_versions"] = ["v1.99.0..v1.99.9"]  # a range no mirrored kubeadm resolves
    cfg.write_text(yaml.safe_dump(raw))
    proc = run_mirror(cfg, "prune")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cannot tell which images are configured" in proc.stderr
    assert "nothing was pruned" in proc.stderr


def _snapshot(root: Path) -> dict[str, int]:
    return {k: v for k, v in _tree(root).items() if not k.startswith(".sync.lock")}


@pytest.mark.slow
def test_prune_removes_files_chart_repos_and_repo_targets_no_longer_configured(
    tmp_path: Path, mirror: Mirror
) -> None:
    files_root, charts_root = tmp_path / "filesup", tmp_path / "chartsup"
    (files_root / "tools").mkdir(parents=True)
    (files_root / "tools" / "keep.txt").write_bytes(b"kept\n" * 1000)
    (files_root / "tools" / "drop.txt").write_bytes(b"dropped\n" * 4000)
    for name in ("stable", "other"):
        repo = HelmRepo(charts_root / name)
        repo.add(f"{name}-chart", "1.0.0")
        repo.write_index()
    with UpstreamServer(files_root) as files_up, UpstreamServer(charts_root) as charts_up:
        keep_file = f"  - {{url: '{files_up.url}/tools/keep.txt', path: tools/keep.txt}}\n"
        drop_file = f"  - {{url: '{files_up.url}/tools/drop.txt', path: tools/drop.txt}}\n"
        keep_chart = f"  - {{repo: '{charts_up.url}/stable', name: stable-chart, newest: 1}}\n"
        drop_chart = f"  - {{repo: '{charts_up.url}/other', name: other-chart, newest: 1}}\n"
        mirror.extra_config = f"files:\n{keep_file}{drop_file}charts:\n{keep_chart}{drop_chart}"
        mirror.write()
        proc = mirror.sync()
        assert proc.returncode == 0, proc.stderr[-3000:]
    data = mirror.data
    assert (data / "repos" / "docker-ce-stable" / "9" / "aarch64" / "repodata").is_dir()
    assert (data / "keys" / "kubernetes.gpg").is_file()
    assert (data / "charts" / "other" / "index.yaml").is_file()
    assert (data / "files" / "tools" / "drop.txt").is_file()

    # Shrunk: one file, one chart repo, the kubernetes .repo file, the aarch64 arch.
    mirror.extra_config = f"files:\n{keep_file}charts:\n{keep_chart}"
    mirror.basearch = ("x86_64",)
    mirror.write()
    (mirror.dir / "repos" / "kubernetes.repo").unlink()
    before = _snapshot(data)
    proc = mirror.run("prune", "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    removed = sorted(line.split(" (")[0] for line in lines if line.startswith("would remove"))
    assert removed == [
        "would remove chart repo other",
        "would remove file tools/drop.txt",
        "would remove repo docker-ce-stable/9/aarch64",
        "would remove repo key kubernetes.gpg",
        "would remove repo kubernetes",
    ]
    assert "images not pruned: registry.embedded is false" in proc.stdout
    assert _snapshot(data) == before  # nothing changed

    proc = mirror.run("prune")
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = [line.split(" (")[0] for line in proc.stdout.splitlines() if line.startswith("remove")]
    assert sorted(done) == [r.replace("would remove", "remove") for r in removed]
    for gone in (
        "files/tools/drop.txt",
        "charts/other",
        "repos/kubernetes",
        "repos/docker-ce-stable/9/aarch64",
        "keys/kubernetes.gpg",
        "state/files/tools%2Fdrop.txt.json",
        "state/charts/other.json",
        "state/repos/kubernetes.json",
        "state/published/kubernetes.json",
    ):
        assert not (data / gone).exists(), gone
    for kept in (
        "files/tools/keep.txt",
        "charts/stable/index.yaml",
        "repos/docker-ce-stable/9/x86_64/repodata/repomd.xml",
        "keys/docker-ce-stable.gpg",
    ):
        assert (data / kept).exists(), kept
    assert not list((data / ".staging" / "prune").iterdir())  # nothing left in the trash
    summary = proc.stdout.splitlines()[-1]
    assert summary.startswith("prune: removed 0 images, 0 untagged manifests, 1 file, 1 chart ")
    assert "1 chart repo, 2 repos, 1 repo key;" in summary
    freed = int(summary.split("content ")[1].split(" bytes")[0])
    assert freed > 32000  # drop.txt alone is 32 kB, plus two repos and a chart repo
    status = json.loads(mirror.run("status", "--json").stdout)
    assert [r["key"] for r in status["repos"]] == ["docker-ce-stable/9/x86_64"]
    assert [f["key"] for f in status["files"]] == ["tools/keep.txt"]
    assert [c["key"] for c in status["charts"]] == ["stable"]
    # What stays is what the next sync expects: it has nothing to add back.
    again = mirror.run("prune").stdout.splitlines()[-1]
    assert again.startswith(f"prune: {NOTHING}")


def test_prune_refuses_a_record_naming_a_path_outside_its_root(tmp_path: Path) -> None:
    """A tampered state record must not make prune delete outside data_dir."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "repos").mkdir()
    (tmp_path / "mirror.yaml").write_text(
        f"data_dir: ./data\nregistry: {{url: '127.0.0.1:{free_port()}', embedded: false}}\n"
    )
    records = tmp_path / "data" / "state" / "files"
    records.mkdir(parents=True)
    (records / "evil.json").write_text(json.dumps({"key": "../../victim.txt"}))
    proc = run_mirror(tmp_path / "mirror.yaml", "prune")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "'../../victim.txt'" in proc.stderr and "not a plain name" in proc.stderr
    assert victim.read_text() == "precious"


@needs_registry
def test_prune_keeps_a_platform_manifest_a_configured_index_names(
    tmp_path: Path, images_upstream: tuple[RegistryProcess, dict[str, str]]
) -> None:
    """One platform configured: app:1 is mirrored as its linux/amd64 manifest, a child of the
    index that a configured `app@sha256:<index>` mirrors whole. Removing app:1 must not
    delete that child: the index would then name a manifest the registry no longer has."""
    registry, digests = images_upstream
    pinned = f"docker.io/library/app@{digests[KEEP]}"
    cfg = write_mirror_config(
        tmp_path / "m", registry, f"{KEEP}\n{pinned}\n", [], ["linux/amd64"]
    )
    local = yaml.safe_load(cfg.read_text())["registry"]["url"]
    proc = run_mirror(cfg, "sync", "--only", "images")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (cfg.parent / "images.txt").write_text(f"{pinned}\n")
    proc = run_mirror(cfg, "prune")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if f"{local}/{KEEP}" in x]
    assert line.startswith(f"keep image {local}/{KEEP}: sha256:")
    assert f"is also {local}/docker.io/library/app@{digests[KEEP]}, " in line
    assert "removed 0 images" in proc.stdout.splitlines()[-1]
    service = subprocess.Popen(
        [sys.executable, "-m", "mirror", "-c", str(cfg), "registry"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_registry(local)
        dest = tmp_path / "out"
        skopeo("copy", "--all", "--preserve-digests", "--quiet", "--src-tls-verify=false",
               f"docker://{local}/{pinned}", f"oci:{dest}:x")  # every platform still there
        assert json.loads((dest / "index.json").read_text())["manifests"][0]["digest"] == (
            digests[KEEP]
        )
    finally:
        stop_process(service)


@needs_registry
def test_prune_removes_what_a_moved_tag_left_behind(
    tmp_path: Path, images_upstream: tuple[RegistryProcess, dict[str, str]]
) -> None:
    """A tag that moved upstream is copied again by the sync; its earlier index and platform
    manifests stay in the repository, untagged, holding their layers. Prune deletes exactly
    those, and the tag keeps serving the new digest."""
    registry, digests = images_upstream
    cfg = write_mirror_config(tmp_path / "m", registry, f"{KEEP}\n{DROP}\n", [], "all")
    local = yaml.safe_load(cfg.read_text())["registry"]["url"]
    assert run_mirror(cfg, "sync", "--only", "images").returncode == 0
    storage = cfg.parent / "data" / "registry" / "storage"
    moved = move_tag(registry, KEEP, tmp_path / "build", seed="rebuilt")
    proc = run_mirror(cfg, "sync", "--only", "images")
    assert proc.returncode == 0, proc.stderr[-3000:]
    grown = tree_bytes(storage)
    proc = run_mirror(cfg, "prune", "--dry-run")
    untagged = [x for x in proc.stdout.splitlines() if "untagged manifest " in x]
    old = f"{local}/docker.io/library/app@{digests[KEEP]}"
    assert len(untagged) == 3  # the old index and its two platform manifests
    assert any(x.startswith(f"would remove untagged manifest {old} ") for x in untagged)
    assert tree_bytes(storage) == grown
    proc = run_mirror(cfg, "prune")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "removed 0 images, 3 untagged manifests" in proc.stdout.splitlines()[-1]
    assert tree_bytes(storage) < grown
    service = subprocess.Popen(
        [sys.executable, "-m", "mirror", "-c", str(cfg), "registry"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_registry(local)
        assert manifest_digest(f"{local}/{KEEP}") == moved
        assert manifest_digest(f"{local}/{DROP}") == digests[DROP]  # untouched neighbour
        assert _inspect(old).returncode != 0
        dest = tmp_path / "out"
        skopeo("copy", "--all", "--preserve-digests", "--quiet", "--src-tls-verify=false",
               f"docker://{local}/{KEEP}", f"oci:{dest}:x")
    finally:
        stop_process(service)


def test_prune_waits_for_no_sync_and_keeps_a_directory_of_configured_files(
    tmp_path: Path,
) -> None:
    """A sync holding the lock: prune exits 75 at once. A stale file record whose path is now
    a directory of configured files (`tools` -> `tools/helm`) loses its record, not them."""
    from filelock import FileLock

    (tmp_path / "repos").mkdir()
    (tmp_path / "mirror.yaml").write_text(
        f"data_dir: ./data\nregistry: {{url: '127.0.0.1:{free_port()}', embedded: false}}\n"
        "files:\n  - {url: 'http://127.0.0.1:9/helm', path: tools/helm}\n"
    )
    data = tmp_path / "data"
    (data / "files" / "tools").mkdir(parents=True)
    (data / "files" / "tools" / "helm").write_bytes(b"configured")
    records = data / "state" / "files"
    records.mkdir(parents=True)
    (records / "tools.json").write_text(json.dumps({"key": "tools"}))
    with FileLock(str(data / ".sync.lock")):
        proc = run_mirror(tmp_path / "mirror.yaml", "prune")
    assert proc.returncode == 75, proc.stdout + proc.stderr
    assert "another mirror sync is running" in proc.stderr
    assert (records / "tools.json").exists()
    proc = run_mirror(tmp_path / "mirror.yaml", "prune")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "remove file tools (" in proc.stdout
    assert (data / "files" / "tools" / "helm").read_bytes() == b"configured"
    assert not (records / "tools.json").exists()
