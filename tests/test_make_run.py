"""`make run`'s script as a newcomer uses it offline: MIRROR_CONFIG pointing at their config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO_ROOT, Mirror

pytestmark = pytest.mark.slow


def test_run_script_serves_syncs_and_keeps_serving(mirror: Mirror) -> None:
    venv = Path(sys.executable).parent.parent
    env = {
        **os.environ,
        "MIRROR_CONFIG": str(mirror.config),
        "VENV": str(venv),
        "BIND": f"127.0.0.1:{mirror.port}",
    }
    log = mirror.dir / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", str(REPO_ROOT / "scripts" / "run.sh")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while "serving; press Ctrl-C" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        assert "repos: 3 ok" in text
        repo = requests.get(f"{mirror.base_url}/repofiles/mirror.repo", timeout=5)
        assert repo.status_code == 200 and "[kubernetes]" in repo.text
        md = requests.get(f"{mirror.base_url}/repos/kubernetes/repodata/repomd.xml", timeout=5)
        assert md.status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{mirror.base_url}/healthz", timeout=2)
