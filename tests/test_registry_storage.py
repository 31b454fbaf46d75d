"""registry.storage is handed to distribution's `storage:` as written (e.g. its s3 driver).

No S3 endpoint exists here: the test checks the config.yml the embedded registry is started
with, not a registry running on object storage (deploy/README.md says so too).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mirror.config import load_config
from mirror.images.registry import write_config


def _config(tmp_path: Path, registry: str) -> Path:
    path = tmp_path / "mirror.yaml"
    path.write_text(f"data_dir: ./data\nregistry:\n{registry}")
    return path


def test_storage_passthrough_reaches_registry_config(tmp_path: Path) -> None:
    cfg = load_config(
        _config(
            tmp_path,
            "  url: 127.0.0.1:5999\n"
            "  storage:\n"
            "    s3: {region: us-east-1, bucket: mirror-images, regionendpoint: 'http://minio:9000'}\n"
            "    redirect: {disable: true}\n"
            "    delete: {enabled: false}\n",
        )
    )
    written = yaml.safe_load(write_config(cfg).read_text())
    assert written["storage"] == {
        "s3": {
            "region": "us-east-1",
            "bucket": "mirror-images",
            "regionendpoint": "http://minio:9000",
        },
        "redirect": {"disable": True},
        # deletes stay on whatever the passthrough says: moved tags need them
        "delete": {"enabled": True},
    }
    assert not (tmp_path / "data" / "registry" / "storage").exists()
    assert written["http"]["addr"] == ":5999"


def test_default_storage_is_filesystem_under_data_dir(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, "  url: 127.0.0.1:5999\n"))
    written = yaml.safe_load(write_config(cfg).read_text())
    root = tmp_path / "data" / "registry" / "storage"
    assert written["storage"] == {
        "filesystem": {"rootdirectory": str(root)},
        "delete": {"enabled": True},
    }
    assert root.is_dir()
