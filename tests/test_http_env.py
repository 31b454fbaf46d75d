"""The Fetcher keeps honouring proxy / CA bundle / netrc settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirror.http import Fetcher

KNOBS = [
    "http_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "NO_PROXY",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NETRC",
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in KNOBS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def test_environment_is_skipped_only_when_it_holds_nothing(clean_env, tmp_path: Path) -> None:
    assert Fetcher().session.trust_env is False
    for name in KNOBS:
        clean_env.setenv(name, "http://proxy.example:3128")
        assert Fetcher().session.trust_env is True, name
        clean_env.delenv(name)
    (tmp_path / ".netrc").write_text("machine x login a password b\n")
    assert Fetcher().session.trust_env is True
