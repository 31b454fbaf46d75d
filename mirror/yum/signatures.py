"""gpgcheck=1: every downloaded rpm's signature verified against the repo's own keys.

`rpmkeys --checksig` runs against a throwaway rpmdb (`--dbpath`) that holds only the keys
fetched from the repo's gpgkey URLs, so keys the host trusts never make a package pass.
rpm 4.18 imports several armoured keys from one file but no binary keys, so the blob is split
with gpg into one armoured export per primary key first. Packages are checked in chunks (one
rpmkeys process per chunk, never through a shell) and each file's verbose verdict is parsed;
an unsigned package is refused, as dnf would refuse it on the nodes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mirror.errors import EnvironmentProblem, PackageError, RepoSyncError

log = logging.getLogger("mirror.yum")

CHUNK = 256  # files per rpmkeys call: bounded argv, and the fixed start-up cost amortised
WORKERS = 2  # rpmkeys is CPU-bound (digests); more would only crowd a shared utility node
TIMEOUT = 600  # seconds per call; a hung rpmkeys must not hang the whole sync

# rpm's per-check results (rpmSigString); NOTFOUND only means "this kind is absent".
_PASS = {"OK", "NOTFOUND"}
_FILE_LINE = re.compile(r"^(?P<index>\d+)\.rpm:")
_ERROR_LINE = re.compile(r"^error: (?P<index>\d+)\.rpm: (?P<message>.*)$")
_CHECK_LINE = re.compile(r"^\s+(?P<label>.+?): (?P<result>[A-Z]+)\b(?P<detail>.*)$")
_KEY_ID = re.compile(r"key ID ([0-9a-fA-F]+)")
_ARMOUR = re.compile(
    rb"-----BEGIN PGP PUBLIC KEY BLOCK-----.*?-----END PGP PUBLIC KEY BLOCK-----", re.S
)


@dataclass(frozen=True)
class Check:
    """One line of `rpmkeys --checksig -v`, e.g. "Header V4 RSA/SHA512 Signature, key ID x: OK"."""

    label: str
    result: str
    detail: str

    @property
    def is_signature(self) -> bool:
        return "signature" in self.label.lower()


def _program(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise EnvironmentProblem(
            f"{name} not found: install the '{package}' package (needed for gpgcheck=1 repos)"
        )
    return path


def _run(argv: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # LC_ALL=C: the verdicts parsed below are rpm's untranslated words.
    env = {**os.environ, "LC_ALL": "C"}
    return subprocess.run(
        list(argv), capture_output=True, text=True, check=False, cwd=cwd, env=env, timeout=TIMEOUT
    )


def _segments(keys: bytes) -> list[bytes]:
    """`keys` cut into its armoured blocks and the binary runs between them: gpg reads a
    file as armoured or binary, never both, and fetch_keys concatenates what each URL gave."""
    parts, pos = [], 0
    for block in _ARMOUR.finditer(keys):
        parts += [keys[pos : block.start()], block.group()]
        pos = block.end()
    parts.append(keys[pos:])
    return [part for part in parts if part.strip()]


def split_keys(keys: bytes) -> list[bytes]:
    """One armoured export per primary key in `keys` (armoured or binary, concatenated)."""
    gpg = _program("gpg", "gnupg")
    with tempfile.TemporaryDirectory(prefix="mirror-keysplit-") as tmp:
        home = Path(tmp)
        home.chmod(0o700)
        # --no-autostart: public-key work needs no gpg-agent, and a SIGKILLed sync would
        # leave one behind (it leaves the process group).
        base = [gpg, "--homedir", str(home), "--batch", "--no-tty", "--no-autostart"]
        for number, segment in enumerate(_segments(keys)):
            blob = home / f"blob-{number}"
            # A binary key followed by the newline fetch_keys appends is an invalid keyring
            # to gpg: retry without that byte.
            for candidate in dict.fromkeys([segment, segment.removesuffix(b"\n")]):
                blob.write_bytes(candidate)
                if _run([*base, "--import", str(blob)]).returncode == 0:
                    break
        listing = _run([*base, "--with-colons", "--list-keys"]).stdout.splitlines()
        # A "fpr" record right after "pub" is the primary key's; those after "sub" are subkeys,
        # which an export of their primary key already carries.
        primaries = [
            line.split(":")[9]
            for prev, line in zip(listing, listing[1:], strict=False)
            if prev.startswith("pub:") and line.startswith("fpr:")
        ]
        exports = [_run([*base, "--armor", "--export", fpr]).stdout for fpr in primaries]
    return [text.encode() for text in exports if "BEGIN PGP PUBLIC KEY BLOCK" in text]


def _keyring(repo: str, rpmkeys: str, keys: bytes, work: Path) -> list[str]:
    """rpmkeys argv bound to a fresh keyring under `work` holding every key of `keys` rpm
    can import. rpm >= 4.19 may keep keys in files instead (`%_keyring fs`): that path is
    pointed into `work` too (rpm 4.18 ignores the macro)."""
    armoured = split_keys(keys)
    if not armoured:
        raise RepoSyncError(repo, "gpgcheck: the repo's gpgkey holds no OpenPGP public key")
    dbpath = work / "rpmdb"
    dbpath.mkdir()
    keyring = [rpmkeys, "--dbpath", str(dbpath), "--define", f"_keyringpath {work}/pubkeys/"]
    refused: list[str] = []
    for number, key in enumerate(armoured):
        keyfile = work / f"key-{number}.asc"
        keyfile.write_bytes(key)
        proc = _run([*keyring, "--import", str(keyfile)])
        if proc.returncode != 0:
            refused.append((proc.stderr.strip().splitlines() or ["?"])[-1])
    if len(refused) == len(armoured):
        raise RepoSyncError(repo, f"gpgcheck: rpm cannot import the repo's keys: {refused[0]}")
    for reason in refused:  # packages signed by such a key fail below, naming its key ID
        log.warning("%s: rpm refused one of the repo's keys: %s", repo, reason)
    return keyring


def parse_checksig(stdout: str, count: int) -> list[list[Check] | None]:
    """Checks per file of a `rpmkeys --checksig -v 0.rpm 1.rpm ...` run; None for a file
    rpmkeys never reported on. Files are named by number, so no path can confuse parsing."""
    results: list[list[Check] | None] = [None] * count
    current: list[Check] | None = None
    for line in stdout.splitlines():
        head = _FILE_LINE.match(line)
        if head and int(head["index"]) < count:
            current = results[int(head["index"])] = []
            continue
        check = _CHECK_LINE.match(line)
        if check and current is not None:
            current.append(Check(check["label"], check["result"], check["detail"].strip()))
    return results


def file_errors(stderr: str) -> dict[int, str]:
    """rpmkeys' own complaint per numbered file ("error: 3.rpm: open failed: ...")."""
    found = (_ERROR_LINE.match(line) for line in stderr.splitlines())
    return {int(m["index"]): m["message"].strip() for m in found if m}


def verdict(checks: list[Check] | None, error: str | None = None) -> str | None:
    """Why a package is refused (None: signed by one of the keys, and intact)."""
    if not checks:
        return f"rpmkeys cannot read it ({error or 'not an rpm, or truncated'})"
    for check in checks:
        if check.result not in _PASS | {"NOKEY", "NOTTRUSTED"}:
            return f"{check.label}: {check.result} (altered after it was built or signed)"
    for check in checks:
        if check.result in ("NOKEY", "NOTTRUSTED"):
            found = _KEY_ID.search(check.label)
            key = f"key ID {found[1]}" if found else "a key"
            return f"signed with {key}, which is not one of the repo's gpgkey keys"
    if not any(c.is_signature and c.result == "OK" for c in checks):
        return "not signed (gpgcheck=1 requires a signature)"
    return None


def _check_chunk(
    repo: str, keyring: list[str], files: Sequence[Path], work: Path
) -> list[str | None]:
    """Verdicts for `files`, checked through numbered symlinks in a private directory."""
    links = Path(tempfile.mkdtemp(prefix="chunk-", dir=work))
    for number, path in enumerate(files):
        (links / f"{number}.rpm").symlink_to(path.resolve())
    names = [f"{n}.rpm" for n in range(len(files))]
    # _pkgverify_level all: rpmkeys itself fails unsigned files too (a second opinion).
    argv = [*keyring, "--define", "_pkgverify_level all"]
    proc = _run([*argv, "--checksig", "-v", "--", *names], cwd=links)
    errors = file_errors(proc.stderr)
    checked = parse_checksig(proc.stdout, len(files))
    verdicts = [verdict(checks, errors.get(n)) for n, checks in enumerate(checked)]
    if proc.returncode != 0 and not any(verdicts):
        # rpmkeys failed something the parser accepted: refuse rather than guess.
        detail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise RepoSyncError(repo, f"gpgcheck: rpmkeys --checksig failed: {detail}")
    return verdicts


class StreamingVerifier:
    """Checks packages as they finish downloading, CHUNK files per rpmkeys call, next to the
    transfers (a cold sync's signature stage then mostly overlaps network time).

    `with StreamingVerifier(repo, keys) as v: v.add(path, nevra) ...; v.finish()` — finish()
    raises PackageError for the first refused package, after all were checked."""

    def __init__(self, repo: str, keys: bytes) -> None:
        self.repo, self.keys = repo, keys
        self.started = time.monotonic()
        self.checked: list[tuple[Path, str]] = []
        self._pending: list[tuple[Path, str]] = []
        self._futures: list[Future[list[str | None]]] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> StreamingVerifier:
        rpmkeys = _program("rpmkeys", "rpm")
        # __exit__ does not run when __enter__ raises: close what was opened here ourselves.
        try:
            tmp = self._stack.enter_context(
                tempfile.TemporaryDirectory(prefix="mirror-rpmkeys-", dir=_scratch_dir())
            )
            self._work = Path(tmp)
            self._keyring = _keyring(self.repo, rpmkeys, self.keys, self._work)
            self._pool = self._stack.enter_context(ThreadPoolExecutor(max_workers=WORKERS))
        except subprocess.TimeoutExpired as exc:
            self._stack.close()
            raise _timed_out(self.repo, exc) from None
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def add(self, path: Path, nevra: str) -> None:
        self._pending.append((path, nevra))
        if len(self._pending) >= CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        chunk, self._pending = self._pending, []
        self.checked += chunk
        files = [f for f, _ in chunk]
        self._futures.append(
            self._pool.submit(_check_chunk, self.repo, self._keyring, files, self._work)
        )

    def finish(self) -> None:
        self._flush()
        try:
            verdicts = [v for future in self._futures for v in future.result()]
        except subprocess.TimeoutExpired as exc:  # a hung tool fails this repo only
            raise _timed_out(self.repo, exc) from None
        pairs = zip(self.checked, verdicts, strict=True)
        failed = [(nevra, why) for (_, nevra), why in pairs if why]
        if failed:
            nevra, why = failed[0]
            more = len(failed) - 1
            others = f" ({more} other package{'s' if more > 1 else ''} failed too)" if more else ""
            raise PackageError(self.repo, nevra, f"signature: {why}{others}")
        if self.checked:
            log.info(
                "%s: signatures of %d packages verified (%.1fs)",
                self.repo,
                len(self.checked),
                time.monotonic() - self.started,
            )


def _scratch_dir() -> str | None:
    """Where the throwaway keyring and the numbered symlinks go: /dev/shm when usable. On
    this kind of VM, creating a file on ext4 costs ~0.5 ms of kernel time (measured), which
    made the 2,000 symlinks of a cold sync cost more than rpmkeys itself; on tmpfs it is
    negligible. None: the default temp dir."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def _timed_out(repo: str, exc: subprocess.TimeoutExpired) -> RepoSyncError:
    tool = Path(str(exc.cmd[0])).name
    return RepoSyncError(repo, f"gpgcheck: {tool} did not finish in {TIMEOUT}s")


def verify_packages(repo: str, keys: bytes, packages: Sequence[tuple[Path, str]]) -> None:
    """Check every (staged file, nevra) against `keys`; raise PackageError for the first
    refused package (counting the others), after all have been checked."""
    if not packages:
        return
    with StreamingVerifier(repo, keys) as verifier:
        for path, nevra in packages:
            verifier.add(path, nevra)
        verifier.finish()
