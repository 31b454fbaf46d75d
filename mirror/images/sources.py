"""Where each image to mirror comes from: the kubeadm sets, images.txt, and what mirrored files
and charts reference (any kind with a `discovered_images(cfg)` method, mirror.content.KINDS)."""

from __future__ import annotations

from collections.abc import Sequence

from mirror import content
from mirror.config import Config
from mirror.images.refs import ImageJob, ImageRef, coredns_alias


def found_in_content(cfg: Config) -> list[tuple[ImageRef, str]]:
    """(reference, source) from every kind that finds images in what it mirrored."""
    found: list[tuple[ImageRef, str]] = []
    for name in content.names():
        finder = getattr(content.get(name), "discovered_images", None)
        if finder is not None:
            found += finder(cfg)
    return found


def with_found_images(
    cfg: Config, jobs: Sequence[ImageJob], found: Sequence[tuple[ImageRef, str]]
) -> list[ImageJob]:
    """`jobs` plus a job for every found reference not already among them (same naming rules:
    docker.io/library, tags, digests are normalised by parse_reference)."""
    planned = {job.source.upstream for job in jobs}
    merged = list(jobs)
    for ref, _source in found:
        if ref.upstream in planned:
            continue
        planned.add(ref.upstream)
        names = [ref.mirrored(cfg.registry.url)]
        alias = coredns_alias(ref)
        if alias:
            names.append(ref.mirrored(cfg.registry.url, alias))
        merged.append(ImageJob(ref, tuple(names)))
    return merged
