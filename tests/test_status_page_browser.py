"""The status page in a real headless Chromium: no console errors, no external requests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mirror import state
from tests.conftest import Mirror

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium not installed"),
]


def test_status_page_in_chromium(mirror: Mirror, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert mirror.sync().returncode == 0
    # An image row as an image sync records it (the image sync itself is tested elsewhere).
    state.save(
        mirror.data / "state",
        "images",
        state.ImageRecord(
            key="docker.io/calico/node:v3.26.1",
            mirrored=["127.0.0.1:5000/docker.io/calico/node:v3.26.1"],
            digest="sha256:" + "ab" * 32,
            platforms=["linux/amd64"],
            last_attempt=state.now_iso(),
            last_success=state.now_iso(),
        ),
    )
    mirror.serve()
    console_errors: list[str] = []
    requests_seen: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            for width, name in ((1280, "laptop"), (390, "phone")):
                page = browser.new_page(viewport={"width": width, "height": 900})
                page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
                page.on("pageerror", lambda e: console_errors.append(str(e)))
                page.on("request", lambda r: requests_seen.append(r.url))
                resp = page.goto(mirror.base_url + "/", wait_until="networkidle")
                assert resp is not None and resp.status == 200
                rows = page.locator("#repos tr.repo")
                assert rows.count() == 3
                assert "kubernetes" in rows.first.inner_text() or "kubernetes" in page.content()
                assert page.locator("#images tr.image").count() == 1
                assert "docker.io/calico/node:v3.26.1" in page.locator("#images").inner_text()
                assert "just now" in page.locator("#repos").inner_text()
                assert "bootstrap.sh" in page.inner_text("body")
                shot = tmp_path / f"status-{name}.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 5000
                page.close()
        finally:
            browser.close()
    assert console_errors == []
    external = [u for u in requests_seen if not u.startswith(mirror.base_url)]
    assert external == [], external
