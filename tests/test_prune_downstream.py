"""`mirror prune` on a downstream node (B, `upstream_mirror: A`), with real nodes.

A (the conftest `mirror` fixture: a signed yum repo from the fixture upstream, plus a file
and a chart repository from fixture HTTP servers) syncs and runs `mirror serve` (nginx and
gunicorn). B syncs from A alone: A's repos (its .repo definitions, stored in
data_dir/state/downstream/), files and chart repositories, plus one file of its own.

What B plans from A's stored index is wanted exactly as B's sync plans it: pruning B removes
only B's own entry that left B's config, never what came from A (before, every file and chart
repo from A was removed). What A itself stops serving (pruned at A) goes from B at B's next
sync and prune. Without a usable stored index B cannot tell, and refuses.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mirror.web.nginx import find_nginx
from tests.conftest import Mirror, free_port
from tests.fixtures import UpstreamServer
from tests.fixtures.helmrepo import HelmRepo

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_nginx() is None, reason="nginx is needed for mirror serve"),
]


def _run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mirror", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=config.parent,
    )


def _write_b(config: Path, a: Mirror, own_files: list[dict[str, str]]) -> None:
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": "./data",
                "base_url": f"http://127.0.0.1:{free_port()}",
                "repos_dir": "./repos",
                "releasever": ["9"],
                "basearch": ["x86_64"],
                "http_timeout": 10,
                "http_retries": 1,
                "upstream_mirror": a.base_url,
                "registry": {"url": f"127.0.0.1:{free_port()}", "embedded": False},
                "files": own_files,
            }
        )
    )


def _removed(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    return sorted(x.split(" (")[0] for x in lines if x.startswith(("remove ", "would remove ")))


def test_prune_on_a_downstream_node_keeps_what_comes_from_the_upstream_mirror(
    tmp_path: Path, mirror: Mirror
) -> None:
    up = tmp_path / "up"
    (up / "tools").mkdir(parents=True)
    for name in ("a.txt", "a-gone.txt", "b-own.txt"):
        (up / "tools" / name).write_bytes(name.encode() * 500)
    for repo_name in ("stable", "extra"):
        repo = HelmRepo(up / "charts" / repo_name)
        repo.add(f"{repo_name}-chart", "1.0.0")
        repo.write_index()
    with UpstreamServer(up) as server:
        files = [
            {"url": f"{server.url}/tools/{n}", "path": f"tools/{n}"}
            for n in ("a.txt", "a-gone.txt")
        ]
        charts = [
            {"repo": f"{server.url}/charts/{n}", "name": f"{n}-chart", "newest": 1}
            for n in ("stable", "extra")
        ]
        mirror.basearch = ("x86_64",)
        mirror.extra_config = yaml.safe_dump({"files": files, "charts": charts})
        mirror.write()
        proc = mirror.sync()
        assert proc.returncode == 0, proc.stderr[-3000:]
        mirror.serve()

        b = tmp_path / "b" / "mirror.yaml"
        (b.parent / "repos").mkdir(parents=True)  # no repos of its own: all come from A
        own = {"url": f"{server.url}/tools/b-own.txt", "path": "own/b-own.txt"}
        _write_b(b, mirror, [own])
        proc = _run(b, "sync")
        assert proc.returncode == 0, proc.stderr[-3000:]
    data = b.parent / "data"
    from_a = [
        "files/tools/a.txt",
        "charts/stable/index.yaml",
        "repos/kubernetes/repodata/repomd.xml",
        "repos/docker-ce-stable/9/x86_64/repodata/repomd.xml",
    ]
    for path in [*from_a, "files/tools/a-gone.txt", "charts/extra/index.yaml"]:
        assert (data / path).is_file(), path
    assert (data / "state" / "downstream" / "index.json").is_file()

    # B's own file leaves B's config: that, and only that, goes.
    _write_b(b, mirror, [])
    assert _removed(_run(b, "prune", "--dry-run")) == ["would remove file own/b-own.txt"]
    assert _removed(_run(b, "prune")) == ["remove file own/b-own.txt"]
    assert not (data / "files" / "own" / "b-own.txt").exists()
    for path in [*from_a, "files/tools/a-gone.txt", "charts/extra/index.yaml"]:
        assert (data / path).is_file(), path

    # A stops serving a file and a chart repo (pruned at A); B's next sync stores A's new
    # index, and B's prune follows it.
    mirror.extra_config = yaml.safe_dump({"files": files[:1], "charts": charts[:1]})
    mirror.write()
    gone = ["remove chart repo extra", "remove file tools/a-gone.txt"]
    assert _removed(mirror.run("prune")) == gone
    proc = _run(b, "sync")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _removed(_run(b, "prune")) == gone
    for path in from_a:
        assert (data / path).is_file(), path
    status = json.loads(_run(b, "status", "--json").stdout)
    assert [f["key"] for f in status["files"]] == ["tools/a.txt"]
    assert [c["key"] for c in status["charts"]] == ["stable"]
    assert sorted(r["key"] for r in status["repos"]) == ["docker-ce-stable/9/x86_64", "kubernetes"]
    # No repos_dir at all (a downstream node may have none): A's repos are still wanted. A
    # repo of B's own may just be unmounted: kept, with a note; one A stopped serving goes.
    from mirror import state

    for key, upstream in [("own", "http://elsewhere.example/own"), ("gone", mirror.base_url)]:
        state.save(data / "state", "repos", state.RepoRecord(key, f"{upstream}/repos/{key}/"))
        (data / "repos" / key / "repodata").mkdir(parents=True)
        (data / "repos" / key / "repodata" / "repomd.xml").write_text("<repomd/>")
    (b.parent / "repos").rmdir()
    proc = _run(b, "prune")
    assert _removed(proc) == ["remove repo gone"]
    assert "repo own: not pruned, repos_dir" in proc.stdout + proc.stderr
    assert (data / "repos" / "own" / "repodata" / "repomd.xml").is_file()
    for path in from_a:
        assert (data / path).is_file(), path

    # Without the stored index B cannot tell A's content from stale: nothing is removed.
    shutil.rmtree(data / "state" / "downstream")
    before = sorted(p.relative_to(data) for p in data.rglob("*") if ".sync.lock" not in p.name)
    proc = _run(b, "prune")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"cannot tell what upstream_mirror {mirror.base_url} provides" in proc.stderr
    assert "nothing was pruned" in proc.stderr
    after = sorted(p.relative_to(data) for p in data.rglob("*") if ".sync.lock" not in p.name)
    assert after == before
