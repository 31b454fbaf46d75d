"""Status page, /api/status, /metrics and POST /api/sync, over a real synced fixture."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mirror.config import load_config
from mirror.web import create_app
from tests.conftest import Mirror

SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "mirror/web/status_schema.json").read_text()
)


def client_for(mirror: Mirror):
    return create_app(load_config(mirror.config)).test_client()


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.mark.slow
def test_api_status_validates_and_metrics_change_after_sync(mirror: Mirror) -> None:
    client = client_for(mirror)
    before = client.get("/metrics")
    assert before.status_code == 200
    samples_before = metric_samples(before.text)
    assert not any(name.startswith("mirror_repo_") for name, _ in samples_before)
    empty = client.get("/api/status").get_json()
    jsonschema.validate(empty, SCHEMA)
    assert empty["repos"] == [] and empty["ok"] is True

    assert mirror.sync("--repo", "kubernetes").returncode == 0
    status = client.get("/api/status").get_json()
    jsonschema.validate(status, SCHEMA)
    (repo,) = status["repos"]
    assert repo["key"] == "kubernetes" and repo["ok"] and repo["packages"] == 22
    on_disk = sum(f.stat().st_size for f in (mirror.data / "repos/kubernetes").rglob("*.rpm"))
    assert repo["bytes"] == on_disk > 0 and repo["last_error"] is None
    assert status["registry"]["up"] is False  # no registry in this test: reported, not hidden

    samples = metric_samples(client.get("/metrics").text)
    assert samples[("mirror_repo_sync_ok", (("repo", "kubernetes"),))] == 1.0
    assert samples[("mirror_repo_packages", (("repo", "kubernetes"),))] == 22.0
    last = samples[("mirror_repo_last_success_timestamp_seconds", (("repo", "kubernetes"),))]
    assert abs(last - time.time()) < 120
    # HTTP requests are counted by route pattern and status.
    key = ("mirror_http_requests_total", (("route", "/api/status"), ("status", "200")))
    assert samples[key] >= 2


@pytest.mark.slow
def test_failed_sync_shows_in_status_and_metrics(mirror: Mirror) -> None:
    (mirror.upstream.k8s_repo / "repodata" / "repomd.xml.asc").write_text("garbage")
    assert mirror.sync("--repo", "kubernetes").returncode == 1
    client = client_for(mirror)
    status = client.get("/api/status").get_json()
    jsonschema.validate(status, SCHEMA)
    assert status["ok"] is False and "repo_gpgcheck" in status["repos"][0]["last_error"]
    samples = metric_samples(client.get("/metrics").text)
    assert samples[("mirror_repo_sync_ok", (("repo", "kubernetes"),))] == 0.0
    page = client.get("/").text
    assert "failed" in page and "repo_gpgcheck" in page


def test_status_page_renders_without_any_sync(tmp_path: Path) -> None:
    (tmp_path / "repos").mkdir()
    (tmp_path / "mirror.yaml").write_text("kubernetes_versions: [v1.30.2]\n")
    client = create_app(load_config(tmp_path / "mirror.yaml")).test_client()
    page = client.get("/")
    assert page.status_code == 200
    assert "Nothing synced yet" in page.text
    assert "kubeadm init --config" in page.text
    assert "http://" not in page.text.split("<body>")[0]  # no external assets in <head>
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_api_sync_is_absent_without_token(tmp_path: Path) -> None:
    (tmp_path / "repos").mkdir()
    (tmp_path / "mirror.yaml").write_text("")
    client = create_app(load_config(tmp_path / "mirror.yaml")).test_client()
    assert client.post("/api/sync").status_code == 404
    assert client.post("/api/sync", headers={"Authorization": "Bearer x"}).status_code == 404


@pytest.mark.slow
def test_api_sync_requires_the_token_and_runs_a_sync(mirror: Mirror) -> None:
    mirror.extra_config = "sync_token: s3cret-token\n"
    mirror.write()
    client = client_for(mirror)
    assert client.post("/api/sync").status_code == 401
    wrong = client.post("/api/sync", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert client.post("/api/sync", headers={"Authorization": "s3cret-token"}).status_code == 401
    ok = client.post("/api/sync", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 202
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = client.get("/api/status").get_json()
        if len(status["repos"]) == 3 and all(r["last_success"] for r in status["repos"]):
            break
        time.sleep(0.3)
    else:
        pytest.fail(Path(ok.get_json()["log"]).read_text())
    assert status["ok"] is True


def _du(root: Path) -> int:
    """Allocated bytes of the regular files below root, computed independently (rglob)."""
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


@pytest.mark.slow
def test_disk_use_per_repo_in_status_json_text_and_page(mirror: Mirror) -> None:
    assert mirror.sync("--repo", "kubernetes").returncode == 0
    client = client_for(mirror)
    status = client.get("/api/status").get_json()
    jsonschema.validate(status, SCHEMA)
    use = status["disk_use"]
    tree = mirror.data / "repos" / "kubernetes"
    assert use["repos"] == {"kubernetes": _du(tree)}
    assert use["repos"]["kubernetes"] >= status["repos"][0]["bytes"] > 0  # packages + metadata
    assert use["registry_bytes"] is None  # registry.embedded is false in this config
    assert use["files_bytes"] == use["charts_bytes"] == 0
    assert 0 < use["filesystem"]["free_bytes"] <= use["filesystem"]["total_bytes"]

    # A file renamed into the tree (as every writer does) shows on the next request, even
    # though this worker measured the directory a moment ago.
    extra = tree / "repodata" / ".x.tmp"
    extra.write_bytes(b"x" * 100_000)
    extra.rename(tree / "repodata" / "extra.bin")
    again = client.get("/api/status").get_json()["disk_use"]["repos"]["kubernetes"]
    assert again == _du(tree) >= use["repos"]["kubernetes"] + 100_000

    from mirror.progress import human_bytes

    samples = metric_samples(client.get("/metrics").text)
    assert samples[("mirror_repo_disk_use_bytes", (("repo", "kubernetes"),))] == again
    text = mirror.run("status").stdout
    assert "repo kubernetes" in text and human_bytes(again) in text
    page = client.get("/").text
    disk = page.split('id="disk-use"')[1].split("</table>")[0]
    assert "repo kubernetes" in disk and human_bytes(again) in disk


def test_disk_use_of_registry_files_and_charts(tmp_path: Path) -> None:
    """The registry storage, files and charts trees, each walked (no sync needed: the
    numbers are about what lies on disk)."""
    (tmp_path / "repos").mkdir()
    (tmp_path / "mirror.yaml").write_text("data_dir: ./data\nregistry: {embedded: true}\n")
    data = tmp_path / "data"
    blobs = data / "registry" / "storage" / "docker" / "registry" / "v2" / "blobs" / "sha256"
    for i, size in enumerate((10_000, 200_000)):
        (blobs / f"{i:02x}").mkdir(parents=True)
        (blobs / f"{i:02x}" / "data").write_bytes(b"b" * size)
    (data / "files" / "tools").mkdir(parents=True)
    (data / "files" / "tools" / "helm.tgz").write_bytes(b"f" * 50_000)
    (data / "charts" / "stable").mkdir(parents=True)
    (data / "charts" / "stable" / "a-1.0.0.tgz").write_bytes(b"c" * 7_000)
    (data / "charts" / "stable" / "link").symlink_to("/usr")  # never followed
    client = create_app(load_config(tmp_path / "mirror.yaml")).test_client()
    status = client.get("/api/status").get_json()
    jsonschema.validate(status, SCHEMA)
    use = status["disk_use"]
    assert use["registry_bytes"] == _du(data / "registry" / "storage") >= 210_000
    assert use["files_bytes"] == _du(data / "files") >= 50_000
    assert use["charts_bytes"] == _du(data / "charts") < 1_000_000
    assert use["repos"] == {} and use["repos_bytes"] == 0
    page = client.get("/").text
    assert "registry storage" in page.split('id="disk-use"')[1]
    samples = metric_samples(client.get("/metrics").text)
    assert samples[("mirror_disk_use_bytes", (("area", "registry"),))] == use["registry_bytes"]
    assert samples[("mirror_disk_use_bytes", (("area", "files"),))] == use["files_bytes"]
    assert samples[("mirror_data_dir_free_bytes", ())] > 0


def test_disk_use_cache_follows_renames_and_removals(tmp_path: Path) -> None:
    """Directories unchanged since the last walk are not re-statted (their mtimes set in the
    past here, so the cache is used); a rename in or an unlink out changes the directory's
    mtime, and the next walk counts it."""
    import os

    from mirror.diskuse import tree_bytes

    root = tmp_path / "tree"
    for i in range(3):
        (root / f"d{i}").mkdir(parents=True)
        (root / f"d{i}" / "a.rpm").write_bytes(b"a" * 10_000)
    old = time.time() - 3600
    for directory in [root, *root.iterdir()]:
        os.utime(directory, (old, old))
    first = tree_bytes(root)
    assert first == _du(root) and tree_bytes(root) == first  # second walk: from the cache
    staged = tmp_path / "new.part"
    staged.write_bytes(b"n" * 50_000)
    staged.rename(root / "d1" / "new.rpm")
    assert tree_bytes(root) == _du(root) > first
    (root / "d2" / "a.rpm").unlink()
    assert tree_bytes(root) == _du(root)
    os.rename(root / "d0", tmp_path / "gone")  # a whole directory leaves the tree
    assert tree_bytes(root) == _du(root)
