"""Images found in mirrored files and charts join the image set, with their sources
(`mirror images list --why`), through the real CLI against loopback upstreams.

The copy of found images into a registry is the same code path as every other image
(tests/test_images_sync.py, tests/test_images_e2e.py); here: planning and provenance."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Mirror, Upstream, free_port
from tests.fixtures import GpgKey, UpstreamServer
from tests.fixtures import manifests as mf
from tests.fixtures.helmrepo import HelmRepo


def test_images_list_why_names_every_source(tmp_path: Path, gpg_key: GpgKey) -> None:
    root = tmp_path / "upstream"
    mf.write_upstream(root)
    charts = HelmRepo(root / "charts" / "web")
    charts.add(
        "web",
        "1.2.0",
        images=["quay.io/example/web:1.2.0"],
        values={"sidecar": {"image": {"repository": "nginx", "tag": "1.27"}}},
    )
    charts.write_index()
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "images.txt").write_text("# extra\n\nnginx:1.27\nbusybox:1.36\n")
    with UpstreamServer(root) as server:
        m = Mirror(tmp_path / "mirror", Upstream(root, server, gpg_key), free_port())
        m.extra_config = (
            "kubernetes_versions: [v1.28.4]\n"
            "images_file: ./images.txt\n"
            f"files:\n  - {{url: '{server.url}/manifests/calico-node.yml', path: calico.yml}}\n"
            f"charts:\n  - {{repo: '{server.url}/charts/web', name: web, versions: ['1.2.0']}}\n"
        )
        m.write()
        for kind in ("files", "charts"):
            synced = m.sync("--only", kind)
            assert synced.returncode == 0, synced.stderr[-2000:]
        listed = m.run("images", "list", "--why")
        from mirror.config import load_config
        from mirror.nodeconfig import mirrored_hosts

        hosts = mirrored_hosts(load_config(m.config))
    assert listed.returncode == 0, listed.stderr
    why = dict(line.split("  ", 1) for line in listed.stdout.splitlines())
    assert why["registry.k8s.io/pause:3.9"] == "(kubeadm v1.28.4)"
    # images.txt:3 and the chart's values.yaml name the same image: one job, both sources.
    assert why["docker.io/library/nginx:1.27"] == ("(images.txt:3; charts:web-1.2.0 (values.yaml))")
    assert why["docker.io/library/busybox:1.36"] == "(images.txt:4)"
    assert why["docker.io/calico/node:v3.28.2"] == "(files:calico.yml)"
    assert why["quay.io/example/web:1.2.0"] == "(charts:web-1.2.0 (Chart.yaml))"
    assert list(why).count("docker.io/calico/cni:v3.28.2") == 1
    # containerd's hosts.toml covers the hosts of found images too.
    assert {"quay.io", "docker.io", "registry.k8s.io"} <= set(hosts)
