"""Issue 11 end to end: `mirror export` on a connected side, `mirror import` on sides with
empty data dirs and registries of their own, the upstreams stopped.

Built once per module (the expensive part): real yum upstreams (rpmbuild, signed), a real
distribution registry with multi-arch images, a files and a chart upstream, an outside
mirror synced from them with its embedded registry. Exports made outside: a full one, split
and zstd variants, then (after upstream changes: a new kubeadm, a moved image tag, a new
image sharing every blob with one of the base, a changed file, a new chart version) a delta
on the full one and a full export of the new state. Then every upstream is stopped and the
tests import.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import K8S_REL, free_port, stop_process, wait_http
from tests.fixtures import DnfRoot, GpgKey, Pkg, UpstreamServer, add_package
from tests.fixtures.helmrepo import HelmRepo
from tests.fixtures.registry import (
    manifest_digest,
    push_image,
    start_registry,
    write_registries_conf,
)

pytestmark = pytest.mark.slow

IMAGES = ["docker.io/library/nginx:1.25", "registry.k8s.io/pause:3.9"]
NEW_IMAGE = "docker.io/library/busybox:1.36"  # pushed with pause's content: every blob shared


@dataclass
class Side:
    """One mirror (config, data dir, registry port) driven through the real CLI."""

    dir: Path
    port: int
    registry_port: int

    @property
    def config(self) -> Path:
        return self.dir / "mirror.yaml"

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    def write(self, **extra: object) -> Side:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "repos").mkdir(exist_ok=True)
        raw: dict[str, object] = {
            "data_dir": "./data",
            "base_url": f"http://127.0.0.1:{self.port}",
            "repos_dir": "./repos",
            "releasever": ["9"],
            "basearch": ["x86_64"],
            "http_timeout": 10,
            "http_retries": 1,
            "images_file": None,
            "platforms": "all",
            "registry": {"url": self.registry, "embedded": True},
            **extra,
        }
        self.config.write_text(yaml.safe_dump(raw))
        return self

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mirror", "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.dir,
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args)
        assert proc.returncode == 0, (
            f"mirror {' '.join(args)}: {proc.returncode}\n{proc.stderr[-4000:]}"
        )
        return proc

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = (self.dir / f"{args[0]}.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "mirror", "-c", str(self.config), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,
        )


def inside(tmp: Path, name: str, **extra: object) -> Side:
    return Side(tmp / name, free_port(), free_port()).write(**extra)


def digests(side: Side) -> dict[str, str]:
    """Image record key -> digest, from the side's state."""
    found = {}
    for path in (side.data / "state" / "images").glob("*.json"):
        record = json.loads(path.read_text())
        found[record["key"]] = record["digest"]
    return found


def tree(root: Path) -> dict[str, str]:
    """relpath -> sha256 of every non-hidden file below root."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(p.startswith(".") for p in rel.parts):
            out[rel.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@dataclass
class Exports:
    outside: Side
    dir: Path
    tmp: Path
    key: GpgKey
    before: dict[str, str]  # image digests of the base state
    after: dict[str, str]  # ... and of the new state
    files_before: dict[str, str]
    charts_before: dict[str, bytes]  # the outside's published charts tree

    def path(self, name: str) -> Path:
        return self.dir / name


def _upstream_content(root: Path, charts: HelmRepo, files: Path) -> None:
    files.mkdir(parents=True, exist_ok=True)
    (files / "big.bin").write_bytes(random.Random(11).randbytes(3 << 20))  # stays the same
    (files / "notes.txt").write_text("release notes v1\n")
    charts.add("demo", "1.0.0")
    charts.write_index()


@pytest.fixture(scope="module")
def exports(
    tmp_path_factory: pytest.TempPathFactory, pristine_upstream: Path, gpg_key: GpgKey
) -> Iterator[Exports]:
    tmp = tmp_path_factory.mktemp("transfer")
    root = tmp / "upstream"
    shutil.copytree(pristine_upstream, root)
    charts = HelmRepo(root / "stable")
    _upstream_content(root, charts, root / "dl")
    server = UpstreamServer(root).start()
    registry = start_registry(tmp / "upreg")
    work = tmp / "work"
    try:
        for ref in IMAGES:
            push_image(registry, ref, work)
        out = Side(tmp / "outside", free_port(), free_port())
        out.dir.mkdir(parents=True)
        k8s = server.url_for(root / K8S_REL)
        repos = out.dir / "repos"
        repos.mkdir()
        (repos / "kubernetes.repo").write_text(
            f"[kubernetes]\nname=Kubernetes\nbaseurl={k8s}/\nenabled=1\ngpgcheck=1\n"
            f"repo_gpgcheck=1\ngpgkey={k8s}/repodata/repomd.xml.key\n"
            "exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n"
        )
        (repos / "docker-ce.repo").write_text(
            "[docker-ce-stable]\nname=Docker CE Stable - $basearch\n"
            f"baseurl={server.url}/linux/centos/$releasever/$basearch/stable\n"
            f"enabled=1\ngpgcheck=1\ngpgkey={server.url}/docker.gpg\n"
        )
        write_registries_conf(out.dir / "registries.conf", registry)
        images_txt = out.dir / "images.txt"
        images_txt.write_text("\n".join(IMAGES) + "\n")
        out.write(
            images_file="./images.txt",
            upstream={"registries_conf": "./registries.conf"},
            files=[
                {"url": f"{server.url}/dl/big.bin", "path": "tools/big.bin"},
                {"url": f"{server.url}/dl/notes.txt", "path": "tools/notes.txt"},
            ],
            charts=[{"repo": f"{server.url}/stable", "name": "demo", "newest": 3}],
        )
        dest = tmp / "usb"
        out.ok("sync")
        before = digests(out)
        files_before = tree(out.data / "files")
        charts_before = {
            p: (out.data / "charts" / p).read_bytes() for p in tree(out.data / "charts")
        }
        out.ok("export", str(dest / "base.tar"))
        out.ok("export", str(dest / "split.tar"), "--split-size", "256K")
        out.ok("export", str(dest / "base.tar.zst"), "--zstd")

        # Upstream changes: a new kubeadm, a moved tag, a new image made of base blobs, a
        # changed file, a new chart version.
        add_package(
            root / K8S_REL, Pkg("kubeadm", "1.28.3"), "x86_64", gpg_key, work, subdir="x86_64"
        )
        push_image(registry, IMAGES[0], work, seed="nginx moved")
        push_image(registry, NEW_IMAGE, work, seed=IMAGES[1])
        images_txt.write_text("\n".join([*IMAGES, NEW_IMAGE]) + "\n")
        (root / "dl" / "notes.txt").write_text("release notes v2\n")
        charts.add("demo", "1.1.0")
        charts.write_index()
        out.ok("sync")
        after = digests(out)
        out.ok("export", "--since", str(dest / "base.tar"), str(dest / "delta.tar"))
        # The base may also be given as its split parts, or as its manifest.json alone.
        out.ok("export", "--since", str(dest / "split.tar"), str(dest / "delta-split.tar"))
        (dest / "base-manifest.json").write_bytes(_raw_manifest(dest / "base.tar"))
        out.ok("export", "--since", str(dest / "base-manifest.json"), str(dest / "delta-json.tar"))
        out.ok("export", str(dest / "full2.tar"))
    finally:
        # Every upstream stops before any import: the tests below import with them gone.
        server.stop()
        registry.stop()
    yield Exports(out, dest, tmp, gpg_key, before, after, files_before, charts_before)


def test_archive_is_plain_tar_with_manifest_first(exports: Exports) -> None:
    with tarfile.open(exports.path("base.tar")) as tar:
        names = tar.getnames()
        handle = tar.extractfile("manifest.json")
        assert handle is not None
        manifest = json.loads(handle.read())
    assert names[0] == "manifest.json"
    assert manifest["base"] is None and manifest["format"] == 1
    assert "kubernetes" in {r["key"] for r in manifest["repos"]}
    tops = {m["path"].split("/")[0] for m in manifest["members"]}
    assert tops == {"definitions", "repos", "keys", "state", "oci", "files", "charts"}
    assert set(names[1:]) == {m["path"] for m in manifest["members"] if m["carried"]}
    # Blobs of the two images are stored once each, however many platforms name them.
    blobs = [n for n in names if n.startswith("oci/blobs/")]
    assert len(blobs) == len(set(blobs))
    # Split parts are the one stream cut in pieces.
    parts = sorted(exports.dir.glob("split.tar.*"))
    assert len(parts) > 3
    # Ordinary tools read them: GNU tar, and tar with zstd for the --zstd export.
    listed = subprocess.run(
        ["tar", "-tf", str(exports.path("base.tar"))], capture_output=True, text=True
    )
    assert listed.stdout.split() == names
    if shutil.which("zstd"):
        zst = subprocess.run(
            ["tar", "--zstd", "-tf", str(exports.path("base.tar.zst"))],
            capture_output=True,
            text=True,
        )
        assert zst.returncode == 0 and zst.stdout.split()[0] == "manifest.json"
    joined = io.BytesIO(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(fileobj=joined) as tar:
        assert tar.getnames() == names  # same state, same members, in the same order


def _serve(side: Side) -> subprocess.Popen[bytes]:
    proc = side.start(
        "serve", "--bind", f"127.0.0.1:{side.port}", "--workers", "2", "--frontend", "gunicorn"
    )
    wait_http(f"http://127.0.0.1:{side.port}/healthz")
    return proc


def test_full_import_serves_everything_upstreams_stopped(exports: Exports, tmp_path: Path) -> None:
    side = inside(tmp_path, "inside")  # its own base_url, registry.url and empty data_dir
    done = side.ok("import", str(exports.path("base.tar")))
    assert "imported" in done.stdout
    assert "import base.tar: verifying" in done.stderr  # progress as log lines (no terminal)
    # The .repo definitions came with the archive; status names the archive.
    assert {p.name for p in (side.dir / "repos").glob("*.repo")} == {
        "kubernetes.repo",
        "docker-ce.repo",
    }
    status = side.ok("status")
    assert "base.tar" in status.stdout
    doc = json.loads(side.ok("status", "--json").stdout)
    assert doc["last_import"]["archive"] == "base.tar"
    assert {r["upstream"] for r in doc["images"]} == set(exports.before)
    proc = _serve(side)
    try:
        base = f"http://127.0.0.1:{side.port}"
        page = requests.get(f"{base}/", timeout=10).text
        assert 'id="last-import"' in page and "base.tar" in page
        text = requests.get(f"{base}/repofiles/mirror.repo", timeout=10).text
        assert f"baseurl={base}/repos/kubernetes/" in text and "repo_gpgcheck=1" in text
        with DnfRoot(tmp_path / "node") as node:
            (node.reposdir / "mirror.repo").write_text(text)
            node.install("--disableexcludes=kubernetes", "kubeadm", "containerd.io")
            assert "kubeadm-1.28.2" in " ".join(node.installed())
            assert any(n.startswith("gpg-pubkey-") for n in node.installed())
        wait_http(f"http://{side.registry}/v2/")
        for ref in IMAGES:
            assert manifest_digest(f"{side.registry}/{ref}") == exports.before[ref]
        for rel, sha in exports.files_before.items():
            body = requests.get(f"{base}/files/{rel}", timeout=10).content
            assert hashlib.sha256(body).hexdigest() == sha, rel
        # Chart tarballs byte for byte; the index names them on this side's base_url.
        outside_base = f"http://127.0.0.1:{exports.outside.port}"
        for rel, data in exports.charts_before.items():
            body = requests.get(f"{base}/charts/{rel}", timeout=10).content
            assert body == data.replace(outside_base.encode(), base.encode()), rel
        index = yaml.safe_load(requests.get(f"{base}/charts/stable/index.yaml", timeout=10).text)
        assert index["entries"]["demo"][0]["urls"] == [f"{base}/charts/stable/demo-1.0.0.tgz"]
    finally:
        stop_process(proc)


def _manifest(path: Path) -> dict[str, object]:
    with tarfile.open(path) as tar:
        handle = tar.extractfile("manifest.json")
        assert handle is not None
        data: dict[str, object] = json.loads(handle.read())
    return data


def _state_of(side: Side, name: str) -> tuple[list[tuple[str, int, str]], list[object]]:
    """What `mirror export` on the side lists: members (without the state/ records, whose
    times differ) and images; the export itself copies every image out of the side's
    registry and checks its digest."""
    side.ok("export", str(side.dir / name))
    doc = _manifest(side.dir / name)
    members = doc["members"]
    assert isinstance(members, list)
    rows = sorted(
        (m["path"], m["size"], m["sha256"]) for m in members if not m["path"].startswith("state/")
    )
    images = doc["images"]
    assert isinstance(images, list)
    return rows, images


def test_delta_after_split_base_reproduces_the_full_state(exports: Exports, tmp_path: Path) -> None:
    delta, full = exports.path("delta.tar"), exports.path("full2.tar")
    # Much smaller: the unchanged 3 MiB file, packages and blobs stay with the base.
    assert delta.stat().st_size * 5 < full.stat().st_size
    doc = _manifest(delta)
    assert doc["base"] == doc["base"] | {
        "file": "base.tar",
        "sha256": hashlib.sha256(_raw_manifest(exports.path("base.tar"))).hexdigest(),
    }
    members = {m["path"]: m for m in doc["members"]}  # type: ignore[union-attr]
    assert not members["files/tools/big.bin"]["carried"]
    assert members["files/tools/notes.txt"]["carried"]
    busybox = next(i for i in doc["images"] if i["key"] == NEW_IMAGE)  # type: ignore[union-attr]
    # Every blob of the new image is the base's: the import must fetch them back.
    assert busybox["blobs"] and all(
        not members[f"oci/blobs/sha256/{b.split(':')[1]}"]["carried"] for b in busybox["blobs"]
    )

    for other, base_file in (
        ("delta-split.tar", "split.tar"),
        ("delta-json.tar", "base-manifest.json"),
    ):
        same = _manifest(exports.path(other))
        assert same["base"]["file"] == base_file  # type: ignore[index]
        carried = {m["path"] for m in same["members"] if m["carried"]}  # type: ignore[union-attr]
        assert carried == {p for p, m in members.items() if m["carried"]}

    merged = inside(tmp_path, "merged")
    parts = sorted(exports.dir.glob("split.tar.*"))
    random.Random(3).shuffle(parts)
    assert parts != sorted(parts)
    merged.ok("import", *map(str, parts))
    merged.ok("import", str(delta))
    again = merged.ok("import", str(delta))  # applying it twice is harmless
    assert "imported" in again.stdout
    assert digests(merged) == exports.after

    # Same base_url (chart indexes name it), its own data_dir and registry.
    fresh = Side(tmp_path / "fresh", merged.port, free_port()).write()
    fresh.ok("import", str(full))
    (merged_members, merged_images), (fresh_members, fresh_images) = (
        _state_of(merged, "check.tar"),
        _state_of(fresh, "check.tar"),
    )
    assert set(merged_members) ^ set(fresh_members) == set()
    assert merged_images == fresh_images
    rpms = [p.name for p in (merged.data / "repos" / "kubernetes").rglob("kubeadm-*.rpm")]
    assert any("1.28.3" in n for n in rpms)


def _raw_manifest(path: Path) -> bytes:
    with tarfile.open(path) as tar:
        handle = tar.extractfile("manifest.json")
        assert handle is not None
        return handle.read()


def _served_state(side: Side) -> dict[str, str]:
    """Everything nodes are served from, plus the last import record."""
    found = {}
    for top in ("repos", "keys", "files", "charts"):
        found.update({f"{top}/{k}": v for k, v in tree(side.data / top).items()})
    found["last_import"] = (side.data / "state" / "transfer" / "last_import.json").read_text()
    return found


def _refused(side: Side, *files: Path) -> str:
    before = _served_state(side)
    proc = side.run("import", *map(str, files))
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mirror: error:")]
    assert len(lines) == 1, proc.stderr
    assert _served_state(side) == before  # the previous state keeps serving
    assert not (side.data / ".staging" / "import").exists()
    return lines[0]


def _craft(dest: Path, manifest: dict[str, object], extra: dict[str, bytes]) -> Path:
    with tarfile.open(dest, "w") as tar:
        for name, data in {"manifest.json": json.dumps(manifest).encode(), **extra}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


def _without(src: Path, dest: Path, drop: str) -> Path:
    """A copy of the archive `src` without member `drop`, in its manifest.json as well."""
    with tarfile.open(src) as tar, tarfile.open(dest, "w") as out:
        for info in tar:
            handle = tar.extractfile(info)
            assert handle is not None
            data = handle.read()
            if info.name == "manifest.json":
                doc = json.loads(data)
                doc["members"] = [m for m in doc["members"] if m["path"] != drop]
                data = json.dumps(doc).encode()
            elif info.name == drop:
                continue
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return dest


@pytest.mark.reliability
def test_damaged_archives_are_refused_and_the_previous_state_keeps_serving(
    exports: Exports, tmp_path: Path
) -> None:
    side = inside(tmp_path, "inside")
    side.ok("import", str(exports.path("base.tar.zst")))
    bad = tmp_path / "bad"
    bad.mkdir()

    # A flipped byte inside a member: named with its file and member.
    flipped = bad / "flipped.tar"
    shutil.copyfile(exports.path("base.tar"), flipped)
    with tarfile.open(flipped) as tar:
        offset = tar.getmember("files/tools/big.bin").offset_data + 1000
    with flipped.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    line = _refused(side, flipped)
    assert "flipped.tar" in line and "files/tools/big.bin" in line and "sha256" in line

    # Split parts: one truncated, one missing in the middle, the last one missing.
    parts = sorted(exports.dir.glob("split.tar.*"))
    copies = []
    for part in parts:
        copies.append(bad / part.name)
        shutil.copyfile(part, copies[-1])
    with copies[-2].open("r+b") as handle:
        handle.truncate(copies[-2].stat().st_size // 2)
    assert "truncated" in _refused(side, *copies)
    assert "split.tar.001: missing part" in _refused(side, copies[0], *copies[2:])
    line = _refused(side, *parts[:-1])
    assert "truncated" in line and "missing" in line

    # A member the manifest does not list, and a manifest naming a path outside its tree.
    manifest = _manifest(exports.path("base.tar"))
    line = _refused(side, _craft(bad / "extra.tar", manifest, {"repos/kubernetes/evil.rpm": b"x"}))
    assert "repos/kubernetes/evil.rpm is not in manifest.json" in line
    evil = dict(manifest)
    evil["members"] = [
        {"path": "../../etc/cron.d/x", "size": 1, "sha256": "0" * 64, "carried": True}
    ]
    assert "refusing member path '../../etc/cron.d/x'" in _refused(
        side, _craft(bad / "dots.tar", evil, {})
    )
    # repo_gpgcheck=1 and the archive has no repomd.xml.asc (member and manifest line gone):
    # refused naming the repo, as a sync refuses it.
    asc = "repos/kubernetes/repodata/repomd.xml.asc"
    line = _refused(side, _without(exports.path("base.tar"), bad / "unsigned.tar", asc))
    assert "unsigned.tar: repo kubernetes: repo_gpgcheck=1" in line and "repomd.xml.asc" in line
    # Not an export at all.
    (bad / "plain.tar").write_bytes(b"\0" * 10240)
    assert "manifest.json is not the first member" in _refused(side, bad / "plain.tar")

    # The delta's base is base.tar; this side imported base.tar.zst (another export, same
    # state): accepted. A side that imported nothing (or another state) is told what to import.
    empty = inside(tmp_path, "empty")
    empty.ok("import", str(exports.path("full2.tar")))
    line = _refused(empty, exports.path("delta.tar"))
    assert "delta on base.tar" in line and "import base.tar first" in line
    side.ok("import", str(exports.path("delta.tar")))
    assert digests(side) == exports.after


def test_newest_n_applies_on_import(exports: Exports, tmp_path: Path) -> None:
    side = inside(tmp_path, "inside", repo_filters={"kubernetes": {"newest": 1}})
    side.ok("import", str(exports.path("full2.tar")))
    kubeadm = sorted(
        p.name for p in (side.data / "repos" / "kubernetes").rglob("kubeadm-*.x86_64.rpm")
    )
    assert len(kubeadm) == 1 and "1.28.3" in kubeadm[0]
    outside = sorted(
        p.name
        for p in (exports.outside.data / "repos" / "kubernetes").rglob("kubeadm-*.x86_64.rpm")
    )
    assert len(outside) > 1
    # The regenerated metadata is unsigned: the rendered .repo says so (as after a sync).
    repofile = (side.data / "www" / "repofiles" / "mirror.repo").read_text()
    assert "repo_gpgcheck=0" in repofile.split("[kubernetes]")[1].split("[")[0]
    before = tree(side.data / "repos")
    dry = side.ok("import", "--dry-run", str(exports.path("base.tar")))
    assert "dry run, nothing published" in dry.stdout and tree(side.data / "repos") == before


@pytest.mark.reliability
def test_an_archive_larger_than_the_free_disk_is_refused_before_staging(
    exports: Exports, tmp_path: Path
) -> None:
    side = inside(tmp_path, "inside")
    side.data.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(side.data)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.decode().strip()}")
    try:
        proc = side.run("import", str(exports.path("base.tar")))
        assert proc.returncode == 1, proc.stderr
        assert "base.tar: needs" in proc.stderr and "nothing was imported" in proc.stderr
        assert (
            not (side.data / "repos").exists() and not (side.data / ".staging" / "import").exists()
        )
    finally:
        subprocess.run(["umount", "-l", str(side.data)], check=False)


@pytest.mark.reliability
def test_registry_down_refuses_before_publishing_and_a_rerun_imports(
    exports: Exports, tmp_path: Path
) -> None:
    side = inside(tmp_path, "inside")
    side.write(registry={"url": side.registry, "embedded": False})  # nothing answers there
    proc = side.run("import", str(exports.path("base.tar")))
    assert proc.returncode == 3, proc.stderr
    assert f"registry {side.registry} does not answer" in proc.stderr
    assert (
        not (side.data / "repos").exists() and not (side.dir / "repos" / "kubernetes.repo").exists()
    )
    assert not (side.data / ".staging" / "import").exists()
    side.write()  # the embedded registry again, but no programs on PATH: exit 3 too
    env = {**os.environ, "PATH": str(tmp_path / "nothing-here")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mirror",
            "-c",
            str(side.config),
            "import",
            str(exports.path("base.tar")),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert not (side.data / "repos").exists()
    # With the programs back, the same command imports everything.
    side.ok("import", str(exports.path("base.tar")))
    assert digests(side) == exports.before
    assert (side.data / "repos" / "kubernetes" / "repodata" / "repomd.xml").is_file()


@pytest.mark.reliability
def test_a_delta_refuses_when_base_content_is_gone(exports: Exports, tmp_path: Path) -> None:
    side = inside(tmp_path, "inside")
    side.ok("import", str(exports.path("base.tar")))
    (side.data / "files" / "tools" / "big.bin").write_bytes(b"edited by hand")
    line = _refused(side, exports.path("delta.tar"))
    assert "files/tools/big.bin is expected from base.tar but not published here" in line
    (side.data / "files" / "tools" / "big.bin").unlink()
    rpm = next((side.data / "repos" / "kubernetes").rglob("kubectl-*.x86_64.rpm"))
    rpm.unlink()
    line = _refused(side, exports.path("delta.tar"))
    assert f"package x86_64/{rpm.name} is neither in the archive nor published here" in line


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.decode().strip()}")


def _blob_archive(dest: Path, data: bytes) -> Path:
    """An archive carrying one image blob of `data` (a real member, right sha256)."""
    sha = hashlib.sha256(data).hexdigest()
    manifest = {
        "mirror_version": "test",
        "created": "2026-12-01T00:00:00+00:00",
        "config_file": "",
        "config_sha256": "0" * 64,
        "config_text": "",
        "registry": "127.0.0.1:5000",
        "base_url": "http://127.0.0.1:8080",
        "members": [{"path": f"oci/blobs/sha256/{sha}", "size": len(data), "sha256": sha}],
    }
    return _craft(dest, manifest, {f"oci/blobs/sha256/{sha}": data})


@pytest.mark.reliability
def test_image_blobs_count_twice_when_the_embedded_registry_stores_on_the_same_disk(
    tmp_path: Path,
) -> None:
    """1.2 MiB of blobs fit a 2 MiB data_dir once, not twice: staged, then pushed into the
    embedded registry's filesystem storage under data_dir. An external registry stores them
    elsewhere: then the same archive fits."""
    archive_file = _blob_archive(tmp_path / "blobs.tar", random.Random(4).randbytes(1200 << 10))
    side = inside(tmp_path, "inside")
    _mount_tmpfs(side.data, "2m")
    try:
        proc = side.run("import", str(archive_file))
        assert proc.returncode == 1, proc.stderr
        assert "blobs.tar: needs 2.3 MiB under data_dir" in proc.stderr
        assert "nothing was imported" in proc.stderr
        assert not (side.data / ".staging" / "import").exists()
        side.write(registry={"url": side.registry, "embedded": False})
        side.ok("import", str(archive_file))
    finally:
        subprocess.run(["umount", "-l", str(side.data)], check=False)


def _registry_up(side: Side) -> subprocess.Popen[bytes]:
    """The side's embedded registry in the foreground (`mirror registry`), for clients."""
    proc = side.start("registry")
    wait_http(f"http://{side.registry}/v2/")
    return proc


def _images_txt(side: Side) -> dict[str, str]:
    """upstream -> mirrored@digest, from the side's rendered /images.txt."""
    text = (side.data / "www" / "images.txt").read_text()
    rows = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
    return {upstream: mirrored for upstream, mirrored in rows}


def test_import_names_images_by_the_importing_sides_layout(
    exports: Exports, tmp_path: Path
) -> None:
    """Images land where the importing side's config says (its registry.url, path prefix and
    layout), whatever the exporting side's were, as its own sync would name them; the
    kubeadm image lists cached at sync time travel along (issue 11 review, items 1 and 5)."""
    from mirror.config import load_config
    from mirror.kubernetes.kubeadm_binary import BinaryList, load_cached, save_cached

    # Nested, no prefix (the outside) -> flat below a path prefix.
    flat = inside(tmp_path, "flat")
    flat.write(registry={"url": f"{flat.registry}/site", "embedded": True, "layout": "flat"})
    flat.ok("import", str(exports.path("base.tar")))
    names = {
        IMAGES[0]: f"{flat.registry}/site/nginx:1.25",
        IMAGES[1]: f"{flat.registry}/site/pause:3.9",
    }
    records = {
        json.loads(p.read_text())["key"]: json.loads(p.read_text())["mirrored"]
        for p in (flat.data / "state" / "images").glob("*.json")
    }
    assert records == {ref: [name] for ref, name in names.items()}
    assert _images_txt(flat) == {r: f"{n}@{exports.before[r]}" for r, n in names.items()}
    # No kubeadm binary here: the list a sync's kubeadm run would cache is saved the way the
    # sync saves it, then exported with the rest.
    listed = BinaryList("v1.28.2", ("registry.k8s.io/pause:3.9",), "kubeadm-1.28.2", "c" * 64)
    save_cached(load_config(flat.config), listed)
    proc = _registry_up(flat)
    try:
        for ref, name in names.items():
            assert manifest_digest(name) == exports.before[ref]
        flat.ok("export", str(tmp_path / "flat.tar"))  # copies out of the flat names
    finally:
        stop_process(proc)

    # Flat with a prefix -> the default nested layout.
    nested = inside(tmp_path, "nested")
    nested.ok("import", str(tmp_path / "flat.tar"))
    assert digests(nested) == exports.before
    assert _images_txt(nested) == {
        ref: f"{nested.registry}/{ref}@{digest}" for ref, digest in exports.before.items()
    }
    proc = _registry_up(nested)
    try:
        for ref in IMAGES:
            assert manifest_digest(f"{nested.registry}/{ref}") == exports.before[ref]
    finally:
        stop_process(proc)
    assert load_cached(load_config(nested.config), "v1.28.2") == listed


def test_delta_into_a_registry_that_wants_credentials(exports: Exports, tmp_path: Path) -> None:
    """The importing side's registry is external, TLS with its own CA and htpasswd: the blobs
    a delta shares with its base are read back with the authfile and the CA."""
    import base64

    from tests.fixtures.registry import htpasswd_auth
    from tests.fixtures.testca import make_test_ca

    if shutil.which("htpasswd") is None:
        pytest.skip("htpasswd (apache2-utils) is needed")
    user, password = "importer", "s3cret-imp0rt"
    ca = make_test_ca(tmp_path / "pki", "site")
    registry = start_registry(
        tmp_path / "sitereg", auth=htpasswd_auth(tmp_path / "auth", user, password), tls=ca
    )
    try:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        authfile = tmp_path / "auth.json"
        authfile.write_text(json.dumps({"auths": {registry.host: {"auth": token}}}))
        side = inside(
            tmp_path,
            "inside",
            registry={
                "url": registry.host,
                "embedded": False,
                "authfile": str(authfile),
                "ca_file": str(ca.ca_cert),
            },
        )
        side.ok("import", str(exports.path("base.tar")))
        side.ok("import", str(exports.path("delta.tar")))
        assert digests(side) == exports.after
        cert_dir = tmp_path / "certs"
        cert_dir.mkdir()
        shutil.copy(ca.ca_cert, cert_dir / "ca.crt")
        for ref in [*IMAGES, NEW_IMAGE]:
            raw = subprocess.run(
                ["skopeo", "inspect", "--raw", "--no-tags", "--creds", f"{user}:{password}"]
                + ["--cert-dir", str(cert_dir), f"docker://{registry.host}/{ref}"],
                capture_output=True,
                check=True,
                timeout=60,
            ).stdout
            assert "sha256:" + hashlib.sha256(raw).hexdigest() == exports.after[ref]
    finally:
        registry.stop()


@pytest.mark.reliability
def test_a_delta_whose_base_blobs_left_the_registry_names_the_status(
    exports: Exports, tmp_path: Path
) -> None:
    side = inside(tmp_path, "inside")
    side.ok("import", str(exports.path("base.tar")))
    shutil.rmtree(side.data / "registry" / "storage")  # as if the registry had been reset
    line = _refused(side, exports.path("delta.tar"))
    assert "the delta expects from its base is not in registry" in line
    assert "the registry does not know it" in line and "import the base archive first" in line
