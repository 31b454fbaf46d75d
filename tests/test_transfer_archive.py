"""mirror.transfer's archive mechanics without upstreams: split parts, zstd, member checks."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
from pathlib import Path

import pytest

from mirror.errors import ArchiveError, ConfigError
from mirror.progress import progress_for
from mirror.transfer import archive, importer
from mirror.transfer import manifest as mf
from mirror.transfer.cli import parse_size


def _manifest(members: list[mf.Member]) -> mf.Manifest:
    return mf.Manifest(
        mirror_version="test",
        created="2026-12-01T00:00:00+00:00",
        config_file="mirror.yaml",
        config_sha256="0" * 64,
        config_text="",
        registry="localhost:5000",
        base_url="http://localhost:8080",
        members=members,
    )


def test_sizes() -> None:
    assert parse_size("4G") == 4 << 30
    assert parse_size("700M") == 700 << 20
    assert parse_size("512k") == 512 << 10
    assert parse_size("1000") == 1000
    for bad in ("", "0", "4X", "-1M", "1.5G"):
        with pytest.raises(ConfigError, match="--split-size"):
            parse_size(bad)


def test_parts_in_any_order_and_gaps_refused(tmp_path: Path) -> None:
    parts = [tmp_path / f"a.tar.{i:03d}" for i in range(12)]
    shuffled = parts[:]
    random.Random(1).shuffle(shuffled)
    assert archive.order_parts(shuffled) == (str(tmp_path / "a.tar"), parts)
    with pytest.raises(ArchiveError, match=r"a\.tar\.004: missing part"):
        archive.order_parts(parts[:4] + parts[5:])
    with pytest.raises(ArchiveError, match="different archives"):
        archive.order_parts([parts[0], tmp_path / "b.tar.001"])
    with pytest.raises(ArchiveError, match="given twice"):
        archive.order_parts([parts[0], parts[0]])
    assert archive.order_parts([tmp_path / "x.tar"]) == (
        str(tmp_path / "x.tar"),
        [tmp_path / "x.tar"],
    )


@pytest.mark.parametrize("zstd", [False, True])
def test_split_stream_round_trip(tmp_path: Path, zstd: bool) -> None:
    dest = tmp_path / "out.tar"
    (tmp_path / "out.tar.009").write_bytes(b"stale part of an older export")
    payloads = {f"files/f{i}": random.Random(i).randbytes(3000 + i) for i in range(20)}
    with archive.writing(dest, 4096, zstd) as (tar, writer):
        for name, data in payloads.items():
            tar.addfile(archive.tar_info(name, len(data)), io.BytesIO(data))
    written = writer.commit()
    assert written == archive.existing_parts(dest) and len(written) > 1
    assert all(p.stat().st_size == 4096 for p in written[:-1])
    assert not list(tmp_path.glob(".*partial"))
    with archive.reading(str(dest), written) as (tar, _):
        got = {}
        while (info := tar.next()) is not None:
            handle = tar.extractfile(info)
            assert handle is not None
            got[info.name] = handle.read()
    assert got == payloads


def test_an_interrupted_export_leaves_no_archive(tmp_path: Path) -> None:
    dest = tmp_path / "out.tar"
    with pytest.raises(RuntimeError), archive.writing(dest, None, False) as (tar, _):
        tar.addfile(archive.tar_info("files/a", 3), io.BytesIO(b"abc"))
        raise RuntimeError("disk pulled")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "repos/../../x", "repos/./x", "elsewhere/x", "repos", "repos//x", "a\\b"],
)
def test_member_paths_outside_the_tree_are_refused(path: str) -> None:
    with pytest.raises(ArchiveError, match="refusing member path"):
        mf.check_path("x.tar", path)


def test_manifest_checks() -> None:
    member = mf.Member(path="files/a", size=1, sha256="a" * 64)
    raw = _manifest([member, member]).dump()
    with pytest.raises(ArchiveError, match="lists files/a twice"):
        mf.parse("x.tar", raw)
    future = _manifest([]).model_copy(update={"format": 99}).dump()
    with pytest.raises(ArchiveError, match="format 99"):
        mf.parse("x.tar", future)
    with pytest.raises(ArchiveError, match="manifest.json"):
        mf.parse("x.tar", b"{not json")


def _tar_with(tmp_path: Path, add: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    path = tmp_path / "in.tar"
    with tarfile.open(path, "w") as tar:
        for info, data in add:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _stream(tmp_path: Path, manifest: mf.Manifest, path: Path) -> None:
    with archive.reading(str(path), [path]) as (tar, reader):
        progress = progress_for("test", 1, 1)
        importer._stream(tar, reader, str(path), manifest, tmp_path / "staging", progress)


def test_links_and_devices_are_refused(tmp_path: Path) -> None:
    manifest = _manifest([mf.Member(path="files/a", size=0, sha256="0" * 64)])
    link = tarfile.TarInfo("files/a")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    with pytest.raises(ArchiveError, match="files/a: not a regular file"):
        _stream(tmp_path, manifest, _tar_with(tmp_path, [(link, None)]))
    device = tarfile.TarInfo("files/a")
    device.type = tarfile.CHRTYPE
    with pytest.raises(ArchiveError, match="not a regular file"):
        _stream(tmp_path, manifest, _tar_with(tmp_path, [(device, None)]))


def test_member_of_another_size_or_content_is_refused(tmp_path: Path) -> None:
    data = b"hello"
    good = mf.Member(path="files/a", size=5, sha256=hashlib.sha256(data).hexdigest())
    info = archive.tar_info("files/a", 5)
    path = _tar_with(tmp_path, [(info, b"HELLO")])
    with pytest.raises(ArchiveError, match="files/a: sha256 mismatch"):
        _stream(tmp_path, _manifest([good]), path)
    assert not (tmp_path / "staging" / "files" / "a").exists()
    bigger = good.model_copy(update={"size": 6})
    with pytest.raises(ArchiveError, match="size 5, manifest says 6"):
        _stream(tmp_path, _manifest([bigger]), _tar_with(tmp_path, [(info, data)]))
    # Carried members that never come: the stream ended early.
    other = mf.Member(path="files/b", size=1, sha256="0" * 64)
    with pytest.raises(ArchiveError, match="1 members listed in manifest.json are missing"):
        _stream(tmp_path, _manifest([good, other]), _tar_with(tmp_path, [(info, data)]))


def test_secrets_stay_outside() -> None:
    from mirror.transfer.export import redacted

    text = "[x]\nbaseurl=https://h/\nusername=u\npassword=hunter2\nproxy_password = p2\n"
    out = redacted(text + "sync_token: s3cret\n")
    assert "hunter2" not in out and "p2" not in out and "s3cret" not in out
    assert "username=u" in out and "password=<redacted by mirror export>" in out


@pytest.mark.parametrize("key", ["../x", "kubernetes/..", "kubernetes/9/../../x"])
def test_repo_keys_leaving_repos_are_refused(key: str) -> None:
    repo_id, *values = key.split("/")
    entry = mf.RepoEntry(
        key=key,
        repo_id=repo_id,
        values=[(f"v{i}", v) for i, v in enumerate(values)],
        definition="k.repo",
    )
    raw = _manifest([]).model_copy(update={"repos": [entry]}).dump()
    with pytest.raises(ArchiveError, match="refusing repo key"):
        mf.parse("x.tar", raw)


def _files_archive(tmp_path: Path, zstd: bool) -> tuple[Path, bytes]:
    data = random.Random(5).randbytes(200_000)
    member = mf.Member(path="files/a.bin", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    body = _manifest([member]).dump()
    dest = tmp_path / ("a.tar.zst" if zstd else "a.tar")
    with archive.writing(dest, None, zstd) as (tar, writer):
        tar.addfile(archive.tar_info("manifest.json", len(body)), io.BytesIO(body))
        tar.addfile(archive.tar_info("files/a.bin", len(data)), io.BytesIO(data))
    writer.commit()
    return dest, data


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_zstd_stream_is_refused(tmp_path: Path, damage: str) -> None:
    from mirror.config import Config

    cfg = Config(data_dir=tmp_path / "data", repos_dir=tmp_path / "repos")
    dest, data = _files_archive(tmp_path, zstd=True)
    importer.import_archive(cfg, [dest])
    assert (cfg.data_dir / "files" / "a.bin").read_bytes() == data
    raw = bytearray(dest.read_bytes())
    if damage == "truncate":
        del raw[len(raw) // 2 :]
    else:
        raw[len(raw) // 2] ^= 0xFF
    dest.write_bytes(bytes(raw))
    # The kind of failure, not only the file: a cut stream ends inside the member; random
    # data is stored raw by zstd, so a flipped byte decodes and fails the member's sha256.
    expected = {
        "truncate": r"a\.tar\.zst: truncated or damaged archive at member files/a\.bin",
        "flip": r"a\.tar\.zst: member files/a\.bin: sha256 mismatch",
    }[damage]
    with pytest.raises(ArchiveError, match=expected):
        importer.import_archive(cfg, [dest])
    assert (cfg.data_dir / "files" / "a.bin").read_bytes() == data
    assert not (cfg.data_dir / ".staging" / "import").exists()


def test_a_member_below_another_member_is_refused(tmp_path: Path) -> None:
    """files/a and files/a/b cannot both be staged: ArchiveError naming them, not OSError."""
    from mirror.config import Config

    cfg = Config(data_dir=tmp_path / "data", repos_dir=tmp_path / "repos")
    data = b"x"
    sha = hashlib.sha256(data).hexdigest()
    members = [mf.Member(path=p, size=1, sha256=sha) for p in ("files/a", "files/a/b")]
    body = _manifest(members).dump()
    dest = tmp_path / "nested.tar"
    with archive.writing(dest, None, False) as (tar, writer):
        tar.addfile(archive.tar_info("manifest.json", len(body)), io.BytesIO(body))
        for member in members:
            tar.addfile(archive.tar_info(member.path, 1), io.BytesIO(data))
    writer.commit()
    with pytest.raises(ArchiveError, match="nested.tar: manifest.json lists files/a/b below"):
        importer.import_archive(cfg, [dest])
    assert not (cfg.data_dir / "files").exists()
    with pytest.raises(ArchiveError, match="lists files/a twice"):
        mf.parse("x.tar", _manifest([members[0], members[0]]).dump())


@pytest.mark.parametrize("first_split", [True, False])
def test_export_of_the_other_form_leaves_nothing_stale(tmp_path: Path, first_split: bool) -> None:
    """A split export after an unsplit one to the same DEST (or the reverse) leaves only its
    own files, so `mirror import DEST*` reads this export."""
    dest = tmp_path / "out.tar"
    payload = random.Random(2).randbytes(20_000)

    def write(split: int | None) -> list[Path]:
        with archive.writing(dest, split, False) as (tar, writer):
            tar.addfile(archive.tar_info("files/p", len(payload)), io.BytesIO(payload))
        return writer.commit()

    first = write(4096 if first_split else None)
    second = write(None if first_split else 4096)
    assert sorted(tmp_path.glob("out.tar*")) == sorted(second)
    assert set(first) - set(second)  # the other form was there, and is gone
    name, parts = archive.order_parts(sorted(tmp_path.glob("out.tar*")))
    with archive.reading(name, parts) as (tar, _):
        info = tar.next()
        assert info is not None and info.name == "files/p"


@pytest.mark.parametrize("key", ["../../etc/x", "Docker.io/NGINX", "nginx:bad tag"])
def test_an_image_key_that_is_no_reference_is_refused(tmp_path: Path, key: str) -> None:
    """Names an image is pushed under are made from its key: junk there is refused before
    anything is staged (and no registry is asked)."""
    from mirror.config import Config

    cfg = Config(data_dir=tmp_path / "data", repos_dir=tmp_path / "repos")
    image = mf.ImageEntry(key=key, ref="i00000", digest="sha256:" + "a" * 64, names=[], blobs=[])
    body = _manifest([]).model_copy(update={"images": [image]}).dump()
    dest = tmp_path / "img.tar"
    with archive.writing(dest, None, False) as (tar, writer):
        tar.addfile(archive.tar_info("manifest.json", len(body)), io.BytesIO(body))
    writer.commit()
    with pytest.raises(ArchiveError, match=f"img.tar: image {key!r}"):
        importer.import_archive(cfg, [dest])


def test_a_state_record_that_is_no_json_object_is_refused_before_publishing(
    tmp_path: Path,
) -> None:
    from mirror.config import Config

    cfg = Config(data_dir=tmp_path / "data", repos_dir=tmp_path / "repos")
    payload = {"files/x": b"new", "state/files/x.json": b"[1, 2]"}
    members = [
        mf.Member(path=p, size=len(d), sha256=hashlib.sha256(d).hexdigest())
        for p, d in payload.items()
    ]
    body = _manifest(members).dump()
    dest = tmp_path / "state.tar"
    with archive.writing(dest, None, False) as (tar, writer):
        tar.addfile(archive.tar_info("manifest.json", len(body)), io.BytesIO(body))
        for path, data in payload.items():
            tar.addfile(archive.tar_info(path, len(data)), io.BytesIO(data))
    writer.commit()
    with pytest.raises(ArchiveError, match="state.tar: state/files/x.json: not a JSON object"):
        importer.import_archive(cfg, [dest])
    assert not (cfg.data_dir / "files" / "x").exists()


@pytest.mark.parametrize("order", [("files/a/b", "files/a"), ("files/a", "files/a/b")])
def test_a_file_that_became_a_directory_or_the_reverse_imports(
    tmp_path: Path, order: tuple[str, str]
) -> None:
    """The exporting side moved a file below a path that was a file (or the reverse): the
    second import replaces what stands in the way instead of failing (forever: the obstacle
    used to be removed only after the moves)."""
    from mirror.config import Config

    cfg = Config(data_dir=tmp_path / "data", repos_dir=tmp_path / "repos")
    for number, path in enumerate(order):
        data = f"generation {number}".encode()
        member = mf.Member(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        body = _manifest([member]).dump()
        dest = tmp_path / f"g{number}.tar"
        with archive.writing(dest, None, False) as (tar, writer):
            tar.addfile(archive.tar_info("manifest.json", len(body)), io.BytesIO(body))
            tar.addfile(archive.tar_info(path, len(data)), io.BytesIO(data))
        writer.commit()
        importer.import_archive(cfg, [dest])
        assert (cfg.data_dir / path).read_bytes() == data
    assert not (cfg.data_dir / ".staging" / "import").exists()
