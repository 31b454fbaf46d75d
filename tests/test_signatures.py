"""gpgcheck=1: package signatures checked with real rpms, real keys and the real rpmkeys.

The first group calls mirror.yum.signatures directly on rpms built and signed by the fixture
builders; the second runs the whole `mirror sync` against a fixture upstream an attacker (or a
key rotation) has changed, and checks what ends up published.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from mirror import gpg
from mirror.errors import EnvironmentProblem, PackageError, RepoSyncError
from mirror.yum import signatures
from mirror.yum.signatures import verify_packages
from tests.conftest import Mirror
from tests.fixtures import (
    GpgKey,
    Pkg,
    build_rpms,
    corrupt_file,
    kill_agent,
    make_gpg_key,
    make_repo,
)
from tests.fixtures.yumrepo import K8S_RELEASE

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgKey]:
    """A key the repo does not list: an attacker's, or upstream's next one."""
    key = make_gpg_key(tmp_path_factory.mktemp("other-key"), "Other Signing Key")
    yield key
    kill_agent(key)


@dataclass(frozen=True)
class Rpms:
    good: list[Path]  # signed by the repo key
    foreign: Path  # signed by other_key
    unsigned: Path
    tampered: Path  # signed by the repo key, payload flipped afterwards


@pytest.fixture(scope="module")
def rpms(tmp_path_factory: pytest.TempPathFactory, gpg_key: GpgKey, other_key: GpgKey) -> Rpms:
    root = tmp_path_factory.mktemp("sig-rpms")
    good = build_rpms([Pkg(f"good{n}", "1.0") for n in range(5)], "noarch", root, gpg_key, root)
    (foreign,) = build_rpms([Pkg("foreign", "1.0")], "noarch", root, other_key, root)
    (unsigned,) = build_rpms([Pkg("unsigned", "1.0")], "noarch", root, None, root)
    (tampered,) = build_rpms([Pkg("tampered", "1.0")], "noarch", root, gpg_key, root)
    corrupt_file(tampered)
    return Rpms(good, foreign, unsigned, tampered)


def nevra(path: Path) -> str:
    return path.name.removesuffix(".rpm")


def entries(*paths: Path) -> list[tuple[Path, str]]:
    return [(p, nevra(p)) for p in paths]


def short_id(key: GpgKey) -> str:
    return key.keyid[-8:].lower()  # how rpm names a key: "key ID 9948dd28"


def test_signed_by_repo_key_passes(rpms: Rpms, gpg_key: GpgKey) -> None:
    verify_packages("repo", gpg_key.public_key.read_bytes(), entries(*rpms.good))


def test_signed_by_another_key_is_refused(rpms: Rpms, gpg_key: GpgKey, other_key: GpgKey) -> None:
    with pytest.raises(PackageError) as err:
        verify_packages("repo", gpg_key.public_key.read_bytes(), entries(rpms.foreign))
    assert err.value.package == "foreign-1.0-1.noarch"
    assert str(err.value) == (
        "repo repo: package foreign-1.0-1.noarch: signature: signed with key ID "
        f"{short_id(other_key)}, which is not one of the repo's gpgkey keys"
    )


def test_unsigned_is_refused(rpms: Rpms, gpg_key: GpgKey) -> None:
    with pytest.raises(PackageError, match="package unsigned-1.0-1.noarch: signature: not signed"):
        verify_packages("repo", gpg_key.public_key.read_bytes(), entries(rpms.unsigned))


def test_tampered_is_refused(rpms: Rpms, gpg_key: GpgKey) -> None:
    with pytest.raises(PackageError, match=r"tampered-1\.0-1\.noarch: signature: .*digest: BAD"):
        verify_packages("repo", gpg_key.public_key.read_bytes(), entries(rpms.tampered))


def test_not_an_rpm_and_missing_file_are_refused(tmp_path: Path, gpg_key: GpgKey) -> None:
    junk = tmp_path / "junk.rpm"
    junk.write_bytes(b"<html>404</html>\n")
    keys = gpg_key.public_key.read_bytes()
    for path in (junk, tmp_path / "missing.rpm"):
        with pytest.raises(PackageError, match="rpmkeys cannot read it"):
            verify_packages("repo", keys, [(path, "x-1-1.noarch")])


def test_first_failure_named_others_counted_across_chunks(
    rpms: Rpms, gpg_key: GpgKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of 2 files: verdicts must stay attached to the right package across calls."""
    monkeypatch.setattr(signatures, "CHUNK", 2)
    order = [*rpms.good[:3], rpms.unsigned, rpms.good[3], rpms.foreign, rpms.good[4]]
    with pytest.raises(PackageError) as err:
        verify_packages("repo", gpg_key.public_key.read_bytes(), entries(*order))
    assert err.value.package == "unsigned-1.0-1.noarch"
    assert str(err.value).endswith("(1 other package failed too)")


def test_odd_staging_paths(rpms: Rpms, gpg_key: GpgKey, tmp_path: Path) -> None:
    """Staged paths come from upstream hrefs: colons, spaces, newlines must not confuse it."""
    odd = tmp_path / "a: b" / "c d\nx.rpm: digests OK"
    odd.parent.mkdir()
    shutil.copyfile(rpms.foreign, odd)
    good = tmp_path / "ok: digests signatures OK.rpm"
    shutil.copyfile(rpms.good[0], good)
    with pytest.raises(PackageError) as err:
        verify_packages("repo", gpg_key.public_key.read_bytes(), [(good, "g"), (odd, "odd")])
    assert err.value.package == "odd"


def test_key_blob_with_several_keys_binary_and_armoured(
    rpms: Rpms, gpg_key: GpgKey, other_key: GpgKey
) -> None:
    """What fetch_keys hands over for `gpgkey=URL1 URL2`: each blob plus a newline, here a
    binary export followed by an armoured one; packages signed by either key pass."""
    binary = subprocess.run(
        ["gpg", "--batch", "--export", other_key.keyid],
        env={"GNUPGHOME": str(other_key.gnupghome)},
        capture_output=True,
        check=True,
    ).stdout
    assert binary and not binary.startswith(b"-----")
    keys = binary + b"\n" + gpg_key.public_key.read_bytes()
    assert len(signatures.split_keys(keys)) == 2
    verify_packages("repo", keys, entries(rpms.foreign, *rpms.good))


def test_no_usable_key(rpms: Rpms) -> None:
    with pytest.raises(RepoSyncError, match="gpgkey holds no OpenPGP public key"):
        verify_packages("repo", b"<html>not a key</html>\n", entries(*rpms.good))


def test_missing_rpmkeys_is_an_environment_problem(
    rpms: Rpms, gpg_key: GpgKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a real PATH without rpmkeys
    with pytest.raises(EnvironmentProblem, match="rpmkeys not found"):
        verify_packages("repo", gpg_key.public_key.read_bytes(), entries(*rpms.good))


# ------------------------------------------------------------------------------------------
# the whole `mirror sync`
# ------------------------------------------------------------------------------------------


def write_k8s_repo(mirror: Mirror, gpgcheck: bool, gpgkeys: list[str]) -> None:
    """The kubernetes .repo with repo_gpgcheck=0: nothing vouches for the metadata."""
    k8s = mirror.upstream.server.url_for(mirror.upstream.k8s_repo)
    (mirror.dir / "repos" / "kubernetes.repo").write_text(
        f"[kubernetes]\nname=Kubernetes\nbaseurl={k8s}/\nenabled=1\n"
        f"gpgcheck={int(gpgcheck)}\nrepo_gpgcheck=0\ngpgkey={' '.join(gpgkeys)}\n"
    )


def key_url(mirror: Mirror) -> str:
    return mirror.upstream.server.url_for(mirror.upstream.k8s_repo) + "/repodata/repomd.xml.key"


def rebuild_unsigned_metadata(mirror: Mirror) -> None:
    """What an attacker with write access to the upstream (not its key) does: fresh
    createrepo_c metadata matching the altered files, no repomd.xml.asc, key left in place."""
    up = mirror.upstream
    make_repo(up.k8s_repo, None)
    shutil.copyfile(up.key.public_key, up.k8s_repo / "repodata" / "repomd.xml.key")


def failure_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The summary lines `mirror sync` prints under "mirror sync: N failed:"."""
    lines = proc.stderr.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("mirror sync: "))
    return [line.strip() for line in lines[head + 1 :] if line.startswith("  ")]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_tampered_rpm_in_rebuilt_unsigned_repo_is_refused(mirror: Mirror) -> None:
    write_k8s_repo(mirror, True, [key_url(mirror)])
    first = mirror.sync("--repo", "kubernetes")
    assert first.returncode == 0, first.stderr[-3000:]
    name = f"kubectl-1.28.2-{K8S_RELEASE}.x86_64"
    published = mirror.data / "repos" / "kubernetes" / "x86_64" / f"{name}.rpm"
    repomd = mirror.data / "repos" / "kubernetes" / "repodata" / "repomd.xml"
    before = {published: sha256(published), repomd: sha256(repomd)}

    corrupt_file(mirror.upstream.k8s_repo / "x86_64" / f"{name}.rpm")
    rebuild_unsigned_metadata(mirror)  # the checksum in primary.xml now matches the bad file
    proc = mirror.sync("--repo", "kubernetes")

    assert proc.returncode == 1, proc.stderr[-3000:]
    (line,) = failure_lines(proc)
    assert line.startswith(f"repo kubernetes: package {name}: signature: "), line
    assert {path: sha256(path) for path in before} == before
    mirror.serve()  # the previous copy still serves, byte for byte
    served = requests.get(f"{mirror.base_url}/repos/kubernetes/x86_64/{name}.rpm", timeout=10)
    assert served.status_code == 200
    assert hashlib.sha256(served.content).hexdigest() == before[published]


@pytest.mark.slow
def test_unsigned_package_refused_unless_gpgcheck_off(mirror: Mirror, tmp_path: Path) -> None:
    write_k8s_repo(mirror, True, [key_url(mirror)])
    assert mirror.sync("--repo", "kubernetes").returncode == 0
    k8s = mirror.upstream.k8s_repo
    pkg = Pkg("kubectl", "1.28.9", K8S_RELEASE)
    build_rpms([pkg], "x86_64", k8s, None, tmp_path / "build", "x86_64")
    rebuild_unsigned_metadata(mirror)
    published = mirror.data / "repos" / "kubernetes" / "x86_64" / pkg.filename("x86_64")

    proc = mirror.sync("--repo", "kubernetes")
    assert proc.returncode == 1
    (line,) = failure_lines(proc)
    assert f"package {pkg.nvra('x86_64')}: signature: not signed" in line
    assert not published.exists()

    write_k8s_repo(mirror, False, [key_url(mirror)])  # gpgcheck=0: nothing is checked
    proc = mirror.sync("--repo", "kubernetes")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert published.is_file()

    # gpgcheck back on, upstream unchanged: not a no-op. The packages already published
    # (mirrored while nothing was checked) are checked now, and the unsigned one is named.
    repomd = mirror.data / "repos" / "kubernetes" / "repodata" / "repomd.xml"
    live = sha256(repomd)
    write_k8s_repo(mirror, True, [key_url(mirror)])
    proc = mirror.sync("--repo", "kubernetes")
    assert proc.returncode == 1, proc.stderr[-3000:]
    (line,) = failure_lines(proc)
    assert f"package {pkg.nvra('x86_64')}: signature: not signed" in line
    assert sha256(repomd) == live  # what was served stays served


@pytest.mark.slow
def test_rotated_key(mirror: Mirror, other_key: GpgKey, tmp_path: Path) -> None:
    """Upstream starts signing with a new key: refused until the repo lists it, then synced,
    and the nodes get both keys."""
    up = mirror.upstream
    write_k8s_repo(mirror, True, [key_url(mirror)])
    assert mirror.sync("--repo", "kubernetes").returncode == 0
    new_key = up.root / "new-key.gpg"
    shutil.copyfile(other_key.public_key, new_key)
    pkg = Pkg("kubectl", "1.28.9", K8S_RELEASE)
    build_rpms([pkg], "x86_64", up.k8s_repo, other_key, tmp_path / "build", "x86_64")
    make_repo(up.k8s_repo, up.key)
    published = mirror.data / "repos" / "kubernetes" / "x86_64" / pkg.filename("x86_64")

    proc = mirror.sync("--repo", "kubernetes")  # the new key is not listed yet
    assert proc.returncode == 1
    (line,) = failure_lines(proc)
    assert f"package {pkg.nvra('x86_64')}: signature: signed with key ID" in line
    assert short_id(other_key) in line
    assert not published.exists()

    write_k8s_repo(mirror, True, [key_url(mirror), up.server.url_for(new_key)])
    proc = mirror.sync("--repo", "kubernetes")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert published.is_file()
    served_keys = (mirror.data / "keys" / "kubernetes.gpg").read_bytes()
    assert set(gpg.key_fingerprints(served_keys)) >= {up.key.keyid, other_key.keyid}
