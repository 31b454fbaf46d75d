"""Issue 10, the fast parts: version and range syntax, `$kubernetes_minor` expansion, the
generated repo stanza, kubeadm output parsing and its sandbox, key expiry parsing."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror import gpg
from mirror.config import Config, load_config
from mirror.errors import ConfigError
from mirror.kubernetes import kubeadm_binary
from mirror.kubernetes.freshness import DAY, expiry_level
from mirror.kubernetes.kubeadm_binary import KubeadmBinaryError, parse_output, run_images_list
from mirror.kubernetes.resolve import resolve_entries
from mirror.kubernetes.versions import (
    KubeVersion,
    VersionRange,
    configured_minors,
    explicit_versions,
    first_version,
    parse_entry,
)
from mirror.repofile import expand_targets, parse_repo_file
from mirror.web.repofiles import repo_stanza

REPO = (
    "[kubernetes]\nname=Kubernetes\n"
    "baseurl=https://pkgs.k8s.io/core:/stable:/$kubernetes_minor/rpm/\nenabled=1\ngpgcheck=1\n"
    "gpgkey=https://pkgs.k8s.io/core:/stable:/$kubernetes_minor/rpm/repodata/repomd.xml.key\n"
)


def test_versions_and_ranges_parse_and_normalize() -> None:
    assert parse_entry("1.36.5") == KubeVersion(1, 36, 5)
    r = parse_entry("1.34.3..v1.36.5")
    assert isinstance(r, VersionRange) and str(r) == "v1.34.3..v1.36.5"
    assert r.minors() == ["v1.34", "v1.35", "v1.36"] and r.middle_minors() == ["v1.35"]
    assert parse_entry("v1.35.1..v1.35.9").minors() == ["v1.35"]  # type: ignore[union-attr]
    for bad, why in [
        ("v1.36", "malformed"),
        ("v1.36.0-rc.1", "malformed"),
        ("v1.36.5..v1.34.3", "reverse order"),
        ("v1.36.5..v2.0.0", "same major"),
        ("v1.34.3..", "malformed"),
    ]:
        with pytest.raises(ConfigError, match=why):
            parse_entry(bad)


def test_config_accepts_any_version_and_keeps_ranges(tmp_path: Path) -> None:
    path = tmp_path / "mirror.yaml"
    path.write_text("kubernetes_versions: [1.34.3..1.36.5, v1.99.1]\nkubeadm_images: binary\n")
    cfg = load_config(path)
    assert cfg.kubernetes_versions == ("v1.34.3..v1.36.5", "v1.99.1")
    assert cfg.kubeadm_images == "binary"
    assert configured_minors(cfg.kubernetes_versions) == ["v1.34", "v1.35", "v1.36", "v1.99"]
    assert first_version(cfg.kubernetes_versions) == "v1.34.3"
    assert explicit_versions(cfg.kubernetes_versions) == ["v1.34.3", "v1.36.5", "v1.99.1"]
    path.write_text("kubeadm_images: guess\n")
    with pytest.raises(ConfigError, match="kubeadm_images"):
        load_config(path)


def test_range_resolution_takes_newest_patch_of_middle_minors() -> None:
    newest = {"v1.35": KubeVersion(1, 35, 9), "v1.36": KubeVersion(1, 36, 7)}
    got = resolve_entries(["v1.34.3..v1.37.1", "v1.36.5"], newest.get)
    assert got.versions == ("v1.34.3", "v1.35.9", "v1.36.7", "v1.37.1", "v1.36.5")
    assert got.problems == ()
    gap = resolve_entries(["v1.34.3..v1.36.5"], {}.get)
    assert gap.versions == ("v1.34.3", "v1.36.5")
    assert len(gap.problems) == 1 and "no kubeadm of v1.35 is mirrored" in gap.problems[0]


def test_kubernetes_minor_expands_per_configured_minor(tmp_path: Path) -> None:
    repo = tmp_path / "k.repo"
    repo.write_text(REPO)
    (definition,) = parse_repo_file(repo)
    assert definition.variables == ("kubernetes_minor",)
    cfg = Config(kubernetes_versions=("v1.35.9", "v1.34.3..v1.36.5"))
    targets = expand_targets([definition], cfg)
    assert [t.key for t in targets] == ["kubernetes/v1.34", "kubernetes/v1.35", "kubernetes/v1.36"]
    assert targets[2].baseurls == ("https://pkgs.k8s.io/core:/stable:/v1.36/rpm/",)
    assert targets[2].gpgkeys[0].startswith("https://pkgs.k8s.io/core:/stable:/v1.36/")
    # The served stanza keeps the variable and says where dnf gets it.
    stanza = repo_stanza(definition, cfg)
    assert "baseurl=http://localhost:8080/repos/kubernetes/$kubernetes_minor/" in stanza
    assert "/etc/dnf/vars/kubernetes_minor (this mirror serves: v1.34 v1.35 v1.36)" in stanza
    with pytest.raises(ConfigError, match="kubernetes_versions' is empty"):
        expand_targets([definition], Config())


def test_gpgkey_variable_missing_from_baseurl_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "k.repo"
    repo.write_text(REPO.replace("/$kubernetes_minor/rpm/\nenabled", "/v1.36/rpm/\nenabled"))
    with pytest.raises(ConfigError, match=r"\$kubernetes_minor is used in gpgkey but not"):
        parse_repo_file(repo)


def test_kubeadm_output_is_parsed_strictly() -> None:
    good = b"registry.k8s.io/kube-apiserver:v1.36.6\n\nregistry.k8s.io/pause:3.10.2\n"
    assert parse_output(good, "v1.36.6", "r") == [
        "registry.k8s.io/kube-apiserver:v1.36.6",
        "registry.k8s.io/pause:3.10.2",
    ]
    for bad, why in [
        (b"W1202 some warning on stdout\n", "printed"),
        (b"registry.k8s.io/kube-apiserver:v1.36.5\n", "no kube-apiserver:v1.36.6"),
        (b"", "printed 0 images"),
        (b"x" * (kubeadm_binary.MAX_OUTPUT + 1), "over"),
        (b"registry.k8s.io/x:$(id)\n", "printed"),
    ]:
        with pytest.raises(KubeadmBinaryError, match=why):
            parse_output(bad, "v1.36.6", "r")


_PROBE = """#!/bin/sh
# Prints the image list only when sandboxed as promised; otherwise says what is wrong.
# (the shell itself exports PWD; everything else would have come from the mirror)
extra=$(env | grep -v '^PWD=')
[ -z "$extra" ] || { echo "environment not empty: $extra" >&2; exit 3; }
{checks}
echo registry.k8s.io/kube-apiserver:v1.36.6
"""
_ROOT_CHECKS = """[ "$(id -u)" = 65534 ] || { echo "uid $(id -u), not nobody" >&2; exit 4; }
ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')
[ "$ifaces" = "lo " ] || { echo "network interfaces: $ifaces" >&2; exit 5; }"""


@pytest.fixture
def scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="kubeadm-probe-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_kubeadm_runs_with_empty_env_and_as_nobody_without_network(scratch: Path) -> None:
    """The sandbox, observed from inside by a stand-in binary (no kubeadm exists here)."""
    root = os.geteuid() == 0
    binary = scratch / "kubeadm"
    binary.write_text(_PROBE.replace("{checks}", _ROOT_CHECKS if root else ""))
    binary.chmod(0o755)
    prefix, how = kubeadm_binary.sandbox_prefix()
    if root and "no network" not in how:
        pytest.skip(f"unshare -n refused here ({how})")
    assert run_images_list(binary, "v1.36.6", "probe") == ["registry.k8s.io/kube-apiserver:v1.36.6"]
    slow = scratch / "slow"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    kubeadm_binary.RUN_TIMEOUT, saved = 1.0, kubeadm_binary.RUN_TIMEOUT
    try:
        with pytest.raises(KubeadmBinaryError, match="did not finish in 1s"):
            run_images_list(slow, "v1.36.6", "slow")
    finally:
        kubeadm_binary.RUN_TIMEOUT = saved


def test_kubeadm_output_is_bounded_while_it_is_read(scratch: Path) -> None:
    """A binary that prints without end is stopped at the cap (not buffered first), and one
    that floods stderr while succeeding cannot deadlock the pipes."""
    flood = scratch / "flood"
    flood.write_text("#!/bin/sh\nwhile :; do echo registry.k8s.io/pause:3.10; done\n")
    noisy = scratch / "noisy"
    noisy.write_text(
        "#!/bin/sh\nhead -c 300000 /dev/zero | tr '\\0' w >&2\n"
        "echo registry.k8s.io/kube-apiserver:v1.36.6\n"
    )
    for script in (flood, noisy):
        script.chmod(0o755)
    kubeadm_binary.RUN_TIMEOUT, saved = 20.0, kubeadm_binary.RUN_TIMEOUT
    try:
        with pytest.raises(KubeadmBinaryError, match="printed over"):
            run_images_list(flood, "v1.36.6", "flood")
        listed = run_images_list(noisy, "v1.36.6", "noisy")
        assert listed == ["registry.k8s.io/kube-apiserver:v1.36.6"]
    finally:
        kubeadm_binary.RUN_TIMEOUT = saved


def test_key_listing_expiry_and_warning_levels() -> None:
    listing = (
        "pub:-:3072:1:AAAA:1700000000:1800000000::-:::scESC::::::23::0:\n"
        "fpr:::::::::1111222233334444:\n"
        "uid:-::::1700000000::HASH::Kube <k@example>::::::::::0:\n"
        "sub:-:3072:1:BBBB:1700000000:1750000000:::::e::::::23:\n"
        "fpr:::::::::5555666677778888:\n"
        "pub:-:255:22:CCCC:1700000000:::-:::scESC::::::23::0:\n"
        "fpr:::::::::9999AAAABBBBCCCC:\n"
    )
    keys = gpg.parse_colons(listing)
    assert keys == [
        gpg.KeyInfo("1111222233334444", "Kube <k@example>", 1700000000, 1800000000),
        gpg.KeyInfo("9999AAAABBBBCCCC", "", 1700000000, None),
    ]
    now = 1800000000 - 10 * DAY
    assert expiry_level(1800000000, now) == (10, "warning")
    assert expiry_level(1800000000, 1800000000 - 31 * DAY) == (31, "ok")
    assert expiry_level(1800000000, 1800000000 + 1)[1] == "expired"
    assert expiry_level(None, now) == (None, "ok")
