"""Issue 10 end to end: Kubernetes versions drive repos, images, upgrade plans and freshness.

Real parts throughout: fixture pkgs.k8s.io and CRI-O stand-ins for three minors (rpmbuild,
createrepo_c, a real GPG key) on loopback HTTP, ONE .repo definition per upstream using
`$kubernetes_minor`, a real `mirror sync` and `mirror serve`, real dnf on the served
mirror.repo, a real upstream registry and the embedded one.

There is no kubeadm binary on these machines: the kubeadm rpm of v1.36.6 (a version the
built-in table does not know) carries a small shell script as /usr/bin/kubeadm that prints a
known image list (tests/fixtures/k8sminors.py). Finding that rpm in the published metadata,
extracting it, running it sandboxed, parsing, caching and the table fallback are the real code.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest

from mirror import kubeadm_images, nodeconfig
from mirror.config import Config, load_config
from mirror.kubernetes import freshness
from mirror.kubernetes.cli import upgrade_plan
from mirror.kubernetes.images import image_list
from mirror.kubernetes.resolve import resolve_versions
from mirror.kubernetes.upgrade import configured_plans
from mirror.kubernetes.upgrade import upgrade_plan as make_plan
from tests.conftest import free_port, stop_process, wait_http
from tests.fixtures import DnfRoot, GpgKey, UpstreamServer, kill_agent, make_gpg_key
from tests.fixtures.k8sminors import crio_repo, make_expiring_key, minor_repo
from tests.fixtures.registry import (
    RegistryProcess,
    push_images,
    raw_manifest,
    start_registry,
    write_registries_conf,
)

pytestmark = pytest.mark.slow

# Per minor: patch versions in the fixture repo. v1.34.4 exists upstream but is not configured
# (freshness: one patch behind); v1.36.6 is unknown to the built-in table.
MINORS = {
    "v1.34": ("1.34.3", "1.34.4"),
    "v1.35": ("1.35.8", "1.35.9"),
    "v1.36": ("1.36.5", "1.36.6"),
}
CRIO = {"v1.34": "1.34.2", "v1.35": "1.35.1", "v1.36": "1.36.0"}
RANGE = "v1.34.3..v1.36.6"
# What the stand-in kubeadm v1.36.6 prints (tags the table has for no version).
V1366 = [
    "registry.k8s.io/kube-apiserver:v1.36.6",
    "registry.k8s.io/kube-controller-manager:v1.36.6",
    "registry.k8s.io/kube-scheduler:v1.36.6",
    "registry.k8s.io/kube-proxy:v1.36.6",
    "registry.k8s.io/coredns/coredns:v1.14.3",
    "registry.k8s.io/pause:3.10.2",
    "registry.k8s.io/etcd:3.6.9-0",
]
# kubeadm v1.36.5's stand-in disagrees with the table on etcd (for `kubeadm_images: binary`).
V1365 = [i.replace("v1.36.6", "v1.36.5").replace("3.6.9-0", "3.6.8-1") for i in V1366]
UNMIRRORED = "registry.k8s.io/etcd:3.6.6-0"  # v1.35.9's etcd, deliberately absent upstream


@dataclass
class World:
    root: Path
    key: GpgKey
    server: UpstreamServer
    registry: RegistryProcess
    expiring_key: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("k8s-upstream")
    key = make_gpg_key(root / "key")
    # pkgs.k8s.io publishes one key per minor: v1.36 is signed with another one here, so a
    # mirror keeping one key file per repo id (not per minor) fails dnf on one of them.
    minor_key = make_gpg_key(root / "key-v1.36", "Kubernetes v1.36 Key")
    work = root / "work"
    for minor, versions in MINORS.items():
        lists = {"1.36.6": V1366, "1.36.5": V1365} if minor == "v1.36" else {}
        minor_repo(root, minor_key if minor == "v1.36" else key, versions, work, lists)
        crio_repo(root, key, minor, CRIO[minor], work)
    expiring = make_expiring_key(root / "expiring", days=10)
    shutil.copyfile(expiring, root / "expiring.asc")
    registry = start_registry(root / "registry")
    wanted = [
        *kubeadm_images.image_set("v1.34.3").images(),
        *kubeadm_images.image_set("v1.35.9").images(),
        *V1366,
    ]
    push_images(registry, [r for r in dict.fromkeys(wanted) if r != UNMIRRORED], work)
    with UpstreamServer(root) as server:
        yield World(root, key, server, registry, expiring)
    registry.stop()
    kill_agent(key)
    kill_agent(minor_key)


@dataclass
class Node:
    dir: Path
    port: int
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    images_sync: subprocess.CompletedProcess[str] | None = None

    @property
    def config(self) -> Path:
        return self.dir / "mirror.yaml"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cfg(self) -> Config:
        return load_config(self.config)

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mirror", "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.dir,
        )

    def serve(self) -> None:
        log = (self.dir / "serve.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "mirror", "-c", str(self.config), "serve"]
            + ["--bind", f"127.0.0.1:{self.port}", "--workers", "2"],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.dir,
            start_new_session=True,
        )
        self.procs.append(proc)
        wait_http(self.base_url + "/healthz")


def write_node(directory: Path, world: World, extra: str = "") -> Node:
    repos = directory / "repos"
    repos.mkdir(parents=True)
    up = world.server.url
    k8s = f"{up}/core:/stable:/$kubernetes_minor/rpm"
    (repos / "kubernetes.repo").write_text(
        f"[kubernetes]\nname=Kubernetes\nbaseurl={k8s}/\nenabled=1\ngpgcheck=1\n"
        f"repo_gpgcheck=1\ngpgkey={k8s}/repodata/repomd.xml.key\n"
        "exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n"
    )
    crio = f"{up}/isv:/cri-o:/stable:/$kubernetes_minor/rpm"
    # A second key that expires in 10 days rides along in CRI-O's gpgkey list.
    (repos / "cri-o.repo").write_text(
        f"[cri-o]\nname=CRI-O\nbaseurl={crio}/\nenabled=1\ngpgcheck=1\n"
        f"gpgkey={crio}/repodata/repomd.xml.key {up}/expiring.asc\n"
    )
    write_registries_conf(directory / "registries.conf", world.registry)
    node = Node(directory, free_port())
    node.config.write_text(
        f"data_dir: ./data\nbase_url: {node.base_url}\nrepos_dir: ./repos\nimages_file: null\n"
        f"http_timeout: 10\nhttp_retries: 1\nkubernetes_versions: ['{RANGE}']\n"
        f"registry: {{url: '127.0.0.1:{free_port()}'}}\n"
        "upstream: {registries_conf: ./registries.conf}\n" + extra
    )
    return node


@pytest.fixture(scope="module")
def synced(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """Repos synced first (so kubeadm rpms are mirrored), then images."""
    node = write_node(tmp_path_factory.mktemp("k8s-mirror"), world)
    repos = node.run("sync", "--only", "repos")
    assert repos.returncode == 0, repos.stderr[-4000:]
    node.images_sync = node.run("sync", "--only", "images")
    yield node
    for proc in node.procs:
        stop_process(proc)


def test_every_minor_is_published_per_value(synced: Node) -> None:
    repos = synced.dir / "data" / "repos"
    for minor in MINORS:
        assert (repos / "kubernetes" / minor / "repodata" / "repomd.xml").is_file()
        assert (repos / "cri-o" / minor / "repodata" / "repomd.xml").is_file()
    assert not (repos / "kubernetes" / "repodata").exists()


def test_range_expands_to_both_ends_and_newest_middle_patch(synced: Node) -> None:
    resolution = resolve_versions(synced.cfg())
    # v1.35.9, not v1.35.8: the newest kubeadm of the middle minor in the published primary.
    assert resolution.versions == ("v1.34.3", "v1.35.9", "v1.36.6")
    assert resolution.problems == ()


def test_unknown_patch_image_list_comes_from_its_kubeadm_rpm(synced: Node) -> None:
    cfg = synced.cfg()
    cached = json.loads((cfg.state_root / "kubeadm" / "v1.36.6.json").read_text())
    assert cached["images"] == V1366
    assert cached["rpm"] == "kubeadm-1.36.6-150500.1.1.x86_64"
    found = image_list(cfg, "v1.36.6", run_kubeadm=False)  # the cache, as web workers read it
    assert found.images == tuple(V1366) and found.source.startswith("kubeadm ")
    # A version the table knows, in the default mode: the table (its rpm has no binary).
    assert image_list(cfg, "v1.35.9").source == "table"
    assert nodeconfig.pause_image(cfg, "v1.36.6").endswith("/registry.k8s.io/pause:3.10.2")


def test_images_sync_copies_kubeadm_list_and_names_the_missing_one(synced: Node) -> None:
    proc = synced.images_sync
    assert proc is not None and proc.returncode == 1, proc.stderr[-4000:]
    failed = [line for line in proc.stderr.splitlines() if line.startswith("  ")]
    assert len(failed) == 1 and UNMIRRORED in failed[0], proc.stderr[-4000:]
    synced.serve()  # starts the embedded registry again
    cfg = synced.cfg()
    for ref in V1366:
        assert raw_manifest(f"{cfg.registry.url}/{ref}")  # in our registry, from kubeadm's list
    assert raw_manifest(f"{cfg.registry.url}/registry.k8s.io/coredns:v1.14.3")  # kubeadm alias


def test_dnf_installs_each_minors_kubeadm_from_the_served_repo(
    synced: Node, tmp_path: Path
) -> None:
    if not synced.procs:
        synced.serve()
    served = requests.get(f"{synced.base_url}/repofiles/mirror.repo", timeout=10).text
    assert f"baseurl={synced.base_url}/repos/kubernetes/$kubernetes_minor/" in served
    assert f"baseurl={synced.base_url}/repos/cri-o/$kubernetes_minor/" in served
    assert f"gpgkey={synced.base_url}/keys/kubernetes/$kubernetes_minor.gpg" in served
    keys = synced.dir / "data" / "keys" / "kubernetes"
    assert (keys / "v1.36.gpg").read_bytes() != (keys / "v1.35.gpg").read_bytes()
    with DnfRoot(tmp_path / "dnf") as dnf:
        (dnf.reposdir / "mirror.repo").write_text(served)
        vars_file = dnf.root / "etc" / "dnf" / "vars" / "kubernetes_minor"
        vars_file.parent.mkdir(parents=True)
        for minor, versions in MINORS.items():
            # The upgrade path on a node: change the variable, then upgrade the packages.
            vars_file.write_text(minor + "\n")
            verb = "install" if minor == "v1.34" else "upgrade"
            dnf.run("--disableexcludes=kubernetes", verb, "kubeadm", "kubelet", "kubectl", "cri-o")
            installed = dnf.installed()
            newest = versions[-1]
            assert any(n.startswith(f"kubeadm-{newest}-") for n in installed), (minor, installed)
            assert any(n.startswith(f"cri-o-{CRIO[minor]}-") for n in installed), installed


def test_bootstrap_writes_the_minor_and_installs_from_its_repo(
    synced: Node, tmp_path: Path
) -> None:
    from tests.test_bootstrap import Node as BootNode
    from tests.test_bootstrap import ok

    if not synced.procs:
        synced.serve()
    script = requests.get(f"{synced.base_url}/bootstrap.sh", timeout=10).text
    assert "DEFAULT_K8S_VERSION='v1.34.3'" in script  # the range's lower end
    cache = Path(tempfile.mkdtemp(prefix="k8sbs-", dir="/tmp"))
    try:
        node = BootNode(script, tmp_path / "root", cache)
        out = ok(node.run("--runtime", "cri-o", "--kubernetes-version", "1.35.9"))
        assert "install kubeadm-1.35.9 kubelet-1.35.9 kubectl-1.35.9 cri-o" in out
        vars_file = node.root / "etc" / "dnf" / "vars" / "kubernetes_minor"
        assert vars_file.read_text() == "v1.35\n"
        installed = subprocess.run(
            ["rpm", "--root", str(node.root), "-q", "kubeadm", "cri-o"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "kubeadm-1.35.9-" in installed and f"cri-o-{CRIO['v1.35']}-" in installed
    finally:
        for pubring in cache.glob("*/pubring"):
            subprocess.run(
                ["gpgconf", "--homedir", str(pubring), "--kill", "gpg-agent"],
                capture_output=True,
                check=False,
            )
        shutil.rmtree(cache, ignore_errors=True)


def test_upgrade_plan_reports_the_missing_image(synced: Node) -> None:
    from mirror.cli import main

    if "upgrade-plan" not in main.commands:  # what the lead's one line in mirror/cli.py does
        main.add_command(upgrade_plan)
    runner = CliRunner()
    args = ["-c", str(synced.config), "upgrade-plan", "--from", "v1.34.3", "--to", "v1.36.6"]
    result = runner.invoke(main, args)
    assert result.exit_code == 1, result.output
    out = result.output
    assert "step 1: v1.34.3 -> v1.35.9" in out and "step 2: v1.35.9 -> v1.36.6" in out
    assert f"MISSING  {UNMIRRORED}" in out
    assert "ok       kubeadm-1.35.9-150500.1.1.x86_64" in out
    assert "ok       registry.k8s.io/etcd:3.6.9-0" in out
    # The later step alone has everything: exit 0.
    ok = runner.invoke(main, [*args[:4], "v1.35.9", "--to", "v1.36.6", "--json"])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.output)
    assert doc["ok"] and [s["to_version"] for s in doc["steps"]] == ["v1.36.6"]
    # Same plan as data for the status page, per configured range.
    (plan,) = configured_plans(synced.cfg())
    assert plan["range"] == RANGE and not plan["ok"]
    assert any(UNMIRRORED in p for s in plan["steps"] for p in s["problems"])
    # A minor with nothing mirrored cannot be stepped over.
    gap = make_plan(synced.cfg(), "v1.36.6", "v1.38.0")
    assert not gap.ok and any("v1.37" in p for p in gap.problems)


def test_freshness_patch_behind_and_expiring_key(synced: Node) -> None:
    cfg = synced.cfg()
    patches = {p.minor: p for p in freshness.patch_freshness(cfg)}
    assert patches["v1.34"].newest_mirrored == "v1.34.4"
    assert patches["v1.34"].newest_configured == "v1.34.3" and patches["v1.34"].behind == 1
    assert patches["v1.36"].behind == 0
    keys = [k for k in freshness.key_expiries(cfg) if k.repo == "cri-o"]
    levels = sorted(k.level for k in keys)
    assert levels == ["ok", "warning"]  # the fixture key never expires; the other in 10 days
    soon = next(k for k in keys if k.level == "warning")
    assert soon.days_left in (9, 10)
    lines = freshness.status_lines(cfg)
    warned = [line for line in lines if line.startswith("WARNING: gpg key of cri-o")]
    assert len(warned) == 1 and f"in {soon.days_left} days" in warned[0], lines
    assert any("kubernetes v1.34" in line and "behind 1" in line for line in lines), lines

    class _Collector:
        def collect(self):  # type: ignore[no-untyped-def]
            yield from freshness.metric_families(cfg)

    registry = CollectorRegistry()
    registry.register(_Collector())
    text = generate_latest(registry).decode()
    assert 'mirror_kubernetes_patch_behind{minor="v1.34"} 1.0' in text
    labels = f'fingerprint="{soon.fingerprint}",repo="cri-o"'  # sorted by the exposition
    assert f"mirror_gpg_key_expiry_timestamp_seconds{{{labels}}}" in text
    assert f'mirror_kubernetes_upgrade_plan_ok{{range="{RANGE}"}} 0.0' in text


def test_binary_mode_prefers_kubeadm_and_warns_on_disagreement(
    synced: Node, tmp_path: Path
) -> None:
    cfg = synced.cfg().model_copy(
        update={"kubeadm_images": "binary", "data_dir": tmp_path / "data"}
    )
    # Same published repos, a fresh state dir: nothing cached, so kubeadm really runs.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "repos").symlink_to(synced.dir / "data" / "repos")
    found = image_list(cfg, "v1.36.5")
    assert found.images == tuple(V1365) and found.source.startswith("kubeadm kubeadm-1.36.5")
    assert found.warning is not None and "3.6.8-1" in found.warning and "3.6.8-0" in found.warning
    assert (tmp_path / "data" / "state" / "kubeadm" / "v1.36.5.json").is_file()
    # v1.35.9's rpm has no /usr/bin/kubeadm: the table, with the reason.
    fallback = image_list(cfg, "v1.35.9")
    assert fallback.source == "table"
    assert fallback.warning is not None and "has no /usr/bin/kubeadm" in fallback.warning


def test_version_nobody_knows_fails_alone_with_one_line(synced: Node) -> None:
    cfg = synced.cfg().model_copy(update={"kubernetes_versions": ("v1.36.7", "v1.35.9")})
    plan = nodeconfig.image_plan(cfg)
    assert len(plan.failures) == 1
    assert "v1.36.7" in plan.failures[0] and "no kubeadm rpm of that version" in plan.failures[0]
    assert {j.source.upstream for j in plan.jobs} >= set(
        kubeadm_images.image_set("v1.35.9").images()
    )
    # A real sync: that version's images fail with that one line, the others sync.
    other = synced.dir / "unknown.yaml"
    text = synced.config.read_text().replace(f"['{RANGE}']", "['v1.36.7', 'v1.36.6']")
    other.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "mirror", "-c", str(other), "sync", "--only", "images"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=synced.dir,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    failed = [line for line in proc.stderr.splitlines() if line.startswith("  ")]
    assert len(failed) == 1, proc.stderr[-3000:]
    assert "v1.36.7" in failed[0] and "no kubeadm rpm of that version" in failed[0]
    assert "images: 7 ok" in proc.stderr  # v1.36.6's images, from its kubeadm
