"""The archive as a byte stream: standard tar (stdlib tarfile, streaming modes `w|`/`r|`),
optionally zstd-compressed, optionally split into parts DEST.000, DEST.001, ... that are
nothing but the one stream cut into pieces (`cat DEST.* | tar t` lists it).

Nothing here holds more than one read buffer of member data: members are hashed while they
are written and while they are read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from mirror import fsutil
from mirror.errors import ArchiveError

CHUNK = 1 << 20
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PART_RE = re.compile(r"^(.*)\.(\d{3,})$")


def part_name(dest: Path, index: int) -> Path:
    return dest.with_name(f"{dest.name}.{index:03d}")


class PartWriter(io.RawIOBase):
    """A write-only stream into DEST (or DEST.000, DEST.001, ... of at most `split` bytes).
    Each part is written under a hidden temp name; `commit` renames them all into place, so
    an interrupted export never leaves something that looks like a complete archive."""

    def __init__(self, dest: Path, split: int | None) -> None:
        super().__init__()
        self.dest, self.split = dest, split
        self.temps: list[Path] = []
        self._out: IO[bytes] | None = None
        self._left = 0
        self.total = 0

    def writable(self) -> bool:
        return True

    def _next_part(self) -> None:
        self._close_part()
        final = part_name(self.dest, len(self.temps)) if self.split else self.dest
        temp = final.with_name(f".{final.name}.partial")
        self.temps.append(temp)
        self._out = temp.open("wb")
        self._left = self.split or -1

    def _close_part(self) -> None:
        if self._out is not None:
            self._out.flush()
            os.fsync(self._out.fileno())
            self._out.close()
            self._out = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            if self._out is None or self._left == 0:
                self._next_part()
            assert self._out is not None
            take = len(view) - done if self._left < 0 else min(self._left, len(view) - done)
            self._out.write(view[done : done + take])
            done += take
            if self._left > 0:
                self._left -= take
        self.total += done
        return done

    def commit(self) -> list[Path]:
        """Close the last part and rename every part into place; what an older export to the
        same name left of the other form (DEST next to new DEST.000..., or DEST.000... next
        to a new DEST) and its stale higher parts (DEST.005 when this one has 3) are removed:
        `mirror import DEST*` must find this export alone."""
        if self._out is None and not self.temps:
            self._next_part()
        self._close_part()
        finals = [
            part_name(self.dest, i) if self.split else self.dest for i in range(len(self.temps))
        ]
        fsutil.durable_move_all(zip(self.temps, finals, strict=True), sync_src=False)
        stale = existing_parts(self.dest)[len(finals) if self.split else 0 :]
        if self.split and (self.dest.is_file() or self.dest.is_symlink()):
            stale.append(self.dest)
        for path in stale:
            path.unlink()
        return finals

    def abort(self) -> None:
        self._close_part()
        for temp in self.temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def existing_parts(dest: Path) -> list[Path]:
    """DEST.000, DEST.001, ... present next to DEST, in order."""
    found = []
    for path in dest.parent.glob(f"{dest.name}.*"):
        m = _PART_RE.match(path.name)
        if m and m[1] == dest.name:
            found.append((int(m[2]), path))
    return [p for _, p in sorted(found)]


def order_parts(files: Sequence[Path]) -> tuple[str, list[Path]]:
    """The archive's name and its files in stream order. One file is the whole archive;
    several must be NAME.000 ... NAME.N of one NAME, without a gap (given in any order)."""
    if not files:
        raise ArchiveError("import", "no archive file given")
    if len(files) == 1 and not _PART_RE.match(files[0].name):
        return str(files[0]), [files[0]]
    numbered: dict[int, Path] = {}
    stems = set()
    for path in files:
        m = _PART_RE.match(path.name)
        if m is None:
            raise ArchiveError(str(path), "not a part of a split archive (NAME.000, NAME.001, ...)")
        stems.add(str(path.with_name(m[1])))
        if int(m[2]) in numbered:
            raise ArchiveError(str(path), "part given twice")
        numbered[int(m[2])] = path
    if len(stems) > 1:
        raise ArchiveError(", ".join(sorted(stems)), "parts of different archives given together")
    name = stems.pop()
    for index in range(max(numbered) + 1):
        if index not in numbered:
            raise ArchiveError(f"{name}.{index:03d}", "missing part of the split archive")
    return name, [numbered[i] for i in sorted(numbered)]


class PartReader(io.RawIOBase):
    """The parts read back as one stream; `current` names the part being read (messages)."""

    def __init__(self, parts: Sequence[Path], on_bytes: Callable[[int], None] | None = None):
        super().__init__()
        self.parts = list(parts)
        self.index = -1
        self._in: io.BufferedReader | None = None
        self.on_bytes = on_bytes

    @property
    def current(self) -> str:
        return str(self.parts[max(self.index, 0)])

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self._in is None:
                if self.index + 1 >= len(self.parts):
                    return 0
                self.index += 1
                self._in = self.parts[self.index].open("rb")
            count = int(self._in.readinto(buffer))
            if count:
                if self.on_bytes is not None:
                    self.on_bytes(count)
                return count
            self._in.close()
            self._in = None

    def close(self) -> None:
        if self._in is not None:
            self._in.close()
            self._in = None
        super().close()


@contextlib.contextmanager
def writing(
    dest: Path, split: int | None, zstd: bool
) -> Iterator[tuple[tarfile.TarFile, PartWriter]]:
    """A streaming tar writer into dest (parts, zstd); parts are renamed into place only when
    the block ends without an exception (then `writer.commit()` is the caller's last step)."""
    writer = PartWriter(dest, split)
    try:
        if zstd:
            compressor = zstandard.ZstdCompressor(level=3, threads=-1)
            with (
                compressor.stream_writer(cast(IO[bytes], writer), closefd=False) as zw,
                tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar,
            ):
                yield tar, writer
        else:
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                yield tar, writer
    except BaseException:
        writer.abort()
        raise


def tar_info(name: str, size: int) -> tarfile.TarInfo:
    """A plain file member: no owner, fixed mode and time (archives of one state are equal)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class HashingReader(io.RawIOBase):
    """Reads a file for tarfile, hashing what passes (verify-while-writing)."""

    def __init__(
        self, handle: io.BufferedReader, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        super().__init__()
        self.handle = handle
        self.digest = hashlib.sha256()
        self.count = 0
        self.on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = int(self.handle.readinto(buffer))
        if count:
            self.digest.update(memoryview(buffer)[:count])
            self.count += count
            if self.on_bytes is not None:
                self.on_bytes(count)
        return count or 0


@contextlib.contextmanager
def reading(
    name: str, parts: Sequence[Path], on_bytes: Callable[[int], None] | None = None
) -> Iterator[tuple[tarfile.TarFile, PartReader]]:
    """The tar stream of `parts` (zstd detected by its magic number)."""
    reader = PartReader(parts, on_bytes)
    buffered = io.BufferedReader(reader, CHUNK)
    try:
        head = buffered.peek(4)[:4]
        stream: IO[bytes] = buffered
        if head == ZSTD_MAGIC:
            stream = zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
        try:
            tar = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 - closed below
        except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
            raise ArchiveError(name, f"not a tar archive ({exc})") from None
        with tar:
            yield tar, reader
    finally:
        buffered.close()


def file_sha256(path: Path, on_bytes: Callable[[int], None] | None = None) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return size, digest.hexdigest()
