"""plan scenario: `mirror sync --dry-run --only repos` vs `dnf reposync --urls` on a big repo.

The repo exists only as metadata: primary, filelists and other (.xml.gz) with N packages are
written directly as XML, and repomd.xml by createrepo_c's Python API (checksums, sizes). No
rpm is needed: both tools only read metadata and list what they would download. Each run
starts with empty state/cache for both tools. Measured: wall time, CPU and peak RSS
(ru_maxrss of the child's process tree, from os.wait4). Verified: each tool lists exactly the
N packages (dnf: the URLs it prints; mirror: the packages its dry run says it would download).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import createrepo_c as cr

from bench.common import (
    Checks,
    RunStats,
    Section,
    SummaryRow,
    log,
    markdown_table,
    median,
    mirror_cmd,
    mirror_env,
    ordered,
    ratio,
    run_measured,
    settle,
    shown,
    span,
)
from tests.fixtures import UpstreamServer

REPO_ID = "plan"
RSS_TARGET_MB = 200.0
_NS = 'xmlns="http://linux.duke.edu/metadata/common" xmlns:rpm="http://linux.duke.edu/metadata/rpm"'


@dataclass(frozen=True)
class PlanOptions:
    packages: int = 60_000
    runs: int = 3


def _pkg(i: int) -> tuple[str, str, str, int]:
    """(name, pkgid, href, size) of synthetic package i."""
    name = f"plan-pkg-{i:05d}"
    pkgid = hashlib.sha256(name.encode()).hexdigest()
    return name, pkgid, f"Packages/{name[9]}/{name}-1.0-1.x86_64.rpm", 20_000 + (i * 37) % 20_000


def write_repo(repo: Path, packages: int) -> set[str]:
    """Write repo/repodata for `packages` packages; returns the set of hrefs."""
    repodata = repo / "repodata"
    repodata.mkdir(parents=True)
    hrefs: set[str] = set()
    ver = '<version epoch="0" ver="1.0" rel="1"/>'
    paths = {t: repodata / f"{t}.xml.gz" for t in ("primary", "filelists", "other")}
    with (
        gzip.open(paths["primary"], "wt", compresslevel=6) as pri,
        gzip.open(paths["filelists"], "wt", compresslevel=6) as fil,
        gzip.open(paths["other"], "wt", compresslevel=6) as oth,
    ):
        head = '<?xml version="1.0" encoding="UTF-8"?>\n'
        pri.write(f'{head}<metadata {_NS} packages="{packages}">\n')
        fil.write(
            f'{head}<filelists xmlns="http://linux.duke.edu/metadata/filelists" '
            f'packages="{packages}">\n'
        )
        oth.write(
            f'{head}<otherdata xmlns="http://linux.duke.edu/metadata/other" '
            f'packages="{packages}">\n'
        )
        for i in range(packages):
            name, pkgid, href, size = _pkg(i)
            hrefs.add(href)
            entry = f'<rpm:entry name="{name}" flags="EQ" epoch="0" ver="1.0" rel="1"/>'
            arch_entry = entry.replace(f'name="{name}"', f'name="{name}(x86-64)"')
            requires = f'<rpm:entry name="plan-pkg-{i - 1:05d}"/>' if i else ""
            pri.write(
                f'<package type="rpm"><name>{name}</name><arch>x86_64</arch>{ver}'
                f'<checksum type="sha256" pkgid="YES">{pkgid}</checksum>'
                f"<summary>Synthetic package {i}</summary>"
                f"<description>Synthetic package {i} for the plan benchmark.</description>"
                "<packager>bench</packager><url>https://example.invalid/</url>"
                '<time file="1700000000" build="1700000000"/>'
                f'<size package="{size}" installed="{size - 4000}" archive="{size - 3500}"/>'
                f'<location href="{href}"/><format><rpm:license>MIT</rpm:license>'
                "<rpm:vendor>bench</rpm:vendor><rpm:group>Unspecified</rpm:group>"
                f"<rpm:buildhost>bench.invalid</rpm:buildhost>"
                f"<rpm:sourcerpm>{name}-1.0-1.src.rpm</rpm:sourcerpm>"
                '<rpm:header-range start="4504" end="6000"/>'
                f"<rpm:provides>{entry}{arch_entry}</rpm:provides>"
                + (f"<rpm:requires>{requires}</rpm:requires>" if requires else "")
                + f"<file>/usr/share/plan/{name}</file></format></package>\n"
            )
            fil.write(
                f'<package pkgid="{pkgid}" name="{name}" arch="x86_64">{ver}'
                f"<file>/usr/share/plan/{name}</file></package>\n"
            )
            oth.write(
                f'<package pkgid="{pkgid}" name="{name}" arch="x86_64">{ver}'
                '<changelog author="bench &lt;bench@example.invalid&gt;" '
                'date="1700000000">- synthetic</changelog></package>\n'
            )
        pri.write("</metadata>\n")
        fil.write("</filelists>\n")
        oth.write("</otherdata>\n")
    repomd = cr.Repomd()
    for kind, path in paths.items():
        record = cr.RepomdRecord(kind, str(path))
        record.fill(cr.SHA256)
        record.rename_file()  # checksum-prefixed names, like every real upstream
        repomd.set_record(record)
    (repodata / "repomd.xml").write_text(repomd.xml_dump())
    return hrefs


@dataclass
class PlanTool:
    name: str  # "mirror" or "dnf"
    base: Path
    repos_dir: Path
    python: str = sys.executable
    src: Path = Path()

    def prepare(self) -> None:
        self.base.mkdir(parents=True)
        if self.name == "mirror":
            (self.base / "mirror.yaml").write_text(
                "# written by bench/plan.py\n"
                f"data_dir: ./data\nbase_url: http://127.0.0.1:8080\nrepos_dir: {self.repos_dir}\n"
                "registry:\n  embedded: false\n"
            )
        else:
            for sub in ("cache", "log", "persist"):
                (self.base / sub).mkdir()

    def command(self) -> list[str]:
        if self.name == "mirror":
            return mirror_cmd(
                self.python, self.base / "mirror.yaml", "sync", "--dry-run", "--only", "repos"
            )
        b = self.base
        return [
            "dnf",
            "reposync",
            "--urls",
            f"--repoid={REPO_ID}",
            "--releasever=9",
            "--disableplugin=local",
            "-q",
            f"--setopt=reposdir={self.repos_dir}",
            f"--setopt=cachedir={b / 'cache'}",
            f"--setopt=logdir={b / 'log'}",
            f"--setopt=persistdir={b / 'persist'}",
        ]

    @property
    def env(self) -> dict[str, str]:
        return (
            mirror_env(self.src) if self.name == "mirror" else {**os.environ, "LC_ALL": "C.UTF-8"}
        )

    def shown(self) -> str:
        return shown(self.command(), self.base, self.src if self.name == "mirror" else None)


_WOULD = re.compile(r"would download (\S+)")
_COUNTS = re.compile(r"(\d+) packages upstream, (\d+) selected, (\d+) to download")


def verify(checks: Checks, tool: PlanTool, output: str, baseurl: str, hrefs: set[str]) -> None:
    n = len(hrefs)
    if tool.name == "dnf":
        urls = {line.strip() for line in output.splitlines() if line.startswith("http")}
        want = {f"{baseurl}/{h}" for h in hrefs}
        checks.ok(
            "plan",
            urls == want,
            lambda: f"dnf --urls listed {len(urls)} URLs, {len(urls & want)} of the {n} expected",
        )
        return
    listed = set(_WOULD.findall(output))
    if listed:
        checks.ok(
            "plan",
            listed == hrefs,
            lambda: (
                f"mirror --dry-run lists {len(listed)} packages, {len(listed & hrefs)} of the {n} "
                "expected"
            ),
        )
        return
    counts = _COUNTS.search(output)  # a dry run that only prints its totals
    checks.ok(
        "plan",
        counts is not None and counts.groups() == (str(n),) * 3,
        f"mirror --dry-run does not report {n} packages to download:\n{output[-2000:]}",
    )


def run_plan(work: Path, opts: PlanOptions, checks: Checks, python: str, src: Path) -> Section:
    started = time.perf_counter()
    root = work / "upstream"
    repo = root / "repo"
    hrefs = write_repo(repo, opts.packages)
    sizes = {p.name: p.stat().st_size for p in (repo / "repodata").iterdir()}
    primary = next(v for k, v in sizes.items() if k.endswith("primary.xml.gz"))
    log(
        f"plan: wrote {opts.packages:,}-package metadata ({primary / 1e6:.1f} MB primary.xml.gz)"
        f" in {time.perf_counter() - started:.1f}s"
    )
    section = Section("plan")
    samples: dict[str, list[RunStats]] = {}
    with UpstreamServer(root) as server:
        baseurl = server.url_for(repo)
        for run in range(opts.runs):
            run_dir = work / f"run{run}"
            repos_dir = run_dir / "repos.d"
            repos_dir.mkdir(parents=True)
            (repos_dir / f"{REPO_ID}.repo").write_text(
                f"[{REPO_ID}]\nname=Plan fixture\nbaseurl={baseurl}/\nenabled=1\n"
                "gpgcheck=0\nrepo_gpgcheck=0\n"
            )
            for name in ordered(["mirror", "dnf"], run):
                tool = PlanTool(name, run_dir / name, repos_dir, python, src)
                tool.prepare()
                section.commands[f"plan {name}"] = tool.shown()
                settle()
                log_file = work / "logs" / f"run{run}-{name}.log"
                stats = run_measured(tool.command(), log_file, tool.env, tool.base, name=name)
                verify(checks, tool, log_file.read_text(errors="replace"), baseurl, hrefs)
                samples.setdefault(name, []).append(stats)
                log(
                    f"plan run {run + 1}/{opts.runs} {name:6} {stats.wall:6.2f}s "
                    f"cpu {stats.cpu:5.2f}s peak RSS {stats.maxrss_mb:6.0f} MB, verified"
                )
    m, d = samples["mirror"], samples["dnf"]
    mt, dt = median(s.wall for s in m), median(s.wall for s in d)
    mrss, drss = max(s.maxrss_mb for s in m), max(s.maxrss_mb for s in d)
    r = ratio(mt, dt)
    section.rows.append(
        SummaryRow(
            f"plan of a {opts.packages:,}-package primary (`--dry-run`)",
            f"{mt:.2f} s, {mrss:.0f} MB RSS",
            f"{dt:.2f} s, {drss:.0f} MB RSS (dnf --urls)",
            r,
            f"≤ {RSS_TARGET_MB:.0f} MB peak RSS, faster than dnf (< 1×)",
            r is not None and r < 1.0 and mrss <= RSS_TARGET_MB,
            f"cpu {median(s.cpu for s in m):.2f} s vs {median(s.cpu for s in d):.2f} s",
        )
    )
    header = ["tool", "median s", "min-max s", "cpu s", "peak RSS MB (max)", "min-max RSS MB"]
    rows = [
        [
            name,
            f"{median(s.wall for s in ss):.2f}",
            span([s.wall for s in ss]),
            f"{median(s.cpu for s in ss):.2f}",
            f"{max(s.maxrss_mb for s in ss):.0f}",
            span([s.maxrss_mb for s in ss], "{:.0f}"),
        ]
        for name, ss in (("mirror", m), ("dnf", d))
    ]
    meta = ", ".join(
        f"{k.split('-', 1)[1]} {v / 1e6:.1f} MB" for k, v in sorted(sizes.items()) if "-" in k
    )
    note = (
        f"{opts.packages:,} packages, metadata only ({meta}); {opts.runs} run(s), each "
        "with empty state/cache. Peak RSS = ru_maxrss of the tool's process tree."
    )
    section.details.append(
        f"### plan: mirror sync --dry-run vs dnf reposync --urls\n\n"
        f"{markdown_table(header, rows)}\n\n{note}"
    )
    return section
