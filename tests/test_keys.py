"""gpgkey files: binary exports are armoured so several keys can share the one served file."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mirror import gpg
from mirror.yum.sync import _armored
from tests.fixtures import GpgKey


def _export(key: GpgKey, *args: str) -> bytes:
    return subprocess.run(
        ["gpg", "--batch", "--export", *args, key.keyid],
        env=key.env,
        capture_output=True,
        check=True,
    ).stdout


def test_binary_key_is_armoured_exactly_like_gpg(gpg_key: GpgKey) -> None:
    binary, armoured = _export(gpg_key), _export(gpg_key, "--armor")
    assert not binary.startswith(b"-----")
    assert _armored(binary) == armoured


def test_binary_and_armoured_keys_concatenate_into_one_importable_file(
    gpg_key: GpgKey, tmp_path: Path
) -> None:
    other_home = tmp_path / "other"
    other_home.mkdir(mode=0o700)
    subprocess.run(
        [
            "gpg",
            "--homedir",
            str(other_home),
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "Other <other@example.invalid>",
            "ed25519",
        ],
        check=True,
        capture_output=True,
    )
    other = subprocess.run(
        ["gpg", "--homedir", str(other_home), "--batch", "--export"],
        check=True,
        capture_output=True,
    ).stdout
    # Key generation started a gpg-agent for that home: stop it (never left behind).
    subprocess.run(["gpgconf", "--homedir", str(other_home), "--kill", "gpg-agent"], check=False)
    combined = _armored(_export(gpg_key, "--armor") + b"\n\n") + _armored(other)
    fingerprints = gpg.key_fingerprints(combined)  # primary keys and their subkeys
    assert gpg_key.keyid in fingerprints and len(fingerprints) >= 3
    # rpm, which nodes' dnf uses, imports both from the one file.
    keyfile = tmp_path / "keys.gpg"
    keyfile.write_bytes(combined)
    subprocess.run(
        [
            "rpmkeys",
            "--dbpath",
            str(tmp_path / "db"),
            "--define",
            f"_keyringpath {tmp_path}/pubkeys/",
            "--import",
            str(keyfile),
        ],
        check=True,
        capture_output=True,
    )
