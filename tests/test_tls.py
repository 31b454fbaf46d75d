"""mirror.tls: the generated CA and server certificate, read back with `cryptography` (and
checked with openssl where it is the reference: the fingerprint users compare)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from mirror import tls
from mirror.config import Config, TlsConfig, load_config
from mirror.errors import ConfigError

NOW = dt.datetime.now(dt.UTC)


def config(tmp_path: Path, text: str = "") -> Config:
    path = tmp_path / "mirror.yaml"
    path.write_text(
        "base_url: https://utility.example.com:8443\nregistry: {url: '192.168.122.200:5000'}\n"
        "tls: {mode: generate}\n" + text
    )
    return load_config(path)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_generate_makes_ca_and_server_cert_with_every_san(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    files = tls.ensure(cfg)
    assert files is not None
    ca, server = cert(files.ca), cert(files.cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    assert tls.san_set(server) == {"utility.example.com", "192.168.122.200"}
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # An IP literal is an IP SAN (Go's TLS, i.e. containerd and distribution, needs that).
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.168.122.200")]
    assert san.get_values_for_type(x509.DNSName) == ["utility.example.com"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert dt.timedelta(days=390) < server.not_valid_after_utc - NOW < dt.timedelta(days=398)
    # Keys 0600 in a 0700 directory; certificates public.
    assert mode(files.key) == 0o600 and mode(tmp_path / "data/tls/private/ca.key") == 0o600
    assert mode(tmp_path / "data/tls/private") == 0o700
    assert mode(files.ca) == 0o644
    # The CA is alone in its directory: skopeo's --cert-dir takes every *.crt there as a root.
    assert sorted(p.name for p in files.ca.parent.iterdir()) == ["ca.crt"]
    key = files.key.read_bytes()
    assert b"PRIVATE KEY" in key and isinstance(
        x509.load_pem_x509_certificate(files.cert.read_bytes()).public_key(),
        ec.EllipticCurvePublicKey,
    )


def test_configured_hosts_and_ipv6(tmp_path: Path) -> None:
    cfg = config(tmp_path, "")
    cfg = cfg.model_copy(update={"tls": TlsConfig(mode="generate", hosts=("mirror.lan", "::1"))})
    files = tls.ensure(cfg)
    assert files is not None
    assert tls.san_set(cert(files.cert)) == {"mirror.lan", "::1"}


def test_second_run_changes_nothing(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    files = tls.ensure(cfg)
    assert files is not None
    before = {p: p.read_bytes() for p in (files.ca, files.cert, files.key)}
    tls.ensure(cfg)
    assert {p: p.read_bytes() for p in before} == before


def test_renewal_near_expiry_keeps_the_ca(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    files = tls.ensure(cfg)
    assert files is not None
    ca_pem, old = files.ca.read_bytes(), cert(files.cert)
    # 380 days on, the 397-day certificate has 17 days left (< 30): it is replaced.
    later = NOW + dt.timedelta(days=380)
    tls.ensure(cfg, now=later)
    new = cert(files.cert)
    assert new.serial_number != old.serial_number
    assert new.not_valid_after_utc - later > dt.timedelta(days=390)
    assert files.ca.read_bytes() == ca_pem
    new.verify_directly_issued_by(cert(files.ca))
    # 300 days after that it has 97 left: nothing is done.
    tls.ensure(cfg, now=later + dt.timedelta(days=300))
    assert cert(files.cert).serial_number == new.serial_number


def test_changed_hosts_renew_the_server_cert(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    files = tls.ensure(cfg)
    assert files is not None
    ca_pem = files.ca.read_bytes()
    moved = cfg.model_copy(update={"tls": TlsConfig(mode="generate", hosts=("mirror2.lan",))})
    tls.ensure(moved)
    assert tls.san_set(cert(files.cert)) == {"mirror2.lan"}
    assert files.ca.read_bytes() == ca_pem


def test_ca_is_never_regenerated_silently(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    files = tls.ensure(cfg)
    assert files is not None
    ca_pem = files.ca.read_bytes()
    key = tmp_path / "data/tls/private/ca.key"
    saved = key.read_bytes()
    key.unlink()
    with pytest.raises(ConfigError, match=r"ca\.key: missing, but the CA .*ca\.crt exists"):
        tls.ensure(cfg)
    assert files.ca.read_bytes() == ca_pem and not key.exists()
    # A key that is not the CA's: refused too.
    key.write_bytes((tmp_path / "data/tls/private/server.key").read_bytes())
    with pytest.raises(ConfigError, match="is not the key of the CA"):
        tls.ensure(cfg)
    key.write_bytes(saved)
    files.ca.unlink()
    with pytest.raises(ConfigError, match=r"ca\.crt: missing, but the CA key"):
        tls.ensure(cfg)
    assert not files.ca.exists()


def test_expired_ca_is_an_error_and_an_expiring_one_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(tmp_path)
    files = tls.ensure(cfg)
    assert files is not None
    ca_pem = files.ca.read_bytes()
    with caplog.at_level("WARNING", logger="mirror.tls"):
        tls.ensure(cfg, now=NOW + dt.timedelta(days=tls.CA_DAYS - 100))
    assert "the mirror's CA expires on" in caplog.text
    # The server certificate never outlives its CA.
    assert cert(files.cert).not_valid_after_utc <= cert(files.ca).not_valid_after_utc
    with pytest.raises(ConfigError, match="the CA expired on"):
        tls.ensure(cfg, now=NOW + dt.timedelta(days=tls.CA_DAYS + 1))
    assert files.ca.read_bytes() == ca_pem


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")
def test_hashes_match_openssl_and_sha256sum(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    files = tls.ensure(cfg)
    assert files is not None
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(files.ca)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    doc = tls.status(cfg)
    assert doc is not None and doc["ok"]
    assert out.strip().split("=", 1)[1] == doc["ca_fingerprint_sha256"]
    summed = subprocess.run(["sha256sum", str(files.ca)], capture_output=True, text=True).stdout
    assert summed.split()[0] == doc["ca_sha256"]
    assert f'echo "{doc["ca_sha256"]}  /tmp/mirror-ca.crt" | sha256sum -c' in str(
        doc["pin_command"]
    )
    # openssl agrees the server certificate chains to the CA, for the name in base_url.
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(files.ca),
            "-verify_hostname",
            "utility.example.com",
            str(files.cert),
        ],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_mode_files_copies_the_ca_and_checks_the_key(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    site = config(tmp_path / "site")  # a "site CA": made by the generator in another dir
    made = tls.ensure(site)
    assert made is not None
    other = tmp_path / "other.key"
    other.write_bytes((tmp_path / "site/data/tls/private/ca.key").read_bytes())
    text = (
        "base_url: https://utility.example.com:8443\nregistry: {url: '192.168.122.200:5000'}\n"
        f"tls: {{mode: files, cert_file: {made.cert}, key_file: {made.key}, ca_file: {made.ca}}}\n"
    )
    path = tmp_path / "mirror.yaml"
    path.write_text(text)
    cfg = load_config(path)
    files = tls.ensure(cfg)
    assert files is not None and files.cert == made.cert
    assert tls.ca_file(cfg).read_bytes() == made.ca.read_bytes()
    assert tls.ca_file(cfg) != made.ca
    path.write_text(text.replace(str(made.key), str(other)))
    with pytest.raises(ConfigError, match="tls.key_file is not the key of"):
        tls.ensure(load_config(path))
    # A certificate without the name nodes use: refused up front, naming what it has.
    path.write_text(text.replace("utility.example.com", "elsewhere.example.com"))
    with pytest.raises(ConfigError, match=r"is not valid for elsewhere\.example\.com \(it names: "):
        tls.ensure(load_config(path))


@pytest.mark.parametrize(
    "text, needle",
    [
        ("base_url: http://u:8080\ntls: {mode: generate}\n", "base_url must be https://"),
        ("base_url: https://u\ntls: {mode: files}\n", "needs cert_file, key_file and ca_file"),
        ("base_url: https://u\ntls: {mode: generate, cert_file: x}\n", "only read with mode files"),
        ("base_url: https://u\ntls: {mode: generate, hosts: ['a b']}\n", "bad host 'a b'"),
        ("base_url: https://u\ntls: {mode: on}\n", "key 'tls.mode'"),
        (
            "base_url: https://u.lan\ntls: {mode: generate, hosts: [v.lan, localhost]}\n",
            "tls.hosts must include u.lan",
        ),
        (
            "base_url: https://u.lan\nregistry: {url: 'r.lan:5000'}\n"
            "tls: {mode: generate, hosts: ['*.lan', u.lan]}\n",
            None,
        ),
        (
            "base_url: https://u.lan\nregistry: {url: '[::1]:5000'}\n"
            "tls: {mode: generate, hosts: [u.lan]}\n",
            "tls.hosts must include ::1",
        ),
        (
            "base_url: https://u\ntls: {mode: files, cert_file: c, key_file: k, ca_file: a}\n",
            "key 'tls.cert_file': no such file",
        ),
    ],
)
def test_bad_tls_config_is_one_clear_error(tmp_path: Path, text: str, needle: str | None) -> None:
    path = tmp_path / "mirror.yaml"
    path.write_text(text)
    if needle is None:  # a wildcard covers the registry's name
        load_config(path)
        return
    with pytest.raises(ConfigError, match=None) as err:
        load_config(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_off_and_https_base_url_is_allowed(tmp_path: Path) -> None:
    """TLS ended by a proxy in front: base_url https with tls off is a valid setup."""
    path = tmp_path / "mirror.yaml"
    path.write_text("base_url: https://mirror.example.com\n")
    cfg = load_config(path)
    assert tls.ensure(cfg) is None and tls.status(cfg) is None


def test_embedded_registry_config_and_push_endpoint_use_the_ca(tmp_path: Path) -> None:
    import yaml

    from mirror.images import registry
    from mirror.images.sync import local_endpoint

    cfg = config(tmp_path)
    written = yaml.safe_load(registry.write_config(cfg).read_text())
    files = tls.server_files(cfg)
    assert files is not None and files.cert.is_file()
    assert written["http"]["tls"] == {"certificate": str(files.cert), "key": str(files.key)}
    assert written["http"]["addr"] == ":5000"
    endpoint = local_endpoint(cfg)
    assert endpoint.tls_verify is True and endpoint.cert_dir == files.ca.parent
    # tls off: plain HTTP as before, and a tls_verify the embedded registry cannot honour
    # is still refused with the way out named.
    plain = cfg.model_copy(update={"tls": TlsConfig(), "base_url": "http://u"})
    assert "tls" not in yaml.safe_load(registry.write_config(plain).read_text())["http"]
    assert local_endpoint(plain).cert_dir is None


def test_deploy_gunicorn_conf_serves_https_when_public(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mirror-web.service's gunicorn: HTTPS with the mirror's certificate when nodes reach it
    directly; plain on loopback, where nginx in front does TLS."""
    import runpy

    from tests.test_deploy import DEPLOY

    cfg = config(tmp_path)
    assert cfg.config_path is not None
    monkeypatch.setenv("MIRROR_CONFIG", str(cfg.config_path))
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prom"))
    monkeypatch.setenv("MIRROR_BIND", "0.0.0.0:8443")
    conf = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    files = tls.server_files(cfg)
    assert files is not None
    assert (conf["certfile"], conf["keyfile"]) == (str(files.cert), str(files.key))
    assert files.cert.is_file() and files.key.is_file()
    monkeypatch.setenv("MIRROR_BIND", "127.0.0.1:8080")
    conf = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    assert conf["certfile"] is None and conf["keyfile"] is None


def test_serve_refuses_a_ca_without_its_key(tmp_path: Path) -> None:
    """Through the CLI: one line naming the file, exit 2, nothing started, no new CA."""
    import sys

    from tests.conftest import free_port

    (tmp_path / "repos").mkdir()
    cfg = config(tmp_path)
    files = tls.ensure(cfg)
    assert files is not None and cfg.config_path is not None
    ca_pem = files.ca.read_bytes()
    (tmp_path / "data/tls/private/ca.key").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "mirror", "-c", str(cfg.config_path), "serve"]
        + ["--bind", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "ca.key" in ln]
    assert len(lines) == 1 and "missing, but the CA" in lines[0], proc.stderr
    assert files.ca.read_bytes() == ca_pem
    assert not (tmp_path / "data/tls/private/ca.key").exists()
