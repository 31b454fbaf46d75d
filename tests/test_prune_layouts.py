"""`mirror prune` of images named in each of the registry's layouts, and with TLS on.

Real parts as in tests/test_prune.py: an upstream distribution registry with images pushed by
skopeo, `mirror sync --only images` into the embedded registry (the distro's docker-registry,
started by the code), the config shrunk, then `mirror prune`; what stays and what went is
checked with skopeo against the embedded registry served by `mirror registry`.

- registry.url with a path (`127.0.0.1:PORT/mirror`: distribution accepts nested names) and
  `layout: flat` (`127.0.0.1:PORT/team-tool:1`): both are this mirror's names
  (mirror.images.refs.RegistryLayout), so both are pruned, not left alone;
- `tls: {mode: generate}`: `--dry-run` while the embedded registry serves HTTPS with the
  generated CA lists the removals; a real prune with it stopped removes them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from mirror.diskuse import tree_bytes
from tests.conftest import free_port, stop_process
from tests.fixtures.registry import (
    RegistryProcess,
    manifest_digest,
    push_image,
    start_registry,
    wait_registry,
    write_mirror_config,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("skopeo") and shutil.which("docker-registry")),
        reason="skopeo and docker-registry are needed",
    ),
]
KEEP = "docker.io/library/app:1"
DROP = "docker.io/library/app:2"
DROP_REPO = "quay.io/team/tool:1"
ALIAS = "docker.io/library/app:alias"  # same digest as app:1: its tag stays, nothing deleted


def run_mirror(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mirror", "-c", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cfg.parent,
    )


@pytest.fixture
def images_upstream(tmp_path: Path) -> Iterator[tuple[RegistryProcess, dict[str, str]]]:
    registry = start_registry(tmp_path / "upstream")
    try:
        work = tmp_path / "build"
        digests = {ref: push_image(registry, ref, work) for ref in (KEEP, DROP, DROP_REPO)}
        digests[ALIAS] = push_image(registry, ALIAS, work, seed=KEEP)
        yield registry, digests
    finally:
        registry.stop()


@contextmanager
def embedded_registry(cfg: Path, host: str, scheme: str = "http") -> Iterator[None]:
    """`mirror registry` (what mirror-registry.service runs) serving the embedded storage."""
    service = subprocess.Popen(
        [sys.executable, "-m", "mirror", "-c", str(cfg), "registry"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=cfg.parent,
    )
    try:
        wait_registry(host, scheme=scheme)
        yield
    finally:
        stop_process(service)


def _exists(ref: str, *args: str) -> bool:
    return (
        subprocess.run(
            ["skopeo", "inspect", "--raw", "--no-tags", *args, f"docker://{ref}"],
            capture_output=True,
            timeout=60,
        ).returncode
        == 0
    )


@pytest.mark.parametrize(
    ("path", "layout", "names"),
    [
        ("/mirror", "nested", {KEEP: KEEP, DROP: DROP, DROP_REPO: DROP_REPO, ALIAS: ALIAS}),
        ("", "flat", {KEEP: "app:1", DROP: "app:2", DROP_REPO: "team-tool:1", ALIAS: "app:alias"}),
        ("/k8s/mirror", "flat", {KEEP: "app:1", DROP: "app:2", DROP_REPO: "team-tool:1",
                                 ALIAS: "app:alias"}),
    ],
    ids=["url-path", "flat", "flat-url-path"],
)
def test_prune_removes_images_named_under_a_url_path_or_flat(
    tmp_path: Path,
    images_upstream: tuple[RegistryProcess, dict[str, str]],
    path: str,
    layout: str,
    names: dict[str, str],
) -> None:
    registry, digests = images_upstream
    host = f"127.0.0.1:{free_port()}"
    url = host + path
    cfg = write_mirror_config(
        tmp_path / "m", registry, f"{KEEP}\n{DROP}\n{DROP_REPO}\n{ALIAS}\n", [], "all",
        url=url, layout=layout,
    )
    proc = run_mirror(cfg, "sync", "--only", "images")
    assert proc.returncode == 0, proc.stderr[-3000:]
    local = {ref: f"{url}/{name}" for ref, name in names.items()}
    storage = cfg.parent / "data" / "registry" / "storage"
    full = tree_bytes(storage)

    (cfg.parent / "images.txt").write_text(f"{KEEP}\n")
    proc = run_mirror(cfg, "prune", "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "left alone" not in proc.stdout
    for ref in (DROP, DROP_REPO):
        assert f"would remove image {local[ref]} {digests[ref]} " in proc.stdout, proc.stdout
    assert f"keep image {local[ALIAS]}: {digests[KEEP]} is also {local[KEEP]}, " in proc.stdout
    assert f"{local[KEEP]} " not in proc.stdout.replace(f"is also {local[KEEP]}, ", "")
    assert "would remove 2 images, 0 untagged manifests" in proc.stdout.splitlines()[-1]

    proc = run_mirror(cfg, "prune")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "registry garbage collection:" in proc.stdout
    assert "prune: removed 2 images, 0 untagged manifests" in proc.stdout.splitlines()[-1]
    assert tree_bytes(storage) < full
    with embedded_registry(cfg, host):
        assert manifest_digest(local[KEEP]) == digests[KEEP]
        assert manifest_digest(local[ALIAS]) == digests[KEEP]
        for ref in (DROP, DROP_REPO):
            assert not _exists(local[ref], "--tls-verify=false")
    status = json.loads(run_mirror(cfg, "status", "--json").stdout)
    assert {row["upstream"] for row in status["images"]} == {KEEP}
    again = run_mirror(cfg, "prune")
    assert "removed 0 images" in again.stdout.splitlines()[-1], again.stdout + again.stderr


def test_prune_with_tls_on(
    tmp_path: Path, images_upstream: tuple[RegistryProcess, dict[str, str]]
) -> None:
    """The embedded registry speaks HTTPS only (the generated CA): a dry run while it runs
    reads it verified with that CA; the prune itself, with it stopped, goes through prune's
    private plain-HTTP loopback instance of the same storage."""
    registry, digests = images_upstream
    host = f"127.0.0.1:{free_port()}"
    cfg = write_mirror_config(tmp_path / "m", registry, f"{KEEP}\n{DROP}\n", [], "all", url=host)
    raw = yaml.safe_load(cfg.read_text())
    raw["base_url"] = f"https://127.0.0.1:{free_port()}"
    raw["tls"] = {"mode": "generate"}
    cfg.write_text(yaml.safe_dump(raw))
    proc = run_mirror(cfg, "sync", "--only", "images")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ca = cfg.parent / "data" / "tls" / "ca" / "ca.crt"
    assert ca.is_file()
    (cfg.parent / "images.txt").write_text(f"{KEEP}\n")

    with embedded_registry(cfg, host, scheme="https"):
        plain = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://{host}/v2/"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert plain.stdout != "200"  # TLS only: the dry run must have used https and the CA
        proc = run_mirror(cfg, "prune", "--dry-run")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"would remove image {host}/{DROP} {digests[DROP]} " in proc.stdout
        assert "would remove 1 image, 0 untagged manifests" in proc.stdout.splitlines()[-1]
        refused = run_mirror(cfg, "prune")  # running: garbage collection needs it stopped
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert "nothing was removed" in refused.stderr

    proc = run_mirror(cfg, "prune")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"remove image {host}/{DROP} {digests[DROP]} " in proc.stdout
    assert "registry garbage collection:" in proc.stdout
    with embedded_registry(cfg, host, scheme="https"):
        cert_dir = tmp_path / "certs"
        cert_dir.mkdir()
        shutil.copyfile(ca, cert_dir / "ca.crt")
        verified = ("--cert-dir", str(cert_dir))
        assert _exists(f"{host}/{KEEP}", *verified)
        assert not _exists(f"{host}/{DROP}", *verified)
