"""Stage 5 of a repo sync: parallel package downloads into the repo's staging area.

Packages land in staging, not in the published tree: a repo whose sync fails halfway
publishes nothing, while completed (and `.part`) files stay for the next run to reuse.
All transfers run in one libcurl multi handle (mirror.transfers): retries, resume and
verification happen there, the same way for every file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from mirror.errors import PackageError
from mirror.http import DownloadJob, Fetcher, RequestOptions, file_matches
from mirror.progress import progress_for
from mirror.yum.metadata import PackageRef, join_url


def download_packages(
    repo: str,
    baseurl: str,
    packages: Sequence[PackageRef],
    staging: Path,
    fetcher: Fetcher,
    opts: RequestOptions,
    on_ready: Callable[[PackageRef], None] | None = None,
) -> None:
    """Download every package into `staging/<href>`, verified; raise the first failure.

    `on_ready(pkg)` is called as each package is complete in staging (already there, or just
    downloaded), so a later stage (signature checks) can run alongside the transfers.

    All downloads are attempted even after one fails, so a rerun only fetches what is
    still missing; the error names the package (and how many others failed). A local write
    error (mirror.http.LocalWriteError) stops everything at once and propagates.
    """
    if not packages:
        return
    progress = progress_for(repo, len(packages), sum(p.size for p in packages))
    jobs: dict[DownloadJob, PackageRef] = {}
    for pkg in packages:
        dest = staging / pkg.href
        if file_matches(dest, pkg.expected):  # left complete by an earlier, failed run
            progress.advance(pkg.size)
            progress.item_done(pkg.nevra)
            if on_ready:
                on_ready(pkg)
            continue
        job = DownloadJob(join_url(baseurl, pkg.href), dest, pkg.expected, opts, pkg.nevra)
        jobs[job] = pkg

    def done(job: DownloadJob) -> None:
        progress.item_done(job.label)
        if on_ready:
            on_ready(jobs[job])

    try:
        failures = fetcher.download_many(list(jobs), progress.advance, done)
    finally:
        progress.close()
    if failures:
        job, error = failures[0]
        more = f" (and {len(failures) - 1} more packages failed)" if len(failures) > 1 else ""
        raise PackageError(repo, job.label, f"{error}{more}", error.url)
