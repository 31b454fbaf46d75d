"""Where each image to mirror comes from: the kubeadm sets, images.txt, and what mirrored files
and charts reference (any kind with a `discovered_images(cfg)` method, mirror.content.KINDS)."""

from __future__ import annotations

from collections.abc import Sequence

from mirror import content
from mirror.config import Config
from mirror.images.refs import ImageJob, ImageRef, RegistryLayout, check_unique, image_job


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
    layout = RegistryLayout.of(cfg.registry)
    planned = {job.source.upstream for job in jobs}
    merged = list(jobs)
    for ref, _source in found:
        if ref.upstream in planned:
            continue
        planned.add(ref.upstream)
        merged.append(image_job(ref, layout))
    check_unique(merged, layout)
    return merged


def image_sources(cfg: Config) -> dict[str, list[str]]:
    """upstream reference -> where it comes from, in planning order: `kubeadm v1.28.4`,
    `images.txt:3`, `files:calico/tigera-operator.yaml`, `charts:ingress-nginx-4.11.3
    (values.yaml)`. Versions without an image list are left out (the sync reports them)."""
    from mirror.images.refs import parse_reference
    from mirror.kubernetes.images import image_lists
    from mirror.kubernetes.resolve import resolve_versions

    sources: dict[str, list[str]] = {}

    def add(ref: ImageRef, source: str) -> None:
        seen = sources.setdefault(ref.upstream, [])
        if source not in seen:
            seen.append(source)

    versions = resolve_versions(cfg).versions
    for version, found in image_lists(cfg, versions, run_kubeadm=False).lists.items():
        for text in found.images:
            add(parse_reference(text), f"kubeadm {version}")
    for number, ref in _images_file_lines(cfg):
        add(ref, f"{cfg.images_file.name if cfg.images_file else 'images.txt'}:{number}")
    for ref, source in found_in_content(cfg):
        add(ref, source)
    return sources


def _images_file_lines(cfg: Config) -> list[tuple[int, ImageRef]]:
    """(line number, reference) of images.txt; parse_images_file has validated it already."""
    from mirror.images.refs import parse_images_file, parse_reference

    path = cfg.images_file
    if path is None or not path.is_file():
        return []
    parse_images_file(path)  # the one validation, with its line-numbered errors
    found = []
    lines = path.read_text(encoding="utf-8-sig").split("\n")
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            found.append((number, parse_reference(text)))
    return found
