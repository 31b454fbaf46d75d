"""TLS for the web service and the embedded registry: a private CA that nodes pin once.

Layout under data_dir/tls/ (every file written with mirror.fsutil's atomic helpers):

    ca/ca.crt            the CA nodes trust (PEM; served as /ca.crt). Alone in its directory:
                         that directory is skopeo's --cert-dir (every *.crt there is a root).
    private/ca.key       the CA's key (mode generate; 0600, directory 0700)
    server.crt           the server certificate nginx, gunicorn and the registry present
    private/server.key   its key (0600)

mode generate makes the CA once (EC P-256, 10 years) and a server certificate (397 days) with
a SAN for every tls.hosts entry (IP SANs for IP literals). `ensure` renews the server
certificate when it has less than RENEW_BEFORE left, when the SAN set changed or when it is
not signed by the CA on disk; it never makes a new CA while any part of the old one is
left (a CA cert without its key is an error, not a reason for a new CA: every node pinned it).
mode files uses the site's cert_file/key_file as they are and copies ca_file to ca/ca.crt.

Nodes check the sha256 of the PEM file as served (`sha256sum`); the DER fingerprint that
`openssl x509 -fingerprint -sha256` shows is reported next to it for people comparing by eye.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from filelock import FileLock
from prometheus_client.core import GaugeMetricFamily

from mirror import fsutil
from mirror.config import Config, tls_covers
from mirror.errors import ConfigError

log = logging.getLogger("mirror.tls")

CA_DAYS = 3650
SERVER_DAYS = 397  # what browsers accept for a server certificate; renewed well before
RENEW_BEFORE = dt.timedelta(days=30)
CA_WARN_BEFORE = dt.timedelta(days=365)
PIN_PATH = "/tmp/mirror-ca.crt"  # where the pinning command puts the CA on a node

_Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class ServerFiles:
    """What a TLS server is configured with."""

    cert: Path
    key: Path
    ca: Path  # the CA clients verify the server with (data_dir/tls/ca/ca.crt)


def enabled(cfg: Config) -> bool:
    return cfg.tls.mode != "off"


def tls_dir(cfg: Config) -> Path:
    return cfg.data_dir / "tls"


def ca_file(cfg: Config) -> Path:
    return tls_dir(cfg) / "ca" / "ca.crt"


def ca_dir(cfg: Config) -> Path:
    """A directory holding only ca.crt: skopeo's --cert-dir / --dest-cert-dir."""
    return ca_file(cfg).parent


def _private(cfg: Config) -> Path:
    return tls_dir(cfg) / "private"


def server_files(cfg: Config) -> ServerFiles | None:
    """Where the server certificate and key are (no check that they exist); None when off."""
    if cfg.tls.mode == "off":
        return None
    if cfg.tls.mode == "files":
        assert cfg.tls.cert_file is not None and cfg.tls.key_file is not None  # config checks
        return ServerFiles(cfg.tls.cert_file, cfg.tls.key_file, ca_file(cfg))
    return ServerFiles(tls_dir(cfg) / "server.crt", _private(cfg) / "server.key", ca_file(cfg))


def _strip(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def hosts(cfg: Config) -> tuple[str, ...]:
    """tls.hosts, or the hosts of base_url and registry.url (in that order, once each)."""
    if cfg.tls.hosts:
        return tuple(dict.fromkeys(_strip(h) for h in cfg.tls.hosts))
    found = [urlsplit(cfg.base_url).hostname or "", cfg.registry.hostname]
    return tuple(dict.fromkeys(h for h in found if h))


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def san_set(cert: x509.Certificate) -> set[str]:
    """The names and IPs (as text) a certificate is valid for."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    found = {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}
    return found | set(ext.get_values_for_type(x509.DNSName))


def _wanted_sans(cfg: Config) -> set[str]:
    # As san_set reads them back: IPs in their normal text form (e.g. "::1").
    found = set()
    for name in hosts(cfg):
        try:
            found.add(str(ipaddress.ip_address(name)))
        except ValueError:
            found.add(name)
    return found


# --- reading ---------------------------------------------------------------------------


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read certificate: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(str(path), "not a PEM certificate") from None


def _load_key(path: Path) -> _Key:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read key: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise ConfigError(str(path), "not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        # Keys made here are EC; a site's own (mode files) is only checked against its cert.
        raise ConfigError(str(path), "not an EC private key (the generated CA's is EC P-256)")
    return key


def _matches(cert: x509.Certificate, key_path: Path) -> bool:
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(str(key_path), f"cannot read key: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise ConfigError(str(key_path), "not an unencrypted PEM private key") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return bool(key.public_key().public_bytes(der, pub) == cert.public_key().public_bytes(der, pub))


def fingerprint(cert: x509.Certificate) -> str:
    """SHA256 of the DER, as `openssl x509 -noout -fingerprint -sha256` shows it."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def file_sha256(path: Path) -> str:
    """What `sha256sum FILE` prints for the served PEM: the hash nodes pin."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- writing ---------------------------------------------------------------------------


def _key_pem(key: _Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _private_dir(cfg: Config) -> Path:
    path = _private(cfg)
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _new_ca(cfg: Config, now: dt.datetime) -> tuple[x509.Certificate, _Key]:
    key = ec.generate_private_key(ec.SECP256R1())
    label = hosts(cfg)[0] if hosts(cfg) else "mirror"
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "air-gap mirror"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"air-gap mirror CA ({label})"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first: a crash in between leaves a key without a cert, which `_load_ca` reports
    # instead of silently making a second CA.
    fsutil.atomic_write(_private_dir(cfg) / "ca.key", _key_pem(key), 0o600)
    fsutil.atomic_write(ca_file(cfg), _cert_pem(cert), 0o644)
    log.warning(
        "created a new private CA %s (sha256 %s): nodes must pin it (see `mirror status`)",
        ca_file(cfg),
        file_sha256(ca_file(cfg)),
    )
    return cert, key


def _new_server(
    cfg: Config, ca: x509.Certificate, ca_key: _Key, now: dt.datetime
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    names = hosts(cfg)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "mirror")])
    not_after = min(now + dt.timedelta(days=SERVER_DAYS), ca.not_valid_after_utc)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(names), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = server_files(cfg)
    assert files is not None
    # Key then cert: a crash in between leaves a cert not matching its key, renewed next time.
    fsutil.atomic_write(_private_dir(cfg) / "server.key", _key_pem(key), 0o600)
    fsutil.atomic_write(files.cert, _cert_pem(cert), 0o644)
    log.info(
        "server certificate %s for %s, valid until %s",
        files.cert,
        ", ".join(names),
        cert.not_valid_after_utc.date(),
    )
    return cert


def _load_ca(cfg: Config, now: dt.datetime) -> tuple[x509.Certificate, _Key] | None:
    """The CA on disk; None when there is none at all. Any partial or broken CA is an error."""
    cert_path, key_path = ca_file(cfg), _private(cfg) / "ca.key"
    have_cert, have_key = cert_path.exists(), key_path.exists()
    if not have_cert and not have_key:
        return None
    fix = (
        "nodes pinned this CA, so no new one is made; restore it from a backup, or remove "
        f"{tls_dir(cfg)} to make a new CA (every node must then pin the new one)"
    )
    if not have_key:
        raise ConfigError(str(key_path), f"missing, but the CA {cert_path} exists: {fix}")
    if not have_cert:
        raise ConfigError(str(cert_path), f"missing, but the CA key {key_path} exists: {fix}")
    cert, key = _load_cert(cert_path), _load_key(key_path)
    if not _matches(cert, key_path):
        raise ConfigError(str(key_path), f"is not the key of the CA {cert_path}: {fix}")
    if cert.not_valid_after_utc <= now:
        raise ConfigError(
            str(cert_path),
            f"the CA expired on {cert.not_valid_after_utc.date()}; remove {tls_dir(cfg)} "
            "to make a new CA, and pin it again on every node",
        )
    return cert, key


def _server_ok(cfg: Config, ca: x509.Certificate, now: dt.datetime) -> bool:
    files = server_files(cfg)
    assert files is not None
    if not files.cert.exists() or not files.key.exists():
        return False
    try:
        cert = _load_cert(files.cert)
        cert.verify_directly_issued_by(ca)
        if not _matches(cert, files.key):
            return False
    except (ConfigError, ValueError, TypeError, InvalidSignature):
        return False
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        log.info(
            "server certificate %s expires %s: renewing",
            files.cert,
            cert.not_valid_after_utc.date(),
        )
        return False
    if san_set(cert) != _wanted_sans(cfg):
        log.info("tls.hosts changed: renewing the server certificate %s", files.cert)
        return False
    return True


def ensure(cfg: Config, now: dt.datetime | None = None) -> ServerFiles | None:
    """The files a TLS server needs, made or renewed as needed; None when tls is off.

    Called by `mirror serve`, `mirror registry` and every start of the embedded registry;
    cheap when nothing is due. Serialised by a lock, so two callers make one CA, not two.
    """
    files = server_files(cfg)
    if files is None:
        return None
    now = now or dt.datetime.now(dt.UTC)
    tls_dir(cfg).mkdir(parents=True, exist_ok=True)
    with FileLock(str(tls_dir(cfg) / ".lock")):
        if cfg.tls.mode == "files":
            _use_files(cfg, now)
            return files
        loaded = _load_ca(cfg, now)
        ca, ca_key = loaded if loaded is not None else _new_ca(cfg, now)
        if ca.not_valid_after_utc - now < CA_WARN_BEFORE:
            log.warning("%s", ca_expiry_warning(ca))
        if not _server_ok(cfg, ca, now):
            _new_server(cfg, ca, ca_key, now)
    return files


def ca_expiry_warning(ca: x509.Certificate) -> str:
    return (
        f"the mirror's CA expires on {ca.not_valid_after_utc.date()}: plan a new CA "
        "(remove data_dir/tls, restart, pin it again on every node)"
    )


def _use_files(cfg: Config, now: dt.datetime) -> None:
    """mode files: the site's certificate must match its key and not have expired; its CA
    is copied to ca/ca.crt (served, and skopeo's cert dir)."""
    tls = cfg.tls
    assert tls.cert_file is not None and tls.key_file is not None and tls.ca_file is not None
    cert = _load_cert(tls.cert_file)
    ca = _load_cert(tls.ca_file)
    if not _matches(cert, tls.key_file):
        raise ConfigError(str(tls.key_file), f"tls.key_file is not the key of {tls.cert_file}")
    if cert.not_valid_after_utc <= now:
        raise ConfigError(str(tls.cert_file), f"expired on {cert.not_valid_after_utc.date()}")
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        log.warning("%s expires on %s: replace it", tls.cert_file, cert.not_valid_after_utc.date())
    names = tuple(san_set(cert))
    for host in cfg.served_hosts:
        if not tls_covers(names, host):
            raise ConfigError(
                str(tls.cert_file),
                f"tls.cert_file is not valid for {host} (it names: {', '.join(sorted(names))})",
            )
    pem = _cert_pem(ca)
    if not ca_file(cfg).exists() or ca_file(cfg).read_bytes() != pem:
        fsutil.atomic_write(ca_file(cfg), pem, 0o644)


# --- reporting -------------------------------------------------------------------------


def pin_command(base_url: str, sha256: str) -> str:
    """What a node runs once: fetch the CA without trust, check it against the hash printed
    here, then fetch bootstrap.sh verified with it (every later step verifies TLS)."""
    return (
        f"curl -fsSk {base_url}/ca.crt -o {PIN_PATH} && "
        f'echo "{sha256}  {PIN_PATH}" | sha256sum -c && '
        f"curl -fsS --cacert {PIN_PATH} {base_url}/bootstrap.sh | "
        f"sudo bash -s -- --ca-file {PIN_PATH} --ca-sha256 {sha256}"
    )


def status(cfg: Config) -> dict[str, object] | None:
    """For `mirror status` and /api/status: the CA's hashes, expiry and the pinning command.
    Never generates anything (web workers call this)."""
    if not enabled(cfg):
        return None
    path = ca_file(cfg)
    doc: dict[str, object] = {"mode": cfg.tls.mode, "hosts": list(hosts(cfg)), "ca_file": str(path)}
    try:
        ca = _load_cert(path)
        sha = file_sha256(path)
    except (ConfigError, OSError) as exc:
        doc.update(ok=False, error=f"no CA yet ({exc}); `mirror serve` makes it")
        return doc
    now = dt.datetime.now(dt.UTC)
    warnings = [ca_expiry_warning(ca)] if ca.not_valid_after_utc - now < CA_WARN_BEFORE else []
    files = server_files(cfg)
    server_not_after = None
    if files is not None and files.cert.exists():
        try:
            server_not_after = _load_cert(files.cert).not_valid_after_utc.isoformat()
        except ConfigError as exc:
            warnings.append(str(exc))
    doc.update(
        ok=True,
        ca_sha256=sha,
        ca_fingerprint_sha256=fingerprint(ca),
        ca_not_after=ca.not_valid_after_utc.isoformat(),
        server_not_after=server_not_after,
        warnings=warnings,
        pin_command=pin_command(cfg.base_url, sha),
    )
    return doc


def status_lines(cfg: Config) -> list[str]:
    doc = status(cfg)
    if doc is None:
        return []
    if not doc["ok"]:
        return [f"tls: {doc['error']}"]
    lines = [
        f"tls: CA {doc['ca_file']} sha256 {doc['ca_sha256']} (valid until {doc['ca_not_after']})",
        f"tls: pin it on a node: {doc['pin_command']}",
    ]
    warnings = doc["warnings"]
    assert isinstance(warnings, list)
    return lines + [f"tls: warning: {w}" for w in warnings]


def metric_families(cfg: Config) -> Iterator[GaugeMetricFamily]:
    """/metrics: when the CA and the server certificate expire, for alerting."""
    doc = status(cfg)
    if doc is None or not doc["ok"]:
        return
    gauge = GaugeMetricFamily(
        "mirror_tls_certificate_expiry_timestamp_seconds",
        "When the mirror's TLS certificate expires",
        labels=["certificate"],
    )
    for label, key in (("ca", "ca_not_after"), ("server", "server_not_after")):
        value = doc.get(key)
        if isinstance(value, str):
            gauge.add_metric([label], dt.datetime.fromisoformat(value).timestamp())
    yield gauge


# --- the local registry ----------------------------------------------------------------


def local_registry_ca(cfg: Config) -> Path | None:
    """The CA pushes to and probes of registry.url verify it with: an external registry's
    registry.ca_file, else ours when the embedded registry serves TLS with it."""
    if cfg.registry.ca_file is not None:
        return cfg.registry.ca_file
    return ca_file(cfg) if enabled(cfg) and cfg.registry.embedded else None


def local_registry_verify(cfg: Config) -> bool:
    """Whether registry.url is reached over verified TLS."""
    return cfg.registry.tls_verify or local_registry_ca(cfg) is not None
