"""Stage 5 of a repo sync: parallel package downloads into the repo's staging area.

Packages land in staging, not in the published tree: a repo whose sync fails halfway
publishes nothing, while completed (and `.part`) files stay for the next run to reuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from mirror.errors import PackageError
from mirror.http import Fetcher, FetchError, RequestOptions, file_matches
from mirror.progress import progress_for
from mirror.yum.metadata import PackageRef, join_url


def download_packages(
    repo: str,
    baseurl: str,
    packages: Sequence[PackageRef],
    staging: Path,
    fetcher: Fetcher,
    opts: RequestOptions,
    workers: int,
) -> None:
    """Download every package into `staging/<href>`, verified; raise the first failure.

    All downloads are attempted even after one fails, so a rerun only fetches what is
    still missing; the error names the package (and how many others failed).
    """
    if not packages:
        return
    progress = progress_for(repo, len(packages), sum(p.size for p in packages))
    failures: list[PackageError] = []

    def fetch_one(pkg: PackageRef) -> None:
        dest = staging / pkg.href
        if file_matches(dest, pkg.expected):  # left complete by an earlier, failed run
            progress.advance(pkg.size)
            return
        try:
            fetcher.download(
                join_url(baseurl, pkg.href), dest, pkg.expected, opts, progress.advance
            )
        except FetchError as exc:
            raise PackageError(repo, pkg.nevra, str(exc), exc.url) from None

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"dl-{repo}") as pool:
            futures = {pool.submit(fetch_one, pkg): pkg for pkg in packages}
            for future in as_completed(futures):
                exc = future.exception()
                if isinstance(exc, PackageError):
                    failures.append(exc)
                elif exc is not None:
                    raise exc
                progress.item_done(futures[future].nevra)
    finally:
        progress.close()
    if failures:
        first = failures[0]
        if len(failures) > 1:
            first.args = (f"{first.args[0]} (and {len(failures) - 1} more packages failed)",)
        raise first
