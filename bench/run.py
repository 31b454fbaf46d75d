#!/usr/bin/env python3
"""`make bench`: every row of issue 7's table, mirror side by side with the peer tool.

    .venv/bin/python bench/run.py                  # full bench (about 12-15 min on 2 cores)
    .venv/bin/python bench/run.py --quick          # tiny sizes, 1 run (< 90 s; used by a test)
    .venv/bin/python bench/run.py --only yum plan --runs 5 --markdown-out bench/RESULTS.md

Scenarios (bench/yum.py, images.py, serve.py, plan.py) run one after the other on loopback;
within each, the tools alternate who goes first, and the tables report medians. A failed
verification aborts its scenario (no number is reported for a broken run); the others still
run, and the exit code is 1. See bench/README.md.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import `bench` and `tests` from the repo root
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from bench.common import (
    REPO_ROOT,
    SUMMARY_HEADER,
    BenchError,
    Checks,
    Section,
    code_version,
    cpu_model,
    loadavg,
    log,
    markdown_table,
    mem_total,
    os_release,
    preflight,
    tool_versions,
)
from bench.images import ImageOptions, run_images
from bench.plan import PlanOptions, run_plan
from bench.serve import URLS, ServeOptions, run_serve
from bench.yum import YumOptions, run_yum
from tests.fixtures import kill_agent, make_gpg_key

SECTIONS = ("yum", "images", "serve", "plan")


def row_keys(args: argparse.Namespace) -> dict[str, list[str]]:
    """The start of every summary row's scenario cell, per section (a failed section still
    gets its rows, marked FAILED, so the table always has every scenario)."""
    serve = [f"{name}, {c} connections" for name, _t in URLS.values() for c in args.wrk_connections]
    return {
        "yum": ["yum cold sync, ", "yum cold sync + ", "yum no-op resync", "yum new packages"],
        "images": ["images cold", "images no-op"],
        "serve": serve,
        "plan": ["plan of a "],
    }


TOOLS = {
    "yum": ["dnf", "rpmbuild", "rpmsign", "createrepo_c", "gpg"],
    "images": ["skopeo"],
    "serve": ["nginx", "wrk", "rpmbuild", "rpmsign", "createrepo_c", "gpg"],
    "plan": ["dnf"],
}
QUICK = {
    "yum_packages": 50,
    "yum_added": 5,
    "images": 2,
    "wrk_duration": 1,
    "plan_packages": 2000,
    "runs": 1,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="mirror vs dnf reposync, skopeo sync, nginx and dnf reposync --urls "
        "(issue 7), on loopback fixtures."
    )
    add = parser.add_argument
    add(
        "--quick",
        action="store_true",
        help="tiny sizes and 1 run (" + ", ".join(f"{k}={v}" for k, v in QUICK.items()) + ")",
    )
    add(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        metavar="SECTION",
        help=f"run only these sections ({', '.join(SECTIONS)})",
    )
    add("--runs", type=int, metavar="R", help="runs per scenario; medians reported (3)")
    add("--yum-packages", type=int, metavar="N", help="rpms upstream (2000)")
    add("--yum-payload", type=int, metavar="BYTES", help="payload per rpm (22000: ~28 KB rpms)")
    add("--yum-added", type=int, metavar="N", help="packages added upstream for the resync (20)")
    add("--latency-ms", type=float, metavar="MS", help="sleep per response, latency row (20)")
    add(
        "--dnf-gpgcheck",
        action="store_true",
        help="also pass --gpgcheck to dnf reposync (not the issue's peer command)",
    )
    add("--images", type=int, metavar="N", help="multi-arch images, at most 12 (12)")
    add("--wrk-duration", type=int, metavar="S", help="seconds per wrk run (10)")
    add("--wrk-connections", type=int, nargs="+", metavar="C", help="(32 256)")
    add("--plan-packages", type=int, metavar="N", help="packages in the big primary (60000)")
    add(
        "--fixture-cache",
        type=Path,
        metavar="DIR",
        help="keep the built yum fixture (signed rpms) in DIR and reuse it in later runs",
    )
    add("--workdir", type=Path, metavar="DIR", help="scratch parent dir (default $TMPDIR)")
    add("--keep", action="store_true", help="keep the scratch dir (logs, configs)")
    add(
        "--markdown-out",
        type=Path,
        metavar="FILE",
        help="also write the tables, command and machine notes to FILE",
    )
    add(
        "--mirror-src",
        type=Path,
        default=REPO_ROOT,
        metavar="DIR",
        help="source tree to import `mirror` from (default: this checkout)",
    )
    args = parser.parse_args(argv)
    defaults = {
        "runs": 3,
        "yum_packages": 2000,
        "yum_payload": 22_000,
        "yum_added": 20,
        "latency_ms": 20.0,
        "images": 12,
        "wrk_duration": 10,
        "wrk_connections": [32, 256],
        "plan_packages": 60_000,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK.get(name, value) if args.quick else value)
    args.mirror_src = args.mirror_src.resolve()
    if (
        min(
            args.runs,
            args.yum_packages,
            args.yum_added,
            args.images,
            args.wrk_duration,
            args.plan_packages,
            *args.wrk_connections,
        )
        < 1
        or args.images > 12
    ):
        parser.error("counts must be >= 1 and --images <= 12")
    return args


def repro_command(argv: Sequence[str]) -> str:
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    python = ".venv/bin/python" if Path(sys.executable) == venv_python else sys.executable
    return shlex.join([python, "bench/run.py", *argv])


def machine_notes(args: argparse.Namespace, load_start: str, load_end: str, wall: float) -> str:
    versions = tool_versions(sys.executable, args.mirror_src)
    lines = [
        f"- machine: {cpu_model()}, nproc {__import__('os').cpu_count()}, {mem_total()} RAM, "
        f"{os_release()}",
        f"- load average (1/5/15 min): {load_start} at start, {load_end} at end",
        "- tools: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- {code_version(args.mirror_src)}",
        f"- runs per scenario: {args.runs} (medians), alternating which tool goes first; "
        f"total bench time {wall:.0f} s",
    ]
    return "\n".join(lines)


def render(
    args: argparse.Namespace,
    argv: Sequence[str],
    sections: list[Section],
    failures: dict[str, str],
    checks: Checks,
    notes: str,
) -> str:
    rows = [row.cells() for s in sections for row in s.rows]
    for name, error in failures.items():
        first = error.strip().splitlines()[0][:140] if error.strip() else "failed"
        keys = row_keys(args)[name]
        rows += [[key.strip().rstrip(","), "-", "-", "-", "-", "**FAILED**", first] for key in keys]
    parts = [
        "## mirror vs peer tools (issue 7)",
        f"Command: `{repro_command(argv)}`",
        notes,
        "Ratios are mirror/peer: for times lower is better, for req/s higher is better.",
        markdown_table(SUMMARY_HEADER, rows),
        checks.summary()
        if not failures
        else f"verification: {sum(checks.passed.values())} checks passed; FAILED sections: "
        + ", ".join(failures),
        "## Details",
        *[d for s in sections for d in s.details],
        "## Commands (paths are per run)",
        "\n".join(f"- {k}: `{v}`" for s in sections for k, v in s.commands.items()),
    ]
    if failures:
        parts += ["## Failures", *(f"### {k}\n\n```\n{v}\n```" for k, v in failures.items())]
    return "\n\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    needed = sorted({t for name in args.only for t in TOOLS[name]})
    preflight(needed, sys.executable, args.mirror_src)
    started, load_start = time.perf_counter(), loadavg()
    checks = Checks()
    sections: list[Section] = []
    failures: dict[str, str] = {}
    parent = args.workdir
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=parent))
    key = make_gpg_key(work / "key", name="Bench Signing Key")
    py, src = sys.executable, args.mirror_src
    runners: dict[str, Callable[[Path], Section]] = {
        "yum": lambda w: run_yum(
            w,
            key,
            YumOptions(
                args.yum_packages,
                args.yum_payload,
                args.yum_added,
                args.latency_ms,
                args.runs,
                args.dnf_gpgcheck,
            ),
            checks,
            py,
            src,
            args.fixture_cache,
        ),
        "images": lambda w: run_images(w, ImageOptions(args.images, args.runs), checks, py, src),
        "serve": lambda w: run_serve(
            w,
            key,
            ServeOptions(args.wrk_duration, tuple(args.wrk_connections), 2, args.runs),
            checks,
            py,
            src,
        ),
        "plan": lambda w: run_plan(w, PlanOptions(args.plan_packages, args.runs), checks, py, src),
    }
    try:
        for name in SECTIONS:
            if name not in args.only:
                continue
            log(f"--- {name} (load average {loadavg()})")
            try:
                sections.append(runners[name](work / name))
            except BenchError as exc:
                failures[name] = str(exc)
                log(f"{name} FAILED: {str(exc)[:2000]}")
            except Exception:  # a bug or a missing fixture tool: report, go on with the rest
                failures[name] = traceback.format_exc()
                log(f"{name} FAILED:\n{failures[name]}")
    finally:
        kill_agent(key)
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    notes = machine_notes(args, load_start, loadavg(), time.perf_counter() - started)
    text = render(args, argv, sections, failures, checks, notes)
    print(text)
    if args.markdown_out is not None:
        args.markdown_out.parent.mkdir(parents=True, exist_ok=True)
        args.markdown_out.write_text(text)
        log(f"wrote {args.markdown_out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
