"""Hostile yum metadata (issue 8, item 5): each gets a clear refusal, bounded memory and time.

Real upstreams (rpmbuild + createrepo_c, served over loopback HTTP) are rewritten into hostile
ones by tests/fixtures/hostile.py and synced with the real CLI. What must hold for each: exit 1
with one error naming the repo and what was refused, no crash, nothing published from it, and
nothing written outside data_dir. Parser-level cases (chunk boundaries, caps) call the
functions directly.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import createrepo_c as cr
import pytest

from mirror.errors import RepoSyncError, UnsafePathError
from mirror.yum.metadata import (
    MAX_TOKEN,
    MetadataRecord,
    UpstreamMetadata,
    XmlGuard,
    inflate,
    parse_packages,
    parse_repomd,
    plain_metadata,
)
from tests.conftest import REPO_ROOT, Mirror
from tests.fixtures.hostile import (
    billion_laughs,
    compress,
    filelists_bomb_parts,
    gzip_bomb,
    plain_primary,
    publish_records,
    put_metadata,
    read_records,
    repomd_xml,
    rewrite_packages,
    write_repomd,
)

pytestmark = pytest.mark.reliability

K8S = "kubernetes"
# A sync of the fixture repo peaks near 70 MiB; the bomb inflates to 3 GiB.
RSS_BOUND_MIB = 200
_WRAPPER = """\
import resource, subprocess, sys
limit = int(sys.argv[1]) << 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
rc = subprocess.call(sys.argv[3:])
with open(sys.argv[2], "w") as out:
    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(rc)
"""


def sync_bounded(mirror: Mirror, tmp_path: Path, timeout: float = 120):
    """`mirror sync --repo kubernetes` under a 2 GiB address-space limit (so a regression
    fails this test instead of swapping the machine); returns (process, peak RSS in MiB).
    The wrapper's only child is the sync, so RUSAGE_CHILDREN is the sync's own peak."""
    rss_file = tmp_path / "maxrss"
    cmd = [sys.executable, "-c", _WRAPPER, "2048", str(rss_file), sys.executable, "-m", "mirror"]
    proc = subprocess.run(
        [*cmd, "-c", str(mirror.config), "sync", "--repo", K8S],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=mirror.dir,
    )
    return proc, int(rss_file.read_text()) // 1024


def k8s_repo(mirror: Mirror) -> Path:
    return mirror.upstream.k8s_repo


def assert_refused(mirror: Mirror, proc, *needles: str) -> str:
    """Exit 1, no traceback or crash, one error line naming the repo and `needles`,
    and nothing of the repo published."""
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if f"repo {K8S}:" in line]
    assert errors, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not (mirror.data / "repos" / K8S / "repodata" / "repomd.xml").exists()
    return errors[0]


def assert_nothing_outside(mirror: Mirror) -> None:
    """A sync writes under data_dir only: the mirror dir holds what the test put there."""
    assert {p.name for p in mirror.dir.iterdir()} <= {"data", "repos", "mirror.yaml"}


# --------------------------------------------------------------------------------------------
# compressed metadata: bombs, open-size, open-checksum, every compression upstreams use
# --------------------------------------------------------------------------------------------


def test_gzip_bomb_past_declared_open_size_is_refused_in_bounded_memory(
    mirror: Mirror, tmp_path: Path
) -> None:
    repo = k8s_repo(mirror)
    honest = plain_primary(repo)
    bomb = gzip_bomb(3072)  # ~3 MB on disk, 3 GiB inflated: crashed createrepo_c (SIGSEGV)
    assert len(bomb) < 8 << 20
    put_metadata(repo, "primary", bomb, "bomb-primary.xml.gz", mirror.upstream.key, len(honest))
    started = time.monotonic()
    proc, rss = sync_bounded(mirror, tmp_path)
    print(f"bomb past open-size: {time.monotonic() - started:.1f}s, peak RSS {rss} MiB")
    assert time.monotonic() - started < 60
    line = assert_refused(mirror, proc, "repodata/bomb-primary.xml.gz", "open-size")
    assert str(len(honest)) in line
    assert rss < RSS_BOUND_MIB, f"peak RSS {rss} MiB"
    inflated = [p for p in (mirror.data / ".staging").rglob("*") if ".plain" in p.parts]
    assert not [p for p in inflated if p.is_file()], "inflated file left behind"
    assert_nothing_outside(mirror)


def test_gzip_bomb_without_open_size_is_refused_in_bounded_memory(
    mirror: Mirror, tmp_path: Path
) -> None:
    repo = k8s_repo(mirror)
    put_metadata(repo, "primary", gzip_bomb(3072), "bomb-primary.xml.gz", mirror.upstream.key)
    proc, rss = sync_bounded(mirror, tmp_path)
    assert_refused(mirror, proc, "bomb-primary.xml.gz", f"longer than {MAX_TOKEN} bytes")
    assert rss < RSS_BOUND_MIB, f"peak RSS {rss} MiB"


def test_bomb_of_small_tags_stops_at_the_cap(tmp_path: Path) -> None:
    """Many short tags pass the token check; the hard cap still stops the inflation."""
    src = tmp_path / "primary.xml.gz"
    src.write_bytes(gzip_bomb(64, filler=b"<a/>"))
    record = MetadataRecord("primary", "repodata/primary.xml.gz", "sha256", "x", None)
    dest = tmp_path / "primary.xml"
    with pytest.raises(RepoSyncError, match="inflates beyond 8388608 bytes .*no open-size"):
        inflate("r", record, src, dest, cap=8 << 20)
    assert not dest.exists()
    declared = MetadataRecord("primary", record.href, "sha256", "x", None, open_size=9 << 30)
    with pytest.raises(RepoSyncError, match="declares open-size 9663676416, over the cap"):
        inflate("r", declared, src, dest)


_PUBLISH_GUARDED = "plain_metadata" in (REPO_ROOT / "mirror" / "yum" / "publish.py").read_text()


@pytest.mark.xfail(
    not _PUBLISH_GUARDED,
    strict=True,
    reason="publish.generate_filtered_metadata must read metadata.plain_metadata()",
)
def test_filelists_bomb_in_a_filtered_repo_is_refused(mirror: Mirror, tmp_path: Path) -> None:
    """A filtered repo is regenerated from primary, filelists and other: each is parsed,
    so each goes through the same caps."""
    mirror.extra_config = "repo_filters:\n  kubernetes: {newest: 1}\n"
    mirror.write()
    repo = k8s_repo(mirror)
    (record,) = [r for r in read_records(repo) if r.type == "filelists"]
    honest = gzip.decompress((repo / record.href).read_bytes())
    pkgid = re.search(rb'pkgid="([0-9a-f]+)"', honest).group(1).decode()
    bomb = gzip_bomb(3072, parts=filelists_bomb_parts(pkgid))
    put_metadata(repo, "filelists", bomb, "b-filelists.xml.gz", mirror.upstream.key, len(honest))
    proc, rss = sync_bounded(mirror, tmp_path)
    assert_refused(mirror, proc, "repodata/b-filelists.xml.gz", "open-size")
    assert rss < RSS_BOUND_MIB, f"peak RSS {rss} MiB"


@pytest.mark.parametrize("suffix", ["bz2", "xz", "zst"])
def test_bombs_in_every_compression_are_refused(tmp_path: Path, suffix: str) -> None:
    if suffix == "zst":
        pytest.importorskip("zstandard", reason="zstandard is needed for .zst metadata")
    data = compress(b"<metadata>" + b"<a/>" * (4 << 20) + b"</metadata>", suffix)
    src = tmp_path / f"primary.xml.{suffix}"
    src.write_bytes(data)
    record = MetadataRecord("primary", f"repodata/{src.name}", "sha256", "x", None, 1000)
    with pytest.raises(RepoSyncError, match=f"{src.name}: refusing: inflates beyond the open-size"):
        inflate("r", record, src, tmp_path / "out.xml")


@pytest.mark.parametrize("suffix", ["gz", "bz2", "xz", "zst"])
def test_metadata_in_each_compression_syncs(mirror: Mirror, suffix: str) -> None:
    """The guard inflates what createrepo_c used to read itself, zstd (createrepo_c >= 1.0's
    default) included; declared open-size and open-checksum are checked and pass."""
    if suffix == "zst":
        pytest.importorskip("zstandard", reason="zstandard is needed for .zst metadata")
    repo = k8s_repo(mirror)
    plain = plain_primary(repo)
    digest = hashlib.sha256(plain).hexdigest()
    put_metadata(
        repo,
        "primary",
        compress(plain, suffix),
        f"p-primary.xml.{suffix}",
        mirror.upstream.key,
        len(plain),
        digest,
    )
    proc = mirror.sync("--repo", K8S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    published = mirror.data / "repos" / K8S
    assert (published / f"repodata/p-primary.xml.{suffix}").is_file()
    assert list(published.rglob("kubeadm-*.rpm"))


def test_open_checksum_mismatch_is_refused(mirror: Mirror) -> None:
    repo = k8s_repo(mirror)
    plain = plain_primary(repo)
    tampered = plain.replace(b"<summary>", b"<summary>X", 1)
    put_metadata(
        repo,
        "primary",
        gzip.compress(tampered),
        "t-primary.xml.gz",
        mirror.upstream.key,
        len(tampered),
        hashlib.sha256(plain).hexdigest(),
    )
    assert_refused(mirror, mirror.sync("--repo", K8S), "t-primary.xml.gz", "open-checksum")


def test_open_size_smaller_than_declared_is_refused(mirror: Mirror) -> None:
    repo = k8s_repo(mirror)
    plain = plain_primary(repo)
    put_metadata(
        repo,
        "primary",
        gzip.compress(plain),
        "s-primary.xml.gz",
        mirror.upstream.key,
        len(plain) + 10,
    )
    line = assert_refused(mirror, mirror.sync("--repo", K8S), "s-primary.xml.gz")
    assert f"inflates to {len(plain)} bytes" in line


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "is empty"),
        (gzip.compress(b""), "is empty"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "is not XML"),
        (gzip.compress(b"this is not xml at all\n"), "is not XML"),
        (gzip.compress(b"<?xml version='1.0'?>\n<metadata><package>")[:-12], "decompress"),
        (gzip.compress(b"<metadata><package><name>x</nme></metadata>"), "does not parse"),
    ],
    ids=["empty", "empty-gz", "binary", "text-gz", "truncated-gz", "broken-xml"],
)
def test_garbage_primary_is_refused(mirror: Mirror, data: bytes, needle: str) -> None:
    put_metadata(k8s_repo(mirror), "primary", data, "g-primary.xml.gz", mirror.upstream.key)
    line = assert_refused(mirror, mirror.sync("--repo", K8S), needle)
    assert "primary" in line


# --------------------------------------------------------------------------------------------
# DTDs: entity expansion and external entities
# --------------------------------------------------------------------------------------------


def test_createrepo_c_itself_does_not_expand_entities(tmp_path: Path) -> None:
    """What the guard protects beyond: libxml2 as createrepo_c drives it reports declared
    entities as undefined, so neither expansion nor file reads happen even without us."""
    secret = tmp_path / "secret"
    secret.write_text("SECRET-CONTENT")
    path = tmp_path / "repomd.xml"
    path.write_bytes(
        repomd_xml(
            [], prolog=f'<!DOCTYPE repomd [<!ENTITY x SYSTEM "file://{secret}">]>\n'
        ).replace(b"<revision>1700000000", b"<revision>&x;")
    )
    with pytest.raises(Exception, match="Entity 'x' not defined"):
        cr.Repomd(str(path))


def test_external_entity_in_repomd_is_refused(mirror: Mirror, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("SECRET-CONTENT")
    repo = k8s_repo(mirror)
    prolog = f'<!DOCTYPE repomd [\n<!ENTITY x SYSTEM "file://{secret}">\n]>\n'
    data = repomd_xml(read_records(repo), prolog).replace(b"1700000000<", b"&x;<", 1)
    write_repomd(repo, data, mirror.upstream.key)
    line = assert_refused(mirror, mirror.sync("--repo", K8S), "repodata/repomd.xml", "DOCTYPE")
    assert "line 2" in line
    leaked = [p for p in mirror.data.rglob("*") if p.is_file() and b"SECRET" in p.read_bytes()]
    assert not leaked


def test_billion_laughs_in_primary_is_refused_fast(mirror: Mirror, tmp_path: Path) -> None:
    data = gzip.compress(billion_laughs())
    put_metadata(k8s_repo(mirror), "primary", data, "l-primary.xml.gz", mirror.upstream.key)
    started = time.monotonic()
    proc, rss = sync_bounded(mirror, tmp_path)
    assert time.monotonic() - started < 30
    assert_refused(mirror, proc, "l-primary.xml.gz", "DOCTYPE/ENTITY", "line 2")
    assert rss < RSS_BOUND_MIB


@pytest.mark.parametrize("offset", [0, 1, 2, 5, 8, 9])
def test_declaration_split_across_chunks_is_found(offset: int) -> None:
    """A `<!DOCTYPE` or `<!ENTITY` that straddles the 1 MiB read boundary is still seen;
    a comment or CDATA that straddles it is still allowed."""
    chunk = 1 << 20
    for decl, refused in (
        (b"<!DOCTYPE x>", True),
        (b"<!ENTITY y 'z'>", True),
        (b"<!-- ok -->", False),
        (b"<![CDATA[ok]]>", False),
    ):
        body = b"<metadata>\n" + b"x" * (chunk - 11 - offset) + decl + b"\n</metadata>\n"
        guard = XmlGuard("r", "primary.xml")
        try:
            for start in range(0, len(body), chunk):
                guard.feed(body[start : start + chunk])
            guard.finish()
        except RepoSyncError as exc:
            assert refused, f"{decl!r} at offset {offset} refused: {exc}"
            assert "(line 2)" in str(exc)
        else:
            assert not refused, f"{decl!r} at offset {offset} passed"


def test_utf16_metadata_is_refused(tmp_path: Path) -> None:
    """UTF-16 would hide `<!DOCTYPE` from a byte scan, and yum metadata is UTF-8."""
    doc = '<?xml version="1.0" encoding="UTF-16"?>\n<!DOCTYPE x [<!ENTITY a "b">]>\n<repomd/>'
    guard = XmlGuard("r", "repodata/repomd.xml")
    with pytest.raises(RepoSyncError, match="is not XML"):
        guard.feed(doc.encode("utf-16"))  # with a byte order mark
    for encoding in ("utf-16-le", "utf-32-le"):  # libxml2 detects these without one
        guard = XmlGuard("r", "repodata/repomd.xml")
        with pytest.raises(RepoSyncError, match="NUL byte"):
            guard.feed(doc.encode(encoding))
    guard = XmlGuard("r", "repodata/repomd.xml")
    with pytest.raises(RepoSyncError, match="refusing XML encoding 'UTF-16'"):
        guard.feed(doc.encode())


# --------------------------------------------------------------------------------------------
# repomd.xml: missing primary, hrefs, checksum types, garbage
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "repodata/repomd.xml: is empty"),
        (b"\x00\x01\x02junk", "repodata/repomd.xml: is not XML"),
        (b"<repomd><data type='primary'>", "repomd.xml does not parse"),
        (repomd_xml([]), "lists no primary"),
    ],
    ids=["empty", "binary", "broken", "no-primary"],
)
def test_bad_repomd_is_refused(mirror: Mirror, data: bytes, needle: str) -> None:
    write_repomd(k8s_repo(mirror), data, mirror.upstream.key)
    assert_refused(mirror, mirror.sync("--repo", K8S), needle)


def test_repomd_without_primary_keeps_previous_copy(mirror: Mirror) -> None:
    assert mirror.sync("--repo", K8S).returncode == 0
    published = mirror.data / "repos" / K8S / "repodata" / "repomd.xml"
    before = published.read_bytes()
    repo = k8s_repo(mirror)
    records = [r for r in read_records(repo) if r.type != "primary"]
    publish_records(repo, records, mirror.upstream.key)
    proc = mirror.sync("--repo", K8S)
    assert proc.returncode == 1 and "lists no primary metadata" in proc.stderr
    assert published.read_bytes() == before


@pytest.mark.parametrize(
    ("href", "needle"),
    [
        ("repodata/../../../../outside.xml.gz", "unsafe location href"),
        ("/tmp/outside.xml.gz", "unsafe location href"),
        ("http://evil.example/primary.xml.gz", "unsafe location href"),
        ("repodata\\..\\..\\outside.xml.gz", "unsafe location href"),
        ("x86_64/primary.xml.gz", "refusing metadata location href"),
        ("repodata/repomd.xml", "refusing metadata location href"),
    ],
)
def test_hostile_metadata_href_is_refused(mirror: Mirror, href: str, needle: str) -> None:
    repo = k8s_repo(mirror)
    records = [replace(r, href=href) if r.type == "primary" else r for r in read_records(repo)]
    publish_records(repo, records, mirror.upstream.key)
    line = assert_refused(mirror, mirror.sync("--repo", K8S), needle)
    assert repr(href) in line
    assert not Path("/tmp/outside.xml.gz").exists()
    assert_nothing_outside(mirror)


def test_unknown_checksum_type_in_repomd_is_refused(mirror: Mirror) -> None:
    repo = k8s_repo(mirror)
    records = [
        replace(r, checksum_type="sha999") if r.type == "primary" else r for r in read_records(repo)
    ]
    publish_records(repo, records, mirror.upstream.key)
    assert_refused(mirror, mirror.sync("--repo", K8S), "unsupported checksum type 'sha999'")


# --------------------------------------------------------------------------------------------
# primary.xml: package hrefs, checksum types, sizes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "href",
    [
        "../../etc/x.rpm",
        "/etc/x.rpm",
        "http://evil.example/x.rpm",
        "..\\..\\x.rpm",
        "x86_64/../../../x.rpm",
        "repodata/repomd.xml",
    ],
)
def test_hostile_package_href_is_refused(mirror: Mirror, href: str) -> None:
    def mutate(pkgs: list[cr.Package]) -> None:
        pkgs[0].location_href = href

    rewrite_packages(k8s_repo(mirror), mirror.upstream.key, mutate)
    line = assert_refused(mirror, mirror.sync("--repo", K8S), "location href", repr(href))
    assert "package " in line
    assert not Path("/etc/x.rpm").exists()
    assert_nothing_outside(mirror)


def test_nul_in_package_href_is_refused(mirror: Mirror) -> None:
    """A NUL cannot pass through createrepo_c's C strings; in the XML it is refused."""
    repo = k8s_repo(mirror)
    plain = plain_primary(repo)
    start = plain.index(b'<location href="') + len(b'<location href="')
    hostile = plain[:start] + b"x86_64/\x00../../etc/x.rpm" + plain[plain.index(b'"', start) :]
    put_metadata(
        repo,
        "primary",
        gzip.compress(hostile),
        "n-primary.xml.gz",
        mirror.upstream.key,
        len(hostile),
        hashlib.sha256(hostile).hexdigest(),
    )
    lineno = plain.count(b"\n", 0, start) + 1
    line = f"(line {lineno})"
    assert_refused(mirror, mirror.sync("--repo", K8S), "n-primary.xml.gz", "NUL byte", line)
    assert_nothing_outside(mirror)


def test_unknown_package_checksum_type_is_refused(mirror: Mirror) -> None:
    def mutate(pkgs: list[cr.Package]) -> None:
        pkgs[1].checksum_type = "sha999"

    rewrite_packages(k8s_repo(mirror), mirror.upstream.key, mutate)
    assert_refused(mirror, mirror.sync("--repo", K8S), "unsupported checksum type 'sha999'")


def _meta_for(tmp_path: Path, primary: bytes) -> UpstreamMetadata:
    staging = tmp_path / "meta"
    (staging / "repodata").mkdir(parents=True)
    (staging / "repodata" / "primary.xml.gz").write_bytes(gzip.compress(primary))
    repomd = repomd_xml([])
    records = (MetadataRecord("primary", "repodata/primary.xml.gz", "sha256", "x", None),)
    return UpstreamMetadata("http://x/", repomd, None, records, staging)


def test_many_refused_packages_keep_memory_bounded(tmp_path: Path) -> None:
    pkg = (
        b'<package type="rpm"><name>p</name><arch>noarch</arch>'
        b'<version epoch="0" ver="1" rel="1"/><checksum type="sha256" pkgid="YES">ab</checksum>'
        b'<size package="1" installed="1" archive="1"/><location href="../x.rpm"/></package>\n'
    )
    meta = _meta_for(tmp_path, b"<?xml version='1.0'?>\n<metadata>\n" + pkg * 5000 + b"</metadata>")
    with pytest.raises(UnsafePathError, match=r"'\.\./x\.rpm' \(and 4999 more\)"):
        parse_packages("r", meta)


def test_plain_metadata_is_made_once_outside_repodata(tmp_path: Path) -> None:
    meta = _meta_for(tmp_path, b"<?xml version='1.0'?>\n<metadata packages='0'>\n</metadata>\n")
    path = plain_metadata("r", meta, "primary")
    assert path.parent.name == ".plain" and "repodata" not in path.parts
    assert plain_metadata("r", meta, "primary") == path
    assert parse_packages("r", meta) == []
    with pytest.raises(RepoSyncError, match="lists no filelists metadata"):
        plain_metadata("r", meta, "filelists")


def test_repomd_guard_runs_before_createrepo_c(tmp_path: Path) -> None:
    """parse_repomd refuses a DTD without writing a byte of it for the parser."""
    data = repomd_xml([], prolog='<!DOCTYPE r [<!ENTITY a "b">]>\n')
    with pytest.raises(RepoSyncError, match="DOCTYPE"):
        parse_repomd("r", data, tmp_path / "meta")
    assert not (tmp_path / "meta").exists()
