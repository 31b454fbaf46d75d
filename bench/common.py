"""Shared machinery of the bench: running and measuring tools, checks, tables, machine notes.

Every scenario module (yum, images, serve, plan) measures `mirror` and its peer tool with
`run_measured` (wall time, CPU and peak RSS of the child's process tree from `os.wait4`),
records every verification in `Checks` (a failed one aborts: no number from a broken run),
and hands `SummaryRow`s (ratio, target, met/missed) plus detail tables to bench/run.py.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

MiB = 1024 * 1024
T = TypeVar("T")


class BenchError(RuntimeError):
    """A tool failed or produced a wrong result: no number is reported for a broken run."""


_STARTED = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def hash_tree(files: Mapping[str, Path]) -> dict[str, tuple[int, str]]:
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


def disk_usage(path: Path) -> int:
    """Allocated bytes (st_blocks) of every file below path."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


# ------------------------------------------------------------------------------------------
# processes: own session, measured by wait4, stopped by pid
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStats:
    wall: float  # seconds, perf_counter around spawn..reap
    cpu: float  # user + sys of the child and the descendants it waited for
    maxrss_mb: float  # peak RSS of the largest process in that tree (ru_maxrss)


def run_measured(
    cmd: Sequence[str],
    log_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 900.0,
    name: str = "",
) -> RunStats:
    """Run cmd to completion in its own session, output to log_file; BenchError unless exit 0."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        timer = threading.Timer(timeout, _kill_group, (proc.pid,))
        timer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise BenchError(
            f"{name or cmd[0]} exited {proc.returncode} after {wall:.1f}s: {shlex.join(cmd)}\n"
            f"--- {log_file} (tail)\n{tail}"
        )
    return RunStats(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def _kill_group(pid: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@dataclass
class Service:
    """A long-running process (server) in its own session; stop() ends it by its pid."""

    name: str
    proc: subprocess.Popen[bytes]
    log_file: Path

    @classmethod
    def start(
        cls,
        name: str,
        cmd: Sequence[str],
        log_file: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Service:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as out:
            proc = subprocess.Popen(
                list(cmd),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        return cls(name, proc, log_file)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM to the pid (let it shut its children down), then to its process group."""
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc.pid)
                self.proc.wait(timeout=5)
        # Anything it left behind in its session (workers) goes too.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)

    def tail(self, chars: int = 3000) -> str:
        return self.log_file.read_text(errors="replace")[-chars:] if self.log_file.exists() else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of a plain GET; (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - loopback
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_http(url: str, timeout: float = 30.0, service: Service | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service is not None and not service.alive():
            raise BenchError(f"{service.name} exited before answering {url}:\n{service.tail()}")
        status, _ = http_get(url, timeout=2)
        if 200 <= status < 500:
            return
        time.sleep(0.1)
    tail = service.tail() if service is not None else ""
    raise BenchError(f"{url} did not answer within {timeout:.0f}s\n{tail}")


def settle() -> None:
    """Untimed, before every measured step: earlier steps' dirty pages are not written back
    on this step's clock."""
    os.sync()


# ------------------------------------------------------------------------------------------
# mirror under test
# ------------------------------------------------------------------------------------------


def mirror_env(src: Path) -> dict[str, str]:
    """Import `mirror` from src, ahead of the venv's editable install."""
    path = os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def mirror_cmd(python: str, config: Path, *args: str) -> list[str]:
    """The `mirror` CLI exactly as installed (`mirror` = `python -m mirror`), from src."""
    return [python, "-m", "mirror", "-c", str(config), *args]


def shown(cmd: Sequence[str], cwd: Path | None = None, src: Path | None = None) -> str:
    """A command line as a user would paste it."""
    prefix = f"cd {cwd} && " if cwd else ""
    if src is not None:
        prefix += f"PYTHONPATH={src} "
    return prefix + shlex.join(list(cmd))


def ordered(items: Sequence[T], run: int) -> list[T]:
    """Alternate who goes first: as given in even runs, reversed in odd ones."""
    return list(items) if run % 2 == 0 else list(reversed(items))


# ------------------------------------------------------------------------------------------
# checks, statistics, tables
# ------------------------------------------------------------------------------------------


@dataclass
class Checks:
    """Every verification made. A failed check raises at once; passed ones are counted."""

    passed: dict[str, int] = field(default_factory=dict)

    def ok(self, scope: str, condition: bool, message: Callable[[], str] | str) -> None:
        if not condition:
            text = message() if callable(message) else message
            raise BenchError(f"verification failed [{scope}]: {text}")
        self.passed[scope] = self.passed.get(scope, 0) + 1

    def summary(self) -> str:
        total = sum(self.passed.values())
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.passed.items()))
        return f"verification: all {total} checks passed ({parts})"


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def span(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def same(values: Sequence[float]) -> str:
    """An integer count that should not vary between runs; shows the spread if it did."""
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{statistics.median(values):g} ({low:g}-{high:g})"


def ratio(a: float, b: float) -> float | None:
    return None if b == 0 else a / b


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


@dataclass
class SummaryRow:
    """One line of issue 7's table: mirror vs peer, the ratio, the target and the verdict."""

    scenario: str
    mirror: str
    peer: str
    ratio: float | None  # mirror / peer (time: lower is better; req/s: higher is better)
    target: str
    met: bool
    notes: str = ""

    def cells(self) -> list[str]:
        verdict = "met" if self.met else "**missed**"
        return [
            self.scenario,
            self.mirror,
            self.peer,
            fmt_ratio(self.ratio),
            self.target,
            verdict,
            self.notes,
        ]


SUMMARY_HEADER = ["scenario", "mirror", "peer", "mirror/peer", "target", "result", "notes"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


@dataclass
class Section:
    """A scenario module's result: summary rows, a detail table and the commands it ran."""

    name: str
    rows: list[SummaryRow] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # markdown blocks
    commands: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# machine notes
# ------------------------------------------------------------------------------------------


def _first_line(cmd: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=20)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return "missing"
    text = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    return text[0].strip() if text else "?"


def tool_versions(python: str, src: Path) -> dict[str, str]:
    probe = "import mirror; print(mirror.__version__)"
    mirror_version = subprocess.run(
        [python, "-c", probe], capture_output=True, text=True, env=mirror_env(src), cwd="/"
    ).stdout.strip()
    registry = shutil.which("docker-registry") or shutil.which("registry") or "docker-registry"

    def token(text: str, index: int) -> str:
        parts = text.split()
        return parts[index] if len(parts) > abs(index) else text

    return {
        "mirror": mirror_version or "?",
        "dnf": _first_line(["dnf", "--version"]),
        "skopeo": token(_first_line(["skopeo", "--version"]), -1),
        "docker-registry": token(_first_line([registry, "--version"]), -1),
        "nginx": _first_line(["nginx", "-v"]).removeprefix("nginx version: nginx/"),
        "wrk": token(_first_line(["wrk", "--version"]), 1),
        "rpm": token(_first_line(["rpm", "--version"]), -1),
        "createrepo_c": token(_first_line(["createrepo_c", "--version"]), 1),
        "python": platform.python_version(),
    }


def cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def mem_total() -> str:
    with suppress(OSError):
        match = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        if match:
            return f"{int(match[1]) / 1024 / 1024:.0f} GiB"
    return "?"


def os_release() -> str:
    with suppress(OSError):
        match = re.search(r'PRETTY_NAME="([^"]+)"', Path("/etc/os-release").read_text())
        if match:
            return match[1]
    return platform.platform()


def code_version(src: Path) -> str:
    """The commit measured, and whether mirror/ had uncommitted edits (read-only git calls)."""
    if src.resolve() != REPO_ROOT:
        return f"mirror code: {src} (--mirror-src)"

    def git(*args: str) -> str:
        cmd = ["git", "--no-optional-locks", "-C", str(REPO_ROOT), *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except FileNotFoundError:
            return ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "mirror")
    return f"mirror code: commit {head}" + (
        " + uncommitted changes in mirror/ (dirty)" if dirty else " (clean)"
    )


def loadavg() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def preflight(tools: Sequence[str], python: str, src: Path) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        raise SystemExit(f"missing tools: {', '.join(missing)} (run `make sysdeps`)")
    probe = subprocess.run(
        [python, "-c", "import mirror, mirror.cli; print(mirror.__file__)"],
        capture_output=True,
        text=True,
        env=mirror_env(src),
        cwd="/",
    )
    if probe.returncode != 0:
        raise SystemExit(
            f"{python} cannot import mirror.cli from {src} (use .venv/bin/python):\n"
            + probe.stderr[-2000:]
        )
    if not Path(probe.stdout.strip()).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"mirror is imported from {probe.stdout.strip()}, not from {src}")
