"""`mirror prune` with registry.storage set (distribution's S3 driver, say): the images live
in a bucket, not under data_dir/registry/storage, so prune cannot plan them from the
filesystem storage's index. It says so and keeps the image records; before, every record of
an image no longer configured was dropped as "not in the registry any more" while the bucket
kept the image. No S3 here, and none needed: prune must not reach the storage at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mirror import state
from mirror.config import load_config
from tests.conftest import free_port


def test_prune_leaves_images_and_their_records_alone_with_registry_storage(
    tmp_path: Path,
) -> None:
    (tmp_path / "repos").mkdir()
    (tmp_path / "images.txt").write_text("docker.io/library/app:1\n")
    url = f"127.0.0.1:{free_port()}"
    (tmp_path / "mirror.yaml").write_text(
        "data_dir: ./data\nimages_file: ./images.txt\n"
        f"registry: {{url: '{url}', storage: {{s3: {{region: us-east-1, bucket: images}}, "
        "redirect: {disable: true}}}\n"
    )
    cfg = load_config(tmp_path / "mirror.yaml")
    for tag in ("1", "2"):  # app:2 left images.txt: the prune candidate
        ref = f"docker.io/library/app:{tag}"
        record = state.ImageRecord(
            key=ref,
            upstream=ref,
            last_success=state.now_iso(),
            digest="sha256:" + tag * 64,
            mirrored=[f"{url}/{ref}"],
        )
        state.save(cfg.state_root, "images", record)
    records = sorted(p.name for p in (cfg.state_root / "images").iterdir())
    assert len(records) == 2
    for args in (("--dry-run",), ()):
        proc = subprocess.run(
            [sys.executable, "-m", "mirror", "-c", str(tmp_path / "mirror.yaml"), "prune", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "forget image" not in proc.stdout
        assert "note: images not pruned: registry.storage is set (s3)" in proc.stdout
        assert "image records kept" in proc.stdout
        assert " 0 images, 0 untagged manifests" in proc.stdout.splitlines()[-1]
        assert sorted(p.name for p in (cfg.state_root / "images").iterdir()) == records
    assert not (cfg.data_dir / "registry" / "storage").exists()  # nothing was started on it
