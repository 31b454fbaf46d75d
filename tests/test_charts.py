"""Helm chart repositories (issue 9, parts 3 and 4), end to end with the real CLI: fixture
chart repositories on loopback HTTP servers (one of them standing in for GitHub releases),
`mirror sync --only charts`, the published index.yaml read as a node would, the images the
charts reference."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirror.charts import semver
from mirror.charts.images import discovered_images, scan_chart
from mirror.config import load_config
from tests.conftest import Mirror
from tests.fixtures import UpstreamServer
from tests.fixtures.helmrepo import HelmRepo, chart_tgz

NGINX_VALUES: dict[str, Any] = {
    "controller": {
        "image": {
            "registry": "registry.k8s.io",
            "image": "ingress-nginx/controller",
            "tag": "v1.11.3",
            "digest": "",
        },
        "admissionWebhooks": {
            "patch": {
                "image": {"repository": "ingress-nginx/kube-webhook-certgen", "tag": "v1.4.4"}
            }
        },
    },
    "defaultBackend": {"image": "registry.k8s.io/defaultbackend-amd64:1.5"},
    "broken": {"image": {"repository": "Not A Ref!", "tag": "1"}},
    "templated": {"image": "{{ .Values.global.registry }}/x:1"},
}
CERT_DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def charts(tmp_path: Path, mirror: Mirror) -> Any:
    """Two upstreams: a chart repo at /stable/ and a 'releases' host the index points at."""
    up_root, rel_root = tmp_path / "chartrepo", tmp_path / "releases"
    with UpstreamServer(up_root) as up, UpstreamServer(rel_root) as rel:
        repo = HelmRepo(up_root / "stable")
        for version in ("4.10.0", "4.11.2", "4.12.0-beta.1", "4.11.3"):
            repo.add(
                "ingress-nginx",
                version,
                app_version=version.replace("4.", "1.", 1),
                images=[f"registry.k8s.io/ingress-nginx/controller:v{version}"],
                values=NGINX_VALUES,
            )
        repo.add(
            "cert-manager",
            "v1.15.0",
            url=f"{rel.url}/download/v1.15.0/cert-manager-v1.15.0.tgz",
            store=rel_root / "download" / "v1.15.0",
            app_version="v1.15.0",
            values={
                "image": {
                    "repository": "quay.io/jetstack/cert-manager-controller",
                    "tag": "",
                    "digest": CERT_DIGEST,
                },
                "webhook": {
                    "image": {"repository": "quay.io/jetstack/cert-manager-webhook", "tag": ""}
                },
            },
        )
        repo.write_index(mtime=time.time() - 100)
        mirror.extra_config = (
            "charts:\n"
            f"  - {{repo: '{up.url}/stable/', name: ingress-nginx, newest: 2}}\n"
            f"  - {{repo: '{up.url}/stable', name: cert-manager, versions: [v1.15.0]}}\n"
        )
        mirror.write()
        yield mirror, repo, up, rel


def _served(m: Mirror, path: str) -> bytes:
    """A file under /charts/ as a node gets it, through the app (its /charts/ route belongs
    to the files kind's web part: until that lands, read from data_dir)."""
    from mirror.web import create_app

    app = create_app(load_config(m.config))
    if any(rule.rule.startswith("/charts/") for rule in app.url_map.iter_rules()):
        reply = app.test_client().get(path)
        assert reply.status_code == 200, (path, reply.status_code)
        return bytes(reply.data)
    return (m.data / path.lstrip("/")).read_bytes()


def _served_index(m: Mirror, name: str) -> tuple[bytes, dict[str, Any]]:
    body = _served(m, f"/charts/{name}/index.yaml")
    return body, yaml.safe_load(body)


def test_sync_mirrors_charts_and_a_second_sync_is_one_request(charts: Any) -> None:
    m, _repo, up, rel = charts
    dry = m.sync("--only", "charts", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert not (m.data / "charts").exists()
    result = m.sync("--only", "charts")
    assert result.returncode == 0, result.stderr
    body, index = _served_index(m, "stable")
    entries = index["entries"]
    # newest: 2 skips the pre-release; cert-manager's exact version came from the other host.
    assert [e["version"] for e in entries["ingress-nginx"]] == ["4.11.3", "4.11.2"]
    assert [e["version"] for e in entries["cert-manager"]] == ["v1.15.0"]
    for entry in entries["ingress-nginx"] + entries["cert-manager"]:
        file = f"{entry['name']}-{entry['version']}.tgz"
        assert entry["urls"] == [f"{m.base_url}/charts/stable/{file}"]
        served = _served(m, entry["urls"][0].removeprefix(m.base_url))
        assert hashlib.sha256(served).hexdigest() == entry["digest"]
        assert entry["created"] == "2024-10-03T12:34:56.123456789Z"  # not re-typed
    published = m.data / "charts" / "stable"
    assert sorted(p.name for p in published.glob("*.tgz")) == [
        "cert-manager-v1.15.0.tgz",
        "ingress-nginx-4.11.2.tgz",
        "ingress-nginx-4.11.3.tgz",
    ]
    assert rel.count("/download/", "GET") == 1
    # Unparsable references in new tarballs: warnings naming chart, file and YAML path.
    assert "chart stable: ingress-nginx-4.11.3: values.yaml: broken.image: " in result.stderr
    status = json.loads(m.run("status", "--json").stdout)
    (row,) = status["charts"]
    assert row["key"] == "stable" and row["ok"] and row["versions"] == 3
    assert row["index_url"] == f"{m.base_url}/charts/stable/index.yaml"
    assert "registry.k8s.io/ingress-nginx/controller:v1.11.3" in row["charts"][0]["images"]
    lines = m.run("status").stdout
    assert "chart repo stable" in lines and "ingress-nginx-4.11.3" in lines, lines

    up.clear_log()
    rel.clear_log()
    again = m.sync("--only", "charts")
    assert again.returncode == 0, again.stderr
    assert up.requests == [("GET", "/stable/index.yaml", 304)]
    assert rel.requests == []
    assert _served_index(m, "stable")[0] == body


def test_images_found_in_charts_name_their_sources(charts: Any) -> None:
    m, *_ = charts
    assert m.sync("--only", "charts").returncode == 0
    warnings: list[str] = []
    found = {
        (str(ref), source)
        for ref, source in discovered_images(load_config(m.config), warnings.append)
    }
    values = "charts:ingress-nginx-4.11.3 (values.yaml)"
    assert ("registry.k8s.io/ingress-nginx/controller:v1.11.3", values) in found
    assert ("docker.io/ingress-nginx/kube-webhook-certgen:v1.4.4", values) in found
    assert ("registry.k8s.io/defaultbackend-amd64:1.5", values) in found
    assert (
        "registry.k8s.io/ingress-nginx/controller:v4.11.3",
        "charts:ingress-nginx-4.11.3 (Chart.yaml)",
    ) in found
    cert = "charts:cert-manager-v1.15.0 (values.yaml)"
    assert (f"quay.io/jetstack/cert-manager-controller@{CERT_DIGEST}", cert) in found
    assert ("quay.io/jetstack/cert-manager-webhook:v1.15.0", cert) in found  # appVersion
    assert not any("4.10.0" in source for _ref, source in found)  # not mirrored
    assert any("ingress-nginx-4.11.3: values.yaml: broken.image" in w for w in warnings), warnings
    assert any("templated.image" in w for w in warnings), warnings


def test_digest_mismatch_fails_the_repo_and_the_previous_index_keeps_serving(
    charts: Any,
) -> None:
    m, repo, up, _rel = charts
    assert m.sync("--only", "charts").returncode == 0
    before = _served_index(m, "stable")[0]
    repo.add("ingress-nginx", "4.11.4", digest="0" * 64, images=[])
    repo.write_index(mtime=time.time())
    result = m.sync("--only", "charts")
    assert result.returncode == 1
    summary = result.stderr.split("mirror sync: 1 failed:\n", 1)[1].splitlines()
    assert summary[0].strip().startswith("chart stable: ingress-nginx-4.11.4: sha256 mismatch")
    assert summary[0].strip().endswith("/stable/ingress-nginx-4.11.4.tgz)"), result.stderr
    assert _served_index(m, "stable")[0] == before
    assert not (m.data / "charts" / "stable" / "ingress-nginx-4.11.4.tgz").exists()


def test_newer_versions_replace_older_ones_one_generation_later(charts: Any) -> None:
    m, repo, _up, _rel = charts
    assert m.sync("--only", "charts").returncode == 0
    published = m.data / "charts" / "stable"
    repo.add("ingress-nginx", "4.11.4", images=[])
    repo.write_index(mtime=time.time())
    assert m.sync("--only", "charts").returncode == 0
    versions = [e["version"] for e in _served_index(m, "stable")[1]["entries"]["ingress-nginx"]]
    assert versions == ["4.11.4", "4.11.3"]
    assert (published / "ingress-nginx-4.11.2.tgz").exists()  # named by the previous index
    repo.add("ingress-nginx", "4.11.5", images=[])
    repo.write_index(mtime=time.time() + 5)
    assert m.sync("--only", "charts").returncode == 0
    assert not (published / "ingress-nginx-4.11.2.tgz").exists()
    assert (published / "ingress-nginx-4.11.3.tgz").exists()


@pytest.mark.parametrize(
    ("index", "message"),
    [
        (b"- just\n- a list\n", "index.yaml is not a chart repository index (top level is a list)"),
        (b"entries: [1, 2]\n", "index.yaml has no 'entries' mapping"),
        (b"entries: {a: [}\n", "index.yaml is not valid YAML"),
        (b"x" * (33 * 1024 * 1024), "index.yaml: larger than"),
        (None, "ingress-nginx-4.11.3: refusing url '../../etc/passwd.tgz' ('..' in path)"),
        (None, "ingress-nginx-4.11.3: refusing url 'file:///etc/passwd' (only http and https)"),
    ],
    ids=["list", "no-entries", "bad-yaml", "huge", "dotdot", "file-url"],
)
def test_hostile_index_is_refused_clearly(charts: Any, index: bytes | None, message: str) -> None:
    m, repo, _up, _rel = charts
    path = repo.root / "index.yaml"
    if index is not None:
        path.write_bytes(index)
    else:
        url = "../../etc/passwd.tgz" if "'..'" in message else "file:///etc/passwd"
        repo.entries["ingress-nginx"][0]["urls"] = [url]
        repo.write_index()
    result = m.sync("--only", "charts")
    assert result.returncode == 1
    assert f"chart stable: {message}" in result.stderr, result.stderr
    assert not (m.data / "charts" / "stable" / "index.yaml").exists()


def test_config_entries_are_validated(mirror: Mirror) -> None:
    mirror.extra_config = (
        "charts:\n  - {repo: 'http://127.0.0.1:1/x', name: a, versions: ['1.0.0'], newest: 1}\n"
    )
    mirror.write()
    result = mirror.sync("--only", "charts")
    assert result.returncode == 2
    assert "charts.0" in result.stderr and "exactly one of 'versions' and 'newest'" in result.stderr
    mirror.extra_config = "charts:\n  - {repo: 'http://h/x', name: a, newest: 1, repo_name: ../x}\n"
    mirror.write()
    result = mirror.sync("--only", "charts")
    assert result.returncode == 2 and "repo_name" in result.stderr
    mirror.extra_config = (
        "charts:\n  - {repo: 'http://a.example/charts', name: a, newest: 1}\n"
        "  - {repo: 'http://b.example/charts/', name: b, newest: 1}\n"
    )
    mirror.write()
    result = mirror.sync("--only", "charts")
    assert result.returncode == 2
    assert (
        "charts[1]: repos http://a.example/charts and http://b.example/charts would both "
        "publish /charts/charts/; set repo_name on one of them" in result.stderr
    )


def test_semver_precedence() -> None:
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "v1.2",
        "1.10.0",
    ]
    parsed = [semver.parse(v) for v in ordered]
    assert sorted(parsed) == parsed
    assert semver.parse("1.0.0+build.5").key() == semver.parse("1.0.0").key()
    with pytest.raises(semver.NotSemver):
        semver.parse("latest")


def test_scan_reads_subcharts_and_survives_a_bad_tarball(tmp_path: Path) -> None:
    sub = chart_tgz("redis", "1.0.0", values={"image": {"repository": "bitnami/redis", "tag": "7"}})
    data = chart_tgz(
        "app",
        "2.0.0",
        values={},
        extra={"charts/redis-1.0.0.tgz": sub, "charts/pg/values.yaml": b"image: postgres:16\n"},
    )
    (tmp_path / "app.tgz").write_bytes(data)
    found = {(str(r), s) for r, s in scan_chart(tmp_path / "app.tgz", "app-2.0.0").found}
    nested = "charts:app-2.0.0 (charts/redis-1.0.0.tgz/values.yaml)"
    assert ("docker.io/bitnami/redis:7", nested) in found, found
    assert ("docker.io/library/postgres:16", "charts:app-2.0.0 (charts/pg/values.yaml)") in found
    (tmp_path / "bad.tgz").write_bytes(b"\x1f\x8b" + b"junk" * 100)
    scanned = scan_chart(tmp_path / "bad.tgz", "bad-1")
    assert scanned.found == [] and "cannot read bad.tgz" in scanned.warnings[0]


def test_scan_stops_at_the_unpacked_size_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mirror.charts import images

    monkeypatch.setattr(images, "MAX_UNPACKED", 1 << 20)
    data = chart_tgz("big", "1.0.0", extra={"templates/zeros.yaml": bytes(2 << 20)})
    (tmp_path / "big.tgz").write_bytes(data)
    scanned = scan_chart(tmp_path / "big.tgz", "big-1.0.0")
    assert "unpacks to more than the limit" in scanned.warnings[0], scanned.warnings


def test_alias_bomb_in_the_index_is_refused(charts: Any) -> None:
    m, repo, _up, _rel = charts
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 9):
        prev, name = chr(ord("a") + n - 1), chr(ord("a") + n)
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    entry = repo.entries["ingress-nginx"][0]
    body = (
        "bomb:\n"
        + "".join(f"  {line}\n" for line in levels)
        + (
            "entries:\n  ingress-nginx:\n"
            f"  - {{name: ingress-nginx, version: '{entry['version']}', digest: {entry['digest']},"
            f" urls: [{entry['urls'][0]}], keywords: *i}}\n"
        )
    )
    (repo.root / "index.yaml").write_text(body)
    started = time.monotonic()
    result = m.sync("--only", "charts")
    assert result.returncode == 1
    assert f"chart stable: ingress-nginx-{entry['version']}: index entry too large" in result.stderr
    assert time.monotonic() - started < 15


def test_api_status_validates_and_metrics_name_the_repo(charts: Any) -> None:
    import jsonschema
    from prometheus_client.parser import text_string_to_metric_families

    from mirror.web import create_app

    m, *_ = charts
    assert m.sync("--only", "charts").returncode == 0
    client = create_app(load_config(m.config)).test_client()
    status = client.get("/api/status").get_json()
    schema = Path(__file__).resolve().parent.parent / "mirror/web/status_schema.json"
    jsonschema.validate(status, json.loads(schema.read_text()))
    assert [row["key"] for row in status["charts"]] == ["stable"]
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
    }
    assert samples[("mirror_chart_sync_ok", (("chart", "stable"),))] == 1.0
    assert samples[("mirror_chart_versions", (("chart", "stable"),))] == 3.0


def test_missing_versions_and_symlinks_fail_the_repo_clearly(charts: Any, tmp_path: Path) -> None:
    m, *_ = charts
    extra = m.extra_config
    m.extra_config = extra.replace("versions: [v1.15.0]", "versions: [v9.9.9]")
    m.write()
    result = m.sync("--only", "charts")
    assert result.returncode == 1
    assert "chart stable: cert-manager: version v9.9.9 not in index.yaml (" in result.stderr
    m.extra_config = extra
    m.write()
    outside = tmp_path / "outside"
    outside.mkdir()
    (m.data / "charts").mkdir(parents=True)
    (m.data / "charts" / "stable").symlink_to(outside)
    result = m.sync("--only", "charts")
    assert result.returncode == 1
    assert "chart stable: refusing to publish: " in result.stderr
    assert "is a symlink" in result.stderr and list(outside.iterdir()) == []


def test_a_rerun_after_a_failure_fetches_only_what_was_missing(charts: Any) -> None:
    m, repo, up, rel = charts
    cert = repo.entries["cert-manager"][0]
    good = cert["digest"]
    cert["digest"] = "f" * 64
    repo.write_index(mtime=time.time() - 50)
    result = m.sync("--only", "charts")
    assert result.returncode == 1 and "cert-manager-v1.15.0: sha256 mismatch" in result.stderr
    assert not (m.data / "charts" / "stable").exists()  # nothing of a failed repo is published
    cert["digest"] = good
    repo.write_index(mtime=time.time())
    up.clear_log()
    rel.clear_log()
    assert m.sync("--only", "charts").returncode == 0
    # The ingress-nginx tarballs verified by the failed run were kept in staging.
    assert up.requests == [("GET", "/stable/index.yaml", 200)]
    assert [path for _m, path, _s in rel.requests] == ["/download/v1.15.0/cert-manager-v1.15.0.tgz"]
    assert not (m.data / ".staging" / "charts" / "stable").exists()
