"""Errors of the charts kind: one line naming the chart repository (and chart, url)."""

from __future__ import annotations

from mirror.errors import MirrorError


class ChartSyncError(MirrorError):
    """One chart repository could not be mirrored; its published copy is untouched."""

    def __init__(self, repo: str, message: str, url: str | None = None) -> None:
        where = f" ({url})" if url else ""
        super().__init__(f"chart {repo}: {message}{where}")
        self.repo = repo
        self.url = url
