"""One pipeline for every kind of content: yum repos, images, files, Helm charts.

A kind is one module implementing `mirror.content.kind.Kind` (plan what is wanted -> sync
one item -> describe what is published). `mirror.content.runner` owns locking, per-item state,
errors, exit codes, progress and the summary; `mirror.content.report` renders state for
`mirror status`, /api/status, /metrics and the status page. The CLI (`--only`) and the web app
discover kinds from KINDS below: adding a kind is its own package plus one line here.

Kinds are imported lazily (a repos-only sync never imports the image code).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mirror.content.kind import Kind
    from mirror.state import Record

# name -> module defining KIND; the order is the sync order: repos first (a new Kubernetes
# version's kubeadm rpm must be mirrored before its image list is needed), images last (they
# include the images found in mirrored files and charts).
KINDS: dict[str, str] = {
    # A downstream mirror's index of its upstream mirror first: the others plan from it.
    "upstream_mirror": "mirror.downstream.kind",
    "repos": "mirror.yum.kind",
    "files": "mirror.files.kind",
    "charts": "mirror.charts.kind",
    "images": "mirror.images.kind",
}


def names() -> list[str]:
    return list(KINDS)


def get(name: str) -> Kind:
    module = importlib.import_module(KINDS[name])
    kind: Kind = module.KIND
    return kind


def record_type(name: str) -> type[Record]:
    from mirror import state

    if name not in KINDS:
        return state.Record
    return get(name).record_type
