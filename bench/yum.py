"""yum scenarios: `mirror sync --only repos` vs `dnf reposync --download-metadata`.

One fixture upstream (N signed rpms, served by tests.fixtures.UpstreamServer on 127.0.0.1) in
two states: A (N packages) and B (A + `added` packages, repodata generated later, as upstream
would). Each run, with fresh directories for both tools:

- cold      full sync into empty directories (state A);
- no-op     the same command again;
- add-N     upstream switches to B, resync (only the N new rpms may be fetched);
- cold-lat  fresh directories again, state A, with a sleep before every upstream response.

Every step is verified before its number counts: exactly upstream's rpms (paths, sizes,
sha256), repomd.xml byte-identical, every file it names present.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    BenchError,
    Checks,
    MiB,
    RunStats,
    Section,
    SummaryRow,
    disk_usage,
    hash_tree,
    log,
    markdown_table,
    median,
    mirror_cmd,
    mirror_env,
    ordered,
    ratio,
    rpm_files,
    run_measured,
    same,
    settle,
    shown,
    span,
)
from tests.fixtures import GpgKey, Pkg, UpstreamServer, build_rpms, make_repo
from tests.fixtures import httpserver as _httpserver

REPO_ID = "bench"
SCENARIOS = ("cold", "cold-lat", "no-op", "add")


@dataclass(frozen=True)
class YumOptions:
    packages: int = 2000
    payload: int = 22_000  # bytes of incompressible payload: a ~28 KB signed rpm
    added: int = 20
    latency_ms: float = 20.0
    runs: int = 3
    dnf_gpgcheck: bool = False  # add `--gpgcheck` to dnf reposync (not the peer)


# ------------------------------------------------------------------------------------------
# upstream fixture
# ------------------------------------------------------------------------------------------


@dataclass
class Upstream:
    """ROOT/repo/{Packages/*.rpm,repodata/} with two states switched in O(1)."""

    root: Path
    snapshots: Path
    added_dir: Path  # the `added` rpms of state B, outside the served tree
    added_rel: set[str]
    expected_a: dict[str, tuple[int, str]]
    expected_b: dict[str, tuple[int, str]]
    repomd_a: bytes = b""
    repomd_b: bytes = b""
    state: str = "A"

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    def set_state(self, state: str) -> None:
        repodata = self.repo / "repodata"
        shutil.rmtree(repodata)
        shutil.copytree(self.snapshots / state, repodata)  # copy2: mtimes of the snapshot
        for rel in self.added_rel:
            target = self.repo / rel
            if state == "B":
                shutil.copy2(self.added_dir / Path(rel).name, target)
            else:
                target.unlink(missing_ok=True)
        self.state = state

    @property
    def expected(self) -> dict[str, tuple[int, str]]:
        return self.expected_b if self.state == "B" else self.expected_a

    @property
    def repomd(self) -> bytes:
        return self.repomd_b if self.state == "B" else self.repomd_a


def build_signed(
    pkgs: Sequence[Pkg], outdir: Path, key: GpgKey, scratch: Path, subdir: str = ""
) -> None:
    """Build and sign pkgs: one rpmbuild + one batch rpmsign per core, in parallel."""
    jobs = max(1, min(os.cpu_count() or 1, len(pkgs) // 200 or 1))
    chunks = [pkgs[i::jobs] for i in range(jobs)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [
            pool.submit(build_rpms, chunk, "x86_64", outdir, key, scratch / f"b{i}", subdir)
            for i, chunk in enumerate(chunks)
        ]
        for future in futures:
            future.result()
    shutil.rmtree(scratch, ignore_errors=True)


def build_upstream(work: Path, key: GpgKey, opts: YumOptions, cache: Path | None) -> Upstream:
    """The fixture in work/{upstream,snapshots,added}: built, or copied from cache/ when an
    earlier bench built one with the same sizes (delete the cache dir to rebuild)."""
    subdirs = ("upstream", "snapshots", "added")
    cached = cache / f"yum-{opts.packages}x{opts.payload}+{opts.added}" if cache else None
    if cached is not None and (cached / "complete").exists():
        for sub in subdirs:
            shutil.copytree(cached / sub, work / sub)
        log(f"yum: fixture copied from {cached}")
    else:
        _build_fixture(work, key, opts)
        if cached is not None:
            shutil.rmtree(cached, ignore_errors=True)
            for sub in subdirs:
                shutil.copytree(work / sub, cached / sub)
            (cached / "complete").touch()
    return _load(work)


def _build_fixture(work: Path, key: GpgKey, opts: YumOptions) -> None:
    """Signed rpms; repodata snapshots of state A and B; the served tree left in state A."""
    repo = work / "upstream" / "repo"
    started = time.perf_counter()
    size = opts.payload
    pkgs = [Pkg(f"bench-pkg-{i:05d}", "1.0", payload_size=size) for i in range(opts.packages)]
    added = [Pkg(f"bench-new-{i:03d}", "1.0", payload_size=size) for i in range(opts.added)]
    build_signed([*pkgs, *added], work / "built", key, work / "scratch")
    added_dir = work / "added"
    added_dir.mkdir()
    (repo / "Packages").mkdir(parents=True)
    added_names = {p.filename("x86_64") for p in added}
    for rpm in (work / "built").iterdir():
        rpm.rename((added_dir if rpm.name in added_names else repo / "Packages") / rpm.name)
    log(
        f"yum: built + signed {len(pkgs) + len(added)} rpms in {time.perf_counter() - started:.1f}s"
    )
    started = time.perf_counter()
    make_repo(repo, key)  # state A
    shutil.copytree(repo / "repodata", work / "snapshots" / "A")
    for name in added_names:
        shutil.copy2(added_dir / name, repo / "Packages" / name)
    make_repo(repo, key)  # state B: generated later, as upstream would
    shutil.copytree(repo / "repodata", work / "snapshots" / "B")
    for name in added_names:
        (repo / "Packages" / name).unlink()
    log(f"yum: repodata for both states in {time.perf_counter() - started:.1f}s")


def _load(work: Path) -> Upstream:
    root, snapshots, added_dir = work / "upstream", work / "snapshots", work / "added"
    expected_a = hash_tree(rpm_files(root / "repo"))
    added = hash_tree({f"Packages/{p.name}": p for p in added_dir.glob("*.rpm")})
    up = Upstream(root, snapshots, added_dir, set(added), expected_a, {**expected_a, **added})
    up.repomd_a = (snapshots / "A" / "repomd.xml").read_bytes()
    up.repomd_b = (snapshots / "B" / "repomd.xml").read_bytes()
    if up.repomd_a == up.repomd_b or set(added) & set(expected_a):
        raise BenchError(f"broken yum fixture in {work}")
    # gpgcheck=1 in the .repo: the rpms must carry the fixture key's signature.
    sample = [root / "repo" / rel for rel in sorted(expected_a)[:: max(1, len(expected_a) // 4)]]
    query = ["rpm", "-qp", "--nosignature", "--qf", "%{RSAHEADER:pgpsig}|%{SIGPGP:pgpsig}\n"]
    sigs = subprocess.run([*query, *map(str, sample)], capture_output=True, text=True).stdout
    if len(sigs.splitlines()) != len(sample) or "(none)|(none)" in sigs:
        raise BenchError(f"yum fixture rpms are not signed:\n{sigs}")
    return up


class Latency:
    """A sleep before every UpstreamServer response, switchable per step.

    Also sets TCP_NODELAY on the handler (this process only): without it every small response
    waits ~40 ms for the client's delayed ACK, and the bench would measure Nagle."""

    delay = 0.0
    installed = False

    @classmethod
    def install(cls) -> bool:
        handler: Any = getattr(_httpserver, "_Handler", None)
        serve = getattr(handler, "_serve", None)
        if handler is None or serve is None:
            log("warning: UpstreamServer handler has no _serve(); latency scenario not possible")
            return False
        handler.disable_nagle_algorithm = True
        if not cls.installed:

            def delayed(self: Any, body: bool) -> None:
                if cls.delay:
                    time.sleep(cls.delay)
                serve(self, body)

            handler._serve = delayed
            cls.installed = True
        return True


# ------------------------------------------------------------------------------------------
# the two tools
# ------------------------------------------------------------------------------------------


@dataclass
class YumTool:
    name: str
    base: Path
    repos_dir: Path
    python: str = sys.executable
    src: Path = Path()
    dnf_gpgcheck: bool = False

    def prepare(self) -> None:
        self.base.mkdir(parents=True)
        if self.name == "mirror":
            (self.base / "mirror.yaml").write_text(
                "# written by bench/yum.py; everything else is the default\n"
                f"data_dir: ./data\nbase_url: http://127.0.0.1:8080\nrepos_dir: {self.repos_dir}\n"
                "registry:\n  embedded: false\n"
            )
        else:
            for sub in ("out", "cache", "log", "persist"):
                (self.base / sub).mkdir()

    def command(self) -> list[str]:
        if self.name == "mirror":
            return mirror_cmd(
                self.python, self.base / "mirror.yaml", "sync", "--only", "repos", "--repo", REPO_ID
            )
        b = self.base
        cmd = [
            "dnf",
            "reposync",
            f"--repoid={REPO_ID}",
            f"--download-path={b / 'out'}",
            "--norepopath",
            "--download-metadata",
            # A persistent cache, as from cron; --refresh so a resync sees upstream changes
            # (dnf's default metadata_expire is 48 h: without it, add-N is silently missed).
            "--refresh",
            "--releasever=9",
            "--disableplugin=local",
            "-q",
            f"--setopt=reposdir={self.repos_dir}",
            f"--setopt=cachedir={b / 'cache'}",
            f"--setopt=logdir={b / 'log'}",
            f"--setopt=persistdir={b / 'persist'}",
        ]
        return [*cmd, "--gpgcheck"] if self.dnf_gpgcheck else cmd

    @property
    def env(self) -> dict[str, str]:
        if self.name == "mirror":
            return mirror_env(self.src)
        return {**os.environ, "LC_ALL": "C.UTF-8"}

    @property
    def output(self) -> Path:
        return self.base / ("data/repos/" + REPO_ID if self.name == "mirror" else "out")

    def shown(self) -> str:
        return shown(self.command(), self.base, self.src if self.name == "mirror" else None)


def write_repo_file(repos_dir: Path, server: UpstreamServer, repo: Path) -> None:
    """One definition, read by both tools (mirror's repos_dir = dnf's reposdir)."""
    url = server.url_for(repo)
    repos_dir.mkdir(parents=True)
    (repos_dir / f"{REPO_ID}.repo").write_text(
        f"[{REPO_ID}]\nname=Bench fixture\nbaseurl={url}/\nenabled=1\n"
        f"gpgcheck=1\nrepo_gpgcheck=0\ngpgkey={url}/repodata/repomd.xml.key\n"
    )


# ------------------------------------------------------------------------------------------
# measuring and verifying
# ------------------------------------------------------------------------------------------


@dataclass
class Sample:
    stats: RunStats
    requests: int
    rpm_gets: int
    fetched: int  # body bytes served (GET 200/206)
    disk: int  # allocated bytes of everything the tool keeps (output + cache/state)
    only_new: bool  # the rpm GETs were exactly the packages new in this step


_HREF = re.compile(rb'<location href="([^"]+)"')


def verify(checks: Checks, tool: YumTool, up: Upstream) -> None:
    out, want = tool.output, up.expected
    got = rpm_files(out)
    checks.ok(
        "yum",
        set(got) == set(want),
        lambda: (
            f"{tool.name}: {len(got)} rpms, want {len(want)}; missing "
            f"{sorted(set(want) - set(got))[:3]}, extra {sorted(set(got) - set(want))[:3]}"
        ),
    )
    hashed = hash_tree(got)
    bad = [name for name in want if hashed[name] != want[name]]
    checks.ok("yum", not bad, lambda: f"{tool.name}: {len(bad)} rpms differ, e.g. {bad[0]}")
    repomd = out / "repodata" / "repomd.xml"
    checks.ok(
        "yum",
        repomd.is_file() and repomd.read_bytes() == up.repomd,
        f"{tool.name}: {repomd} is missing or differs from upstream's",
    )
    missing = [h.decode() for h in _HREF.findall(up.repomd) if not (out / h.decode()).is_file()]
    checks.ok("yum", not missing, f"{tool.name}: metadata files missing: {missing}")


def measure(
    checks: Checks,
    tool: YumTool,
    up: Upstream,
    server: UpstreamServer,
    log_file: Path,
    new: set[str],
) -> Sample:
    settle()
    server.clear_log()
    stats = run_measured(tool.command(), log_file, tool.env, tool.base, name=tool.name)
    reqs = list(server.requests)
    fetched = 0
    for method, path, status in reqs:
        target = up.root / path.lstrip("/")
        if method == "GET" and status in (200, 206) and target.is_file():
            fetched += target.stat().st_size
    rpm_paths = [p for m, p, _s in reqs if m == "GET" and p.endswith(".rpm")]
    prefix = "/" + up.repo.relative_to(up.root).as_posix() + "/"
    only_new = sorted(p.removeprefix(prefix) for p in rpm_paths) == sorted(new)
    verify(checks, tool, up)
    return Sample(stats, len(reqs), len(rpm_paths), fetched, disk_usage(tool.base), only_new)


# ------------------------------------------------------------------------------------------
# the scenarios
# ------------------------------------------------------------------------------------------


def run_yum(
    work: Path,
    key: GpgKey,
    opts: YumOptions,
    checks: Checks,
    python: str,
    src: Path,
    cache: Path | None = None,
) -> Section:
    up = build_upstream(work, key, opts, cache)
    if not Latency.install():
        raise RuntimeError("cannot add latency to UpstreamServer")
    samples: dict[tuple[str, str], list[Sample]] = {}
    section = Section("yum")
    logs = work / "logs"
    with UpstreamServer(up.root) as server:
        for run in range(opts.runs):
            for phase in ("plain", "latency"):
                run_dir = work / f"run{run}-{phase}"
                repos_dir = run_dir / "repos.d"
                write_repo_file(repos_dir, server, up.repo)
                tools = [
                    YumTool(n, run_dir / n, repos_dir, python, src, opts.dnf_gpgcheck)
                    for n in ordered(["mirror", "dnf"], run)
                ]
                for tool in tools:
                    tool.prepare()
                    section.commands[f"yum {tool.name}"] = tool.shown()
                up.set_state("A")
                steps = ["cold", "no-op", "add"] if phase == "plain" else ["cold-lat"]
                for scenario in steps:
                    new: set[str] = set(up.expected_a) if scenario.startswith("cold") else set()
                    if scenario == "add":
                        up.set_state("B")
                        new = set(up.added_rel)
                    Latency.delay = opts.latency_ms / 1000 if scenario == "cold-lat" else 0.0
                    try:
                        for tool in tools:
                            label = f"run{run}-{scenario}-{tool.name}"
                            s = measure(checks, tool, up, server, logs / f"{label}.log", new)
                            samples.setdefault((scenario, tool.name), []).append(s)
                            log(
                                f"yum run {run + 1}/{opts.runs} {scenario:8} {tool.name:6} "
                                f"{s.stats.wall:6.2f}s cpu {s.stats.cpu:5.2f}s {s.requests} req "
                                f"({s.rpm_gets} rpm), {s.fetched / MiB:.1f} MiB, verified"
                            )
                    finally:
                        Latency.delay = 0.0
                shutil.rmtree(run_dir)
    names = titles(opts, up)
    section.rows = summary(samples, opts, names)
    section.details.append(detail_table(samples, opts, names))
    return section


def titles(opts: YumOptions, up: Upstream) -> dict[str, str]:
    avg = sum(size for size, _ in up.expected_a.values()) / max(1, len(up.expected_a))
    kb = f"{opts.packages:,} × {avg / 1000:.0f} KB rpms"
    return {
        "cold": f"yum cold sync, {kb}",
        "cold-lat": f"yum cold sync + {opts.latency_ms:g} ms/response, {kb}",
        "no-op": "yum no-op resync",
        "add": f"yum new packages upstream ({opts.added})",
    }


def summary(
    samples: dict[tuple[str, str], list[Sample]], opts: YumOptions, names: dict[str, str]
) -> list[SummaryRow]:
    rows = []
    for scenario in SCENARIOS:
        m, d = samples[(scenario, "mirror")], samples[(scenario, "dnf")]
        mt, dt = median(s.stats.wall for s in m), median(s.stats.wall for s in d)
        r = ratio(mt, dt)
        mcpu, dcpu = median(s.stats.cpu for s in m), median(s.stats.cpu for s in d)
        notes = f"cpu {mcpu:.2f} s vs {dcpu:.2f} s"
        if scenario == "no-op":
            target = "≤ 0.5×, 1 request per repo"
            reqs = max(s.requests for s in m)
            met = r is not None and r <= 0.5 and reqs == 1
            notes += f"; requests {same([s.requests for s in m])} vs "
            notes += same([s.requests for s in d])
        elif scenario == "add":
            target = f"≤ 0.3×, only those {opts.added} fetched"
            only = all(s.only_new for s in m)
            met = r is not None and r <= 0.3 and only
            notes += f"; rpm GETs {same([s.rpm_gets for s in m])} vs "
            notes += f"{same([s.rpm_gets for s in d])}" + ("" if only else " (NOT only the new)")
        else:
            target = "≤ 0.3×"
            met = r is not None and r <= 0.3
        rows.append(
            SummaryRow(names[scenario], f"{mt:.2f} s", f"{dt:.2f} s (dnf)", r, target, met, notes)
        )
    return rows


def detail_table(
    samples: dict[tuple[str, str], list[Sample]], opts: YumOptions, names: dict[str, str]
) -> str:
    header = [
        "scenario",
        "tool",
        "median s",
        "min-max s",
        "cpu s",
        "peak RSS MB",
        "requests",
        "rpm GETs",
        "fetched MiB",
        "disk MiB",
    ]
    rows = []
    for scenario in SCENARIOS:
        for tool in ("mirror", "dnf"):
            ss = samples[(scenario, tool)]
            secs = [s.stats.wall for s in ss]
            rows.append(
                [
                    names[scenario],
                    tool,
                    f"{median(secs):.2f}",
                    span(secs),
                    f"{median(s.stats.cpu for s in ss):.2f}",
                    f"{median(s.stats.maxrss_mb for s in ss):.0f}",
                    same([s.requests for s in ss]),
                    same([s.rpm_gets for s in ss]),
                    f"{median(s.fetched for s in ss) / MiB:.1f}",
                    f"{median(s.disk for s in ss) / MiB:.1f}",
                ]
            )
    note = (
        f"{opts.runs} run(s); each: fresh dirs, cold → no-op → {opts.added} added; then "
        f"fresh dirs, cold with {opts.latency_ms:g} ms sleep before every response. "
        "cpu = user+sys of the tool's process tree; requests/rpm GETs from the upstream "
        "server's log; disk = output + the tool's cache/state."
    )
    return "### yum: mirror sync vs dnf reposync\n\n" + markdown_table(header, rows) + "\n\n" + note
