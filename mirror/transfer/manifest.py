"""manifest.json, the first member of every export archive: what the archive holds and, for a
delta, what it expects the base to have provided.

Every member of the *new state* is listed (path, size, sha256), `carried` or not: a delta
lists the same members as a full export of the same state would, and carries only content
the base lacks. So a delta's manifest is itself a complete description of the state and can
be the base of the next delta.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mirror.errors import ArchiveError

FORMAT = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST = 256 * 1024 * 1024  # a million members is ~150 MB of JSON
# Every member lives under one of these; anything else is refused at import.
TOP_DIRS = ("repos", "keys", "definitions", "state", "oci", "files", "charts")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Member(_Model):
    path: str
    size: int = Field(ge=0)
    sha256: str
    carried: bool = True  # False: in the base, expected on the importing side already


class Base(_Model):
    file: str  # the base archive (or manifest) file name, for messages
    sha256: str  # of the base's manifest.json bytes
    # Of the base's member list (Manifest.state_sha256): another export of the very same
    # state (say, split differently) is as good a base as the one named.
    state_sha256: str = ""


class RepoEntry(_Model):
    key: str  # "kubernetes" or "docker-ce-stable/9/x86_64"
    repo_id: str
    values: list[tuple[str, str]]  # (variable, value) in publish-path order
    definition: str  # definitions/<file>.repo holding the repo's section


class ImageEntry(_Model):
    key: str  # the image record's key (upstream name)
    ref: str  # name of the image in the OCI layout (org.opencontainers.image.ref.name)
    digest: str
    names: list[str]  # repository[:tag|@digest] paths in the registry, without the host
    blobs: list[str]  # config and layer digests of every platform (for delta imports)


class Manifest(_Model):
    format: int = FORMAT
    mirror_version: str
    created: str
    config_file: str
    config_sha256: str
    config_text: str
    registry: str  # registry.url of the exporting side (mirrored names are rewritten)
    base_url: str  # of the exporting side (chart index urls are rewritten)
    base: Base | None = None
    repos: list[RepoEntry] = Field(default_factory=list)
    images: list[ImageEntry] = Field(default_factory=list)
    members: list[Member] = Field(default_factory=list)

    def dump(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=True).encode()

    def state_sha256(self) -> str:
        """Identifies the state an archive describes, whatever its parts or compression."""
        digest = hashlib.sha256()
        for m in sorted(self.members, key=lambda m: m.path):
            digest.update(f"{m.path}\0{m.size}\0{m.sha256}\n".encode())
        return digest.hexdigest()

    def member_map(self) -> dict[str, Member]:
        return {m.path: m for m in self.members}


def check_path(source: str, path: str) -> PurePosixPath:
    """A member path that stays inside its top directory, or ArchiveError."""
    pure = PurePosixPath(path)
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\0" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
        or pure.parts[0] not in TOP_DIRS
        or len(pure.parts) < 2
    ):
        raise ArchiveError(source, f"refusing member path {path!r}")
    return pure


def parse(source: str, data: bytes) -> Manifest:
    """manifest.json bytes -> Manifest, every member path checked; ArchiveError otherwise."""
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ArchiveError(source, f"{MANIFEST_NAME}: {where}: {first['msg']}") from None
    if manifest.format != FORMAT:
        raise ArchiveError(
            source, f"{MANIFEST_NAME}: format {manifest.format} (this mirror reads {FORMAT})"
        )
    seen: set[str] = set()
    for member in manifest.members:
        check_path(source, member.path)
        if member.path in seen:
            raise ArchiveError(source, f"{MANIFEST_NAME} lists {member.path} twice")
        if not _SHA256_RE.match(member.sha256):
            raise ArchiveError(source, f"{MANIFEST_NAME}: bad sha256 for {member.path}")
        seen.add(member.path)
    for member in manifest.members:
        # A file that is also another member's directory cannot be staged (the second one
        # would fail with a bare OSError): refused here, naming both.
        parts = member.path.split("/")
        for depth in range(2, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in seen:
                raise ArchiveError(
                    source, f"{MANIFEST_NAME} lists {member.path} below the file {parent}"
                )
    for repo in manifest.repos:
        # Each becomes a directory under repos/ (publish_dir also refuses leaving it).
        parts = [repo.repo_id, *(value for _, value in repo.values)]
        if not all(_SEGMENT_RE.match(p) for p in parts) or repo.key != "/".join(parts):
            raise ArchiveError(source, f"{MANIFEST_NAME}: refusing repo key {repo.key!r}")
    return manifest


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
