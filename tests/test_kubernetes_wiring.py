"""Issue 10 through the product's own entry points, once wired by mirror/cli.py,
mirror/content/report.py and the status page: `mirror upgrade-plan`, `mirror status`,
/api/status (schema), /metrics and the page. Each part skips until its wiring exists
(the functions behind them are tested in test_kubernetes_minors.py)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import requests

from tests.test_kubernetes_minors import RANGE, UNMIRRORED, Node, synced, world  # noqa: F401

pytestmark = pytest.mark.slow
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "mirror/web/status_schema.json"


def test_mirror_upgrade_plan_command(synced: Node) -> None:  # noqa: F811
    from mirror.cli import main

    registered = [c for c in main.commands.values() if c.name == "upgrade-plan"]
    if not registered:
        pytest.skip("`upgrade-plan` not registered in mirror/cli.py yet")
    proc = synced.run("upgrade-plan", "--from", "v1.34.3", "--to", "v1.36.6")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"MISSING  {UNMIRRORED}" in proc.stdout
    ok = synced.run("upgrade-plan", "--from", "v1.35.9", "--to", "v1.36.6")
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_status_api_metrics_and_page(synced: Node) -> None:  # noqa: F811
    status = synced.run("status")
    if "kubernetes v1.34" not in status.stdout:
        pytest.skip("freshness lines not in `mirror status` yet")
    assert "WARNING: gpg key of cri-o" in status.stdout
    if not synced.procs:
        synced.serve()
    doc = requests.get(f"{synced.base_url}/api/status", timeout=10).json()
    jsonschema.validate(doc, json.loads(SCHEMA_PATH.read_text()))
    (plan,) = doc["kubernetes"]["upgrade_plans"]  # mirror.content.report.kubernetes_status
    assert plan["range"] == RANGE and not plan["ok"]
    assert any(k["level"] == "warning" for k in doc["kubernetes"]["gpg_keys"])
    metrics = requests.get(f"{synced.base_url}/metrics", timeout=10).text
    assert 'mirror_kubernetes_patch_behind{minor="v1.34"} 1.0' in metrics
    assert "mirror_gpg_key_expiry_timestamp_seconds{" in metrics
    page = requests.get(f"{synced.base_url}/", timeout=10).text
    if f"Upgrade path {RANGE}" not in page:
        pytest.skip("status page shows no upgrade plans yet")
    assert "incomplete" in page
