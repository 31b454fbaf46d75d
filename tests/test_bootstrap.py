"""/bootstrap.sh: shellcheck, option errors, and real runs against a throwaway root.

The real runs fetch the script from a served mirror (`mirror serve` over the fixture
upstream), pipe it to `bash -s --` like `curl ... | sudo bash -s --` does, and let it
install with real dnf and rpm into `--root DIR`. Host-wide actions are skipped under --root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from mirror import nodeconfig
from mirror.config import load_config
from mirror.web import create_app
from tests.conftest import REPO_ROOT, Mirror, free_port
from tests.fixtures import Pkg, UpstreamServer, build_rpms, make_repo
from tests.fixtures.testca import make_test_ca

K8S = "1.28.2"  # fixture kubeadm versions are 1.28.0..1.28.2; the test config pins none
CHANGED = re.compile(r"^\s+(changed|would change):", re.M)


# --- helpers -------------------------------------------------------------------------------


def render(tmp_path: Path, extra: str = "") -> str:
    """The script as the app renders it, for a config using the project's repos/."""
    cfg = tmp_path / "render.yaml"
    cfg.write_text(
        f"base_url: http://utility.example.com:8080\nrepos_dir: {REPO_ROOT / 'repos'}\n"
        f"data_dir: {tmp_path / 'data'}\n" + extra
    )
    resp = create_app(load_config(cfg)).test_client().get("/bootstrap.sh")
    assert resp.status_code == 200
    return resp.text


def bash(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run like `curl ... | bash -s -- ARGS`: the script arrives on stdin."""
    return subprocess.run(
        ["bash", "-s", "--", *args],
        input=script,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )


def rpm_names(root: Path) -> set[str]:
    out = subprocess.run(
        ["rpm", "--root", str(root), "-qa", "--qf", "%{NAME}-%{VERSION}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def files_under(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def dnf_cache() -> Iterator[Path]:
    """A short cachedir (librepo's gpg-agent socket path must stay < 108 bytes); the agents
    dnf starts there are stopped by homedir on teardown, never by name."""
    cache = Path(tempfile.mkdtemp(prefix="bsdnf-", dir="/tmp"))
    yield cache
    for pubring in cache.glob("*/pubring"):
        subprocess.run(
            ["gpgconf", "--homedir", str(pubring), "--kill", "gpg-agent"],
            capture_output=True,
            check=False,
        )
    shutil.rmtree(cache, ignore_errors=True)


class Node:
    """A throwaway root plus the options this Debian machine's dnf needs."""

    def __init__(self, script: str, root: Path, cache: Path) -> None:
        self.script = script
        self.root = root
        self.cache = cache
        root.mkdir(parents=True, exist_ok=True)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return bash(
            self.script,
            "--root",
            str(self.root),
            "--releasever",
            "9",
            "--dnf-opt",
            "--noplugins",
            "--dnf-opt",
            f"--setopt=cachedir={self.cache}",
            *args,
        )


def pause_image(mirror: Mirror) -> str:
    return nodeconfig.pause_image(load_config(mirror.config), f"v{K8S}")


def served_script(mirror: Mirror) -> str:
    proc = mirror.sync()
    assert proc.returncode == 0, proc.stderr[-3000:]
    mirror.serve()
    resp = requests.get(f"{mirror.base_url}/bootstrap.sh", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/x-shellscript")
    return resp.text


# --- fast: no server -----------------------------------------------------------------------


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_shellcheck_clean(tmp_path: Path) -> None:
    script = render(tmp_path)
    proc = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=style", "-"],
        input=script,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout


def test_rendered_defaults(tmp_path: Path) -> None:
    script = render(tmp_path, "kubernetes_versions: [v1.28.4]\n")
    assert "BASE_URL='http://utility.example.com:8080'" in script
    assert "DEFAULT_K8S_VERSION='v1.28.4'" in script
    assert "MIRROR_REPO_IDS=('cri-o' 'docker-ce-stable' 'kubernetes')" in script
    help_ = bash(script, "--help")
    assert help_.returncode == 0 and "--kubernetes-version" in help_.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bogus"], "unknown option --bogus"),
        (["--runtime"], "--runtime needs a value"),
        (["--runtime", "docker"], "--runtime must be containerd or cri-o"),
        (["--role", "master"], "--role must be control-plane or worker"),
        (["--root"], "--root needs a value"),
        (["--dnf-opt"], "--dnf-opt needs a value"),
        (["--kubernetes-version", "1.28"], "--kubernetes-version must look like"),
        (["--mirror", "utility:8080"], "--mirror must be an http"),
        ([], "no kubernetes_versions configured"),  # and no --kubernetes-version
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    script = render(tmp_path, "kubernetes_versions: [v1.28.4]\n" if args else "")
    root = tmp_path / "root"
    root.mkdir()
    proc = bash(script, "--root", str(root), *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Usage:" in proc.stderr
    assert not files_under(root)


def test_truncated_download_runs_nothing(tmp_path: Path) -> None:
    """The body is one { ... } block: a script cut short is a syntax error, not half a run."""
    script = render(tmp_path, "kubernetes_versions: [v1.28.4]\n")
    cut = script[: script.index('step "packages"')]
    proc = bash(cut, "--help")
    assert proc.returncode != 0 and proc.stdout == ""


def test_unreachable_mirror_fails_in_first_network_step(tmp_path: Path) -> None:
    script = render(tmp_path, "kubernetes_versions: [v1.28.4]\n")
    root = tmp_path / "root"
    root.mkdir()
    dead = f"http://127.0.0.1:{free_port()}"
    proc = bash(script, "--root", str(root), "--releasever", "9", "--mirror", dead)
    assert proc.returncode == 1
    assert f"FAILED in step 'repo file': cannot fetch {dead}/repofiles/mirror.repo" in proc.stderr
    assert "[step] gpg keys" not in proc.stdout
    assert not files_under(root)


def test_failing_command_is_reported_by_the_err_trap(tmp_path: Path) -> None:
    """Any failing command (here mkdir under a file) stops the run and names the step."""
    site = tmp_path / "site"
    (site / "repofiles").mkdir(parents=True)
    (site / "repofiles" / "mirror.repo").write_text("[kubernetes]\nname=k\n")
    script = render(tmp_path, "kubernetes_versions: [v1.28.4]\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "yum.repos.d").write_text("not a directory\n")
    with UpstreamServer(site) as server:
        proc = bash(script, "--root", str(root), "--releasever", "9", "--mirror", server.url)
    assert proc.returncode != 0
    assert "bootstrap: FAILED in step 'repo file': 'mkdir -p" in proc.stderr
    assert "[step] gpg keys" not in proc.stdout


# --- slow: a served mirror, real dnf and rpm ----------------------------------------------


@pytest.mark.slow
def test_containerd_node_from_served_mirror(
    mirror: Mirror, tmp_path: Path, dnf_cache: Path
) -> None:
    script = served_script(mirror)
    node = Node(script, tmp_path / "node", dnf_cache)
    etc = node.root / "etc"
    (etc / "containerd").mkdir(parents=True)
    # What Docker's containerd.io rpm installs: the CRI plugin disabled.
    (etc / "containerd" / "config.toml").write_text('disabled_plugins = ["cri"]\n')
    (etc / "fstab").write_text(
        "UUID=1234 / xfs defaults 0 0\n"
        "/dev/mapper/rl-swap none swap defaults 0 0\n"
        "# /dev/sdb1 none swap sw 0 0\n"
    )
    args = ("--runtime", "containerd", "--role", "control-plane", "--kubernetes-version", K8S)

    # Dry run on a fresh root first: reports changes, writes nothing at all.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    out = ok(Node(script, fresh, dnf_cache).run(*args, "--dry-run"))
    assert "would change: write" in out and "dry run done" in out
    assert f"install kubeadm-{K8S} kubelet-{K8S} kubectl-{K8S} containerd.io" in out
    assert not files_under(fresh)

    first = node.run(*args)
    out = ok(first)
    steps = re.findall(r"^\[step\] (.+)$", out, re.M)
    assert steps == [
        "preflight",
        "repo file",
        "gpg keys",
        "packages",
        "runtime registry mirror config (containerd)",
        "kernel modules",
        "sysctl",
        "swap",
        "firewall (control-plane ports)",
        "services",
    ]
    assert "skipped (--root): modprobe" in out and "skipped (--root): swapoff -a" in out
    assert "skipped (--root): firewall-cmd --add-port 6443/tcp 2379-2380/tcp" in out
    assert CHANGED.search(out)

    names = rpm_names(node.root)
    assert {f"kubeadm-{K8S}", f"kubelet-{K8S}", f"kubectl-{K8S}"} <= names
    assert {"containerd.io-1.6.31", "cri-tools-1.28.0", "kubernetes-cni-1.2.0"} <= names
    assert any(n.startswith("gpg-pubkey-") for n in names)  # imported by the script

    repo = (etc / "yum.repos.d" / "mirror.repo").read_text()
    assert repo == requests.get(f"{mirror.base_url}/repofiles/mirror.repo", timeout=10).text
    assert (etc / "modules-load.d" / "k8s.conf").read_text() == "overlay\nbr_netfilter\n"
    # Issue 10: dnf's $kubernetes_minor for mirror.repo, from --kubernetes-version.
    assert (etc / "dnf" / "vars" / "kubernetes_minor").read_text() == "v1.28\n"
    assert (etc / "sysctl.d" / "k8s.conf").read_text() == (
        "net.bridge.bridge-nf-call-iptables = 1\n"
        "net.bridge.bridge-nf-call-ip6tables = 1\n"
        "net.ipv4.ip_forward = 1\n"
    )
    assert (etc / "fstab").read_text() == (
        "UUID=1234 / xfs defaults 0 0\n"
        "#/dev/mapper/rl-swap none swap defaults 0 0\n"
        "# /dev/sdb1 none swap sw 0 0\n"
    )
    certs = etc / "containerd" / "certs.d"
    # Plus the plain-HTTP registry itself, for pulls by mirrored name (kubeadm's images).
    own = f"127.0.0.1:{mirror.registry_port}"
    assert sorted(p.name for p in certs.iterdir()) == sorted(
        ["docker.io", "quay.io", "registry.k8s.io", own]
    )
    for host in ("docker.io", "quay.io", "registry.k8s.io"):
        served = requests.get(f"{mirror.base_url}/containerd/certs.d/{host}/hosts.toml", timeout=10)
        assert (certs / host / "hosts.toml").read_text() == served.text
    # The Docker-only config was set aside; the new one has CRI on and points at the mirror.
    assert (etc / "containerd" / "config.toml.rpm-orig").is_file()
    config = tomllib.loads((etc / "containerd" / "config.toml").read_text())
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert "cri" not in config.get("disabled_plugins", [])
    assert cri["registry"]["config_path"] == "/etc/containerd/certs.d"
    assert cri["sandbox_image"] == pause_image(mirror)
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True

    # Second run: nothing to do, and it says so.
    snapshot = {p: p.read_bytes() for p in files_under(etc) if p.is_file()}
    out = ok(node.run(*args))
    assert not CHANGED.search(out), out
    assert "no changes" in out.splitlines()[-1]
    assert {p: p.read_bytes() for p in files_under(etc) if p.is_file()} == snapshot
    # ... and a dry run on the prepared node agrees.
    out = ok(node.run(*args, "--dry-run"))
    assert not CHANGED.search(out) and "0 change(s) would be made" in out

    # A version the mirror lacks: dnf fails, the script stops there and names the step.
    bad = node.run("--runtime", "containerd", "--kubernetes-version", "1.28.9")
    assert bad.returncode != 0
    assert "FAILED in step 'packages'" in bad.stderr
    assert "[step] runtime registry mirror config" not in bad.stdout
    assert "kubeadm-1.28.9" in bad.stdout + bad.stderr

    # --mirror: the repo file is rewritten to that URL, and dnf really uses it (it loads the
    # metadata there before finding no kubeadm-1.28.9).
    other = Node(script, tmp_path / "other", dnf_cache)
    alias = f"http://localhost:{mirror.port}"
    bad = other.run("--mirror", alias + "/", "--kubernetes-version", "1.28.9")
    assert bad.returncode != 0 and "FAILED in step 'packages'" in bad.stderr
    repo = (other.root / "etc" / "yum.repos.d" / "mirror.repo").read_text()
    assert f"baseurl={alias}/repos/kubernetes/" in repo and mirror.base_url not in repo
    assert "No match for argument: kubeadm-1.28.9" in bad.stdout + bad.stderr


def add_crio_repo(mirror: Mirror, tmp_path: Path) -> None:
    """A one-package cri-o repo in the test's upstream, and the mirror's cri-o.repo for it."""
    up = mirror.upstream
    repo = up.root / "cri-o" / "rpm"
    build_rpms([Pkg("cri-o", "1.28.2", "150500.1.1")], "x86_64", repo, up.key, tmp_path / "b")
    make_repo(repo, up.key)
    url = up.server.url_for(repo)
    (mirror.dir / "repos" / "cri-o.repo").write_text(
        f"[cri-o]\nname=CRI-O\nbaseurl={url}/\nenabled=1\ngpgcheck=1\n"
        f"gpgkey={url}/repodata/repomd.xml.key\n"
    )


@pytest.mark.slow
def test_crio_node_from_served_mirror(mirror: Mirror, tmp_path: Path, dnf_cache: Path) -> None:
    add_crio_repo(mirror, tmp_path)
    # An external registry with its own CA: bootstrap puts it where CRI-O looks for it.
    ca = make_test_ca(tmp_path / "pki", "registry").ca_cert
    text = mirror.config.read_text()
    assert text.count("embedded: false}") == 1
    mirror.config.write_text(text.replace("embedded: false}", f"embedded: false, ca_file: {ca}}}"))
    script = served_script(mirror)
    args = ("--runtime", "cri-o", "--role", "worker", "--kubernetes-version", K8S)

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    out = ok(Node(script, fresh, dnf_cache).run(*args, "--dry-run"))
    assert "cri-o" in out and "50-airgap-mirror.conf" in out
    assert "firewall-cmd --add-port 10250/tcp 10256/tcp 30000-32767/tcp" in out
    assert not files_under(fresh)

    node = Node(script, tmp_path / "node", dnf_cache)
    out = ok(node.run(*args))
    assert CHANGED.search(out)
    names = rpm_names(node.root)
    assert {"cri-o-1.28.2", f"kubeadm-{K8S}", f"kubelet-{K8S}", f"kubectl-{K8S}"} <= names
    assert "containerd.io-1.6.31" not in names
    etc = node.root / "etc"
    registries = etc / "containers" / "registries.conf.d" / "50-airgap-mirror.conf"
    served = requests.get(f"{mirror.base_url}/crio/registries.conf", timeout=10).text
    assert registries.read_text() == served
    crio = tomllib.loads((etc / "crio" / "crio.conf.d" / "50-airgap-mirror.conf").read_text())
    assert crio["crio"]["image"]["pause_image"] == pause_image(mirror)
    host = load_config(mirror.config).registry.host
    assert (etc / "containers" / "certs.d" / host / "ca.crt").read_bytes() == ca.read_bytes()
    assert not (etc / "containerd").exists()

    out = ok(node.run(*args))
    assert not CHANGED.search(out), out
    assert "no changes" in out.splitlines()[-1]
