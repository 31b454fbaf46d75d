"""Images referenced by Kubernetes manifests: found for the image set, never guessed.

Shared by mirrored files (mirror.files.discover) and charts. The walk is narrow on purpose:
only the places the API server takes an image from, i.e. the Pod spec of a Pod, of every
workload's Pod template (Deployment, DaemonSet, StatefulSet, ReplicaSet, Job,
ReplicationController) and of a CronJob's jobTemplate, and there only `containers`,
`initContainers` and `ephemeralContainers`; `List` kinds are walked item by item. A string
elsewhere that happens to look like an image (an env value, a CRD default, an annotation) is
not an image the cluster will pull, and is left alone.

References are normalised with the rules of images.txt (mirror.images.refs.parse_reference:
`nginx:1.25` is docker.io/library/nginx:1.25). One that does not parse (a template left in,
`{{ .Values.image }}`, a typo) is a warning naming the file and the YAML path, never a failure:
the file itself is still mirrored.

Input is upstream data: YAML is read with the safe loader only (no tags constructing objects),
sizes and List nesting are capped, and a document that is not YAML is one warning.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import yaml

from mirror.images.refs import BadReference, ImageRef, parse_reference

# Bumped when the walk finds more (or other) images, so cached results are recomputed.
DISCOVERY_VERSION = 1
MAX_MANIFEST = 64 << 20  # bigger than any manifest bundle; tigera-operator.yaml is ~1.5 MB
MAX_LIST_DEPTH = 4  # a List inside a List inside ...: no real manifest nests deeper
MAX_WARNINGS = 50  # per file: a file full of templates is one problem, not thousands of lines

CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
# kind -> where its Pod spec is, below the object.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "PodTemplate": ("template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
LIST_KINDS_SUFFIX = "List"  # `List`, and typed lists such as `DeploymentList`

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Found:
    """One image reference and where it was: `where` is the YAML path inside the file."""

    ref: ImageRef
    where: str


@dataclass
class Discovery:
    """What one file (or chart) yielded."""

    found: list[Found] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def refs(self) -> list[ImageRef]:
        """The distinct references, in order of first appearance."""
        return list(dict.fromkeys(found.ref for found in self.found))

    def warn(self, message: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)
        elif len(self.warnings) == MAX_WARNINGS:
            self.warnings.append("more unparsable image references not shown")


def normalise_reference(value: object) -> ImageRef:
    """An image value from a manifest or chart as an ImageRef; BadReference when it is not a
    string or not a reference (the message says why)."""
    if not isinstance(value, str):
        raise BadReference(f"not a string: {type(value).__name__}")
    return parse_reference(value)


def pod_spec_images(spec: object, path: str) -> Iterator[tuple[str, object]]:
    """(YAML path, raw image value) of every container of a Pod spec at `path`."""
    if not isinstance(spec, Mapping):
        return
    for list_name in CONTAINER_LISTS:
        containers = spec.get(list_name)
        if not isinstance(containers, list):
            continue
        for index, container in enumerate(containers):
            if isinstance(container, Mapping) and "image" in container:
                yield f"{path}.{list_name}[{index}].image", container["image"]


def object_images(
    obj: object, path: str = "", depth: int = 0, seen: set[int] | None = None
) -> Iterator[tuple[str, object]]:
    """(YAML path, raw image value) for one Kubernetes object: its Pod spec's containers, or
    for a List every item's. `path` is where the object sits (e.g. "items[2]")."""
    if not isinstance(obj, Mapping):
        return
    kind = obj.get("kind")
    if not isinstance(kind, str):
        return
    if kind.endswith(LIST_KINDS_SUFFIX) and isinstance(obj.get("items"), list):
        # YAML aliases let a small file name one List a million times (`items: [*a, *a, ...]`
        # nested): each object is walked once, so the walk stays linear in the file's size.
        seen = set() if seen is None else seen
        if depth >= MAX_LIST_DEPTH or id(obj) in seen:
            return
        seen.add(id(obj))
        for index, item in enumerate(obj["items"]):
            yield from object_images(item, _join(path, f"items[{index}]"), depth + 1, seen)
        return
    spec_path = POD_SPEC_PATHS.get(kind)
    if spec_path is None:
        return
    spec: object = obj
    for key in spec_path:
        spec = spec.get(key) if isinstance(spec, Mapping) else None
    yield from pod_spec_images(spec, _join(path, ".".join(spec_path)))


def _join(path: str, more: str) -> str:
    return f"{path}.{more}" if path else more


def _describe(obj: object) -> str:
    """'Deployment tigera-operator/tigera-operator' for messages: which object, in words."""
    if not isinstance(obj, Mapping):
        return ""
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    namespace = meta.get("namespace") if isinstance(meta, Mapping) else None
    shown = f"{namespace}/{name}" if namespace and name else name
    return f"{obj.get('kind')} {shown}" if shown else str(obj.get("kind") or "")


def scan_documents(documents: Iterable[object], source: str) -> Discovery:
    """Every image in `documents` (the documents of one file, in order). Paths in warnings
    read `<source>: document N (Kind name): spec....image: <why>`."""
    discovery = Discovery()
    for number, document in enumerate(documents, start=1):
        scan_object(document, f"document {number}", source, discovery)
    return discovery


def scan_object(document: object, label: str, source: str, into: Discovery) -> None:
    """Add the images of one document (`label` names it in messages) to `into`."""
    what = _describe(document)
    prefix = f"{label} ({what})" if what else label
    for where, value in object_images(document):
        try:
            into.found.append(Found(normalise_reference(value), f"{prefix}: {where}"))
        except BadReference as exc:
            into.warn(f"{source}: {prefix}: {where}: unparsable image reference: {exc}")


def load_documents(data: bytes, name: str) -> list[object]:
    """The documents of a manifest file: JSON for .json, else (multi-document) YAML read with
    the safe loader. ValueError (with the line, where known) when it is neither."""
    if len(data) > MAX_MANIFEST:
        raise ValueError(f"larger than {MAX_MANIFEST} bytes, not scanned")
    try:
        if name.lower().endswith(".json"):
            return [json.loads(data)]
        return [doc for doc in yaml.load_all(data, Loader=_Loader) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ValueError(f"not valid YAML{where}: {problem}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    except RecursionError:  # nesting deep enough to exhaust the stack: hostile or broken
        raise ValueError("nested too deeply") from None


def scan_manifest(data: bytes, name: str, source: str) -> Discovery:
    """The images of one manifest file's bytes; a file that does not parse is one warning."""
    try:
        documents = load_documents(data, name)
    except ValueError as exc:
        return Discovery(warnings=[f"{source}: images not scanned: {exc}"])
    return scan_documents(documents, source)
