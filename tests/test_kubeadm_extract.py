"""Extracting /usr/bin/kubeadm from a real rpm (built with rpmbuild) with each extractor the
product supports: bsdtar, and rpm2cpio | cpio where bsdtar is missing (PATH is narrowed to
a directory holding only those programs). The rpm's kubeadm is a shell-script stand-in: there
is no kubeadm binary on these machines (tests/fixtures/k8sminors.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mirror.errors import EnvironmentProblem
from mirror.kubernetes import kubeadm_binary
from mirror.kubernetes.packages import KubePackage
from tests.fixtures.k8sminors import kubeadm_rpm, kubeadm_script

pytestmark = pytest.mark.slow
IMAGES = ["registry.k8s.io/pause:3.10"]


@pytest.fixture(scope="module")
def rpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("kubeadm-rpm")
    return kubeadm_rpm("1.36.5", IMAGES, work / "out", None, work / "build")


def _package(rpm: Path) -> KubePackage:
    return KubePackage("kubeadm", "1.36.5", "150500.1.1", "x86_64", "0" * 64, rpm, "k/v1.36")


def _only_programs(tmp_path: Path, programs: dict[str, str]) -> str:
    """A PATH directory holding exactly `programs` (name -> file to link)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, target in programs.items():
        (bindir / name).symlink_to(target)
    return str(bindir)


def _which(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (scripts/install-system-deps.sh installs it)")
    return found


def test_bsdtar_extracts_the_binary(rpm: Path, tmp_path: Path) -> None:
    binary = kubeadm_binary.extract(_package(rpm), tmp_path)
    assert binary.read_text() == kubeadm_script("1.36.5", IMAGES)
    assert os.access(binary, os.X_OK)


def test_rpm2cpio_and_cpio_extract_when_bsdtar_is_missing(
    rpm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _only_programs(tmp_path, {"rpm2cpio": _which("rpm2cpio"), "cpio": _which("cpio")})
    monkeypatch.setenv("PATH", path)
    dest = tmp_path / "out"
    dest.mkdir()
    binary = kubeadm_binary.extract(_package(rpm), dest)
    with_bsdtar = tmp_path / "ref"
    monkeypatch.undo()
    with_bsdtar.mkdir()
    assert binary.read_bytes() == kubeadm_binary.extract(_package(rpm), with_bsdtar).read_bytes()


def test_a_stage_flooding_stderr_does_not_hang_the_pipeline(
    rpm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1 MiB on stderr before the payload: more than any pipe buffer. With stderr on pipes
    # drained one process after the other, this rpm2cpio would block until the timeout.
    noisy = tmp_path / "noisy-rpm2cpio"
    noisy.write_text(
        f"#!/bin/sh\nhead -c 1048576 /dev/zero | tr '\\0' x >&2\nexec {_which('rpm2cpio')} \"$@\"\n"
    )
    noisy.chmod(0o755)
    path = _only_programs(tmp_path, {"rpm2cpio": str(noisy), "cpio": _which("cpio")})
    for tool in ("sh", "head", "tr"):
        (Path(path) / tool).symlink_to(_which(tool))
    monkeypatch.setenv("PATH", path)
    monkeypatch.setattr(kubeadm_binary, "EXTRACT_TIMEOUT", 60.0)
    binary = kubeadm_binary.extract(_package(rpm), tmp_path)
    assert binary.read_text() == kubeadm_script("1.36.5", IMAGES)


def test_missing_extractors_are_named(
    rpm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EnvironmentProblem, match="bsdtar"):
        kubeadm_binary.extract(_package(rpm), tmp_path)
