#!/usr/bin/env python3
"""Peak memory and time of `mirror export` / `mirror import` (issue 11: "never hold the whole
archive in memory"), on a data_dir of mirrored files only (no upstream needed).

    .venv/bin/python bench/transfer.py                     # 1 GiB in 64 files
    .venv/bin/python bench/transfer.py --mbytes 128 --files 16

Each command runs as its own process; its peak RSS is the kernel's ru_maxrss from wait4(2)
for that one child, so the numbers are the mirror process's and nobody else's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNK = 1 << 20


def _data(root: Path, mbytes: int, files: int) -> None:
    per_file = max(1, mbytes // files)
    out = root / "data" / "files" / "bench"
    out.mkdir(parents=True)
    for index in range(files):
        with (out / f"blob-{index:04d}.bin").open("wb") as handle:
            for _ in range(per_file):
                handle.write(os.urandom(CHUNK))  # incompressible: zstd cannot shrink it


def _config(root: Path, name: str) -> Path:
    (root / name).mkdir(exist_ok=True)
    path = root / name / "mirror.yaml"
    path.write_text(
        f"data_dir: {root / name / 'data'}\nrepos_dir: {root / name / 'repos'}\n"
        "images_file: null\nregistry: {url: '127.0.0.1:1', embedded: false}\n"
    )
    return path


def _measure(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one `mirror` process."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirror", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        assert proc.stderr is not None
        raise SystemExit(f"mirror {' '.join(args)} failed: {proc.stderr.read().decode()[-2000:]}")
    return elapsed, usage.ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mbytes", type=int, default=1024, help="data size in MiB")
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=opts.workdir) as tmp:
        root = Path(tmp)
        outside, inside = _config(root, "outside"), _config(root, "inside")
        _data(root / "outside", opts.mbytes, opts.files)
        rows = []
        archive = root / "usb" / "all.tar"
        rows.append(("export", *_measure(["-c", str(outside), "export", str(archive)])))
        rows.append(
            (
                "export --zstd --split-size 256M",
                *_measure(
                    [
                        "-c",
                        str(outside),
                        "export",
                        "--zstd",
                        "--split-size",
                        "256M",
                        f"{archive}.zst",
                    ]
                ),
            )
        )
        rows.append(("import", *_measure(["-c", str(inside), "import", str(archive)])))
        parts = sorted(str(p) for p in archive.parent.glob("all.tar.zst.*"))
        inside2 = _config(root, "inside2")
        rows.append(("import (zstd parts)", *_measure(["-c", str(inside2), "import", *parts])))
    print(f"data: {opts.mbytes} MiB in {opts.files} files (incompressible)")
    print("| command | seconds | peak RSS |")
    print("| --- | ---: | ---: |")
    for name, seconds, rss in rows:
        print(f"| `mirror {name}` | {seconds:.1f} | {rss / 1024:.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
