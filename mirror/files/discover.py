"""Images found in mirrored files, for the image set and `mirror images list --why`.

The walk itself (mirror.discover) runs at sync time, once per file content, and its result is
kept in the file's record: planning images, and any web worker doing it, reads a few small
JSON files instead of parsing megabytes of YAML on every call.
"""

from __future__ import annotations

import logging

from mirror import state
from mirror.config import Config
from mirror.images.refs import BadReference, ImageRef, parse_reference

log = logging.getLogger("mirror")


def source_of(path: str) -> str:
    """How `--why` names a mirrored file: files:calico/tigera-operator.yaml."""
    return f"files:{path}"


def discovered_images(cfg: Config) -> list[tuple[ImageRef, str]]:
    """(reference, source) for every image found in the published copy of each configured
    file with discover_images, in config order, each reference once per file. Files not
    synced yet contribute nothing (their images join after their first sync)."""
    found: list[tuple[ImageRef, str]] = []
    for entry in cfg.files:
        if not entry.discover:
            continue
        record = state.load(cfg.state_root, "files", entry.path)
        for text in dict.fromkeys(getattr(record, "images", None) or []):
            try:
                found.append((parse_reference(text), source_of(entry.path)))
            except BadReference as exc:  # a record edited by hand, or from a newer version
                log.warning("%s: recorded image %r: %s", source_of(entry.path), text, exc)
    return found
