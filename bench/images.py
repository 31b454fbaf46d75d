"""images scenarios: `mirror sync --only images` vs `skopeo sync --all --preserve-digests`.

The source is a loopback CNCF distribution registry (`docker-registry serve`) holding
multi-arch images (linux/amd64 + linux/arm64, gzip layers) built by tests/fixtures/registry.py
under their real names (127.0.0.1:SRC/docker.io/library/nginx:1.25, ...). Each run gives each
tool a fresh, empty destination registry, then:

- cold   every image copied;
- no-op  the same command again (nothing changed upstream).

Blob and manifest requests are counted in the source registry's access log. Every step is
verified through the destination's registry API: each tag resolves to upstream's index digest,
every child manifest is there byte for byte and every blob it names is present with its size.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from bench.common import (
    Checks,
    RunStats,
    Section,
    SummaryRow,
    log,
    markdown_table,
    median,
    mirror_cmd,
    mirror_env,
    ordered,
    ratio,
    run_measured,
    same,
    settle,
    shown,
    span,
)
from tests.fixtures.registry import (
    RegistryProcess,
    push_images,
    start_registry,
    write_registries_conf,
)

# Interleaved hosts, so any prefix (--quick uses 2) mixes registries.
IMAGES = (
    "registry.k8s.io/pause:3.9",
    "docker.io/library/nginx:1.25",
    "quay.io/coreos/etcd:v3.5.0",
    "registry.k8s.io/kube-apiserver:v1.28.4",
    "docker.io/calico/node:v3.26.1",
    "quay.io/cilium/cilium:v1.14.0",
    "registry.k8s.io/kube-controller-manager:v1.28.4",
    "docker.io/calico/cni:v3.26.1",
    "quay.io/cilium/operator:v1.14.0",
    "registry.k8s.io/kube-scheduler:v1.28.4",
    "registry.k8s.io/kube-proxy:v1.28.4",
    "registry.k8s.io/coredns/coredns:v1.10.1",
)
SCENARIOS = ("cold", "no-op")
ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


@dataclass(frozen=True)
class ImageOptions:
    images: int = 12
    runs: int = 3


def split_ref(ref: str) -> tuple[str, str]:
    repo, tag = ref.rsplit(":", 1)
    return repo, tag


@dataclass
class ImageTool:
    name: str  # "mirror" or "skopeo"
    base: Path
    source: RegistryProcess
    dest: RegistryProcess
    refs: tuple[str, ...]
    python: str = sys.executable
    src: Path = Path()

    def prepare(self) -> None:
        self.base.mkdir(parents=True)
        if self.name == "mirror":
            (self.base / "repos.d").mkdir()
            (self.base / "images.txt").write_text("".join(f"{r}\n" for r in self.refs))
            write_registries_conf(self.base / "registries.conf", self.source)
            raw = {
                "data_dir": "./data",
                "repos_dir": "./repos.d",
                "images_file": "./images.txt",
                "platforms": "all",
                "registry": {"url": self.dest.host, "embedded": False},
                "upstream": {"registries_conf": "./registries.conf"},
            }
            (self.base / "mirror.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        else:
            images: dict[str, list[str]] = {}
            for ref in self.refs:
                repo, tag = split_ref(ref)
                images.setdefault(repo, []).append(tag)
            doc = {self.source.host: {"tls-verify": False, "images": images}}
            (self.base / "sync.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    def command(self) -> list[str]:
        if self.name == "mirror":
            return mirror_cmd(self.python, self.base / "mirror.yaml", "sync", "--only", "images")
        return [
            "skopeo",
            "sync",
            "--all",
            "--preserve-digests",
            "--src",
            "yaml",
            "--dest",
            "docker",
            "--dest-tls-verify=false",
            str(self.base / "sync.yaml"),
            self.dest.host,
        ]

    def dest_repo(self, ref: str) -> str:
        """Where the tool puts ref: mirror keeps the full name (docker.io/library/nginx);
        `skopeo sync` (without --scoped) keeps only the last path component (nginx)."""
        repo = split_ref(ref)[0]
        return repo if self.name == "mirror" else repo.rsplit("/", 1)[-1]

    @property
    def env(self) -> dict[str, str] | None:
        return mirror_env(self.src) if self.name == "mirror" else None

    def shown(self) -> str:
        return shown(self.command(), self.base, self.src if self.name == "mirror" else None)


def verify(checks: Checks, tool: ImageTool, digests: dict[str, str]) -> None:
    """Every ref is in tool.dest under its real name with upstream's digests, whole."""
    with requests.Session() as http:
        base = f"http://{tool.dest.host}/v2"
        for ref, want in digests.items():
            repo, tag = tool.dest_repo(ref), split_ref(ref)[1]
            reply = http.get(
                f"{base}/{repo}/manifests/{tag}", headers={"Accept": ACCEPT}, timeout=10
            )
            checks.ok(
                "images",
                reply.status_code == 200,
                f"{tool.name}: {tool.dest.host}/{repo}:{tag} ({ref}): HTTP {reply.status_code}",
            )
            got = "sha256:" + hashlib.sha256(reply.content).hexdigest()
            checks.ok(
                "images",
                got == want and reply.headers.get("Docker-Content-Digest") == want,
                f"{tool.name}: {ref} is {got}, upstream {want}",
            )
            index = json.loads(reply.content)
            checks.ok(
                "images",
                len(index.get("manifests", [])) >= 2,
                f"{tool.name}: {ref} is not a multi-arch index",
            )
            for desc in index["manifests"]:
                child = http.get(
                    f"{base}/{repo}/manifests/{desc['digest']}",
                    headers={"Accept": ACCEPT},
                    timeout=10,
                )
                body_digest = "sha256:" + hashlib.sha256(child.content).hexdigest()
                checks.ok(
                    "images",
                    child.status_code == 200 and body_digest == desc["digest"],
                    f"{tool.name}: {ref} platform manifest {desc['digest']} missing",
                )
                manifest = json.loads(child.content)
                for blob in [manifest["config"], *manifest["layers"]]:
                    head = http.head(f"{base}/{repo}/blobs/{blob['digest']}", timeout=10)
                    size = head.headers.get("Content-Length")
                    checks.ok(
                        "images",
                        head.status_code == 200 and size == str(blob["size"]),
                        f"{tool.name}: {ref} blob {blob['digest']} missing or wrong size",
                    )


@dataclass
class Sample:
    stats: RunStats
    requests: int  # on the source registry
    manifests: int
    blob_requests: int  # GET + HEAD of /blobs/ on the source
    blob_gets: int


def measure(checks: Checks, tool: ImageTool, digests: dict[str, str], log_file: Path) -> Sample:
    settle()
    mark = tool.source.mark()
    stats = run_measured(tool.command(), log_file, tool.env, tool.base, name=tool.name)
    reqs = tool.source.requests(mark)  # waits 0.2 s for the log to be written
    blobs = [r for r in reqs if "/blobs/" in r.path]
    verify(checks, tool, digests)
    return Sample(
        stats,
        len(reqs),
        sum(1 for r in reqs if "/manifests/" in r.path),
        len(blobs),
        sum(1 for r in blobs if r.method == "GET"),
    )


def run_images(work: Path, opts: ImageOptions, checks: Checks, python: str, src: Path) -> Section:
    refs = IMAGES[: opts.images]
    section = Section("images")
    samples: dict[tuple[str, str], list[Sample]] = {}
    started = time.perf_counter()
    source = start_registry(work / "source")
    try:
        digests = push_images(source, refs, work / "build", workers=2)
        log(f"images: pushed {len(refs)} multi-arch images in {time.perf_counter() - started:.1f}s")
        for run in range(opts.runs):
            run_dir = work / f"run{run}"
            dests: list[RegistryProcess] = []
            try:
                tools = []
                for name in ordered(["mirror", "skopeo"], run):
                    dest = start_registry(run_dir / f"dest-{name}")
                    dests.append(dest)
                    tool = ImageTool(name, run_dir / name, source, dest, refs, python, src)
                    tool.prepare()
                    tools.append(tool)
                    section.commands[f"images {name}"] = tool.shown()
                for scenario in SCENARIOS:
                    for tool in tools:
                        label = f"run{run}-{scenario}-{tool.name}"
                        s = measure(checks, tool, digests, work / "logs" / f"{label}.log")
                        samples.setdefault((scenario, tool.name), []).append(s)
                        log(
                            f"images run {run + 1}/{opts.runs} {scenario:6} {tool.name:6} "
                            f"{s.stats.wall:6.2f}s cpu {s.stats.cpu:5.2f}s, source: "
                            f"{s.manifests} manifest / {s.blob_requests} blob requests, "
                            "verified"
                        )
            finally:
                for dest in dests:
                    dest.stop()
            shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        source.stop()
    section.rows = summary(samples, len(refs))
    section.details.append(detail_table(samples, len(refs), opts.runs))
    return section


def summary(samples: dict[tuple[str, str], list[Sample]], count: int) -> list[SummaryRow]:
    rows = []
    for scenario in SCENARIOS:
        m, p = samples[(scenario, "mirror")], samples[(scenario, "skopeo")]
        mt, pt = median(s.stats.wall for s in m), median(s.stats.wall for s in p)
        r = ratio(mt, pt)
        blobs = max(s.blob_requests for s in m)
        notes = (
            f"cpu {median(s.stats.cpu for s in m):.2f} s vs "
            f"{median(s.stats.cpu for s in p):.2f} s; source blob requests "
            f"{same([s.blob_requests for s in m])} vs {same([s.blob_requests for s in p])}"
        )
        if scenario == "cold":
            name, target = f"images cold, {count} multi-arch images", "≤ 0.8×"
            met = r is not None and r <= 0.8
        else:
            name, target = "images no-op", "≤ 0.3×, no blob request"
            met = r is not None and r <= 0.3 and blobs == 0
        rows.append(SummaryRow(name, f"{mt:.2f} s", f"{pt:.2f} s (skopeo)", r, target, met, notes))
    return rows


def detail_table(samples: dict[tuple[str, str], list[Sample]], count: int, runs: int) -> str:
    header = [
        "scenario",
        "tool",
        "median s",
        "min-max s",
        "cpu s",
        "peak RSS MB",
        "source requests",
        "manifest req",
        "blob req",
        "blob GETs",
    ]
    rows = []
    for scenario in SCENARIOS:
        for tool in ("mirror", "skopeo"):
            ss = samples[(scenario, tool)]
            secs = [s.stats.wall for s in ss]
            rows.append(
                [
                    f"images {scenario}",
                    tool,
                    f"{median(secs):.2f}",
                    span(secs),
                    f"{median(s.stats.cpu for s in ss):.2f}",
                    f"{median(s.stats.maxrss_mb for s in ss):.0f}",
                    same([s.requests for s in ss]),
                    same([s.manifests for s in ss]),
                    same([s.blob_requests for s in ss]),
                    same([s.blob_gets for s in ss]),
                ]
            )
    note = (
        f"{count} images × 2 platforms, {runs} run(s), each into fresh destination "
        "registries; requests counted in the source registry's access log. cpu = the "
        "tool's process tree (skopeo children included), not the registries'."
    )
    return (
        "### images: mirror sync vs skopeo sync\n\n" + markdown_table(header, rows) + "\n\n" + note
    )
