"""Progress: a bar per repo/image batch on a terminal, plain log lines in cron and systemd."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Protocol

from tqdm import tqdm

log = logging.getLogger("mirror")


class Progress(Protocol):
    def advance(self, nbytes: int) -> None: ...
    def item_done(self, name: str) -> None: ...
    def close(self) -> None: ...


class _LogProgress:
    """Logs every 10% of items so a cron mail stays short but shows the sync is alive."""

    def __init__(self, label: str, items: int, nbytes: int, verb: str = "downloading") -> None:
        self.label, self.items, self.nbytes = label, items, nbytes
        self.done = 0
        self.bytes = 0
        self._next_report = max(1, items // 10)
        self._lock = threading.Lock()
        log.info("%s: %s %d files, %s", label, verb, items, human_bytes(nbytes))

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.bytes += nbytes

    def item_done(self, name: str) -> None:
        with self._lock:
            self.done += 1
            if self.done >= self._next_report and self.done < self.items:
                log.info(
                    "%s: %d/%d files, %s",
                    self.label,
                    self.done,
                    self.items,
                    human_bytes(self.bytes),
                )
                self._next_report += max(1, self.items // 10)

    def close(self) -> None:
        pass


class _BarProgress:
    def __init__(self, label: str, items: int, nbytes: int) -> None:
        self._lock = threading.Lock()
        self.bar = tqdm(
            total=nbytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=label,
            postfix={"files": f"0/{items}"},
            file=sys.stderr,
            leave=True,
            dynamic_ncols=True,
        )
        self.items = items
        self.done = 0

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.bar.update(nbytes)

    def item_done(self, name: str) -> None:
        with self._lock:
            self.done += 1
            self.bar.set_postfix(files=f"{self.done}/{self.items}", refresh=False)

    def close(self) -> None:
        self.bar.close()


def progress_for(label: str, items: int, nbytes: int, verb: str = "downloading") -> Progress:
    """A bar on a terminal, else a log line at the start and every 10% of items; `verb`
    says what is done to the files in that first line (export: "hashing", "writing")."""
    if sys.stderr.isatty():
        return _BarProgress(label, items, nbytes)
    return _LogProgress(label, items, nbytes, verb)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
