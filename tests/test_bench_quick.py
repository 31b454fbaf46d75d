"""`bench/run.py --quick` end to end: every scenario runs against real tools and is verified.

No timing assertions: only that the bench completes, that every verification passed and that
the summary table has a met/missed verdict for every scenario row of issue 7.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import SECTIONS, parse_args, row_keys

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("dnf", "rpmbuild", "rpmsign", "createrepo_c", "gpg", "skopeo", "nginx", "wrk")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in TOOLS)
        or not (shutil.which("docker-registry") or shutil.which("registry")),
        reason=f"the bench needs {', '.join(TOOLS)} and docker-registry",
    ),
]


def summary_rows(markdown: str) -> dict[str, list[str]]:
    """scenario cell -> all cells, from the first table (the summary)."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| scenario "))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


def test_quick_bench_runs_every_scenario_verified(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    argv = ["--quick", "--markdown-out", str(out), "--workdir", str(tmp_path / "work")]
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "run.py"), *argv],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    text = out.read_text()
    assert text.strip() == proc.stdout.strip()  # the file holds exactly what was printed
    assert "\nverification: all " in text and "checks passed" in text
    assert "FAILED" not in text
    rows = summary_rows(text)
    header = ["scenario", "mirror", "peer", "mirror/peer", "target", "result", "notes"]
    args: argparse.Namespace = parse_args(["--quick"])
    keys = row_keys(args)
    assert set(keys) == set(SECTIONS)
    for section in SECTIONS:
        for key in keys[section]:
            matching = [cells for name, cells in rows.items() if name.startswith(key)]
            assert len(matching) == 1, f"no single summary row for {key!r}: {list(rows)}"
            cells = matching[0]
            assert len(cells) == len(header)
            assert cells[5] in ("met", "**missed**"), cells
            assert cells[3].endswith("x"), cells  # a ratio was computed
    assert len(rows) == sum(len(v) for v in keys.values())
    for needle in ("Command: `", "- machine: ", "load average", "- tools: ", "mirror code: "):
        assert needle in text
    # Nothing the bench started is left running (it stops its processes by pid), and its
    # scratch dir is gone.
    assert not list((tmp_path / "work").glob("bench-*")), "scratch dir not removed"
    assert not leftover_processes(str(tmp_path)), leftover_processes(str(tmp_path))


def leftover_processes(marker: str) -> list[str]:
    """Command lines of live processes that mention marker (read from /proc, nothing killed)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in args:
            found.append(args)
    return found
