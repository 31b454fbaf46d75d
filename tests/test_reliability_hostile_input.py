"""Hostile input (issue 8, item 5): lying package sizes, images.txt and .repo files.

images.txt and .repo files are config: each bad one is refused by the real CLI with exit 2
and ONE line naming the file and the line (or section), before anything is done. A package
claiming 1 TB is refused before a byte is downloaded, naming the repo and the free space.
"""

from __future__ import annotations

import ast
import shutil
import uuid
from pathlib import Path

import createrepo_c as cr
import pytest

from mirror.errors import RepoSyncError
from mirror.images import skopeo
from mirror.repofile import parse_repo_file
from mirror.yum.metadata import PackageRef
from mirror.yum.plan import Plan, check_space
from tests.conftest import REPO_ROOT, Mirror
from tests.fixtures.hostile import rewrite_packages
from tests.test_config_errors import GOOD_REPO, assert_one_line_error, run_mirror, write

pytestmark = pytest.mark.reliability

TB = 10**12


def _pkg(size: int, name: str = "huge") -> PackageRef:
    return PackageRef(name, "0", "1", "1", "x86_64", f"{name}.rpm", "sha256", "ab" * 32, size)


# --------------------------------------------------------------------------------------------
# a package claiming 1 TB
# --------------------------------------------------------------------------------------------


def test_check_space_refuses_a_plan_larger_than_the_disk(tmp_path: Path) -> None:
    plan = Plan(selected=(_pkg(TB), _pkg(5, "small")), to_download=(_pkg(TB),), filtered=False)
    staging = tmp_path / "data" / ".staging" / "repos" / "kubernetes"  # not created yet
    free = shutil.disk_usage(tmp_path).free
    assert free < TB, "this test needs a disk with less than 1 TB free"
    with pytest.raises(RepoSyncError) as info:
        check_space("kubernetes", plan, staging, data_dir=tmp_path / "data")
    message = str(info.value)
    data = tmp_path / "data"
    assert message.startswith(f"repo kubernetes: no space left on device under data_dir ({data})")
    assert ": needs 931.3 GiB for 1 packages, only " in message and message.endswith(" free")
    assert not staging.exists()


def test_check_space_passes_what_fits(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    fits = Plan(selected=(_pkg(1024),), to_download=(_pkg(1024),), filtered=False)
    check_space("r", fits, tmp_path / "missing" / "dir")
    nothing = Plan(selected=(_pkg(TB),), to_download=(), filtered=False)
    check_space("r", nothing, tmp_path)  # already published: nothing to download
    with pytest.raises(RepoSyncError, match="needs"):
        check_space("r", fits, tmp_path, reserve=free)


def test_package_claiming_1tb_is_refused_before_download(mirror: Mirror) -> None:
    def mutate(pkgs: list[cr.Package]) -> None:
        pkgs[0].size_package = TB

    up = mirror.upstream
    rewrite_packages(up.k8s_repo, up.key, mutate)
    up.server.clear_log()
    proc = mirror.sync("--repo", "kubernetes")
    assert proc.returncode == 1, proc.stderr
    line = next(x for x in proc.stderr.splitlines() if "repo kubernetes:" in x)
    assert "no space left on device under data_dir" in line and "needs 931." in line, line
    assert up.server.count(method="GET") > 0
    assert not [path for _, path, _ in up.server.requests if path.endswith(".rpm")]
    assert not (mirror.data / "repos" / "kubernetes" / "repodata").exists()


# --------------------------------------------------------------------------------------------
# images.txt: shell metacharacters, junk; skopeo never through a shell
# --------------------------------------------------------------------------------------------


def _marker() -> Path:
    return Path("/tmp") / f"mirror-hostile-{uuid.uuid4().hex}"


HOSTILE_REFS = [
    "nginx:$(touch {m})",
    "$(touch {m})",
    "nginx:`touch {m}`",
    "nginx;touch {m}",
    "nginx|touch {m}",
    "nginx:1.25&&touch {m}",
    "nginx:1.25 touch {m}",
    "quay.io/x/y:1>{m}",
    "nginx'$(touch {m})'",
    "nginx:1.25\x0btouch {m}",  # vertical tab: a line break for str.splitlines()
    "nginx:1.25\u2028touch {m}",  # LINE SEPARATOR, likewise
    "nginx\x00{m}",
    "docker.io/library/nginx@sha256:$(touch {m})",
]


@pytest.mark.parametrize("template", HOSTILE_REFS)
def test_images_txt_shell_metacharacters_are_refused_at_parse(
    tmp_path: Path, template: str
) -> None:
    marker = _marker()
    cfg = write(tmp_path, "images_file: ./images.txt\nregistry: {url: '127.0.0.1:9'}\n")
    text = "# mirrored images\nnginx:1.25\n\n" + template.format(m=marker) + "\nbusybox:1.36\n"
    (tmp_path / "images.txt").write_text(text, encoding="utf-8")
    proc = run_mirror(tmp_path, "-c", str(cfg), "sync", "--only", "images")
    assert_one_line_error(proc, "images.txt: line 4")
    assert not marker.exists()


def test_images_txt_overlong_line_and_binary_are_refused(tmp_path: Path) -> None:
    cfg = write(tmp_path, "images_file: ./images.txt\nregistry: {url: '127.0.0.1:9'}\n")
    images = tmp_path / "images.txt"
    images.write_text("nginx:1.25\n" + "a" * 100_000 + "\n")
    proc = run_mirror(tmp_path, "-c", str(cfg), "sync", "--only", "images")
    assert_one_line_error(proc, "images.txt: line 2", "longer than 512 characters")
    assert len(proc.stderr) < 400
    images.write_bytes(b"nginx:1.25\n\xff\xfe\x00junk\n")
    proc = run_mirror(tmp_path, "-c", str(cfg), "sync", "--only", "images")
    assert_one_line_error(proc, "images.txt: line 2", "not UTF-8")


def test_skopeo_is_never_run_through_a_shell(tmp_path: Path) -> None:
    """Even a reference that bypassed parsing reaches skopeo as one argv element: skopeo
    itself refuses it and no shell ever sees `$(...)`, backticks or `;`."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    markers = [_marker() for _ in range(4)]
    src = f"127.0.0.1:9/x:$(touch {markers[0]})`touch {markers[1]}`"
    dest = f"127.0.0.1:9/y;touch {markers[2]}|touch {markers[3]}"
    with pytest.raises(skopeo.SkopeoError) as info:
        skopeo.copy(src, dest, all_platforms=True)
    assert "\n" not in str(info.value)
    assert not [m for m in markers if m.exists()]


def test_no_subprocess_in_mirror_uses_a_shell() -> None:
    """Static proof for every program we run (skopeo, gpg, rpmkeys, registry, gunicorn)."""
    offenders = []
    for path in sorted((REPO_ROOT / "mirror").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            if func in ("os.system", "os.popen", "asyncio.create_subprocess_shell"):
                offenders.append(f"{path}:{node.lineno}: {func}")
            for kw in node.keywords:
                if kw.arg == "shell" and not (
                    isinstance(kw.value, ast.Constant) and kw.value.value is False
                ):
                    offenders.append(f"{path}:{node.lineno}: shell={ast.unparse(kw.value)}")
    assert not offenders


# --------------------------------------------------------------------------------------------
# .repo files: odd sections and variables
# --------------------------------------------------------------------------------------------

BASE = "baseurl=http://127.0.0.1:9/base/\n"


@pytest.mark.parametrize(
    ("repo", "needles"),
    [
        ("[base]\n" + BASE + "\n[base]\n" + BASE, ["line 4", "duplicate section [base]"]),
        ("[base]\nbaseurl=http://x/$arch/\n", ["line 2", "[base]", "$arch is not supported"]),
        ("[base]\nbaseurl=http://x/$stream/\n", ["line 2", "$stream is not supported"]),
        ("[base]\nbaseurl=http://x/${releasever:-9}/\n", ["line 2", "unsupported variable"]),
        ("[base]\nbaseurl=http://x/$/\n", ["line 2", "unsupported variable syntax"]),
        ("[base]\n" + BASE + "gpgkey=http://k/$kver.gpg\n", ["line 3", "$kver"]),
        ("[base-$releasever]\n" + BASE, ["line 1", "[base-$releasever]", "variables"]),
        ("[base]\nname=" + "n" * 20_000 + "\n" + BASE, ["line 2", "longer than 8192"]),
        ("[base]\n" + BASE + "name=\x00\x01\x02\n", ["line 3", "control character 0x00"]),
        ("[base]\nname=Base\n\n[other]\n" + BASE, ["line 1", "[base]", "'baseurl' is missing"]),
        ("[base]\nbaseurl=http://x/my repo/\n", ["line 2", "unsupported URL 'repo/'", "%20"]),
        ("[base]\nbaseurl=http://x/a/\n  b/c\n", ["line 2", "unsupported URL 'b/c'"]),
        ("[base]\nbaseurl=http:///nohost/\n", ["line 2", "has no host"]),
        ("[base]\n" + BASE + "mirrorlist=http://m/list\n", ["line 3", "mirrorlist/metalink"]),
        ("[base]\nmetalink=http://m/ml?repo=x\n", ["line 2", "[base]", "mirrorlist/metalink"]),
        ("[base]\nmirrorlist=\n", ["[base]", "'baseurl' is missing"]),
        ("[base]\nbaseurl=\n", ["line 2", "key 'baseurl' is empty"]),
        ("[base]\n" + BASE + "enabled=perhaps\n", ["line 3", "key 'enabled'"]),
    ],
    ids=[
        "duplicate-section",
        "unknown-var",
        "custom-var",
        "default-syntax",
        "lone-dollar",
        "var-in-gpgkey",
        "var-in-id",
        "long-line",
        "nul-bytes",
        "no-baseurl",
        "space-in-url",
        "continuation-line",
        "no-host",
        "mirrorlist-and-baseurl",
        "metalink",
        "empty-mirrorlist",
        "empty-baseurl",
        "bad-bool",
    ],
)
def test_odd_repo_file_is_one_config_error(tmp_path: Path, repo: str, needles: list[str]) -> None:
    cfg = write(tmp_path, "", repo=repo)
    proc = run_mirror(tmp_path, "-c", str(cfg), "sync", "--only", "repos")
    assert_one_line_error(proc, "repos/base.repo", *needles)
    assert len(proc.stderr) < 600
    assert not (tmp_path / "data").exists()


def test_binary_junk_repo_file_names_the_line(tmp_path: Path) -> None:
    cfg = write(tmp_path, "", repo=None)
    (tmp_path / "repos" / "base.repo").write_bytes(GOOD_REPO.encode() + b"name=\xff\xfe\xfd\n")
    proc = run_mirror(tmp_path, "-c", str(cfg), "sync")
    assert_one_line_error(proc, "base.repo: line 4", "not UTF-8")


def test_huge_repo_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    cfg = write(tmp_path, "", repo=None)
    with (tmp_path / "repos" / "base.repo").open("w") as fh:
        fh.write(GOOD_REPO)
        for _ in range(200):
            fh.write("# " + "x" * 8000 + "\n")
    proc = run_mirror(tmp_path, "-c", str(cfg), "sync")
    assert_one_line_error(proc, "base.repo", "larger than 1048576 bytes")


def test_windows_edited_repo_file_still_parses(tmp_path: Path) -> None:
    """The limits refuse junk, not a file saved by a Windows editor (BOM, CRLF, tabs)."""
    path = tmp_path / "base.repo"
    path.write_bytes(b"\xef\xbb\xbf[base]\r\nname=\tBase\r\nbaseurl=http://x/$basearch/\r\n")
    (definition,) = parse_repo_file(path)
    assert definition.id == "base" and definition.baseurls == ("http://x/$basearch/",)
