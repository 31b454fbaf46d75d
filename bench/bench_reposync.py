#!/usr/bin/env python3
"""Benchmark `mirror sync` against `dnf reposync` on the same loopback upstream, same run.

A fixture yum repo (N packages, incompressible payloads) is built with the project's own test
builders and served by tests.fixtures.UpstreamServer on 127.0.0.1. Each run then times, for
both tools, in alternating order:

1. cold   - full sync into fresh, empty directories;
2. no-op  - resync with nothing changed upstream;
3. add-1  - one package added upstream (new repodata), then resync.

Every result is verified before it counts: the output holds exactly the upstream rpms (names,
sizes, sha256) and its repodata/repomd.xml is byte-identical to upstream's. The table reports
medians over the runs and the ratio dnf/mirror. See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.fixtures import (  # noqa: E402 - needs REPO_ROOT on sys.path
    GpgKey,
    Pkg,
    UpstreamServer,
    build_rpms,
    kill_agent,
    make_gpg_key,
    make_repo,
)
from tests.fixtures import httpserver as _httpserver  # noqa: E402

REPO_ID = "bench"
SCENARIOS = ("cold", "no-op", "add-1")
SCENARIO_TITLES = {
    "cold": "cold full sync",
    "no-op": "no-op resync",
    "add-1": "1 pkg added, resync",
}
MiB = 1024 * 1024


class BenchError(RuntimeError):
    """A tool failed or produced a wrong repo: no number is reported for a broken sync."""


# ------------------------------------------------------------------------------------------
# upstream fixture
# ------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def hash_tree(files: dict[str, Path]) -> dict[str, tuple[int, str]]:
    """relpath -> (size, sha256), hashed on all cores (hashlib releases the GIL)."""
    names = sorted(files)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        digests = list(pool.map(lambda n: sha256_file(files[n]), names))
    return {n: (files[n].stat().st_size, d) for n, d in zip(names, digests, strict=True)}


def rpm_files(repo: Path) -> dict[str, Path]:
    """relpath -> path of every *.rpm below repo (repodata excluded)."""
    return {
        p.relative_to(repo).as_posix(): p
        for p in repo.rglob("*.rpm")
        if "repodata" not in p.relative_to(repo).parts
    }


@dataclass
class Upstream:
    """The served tree: ROOT/repo/{Packages/*.rpm,repodata/}. Two states, switched in O(1):
    A (N packages) and B (A plus one package), with repodata pre-generated for both."""

    root: Path
    snapshots: Path
    extra_rpm: Path
    key: GpgKey
    expected_a: dict[str, tuple[int, str]]
    expected_b: dict[str, tuple[int, str]]
    repomd_a: bytes = b""
    repomd_b: bytes = b""
    state: str = "A"

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def extra_rel(self) -> str:
        return f"Packages/{self.extra_rpm.name}"

    def set_state(self, state: str) -> None:
        repodata = self.repo / "repodata"
        shutil.rmtree(repodata)
        shutil.copytree(self.snapshots / state, repodata)  # copy2: mtimes of the snapshot
        extra = self.repo / self.extra_rel
        if state == "B":
            shutil.copy2(self.extra_rpm, extra)
        else:
            extra.unlink(missing_ok=True)
        self.state = state

    @property
    def expected(self) -> dict[str, tuple[int, str]]:
        return self.expected_b if self.state == "B" else self.expected_a

    @property
    def repomd(self) -> bytes:
        return self.repomd_b if self.state == "B" else self.repomd_a


def build_upstream(
    workdir: Path,
    key: GpgKey,
    packages: int,
    size: int,
    sign_rpms: bool,
    log: Callable[[str], None],
) -> Upstream:
    root, snapshots, scratch = workdir / "upstream", workdir / "snapshots", workdir / "scratch"
    repo = root / "repo"
    started = time.perf_counter()
    signer = key if sign_rpms else None
    pkgs = [Pkg(f"bench-pkg-{i:05d}", "1.0", payload_size=size) for i in range(packages)]
    extra = Pkg("bench-added", "1.0", payload_size=size)
    # One rpmbuild per core: rpmbuild itself is single-threaded for this spec.
    jobs = max(1, min(os.cpu_count() or 1, packages // 250 or 1))
    chunks: list[Sequence[Pkg]] = [pkgs[i::jobs] for i in range(jobs)]
    with ThreadPoolExecutor(max_workers=jobs + 1) as pool:
        futures = [
            pool.submit(build_rpms, chunk, "x86_64", repo, signer, scratch / f"b{i}", "Packages")
            for i, chunk in enumerate(chunks)
        ]
        futures.append(
            pool.submit(build_rpms, [extra], "x86_64", workdir / "extra", signer, scratch / "x")
        )
        for future in futures:
            future.result()
    shutil.rmtree(scratch, ignore_errors=True)
    (extra_rpm,) = (workdir / "extra").glob("*.rpm")
    log(f"built {packages + 1} rpms in {time.perf_counter() - started:.1f}s")

    started = time.perf_counter()
    make_repo(repo, key)  # state A: N packages
    shutil.copytree(repo / "repodata", snapshots / "A")
    added = repo / "Packages" / extra_rpm.name
    shutil.copy2(extra_rpm, added)
    make_repo(repo, key)  # state B: one more; generated later, as upstream would
    shutil.copytree(repo / "repodata", snapshots / "B")
    expected_b = hash_tree(rpm_files(repo))
    added.unlink()
    expected_a = {k: v for k, v in expected_b.items() if k != f"Packages/{extra_rpm.name}"}
    up = Upstream(root, snapshots, extra_rpm, key, expected_a, expected_b)
    up.repomd_a = (snapshots / "A" / "repomd.xml").read_bytes()
    up.repomd_b = (snapshots / "B" / "repomd.xml").read_bytes()
    if up.repomd_a == up.repomd_b:
        raise BenchError("repodata of states A and B are identical")
    log(f"generated + hashed repodata in {time.perf_counter() - started:.1f}s")
    return up


def configure_server(latency_ms: float, log: Callable[[str], None]) -> float:
    """Tune the stdlib handler class of UpstreamServer in THIS process only.

    TCP_NODELAY: without it every response's last partial segment waits for the client's
    delayed ACK (~40 ms per request on Linux loopback), which would measure Nagle, not tools.
    Latency: an optional sleep before each response (a stand-in for a WAN round trip).
    Returns the latency actually applied (0 if the handler cannot be wrapped).
    """
    handler: Any = getattr(_httpserver, "_Handler", None)
    if handler is None:
        log("warning: cannot find the UpstreamServer handler; TCP_NODELAY/latency not applied")
        return 0.0
    handler.disable_nagle_algorithm = True
    serve = getattr(handler, "_serve", None)
    if latency_ms <= 0:
        return 0.0
    if serve is None:
        log("warning: UpstreamServer handler has no _serve(); --latency-ms skipped")
        return 0.0
    delay = latency_ms / 1000.0

    def delayed(self: Any, body: bool) -> None:
        time.sleep(delay)
        serve(self, body)

    handler._serve = delayed
    return latency_ms


# ------------------------------------------------------------------------------------------
# the two tools
# ------------------------------------------------------------------------------------------


@dataclass
class Tool:
    name: str
    base: Path  # everything this tool keeps for one run lives below here

    def prepare(self, repos_dir: Path) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def output(self) -> Path:
        """The repo tree the tool produced (rpms + repodata)."""
        raise NotImplementedError

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ)


@dataclass
class MirrorTool(Tool):
    python: str = sys.executable
    src: Path = REPO_ROOT  # the `mirror` package is imported from here (PYTHONPATH)

    def prepare(self, repos_dir: Path) -> None:
        self.base.mkdir(parents=True)
        (self.base / "mirror.yaml").write_text(
            "# written by bench/bench_reposync.py; everything else is the default\n"
            f"data_dir: ./data\nbase_url: http://127.0.0.1:8080\nrepos_dir: {repos_dir}\n"
        )

    def command(self) -> list[str]:
        cfg = str(self.base / "mirror.yaml")
        return [self.python, "-m", "mirror", "-c", cfg, "sync", "--only", "repos",
                "--repo", REPO_ID]  # fmt: skip

    @property
    def output(self) -> Path:
        return self.base / "data" / "repos" / REPO_ID

    @property
    def env(self) -> dict[str, str]:
        return mirror_env(self.src)


def mirror_env(src: Path) -> dict[str, str]:
    """Import `mirror` from src, ahead of the venv's editable install."""
    path = os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


@dataclass
class DnfTool(Tool):
    repos_dir: Path = Path()

    def prepare(self, repos_dir: Path) -> None:
        self.repos_dir = repos_dir
        for sub in ("out", "cache", "log", "persist"):
            (self.base / sub).mkdir(parents=True)

    def command(self) -> list[str]:
        b = self.base
        return [
            "dnf", "reposync", f"--repoid={REPO_ID}", f"--download-path={b / 'out'}",
            "--norepopath", "--download-metadata",
            # A persistent cache, as from cron; --refresh so a resync sees upstream changes
            # (dnf's default metadata_expire is 48 h: without it, add-1 is silently missed).
            "--refresh", "--releasever=9", "--disableplugin=local", "-q",
            f"--setopt=reposdir={self.repos_dir}", f"--setopt=cachedir={b / 'cache'}",
            f"--setopt=logdir={b / 'log'}", f"--setopt=persistdir={b / 'persist'}",
        ]  # fmt: skip

    @property
    def output(self) -> Path:
        return self.base / "out"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "LC_ALL": "C.UTF-8"}


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
    seconds: float
    cpu: float  # user + sys of the tool's process tree
    requests: int
    rpm_requests: int
    fetched: int  # bytes the server sent (GET 200/206 bodies)
    disk: int  # allocated bytes of everything the tool keeps (output + cache/state)


@dataclass
class Results:
    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)

    def add(self, scenario: str, tool: str, sample: Sample) -> None:
        self.samples.setdefault((scenario, tool), []).append(sample)


def disk_usage(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def served_bytes(server: UpstreamServer, root: Path) -> tuple[int, int, int]:
    """(requests, rpm GETs, body bytes) from the server's log for the step just finished."""
    requests = list(server.requests)
    fetched = 0
    for method, path, status in requests:
        if method == "GET" and status in (200, 206):
            target = root / path.lstrip("/")
            fetched += target.stat().st_size if target.is_file() else 0
    rpm_gets = sum(1 for m, p, _s in requests if m == "GET" and p.endswith(".rpm"))
    return len(requests), rpm_gets, fetched


def run_timed(tool: Tool, log_file: Path) -> tuple[float, float]:
    """Run the tool once; (wall seconds, cpu seconds). Raises BenchError on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log_file.open("w") as out:
        started = time.perf_counter()
        proc = subprocess.run(
            tool.command(),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=tool.env,
            cwd=tool.base,  # not the repo root: `python -m` would import ./mirror from there
            check=False,
        )
        wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise BenchError(f"{tool.name} exited {proc.returncode}: {shlex.join(tool.command())}\n"
                         f"{tail}")  # fmt: skip
    return wall, cpu


_HREF = re.compile(rb'<location href="([^"]+)"')


def verify(tool: Tool, upstream: Upstream) -> None:
    """The output is a complete, correct copy of upstream's current state."""
    out = tool.output
    got = rpm_files(out)
    want = upstream.expected
    if set(got) != set(want):
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        raise BenchError(
            f"{tool.name}: {len(got)} rpms, want {len(want)}; "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, extra {extra[:3]}"
        )
    hashed = hash_tree(got)
    bad = [name for name in want if hashed[name] != want[name]]
    if bad:
        raise BenchError(f"{tool.name}: {len(bad)} rpms differ from upstream, e.g. {bad[0]}")
    repomd_path = out / "repodata" / "repomd.xml"
    if not repomd_path.is_file() or repomd_path.read_bytes() != upstream.repomd:
        raise BenchError(f"{tool.name}: {repomd_path} is missing or differs from upstream's")
    for href in _HREF.findall(upstream.repomd):
        if not (out / href.decode()).is_file():
            raise BenchError(f"{tool.name}: metadata file {href.decode()} missing")


def measure(
    tool: Tool, upstream: Upstream, server: UpstreamServer, logs: Path, label: str
) -> Sample:
    os.sync()  # earlier steps' dirty pages are not written back on this step's clock
    server.clear_log()
    wall, cpu = run_timed(tool, logs / f"{label}-{tool.name}.log")
    requests, rpm_gets, fetched = served_bytes(server, upstream.root)
    verify(tool, upstream)
    disk = disk_usage(tool.base)
    return Sample(wall, cpu, requests, rpm_gets, fetched, disk)


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> str:
    if b == 0:
        return "-" if a == 0 else "inf"
    return f"{a / b:.2f}x"


def _same(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{statistics.median(values):g} ({low}-{high})"


def render_table(results: Results, tools: Sequence[str]) -> str:
    header = ["scenario", "tool", "median s", "min-max s", "cpu s", "requests", "rpm GETs",
              "fetched MiB", "disk MiB", "dnf/mirror s", "dnf/mirror req"]  # fmt: skip
    rows: list[list[str]] = []
    for scenario in SCENARIOS:
        med: dict[str, float] = {}
        req: dict[str, float] = {}
        for tool in tools:
            samples = results.samples.get((scenario, tool), [])
            if not samples:
                continue
            secs = [s.seconds for s in samples]
            med[tool] = statistics.median(secs)
            req[tool] = statistics.median([s.requests for s in samples])
            rows.append(
                [
                    SCENARIO_TITLES[scenario],
                    tool,
                    f"{med[tool]:.2f}",
                    f"{min(secs):.2f}-{max(secs):.2f}",
                    f"{statistics.median([s.cpu for s in samples]):.2f}",
                    _same([s.requests for s in samples]),
                    _same([s.rpm_requests for s in samples]),
                    f"{statistics.median([s.fetched for s in samples]) / MiB:.1f}",
                    f"{statistics.median([s.disk for s in samples]) / MiB:.1f}",
                    "",
                    "",
                ]
            )
        if "mirror" in med and "dnf" in med:
            rows[-1][-2] = _ratio(med["dnf"], med["mirror"])
            rows[-1][-1] = _ratio(req["dnf"], req["mirror"])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def tool_versions() -> str:
    def first_line(cmd: Sequence[str]) -> str:
        try:
            proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
        except FileNotFoundError:
            return "missing"
        text = (proc.stdout or proc.stderr).strip()
        return text.splitlines()[0] if text else "?"

    from mirror import __version__ as mirror_version

    return (
        f"mirror {mirror_version}, dnf {first_line(['dnf', '--version'])}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} CPUs"
    )


def code_version(src: Path) -> str:
    """The commit measured, and whether mirror/ had uncommitted edits (read-only git calls)."""
    if src.resolve() != REPO_ROOT:
        return f"mirror code: {src}"

    def git(*args: str) -> str:
        cmd = ["git", "--no-optional-locks", "-C", str(REPO_ROOT), *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except FileNotFoundError:
            return ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "mirror")
    return f"mirror code: commit {head}" + (" + uncommitted changes in mirror/" if dirty else "")


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare `mirror sync` with `dnf reposync` on a loopback fixture upstream."
    )
    add = parser.add_argument
    add("--packages", type=int, default=2000, metavar="N", help="packages upstream (2000)")
    add("--size", type=int, default=200_000, metavar="BYTES", help="payload per rpm (200000)")
    add("--runs", type=int, default=3, metavar="R", help="runs; medians are reported (3)")
    add("--latency-ms", type=float, default=0.0, metavar="MS", help="sleep per response (0)")
    add("--sign-rpms", action="store_true", help="rpmsign the rpms (~24 ms each; unchecked)")
    add("--workdir", type=Path, metavar="DIR", help="scratch parent dir (default $TMPDIR)")
    add("--keep", action="store_true", help="keep the scratch dir (logs, last run's output)")
    add("--mirror-src", type=Path, default=REPO_ROOT, metavar="DIR",
        help="source tree to import `mirror` from (default: this checkout)")  # fmt: skip
    args = parser.parse_args(argv)
    args.mirror_src = args.mirror_src.resolve()
    if args.packages < 1 or args.size < 0 or args.runs < 1 or args.latency_ms < 0:
        parser.error("--packages and --runs must be >= 1, --size and --latency-ms >= 0")
    return args


def repro_command(args: argparse.Namespace) -> str:
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    python = ".venv/bin/python" if Path(sys.executable) == venv_python else sys.executable
    cmd = [python, "bench/bench_reposync.py", "--packages", str(args.packages),
           "--size", str(args.size), "--runs", str(args.runs)]  # fmt: skip
    if args.latency_ms:
        cmd += ["--latency-ms", f"{args.latency_ms:g}"]
    if args.sign_rpms:
        cmd.append("--sign-rpms")
    if args.mirror_src.resolve() != REPO_ROOT:
        cmd += ["--mirror-src", str(args.mirror_src)]
    return shlex.join(cmd)


@contextmanager
def scratch_dir(args: argparse.Namespace) -> Iterator[Path]:
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="bench-reposync-", dir=args.workdir))
    else:
        path = Path(tempfile.mkdtemp(prefix="bench-reposync-"))
    try:
        yield path
    finally:
        if args.keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def preflight(src: Path) -> None:
    missing = [t for t in ("dnf", "rpmbuild", "createrepo_c", "gpg") if not shutil.which(t)]
    if missing:
        raise SystemExit(f"missing tools: {', '.join(missing)} (run `make sysdeps`)")
    probe = subprocess.run(
        [sys.executable, "-c", "import mirror, mirror.cli; print(mirror.__file__)"],
        capture_output=True,
        text=True,
        env=mirror_env(src),
        cwd="/",
    )
    if probe.returncode != 0:
        raise SystemExit(
            f"{sys.executable} cannot import mirror.cli from {src} (use .venv/bin/python):\n"
            + probe.stderr[-2000:]
        )
    if not Path(probe.stdout.strip()).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"mirror is imported from {probe.stdout.strip()}, not from {src}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    preflight(args.mirror_src)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    results = Results()
    commands: dict[str, str] = {}
    load_before = os.getloadavg()
    measured_code = code_version(args.mirror_src)
    with scratch_dir(args) as work:
        logs = work / "logs"
        logs.mkdir()
        key = make_gpg_key(work / "key", name="Bench Signing Key")
        try:
            upstream = build_upstream(work, key, args.packages, args.size, args.sign_rpms, log)
            latency = configure_server(args.latency_ms, log)
            with UpstreamServer(upstream.root) as server:
                for run in range(args.runs):
                    run_dir = work / f"run{run}"
                    repos_dir = run_dir / "repos.d"
                    write_repo_file(repos_dir, server, upstream.repo)
                    tools: list[Tool] = [
                        MirrorTool("mirror", run_dir / "mirror", src=args.mirror_src),
                        DnfTool("dnf", run_dir / "dnf"),
                    ]
                    if run % 2:
                        tools.reverse()  # alternate who goes first
                    for tool in tools:
                        tool.prepare(repos_dir)
                        prefix = f"cd {tool.base} && "
                        if isinstance(tool, MirrorTool):
                            prefix += f"PYTHONPATH={tool.src} "
                        commands[tool.name] = prefix + shlex.join(tool.command())
                    upstream.set_state("A")
                    for scenario in SCENARIOS:
                        if scenario == "add-1":
                            upstream.set_state("B")
                        for tool in tools:
                            label = f"run{run}-{scenario}"
                            sample = measure(tool, upstream, server, logs, label)
                            results.add(scenario, tool.name, sample)
                            log(f"run {run + 1}/{args.runs} {scenario:6} {tool.name:6} "
                                f"{sample.seconds:6.2f}s cpu {sample.cpu:5.2f}s "
                                f"{sample.requests} requests ({sample.rpm_requests} rpm), "
                                f"{sample.fetched / MiB:.1f} MiB fetched, verified")  # fmt: skip
                    if run < args.runs - 1 or not args.keep:
                        shutil.rmtree(run_dir)
        finally:
            kill_agent(key)

    print()
    print(f"mirror sync vs dnf reposync: {args.packages} packages x {args.size} bytes "
          f"({args.packages * args.size / MiB:.0f} MiB), {args.runs} runs, "
          f"latency {latency:g} ms/request, loopback")  # fmt: skip
    print(tool_versions())
    print(measured_code)
    load_after = os.getloadavg()
    print(f"load average (1/5/15 min) at start {'/'.join(f'{x:.1f}' for x in load_before)}, "
          f"at end {'/'.join(f'{x:.1f}' for x in load_after)}")  # fmt: skip
    print()
    print(render_table(results, ["mirror", "dnf"]))
    print()
    print("ratios > 1: dnf slower / more requests than mirror. disk = output + tool cache/state.")
    print(f"reproduce: {repro_command(args)}")
    for name, cmd in commands.items():
        print(f"  {name}: {cmd}")
    print(f"total bench time {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
