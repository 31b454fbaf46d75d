"""Images referenced by mirrored charts (issue 9, part 4): the `artifacthub.io/images`
annotation of Chart.yaml and the `image:` blocks of values.yaml (also of bundled subcharts).

Read straight from the published .tgz with tarfile: nothing is extracted to disk (so no path
in the archive can point anywhere), only Chart.yaml and values.yaml members are read, each
capped, and the whole decompressed stream is capped too (a gzip bomb stops early). A found
reference that cannot be parsed is a warning naming chart, file and YAML path.
"""

from __future__ import annotations

import gzip
import io
import logging
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from mirror.config import Config
from mirror.discover import normalise_reference
from mirror.images.refs import BadReference, ImageRef

log = logging.getLogger("mirror")

MAX_MEMBER = 4 * 1024 * 1024  # one Chart.yaml or values.yaml
MAX_UNPACKED = 256 * 1024 * 1024  # the whole decompressed tarball
MAX_MEMBERS = 20_000
MAX_NESTED = 64 * 1024 * 1024  # a subchart .tgz inside a chart
MAX_NODES = 200_000  # YAML nodes walked per values.yaml
ANNOTATION = "artifacthub.io/images"
Warn = Callable[[str], None]


@dataclass
class ChartImages:
    found: list[tuple[ImageRef, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Tags guessed from appVersion (an empty `tag:`): used only for repositories the
    # annotation does not name, since charts often prefix it ("v" + appVersion).
    guessed: list[tuple[ImageRef, str]] = field(default_factory=list)


class _Capped(io.RawIOBase):
    """A read-only stream that fails once more than `limit` bytes came through."""

    def __init__(self, raw: IO[bytes] | gzip.GzipFile, limit: int) -> None:
        self.raw, self.left = raw, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(min(len(buffer), 1 << 20))
        self.left -= len(data)
        if self.left < 0:
            raise ValueError("chart unpacks to more than the limit")
        buffer[: len(data)] = data
        return len(data)


def _members(fileobj: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    """(path, content) of the Chart.yaml, values.yaml and charts/*.tgz members, in order."""
    stream = _Capped(gzip.GzipFile(fileobj=fileobj), MAX_UNPACKED)
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for count, member in enumerate(tar):
            if count >= MAX_MEMBERS:
                raise ValueError(f"more than {MAX_MEMBERS} members")
            name = posixpath.normpath(member.name)
            if not member.isfile() or name.startswith(("/", "..")):
                continue
            base = posixpath.basename(name)
            nested = base.endswith(".tgz") and posixpath.basename(posixpath.dirname(name)) == (
                "charts"
            )
            limit = MAX_NESTED if nested else MAX_MEMBER
            if base not in ("Chart.yaml", "values.yaml") and not nested:
                continue
            if member.size > limit:
                raise ValueError(f"{name} is larger than {limit} bytes")
            handle = tar.extractfile(member)
            if handle is not None:
                yield name, handle.read(limit + 1)


def scan_chart(path: Path, label: str) -> ChartImages:
    """Every image one chart tarball names; `label` is `<name>-<version>`."""
    result = ChartImages()
    try:
        with path.open("rb") as fh:
            _scan(fh, label, "", result, depth=0)
        named = {ref.repository for ref, _source in result.found}
        result.found += [p for p in result.guessed if p[0].repository not in named]
    except (OSError, ValueError, EOFError, tarfile.TarError, zlib.error) as exc:
        result.warnings.append(f"charts:{label}: cannot read {path.name}: {exc}")
    return result


def _scan(fileobj: IO[bytes], label: str, prefix: str, result: ChartImages, depth: int) -> None:
    charts: dict[str, dict[str, Any]] = {}  # chart dir -> Chart.yaml (for appVersion)
    for name, data in _members(fileobj):
        parts = name.split("/", 1)
        inner = parts[1] if len(parts) > 1 else name
        where = prefix + inner
        if inner.endswith(".tgz"):
            if depth == 0:  # a bundled dependency; one level is what `helm package` makes
                _scan(io.BytesIO(data), label, where + "/", result, 1)
            continue
        doc = _load(data, label, where, result)
        chart_dir = posixpath.dirname(inner)
        if inner.endswith("Chart.yaml") and isinstance(doc, dict):
            charts[chart_dir] = doc
            _annotation(doc, label, where, result)
        elif inner.endswith("values.yaml") and _is_chart_dir(chart_dir):
            app = charts.get(chart_dir, {}).get("appVersion")
            _values(doc, label, where, str(app) if app else None, result)


def _is_chart_dir(directory: str) -> bool:
    """The chart itself ("") or an unpacked subchart (charts/NAME, charts/A/charts/B)."""
    parts = directory.split("/") if directory else []
    return len(parts) % 2 == 0 and all(p == "charts" for p in parts[::2])


def _load(data: bytes, label: str, where: str, result: ChartImages) -> Any:
    if len(data) > MAX_MEMBER:
        result.warnings.append(f"charts:{label}: {where}: larger than {MAX_MEMBER} bytes")
        return None
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "invalid YAML"
        result.warnings.append(f"charts:{label}: {where}: not valid YAML: {problem}")
        return None


def _add(
    text: str, label: str, where: str, path: str, result: ChartImages, guessed: bool = False
) -> None:
    source = f"charts:{label} ({where})"
    if "{{" in text:
        result.warnings.append(f"charts:{label}: {where}: {path}: templated image {text!r}")
        return
    try:
        ref = normalise_reference(text)
    except BadReference as exc:
        result.warnings.append(f"charts:{label}: {where}: {path}: {exc}")
        return
    into = result.guessed if guessed else result.found
    if (ref, source) not in into:
        into.append((ref, source))


def _annotation(chart: dict[str, Any], label: str, where: str, result: ChartImages) -> None:
    annotations = chart.get("annotations")
    raw = annotations.get(ANNOTATION) if isinstance(annotations, dict) else None
    if raw is None:
        return
    path = f"annotations.{ANNOTATION}"
    try:
        items = yaml.safe_load(str(raw)) if isinstance(raw, str) else raw
    except yaml.YAMLError:
        result.warnings.append(f"charts:{label}: {where}: {path}: not valid YAML")
        return
    if not isinstance(items, list):
        result.warnings.append(f"charts:{label}: {where}: {path}: not a list")
        return
    for i, item in enumerate(items):
        image = item.get("image") if isinstance(item, dict) else None
        if isinstance(image, str) and image.strip():
            _add(image, label, where, f"{path}[{i}].image", result)
        else:
            result.warnings.append(f"charts:{label}: {where}: {path}[{i}]: no 'image'")


def _values(doc: Any, label: str, where: str, app: str | None, result: ChartImages) -> None:
    budget = [MAX_NODES]
    stack: list[tuple[Any, str, int]] = [(doc, "", 0)]
    while stack and budget[0] > 0:
        node, path, depth = stack.pop()
        budget[0] -= 1
        if depth > 64:
            continue
        if isinstance(node, list):
            stack += [(v, f"{path}[{i}]", depth + 1) for i, v in reversed(list(enumerate(node)))]
            continue
        if not isinstance(node, dict):
            continue
        children = []
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if str(key) == "image" and value:
                _image_block(value, label, where, sub, app, result)
            if isinstance(value, (dict, list)):
                children.append((value, sub, depth + 1))
        stack += reversed(children)


def _image_block(
    value: Any, label: str, where: str, path: str, app: str | None, result: ChartImages
) -> None:
    """`image: repo:tag`, or {registry, repository|image|name, tag, digest}."""
    if isinstance(value, str):
        _add(value, label, where, path, result)
        return
    if not isinstance(value, dict):
        return
    repo = next((value[k] for k in ("repository", "image", "name") if _text(value.get(k))), None)
    if not isinstance(repo, str):
        if any(k in value for k in ("repository", "tag", "registry")):
            result.warnings.append(f"charts:{label}: {where}: {path}: no repository")
        return  # a mapping without any image keys (e.g. `image: {pullPolicy: ...}`)
    registry = value.get("registry")
    name = repo.strip()
    if isinstance(registry, str) and registry.strip():
        name = f"{registry.strip().rstrip('/')}/{name}"
    tag, digest = value.get("tag"), value.get("digest")
    text, guessed = name, False
    if _text(tag) or isinstance(tag, (int, float)) and not isinstance(tag, bool):
        text += f":{str(tag).strip()}"
    elif not _text(digest) and app:
        text, guessed = f"{text}:{app}", True  # the convention: empty tag = appVersion
    if _text(digest):
        text += f"@{str(digest).strip()}"
    _add(text, label, where, path, result, guessed)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def chart_files(cfg: Config) -> Iterator[tuple[str, Path]]:
    """(`<name>-<version>`, tarball) of every published version of every configured chart."""
    from mirror.charts.index import published_entries
    from mirror.charts.repos import chart_repos
    from mirror.charts.sync import INDEX, charts_root

    for repo in chart_repos(cfg):
        target = charts_root(cfg) / repo.key
        try:
            body = (target / INDEX).read_bytes()
        except OSError:
            continue  # not synced yet
        wanted = {chart.name for chart in repo.charts}
        for name, version, file in published_entries(body):
            if name in wanted and (target / file).is_file():
                yield f"{name}-{version}", target / file


def discovered_images(cfg: Config, warn: Warn | None = None) -> list[tuple[ImageRef, str]]:
    """Images the mirrored charts reference, each with its source
    (`charts:ingress-nginx-4.11.3 (values.yaml)`); unparseable ones go to `warn` (default:
    the log) and are left out."""
    found: list[tuple[ImageRef, str]] = []
    for label, path in chart_files(cfg):
        scanned = scan_chart(path, label)
        for warning in scanned.warnings:
            (warn or log.warning)(warning)
        found += [pair for pair in scanned.found if pair not in found]
    return found
