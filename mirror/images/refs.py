"""Image references: docker-style normalization, images.txt, and the names in our registry.

Naming rule in the local registry: `<registry.url>/<upstream-host>/<path>:<tag>`, e.g.
`utility:5000/docker.io/calico/node:v3.26.1`. Containerd and CRI-O then map a pull of
`docker.io/calico/node:v3.26.1` to it with a per-host path prefix, so unmodified
manifests keep working.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mirror import kubeadm_images
from mirror.errors import ConfigError

DOCKER_HUB = "docker.io"
_DOCKER_ALIASES = {"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
# distribution/reference grammar, simplified: lowercase path components, tag, digest.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_HOST_RE = re.compile(r"^(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?::[0-9]+)?$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)  # \w of the grammar is ASCII
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


class BadReference(ValueError):
    pass


@dataclass(frozen=True)
class ImageRef:
    host: str
    path: str
    tag: str | None
    digest: str | None = None

    def _key(self) -> tuple[str, str, str, str]:
        return (self.host, self.path, self.tag or "", self.digest or "")

    def __lt__(self, other: ImageRef) -> bool:
        # Not dataclass(order=True): that compares None with str for digest-only refs.
        return self._key() < other._key()

    @property
    def repository(self) -> str:
        return f"{self.host}/{self.path}"

    @property
    def upstream(self) -> str:
        """Fully qualified reference as given (tag and/or digest)."""
        return self.repository + self._suffix

    @property
    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def mirrored(self, registry: str, path: str | None = None) -> str:
        """Where the image lives in our registry; tagged refs keep the tag only, since a
        registry cannot be pushed to by digest (the digest is preserved by the copy)."""
        name = f"{registry.rstrip('/')}/{self.host}/{path or self.path}"
        if self.tag:
            return f"{name}:{self.tag}"
        return f"{name}@{self.digest}"

    def __str__(self) -> str:
        return self.upstream


# distribution caps a repository name at 255 characters; with host, tag and digest a
# reference stays well below this. Longer input is refused before any regex sees it.
MAX_REFERENCE = 512
MAX_IMAGES_FILE = 4 << 20


def _shown(text: str) -> str:
    """repr() for an error line, cut short: the input may be a megabyte of junk."""
    return repr(text) if len(text) <= 80 else repr(text[:80]) + "..."


def parse_reference(text: str) -> ImageRef:
    """Parse a reference the way docker does: `nginx:1.25` is docker.io/library/nginx:1.25.

    Everything outside the reference grammar is refused, shell metacharacters ($, `, ;, |,
    quotes, newlines) included; references only ever reach skopeo as one argv element."""
    ref = text.strip()
    if len(ref) > MAX_REFERENCE:
        raise BadReference(f"longer than {MAX_REFERENCE} characters: {_shown(ref)}")
    if not ref or any(c.isspace() or not c.isprintable() for c in ref):
        raise BadReference(f"not an image reference: {_shown(text)}")
    name, digest = ref, None
    if "@" in ref:
        name, digest = ref.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise BadReference(f"bad digest {_shown(digest)} (expected sha256:<64 hex digits>)")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        if not _TAG_RE.match(tag):
            raise BadReference(f"bad tag {_shown(tag)}")
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        host, path = parts[0], "/".join(parts[1:])
        if not _HOST_RE.match(host):
            raise BadReference(f"bad registry host {_shown(host)}")
    else:
        host, path = DOCKER_HUB, name
    if host in _DOCKER_ALIASES:
        host = DOCKER_HUB
    if host == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _PATH_RE.match(path):
        raise BadReference(
            f"bad repository name {_shown(path)} (lowercase letters, digits, ._-/)"
        )
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(host, path, tag, digest)


def parse_images_file(path: Path) -> list[ImageRef]:
    """One reference per line; `#` comments and blank lines allowed. Errors name the line."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_IMAGES_FILE + 1)
    except FileNotFoundError:
        raise ConfigError(str(path), "images file not found (key 'images_file')") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_IMAGES_FILE:
        raise ConfigError(str(path), f"larger than {MAX_IMAGES_FILE} bytes")
    try:
        # utf-8-sig: a byte order mark (Windows editors) is not part of the first reference.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad_line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}: line {bad_line}", "cannot read: not UTF-8 text (binary file?)"
        ) from None
    # split("\n"), not splitlines(): that also breaks at \x0b, \x1c, U+2028..., so line
    # numbers would not match an editor's and those characters would pass as separators.
    lines = text.split("\n")
    refs: list[ImageRef] = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            refs.append(parse_reference(text))
        except BadReference as exc:
            raise ConfigError(f"{path}: line {number}", str(exc)) from None
    return refs


@dataclass(frozen=True)
class ImageJob:
    """One upstream image and every name it must have in our registry."""

    source: ImageRef
    destinations: tuple[str, ...]

    @property
    def key(self) -> str:  # its state record's key (mirror.content.kind.Item)
        return self.source.upstream

    @property
    def upstream(self) -> str:
        return self.source.upstream


def kubeadm_refs(version: str) -> list[ImageRef]:
    return [parse_reference(r) for r in kubeadm_images.image_set(version).images()]


def coredns_alias(ref: ImageRef) -> str | None:
    """kubeadm asks a non-default imageRepository for `<repo>/coredns:<tag>` while upstream
    names it `registry.k8s.io/coredns/coredns:<tag>` (cmd/kubeadm/app/images/images.go,
    GetDNSImage), so the mirror serves it under both names."""
    if ref.host == kubeadm_images.DEFAULT_IMAGE_REPOSITORY and ref.path == "coredns/coredns":
        return "coredns"
    return None


def plan_jobs(
    registry: str,
    kubernetes_versions: Sequence[str],
    extra: Iterable[ImageRef],
    image_lists: Mapping[str, Sequence[str]] | None = None,
) -> list[ImageJob]:
    """The kubeadm image set of each version plus images.txt, deduplicated, in that order.

    `image_lists` (version -> kubeadm's references) comes from mirror.kubernetes.images, which
    asks the mirrored kubeadm binary; a version missing there falls back to the built-in table."""
    seen: dict[str, ImageJob] = {}
    refs: list[ImageRef] = []
    for version in kubernetes_versions:
        listed = (image_lists or {}).get(version)
        refs += [parse_reference(r) for r in listed] if listed else kubeadm_refs(version)
    for ref in [*refs, *extra]:
        if ref.upstream in seen:
            continue
        dests = [ref.mirrored(registry)]
        alias = coredns_alias(ref)
        if alias:
            dests.append(ref.mirrored(registry, alias))
        seen[ref.upstream] = ImageJob(ref, tuple(dests))
    return list(seen.values())


def upstream_hosts(jobs: Iterable[ImageJob]) -> list[str]:
    """Hosts nodes need a mirror entry for; the three usual ones always, in a stable order."""
    hosts = ["registry.k8s.io", DOCKER_HUB, "quay.io"]
    for job in jobs:
        if job.source.host not in hosts:
            hosts.append(job.source.host)
    return hosts
