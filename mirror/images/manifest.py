"""Manifest documents: media types, digests, platforms of an index.

Shared by the registry API client (mirror.images.regapi), which reads them, and the sync,
which decides from them what skopeo must copy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from mirror.errors import ImageSyncError

OCI_INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX_TYPE, DOCKER_LIST_TYPE})
# Every type we mirror. Without the index types a registry answers a tag that names an index
# with one platform's manifest (distribution picks linux/amd64), i.e. with the wrong digest.
ACCEPT = ", ".join((OCI_INDEX_TYPE, DOCKER_LIST_TYPE, OCI_MANIFEST_TYPE, DOCKER_MANIFEST_TYPE))


@dataclass(frozen=True)
class Platform:
    os: str
    arch: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"bad platform {text!r} (expected os/arch or os/arch/variant)")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def __str__(self) -> str:
        return f"{self.os}/{self.arch}" + (f"/{self.variant}" if self.variant else "")


def digest_of(raw: bytes) -> str:
    """The registry digest of a manifest: sha256 of its bytes exactly as served."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def parse_manifest(raw: bytes, image: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ImageSyncError(image, "registry returned a manifest that is not JSON") from None
    if not isinstance(doc, dict):
        raise ImageSyncError(image, "registry returned a manifest that is not a JSON object")
    return doc


def is_index(doc: dict[str, Any]) -> bool:
    return doc.get("mediaType") in INDEX_TYPES or (
        "manifests" in doc and "layers" not in doc and "config" not in doc
    )


def index_platforms(doc: dict[str, Any]) -> list[tuple[Platform, str]]:
    """(platform, manifest digest) of each entry of an index; entries without a platform
    (attestations, signatures stored as "unknown/unknown") are left out."""
    found = []
    for entry in doc.get("manifests") or []:
        plat = entry.get("platform") or {}
        os_name, arch = plat.get("os"), plat.get("architecture")
        if not os_name or not arch or os_name == "unknown" or not entry.get("digest"):
            continue
        found.append((Platform(os_name, arch, plat.get("variant") or None), entry["digest"]))
    return found


def select_platform(doc: dict[str, Any], wanted: Platform, image: str) -> tuple[Platform, str]:
    """The index entry for `wanted`: exact variant if one was asked for; otherwise an entry
    without a variant first (arm64 images often say "v8"), then any variant."""
    entries = [
        (p, d) for p, d in index_platforms(doc) if (p.os, p.arch) == (wanted.os, wanted.arch)
    ]
    if wanted.variant:
        entries = [(p, d) for p, d in entries if p.variant == wanted.variant]
    else:
        entries.sort(key=lambda e: e[0].variant is not None)
    if not entries:
        have = ", ".join(sorted({str(p) for p, _ in index_platforms(doc)})) or "none"
        raise ImageSyncError(image, f"no {wanted} image in the index (has: {have})")
    return entries[0]
