"""OpenPGP checks with the system `gpg`, in a throwaway home so no user keyring is touched."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mirror.errors import EnvironmentProblem


class SignatureError(Exception):
    pass


def _gpg() -> str:
    gpg = shutil.which("gpg")
    if gpg is None:
        raise EnvironmentProblem(
            "gpg not found: install the 'gnupg' package (dnf/apt install gnupg2/gnupg)"
        )
    return gpg


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            _gpg(),
            "--homedir",
            str(home),
            "--batch",
            "--no-tty",
            "--no-autostart",
            "--status-fd",
            "1",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def key_fingerprints(keys: bytes) -> list[str]:
    """Fingerprints of the public keys in `keys` (armored or binary); [] when there are none."""
    with tempfile.TemporaryDirectory(prefix="mirror-gpg-") as home:
        keyfile = Path(home) / "keys"
        keyfile.write_bytes(keys)
        proc = _run(
            Path(home), "--with-colons", "--import-options", "show-only", "--import", str(keyfile)
        )
        return [line.split(":")[9] for line in proc.stdout.splitlines() if line.startswith("fpr:")]


def verify_detached(data: bytes, signature: bytes, keys: bytes) -> str:
    """Check `signature` over `data` against `keys`; return the signing key's fingerprint.

    Raises SignatureError with gpg's own reason when the signature is bad, made by another
    key, or unreadable.
    """
    with tempfile.TemporaryDirectory(prefix="mirror-gpg-") as tmp:
        home = Path(tmp)
        home.chmod(0o700)
        (home / "keys").write_bytes(keys)
        (home / "data").write_bytes(data)
        (home / "data.asc").write_bytes(signature)
        imported = _run(home, "--import", str(home / "keys"))
        if "IMPORT_OK" not in imported.stdout:
            raise SignatureError("the repo's gpgkey holds no usable public key")
        proc = _run(home, "--verify", str(home / "data.asc"), str(home / "data"))
        for line in proc.stdout.splitlines():
            if line.startswith("[GNUPG:] VALIDSIG ") and proc.returncode == 0:
                return line.split()[2]
        reasons = {
            "BADSIG": "bad signature (content does not match)",
            "NO_PUBKEY": "signed by a key that is not the repo's gpgkey",
            "EXPKEYSIG": "signing key expired",
            "REVKEYSIG": "signing key revoked",
            "NODATA": "no signature found",
        }
        for token, reason in reasons.items():
            if f"[GNUPG:] {token}" in proc.stdout:
                raise SignatureError(reason)
        raise SignatureError(
            f"gpg could not verify: {proc.stderr.strip().splitlines()[-1:] or '?'}"
        )


@dataclass(frozen=True)
class KeyInfo:
    """One primary public key as `gpg --with-colons` describes it."""

    fingerprint: str
    uid: str  # the first user ID ("" when there is none)
    created: int | None  # seconds since the epoch
    expires: int | None  # seconds since the epoch; None: never expires


def _epoch(field: str) -> int | None:
    return int(field) if field.isdigit() and int(field) > 0 else None


def parse_colons(listing: str) -> list[KeyInfo]:
    """`pub` records (field 6 created, field 7 expiry) with the `fpr` and first `uid` that
    follow each; `sub` records and their fingerprints are skipped."""
    keys: list[KeyInfo] = []
    pub: list[str] | None = None  # fields of the current pub record
    fpr = uid = ""
    in_sub = False
    for line in [*listing.splitlines(), "pub:end"]:  # the sentinel flushes the last key
        fields = line.split(":")
        if fields[0] == "pub":
            if pub is not None and fpr:
                keys.append(KeyInfo(fpr, uid, _epoch(pub[5]), _epoch(pub[6])))
            pub = fields if len(fields) > 6 else None
            fpr = uid = ""
            in_sub = False
        elif fields[0] in ("sub", "ssb"):
            in_sub = True
        elif pub is not None and len(fields) > 9:
            if fields[0] == "fpr" and not in_sub and not fpr:
                fpr = fields[9]
            elif fields[0] == "uid" and not uid:
                uid = fields[9]
    return keys


def key_info(keys: bytes) -> list[KeyInfo]:
    """Every primary key in `keys` (armored or binary, several concatenated) with its expiry,
    read in a throwaway home (`--import-options show-only`: nothing is imported)."""
    with tempfile.TemporaryDirectory(prefix="mirror-gpg-") as home:
        keyfile = Path(home) / "keys"
        keyfile.write_bytes(keys)
        proc = _run(
            Path(home), "--with-colons", "--import-options", "show-only", "--import", str(keyfile)
        )
        return parse_colons(proc.stdout)
