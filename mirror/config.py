"""The one configuration object: loaded from YAML, validated once, frozen, passed in.

Defaults live here, not in every mirror.yaml. Relative paths are resolved against the
directory of the config file, so `mirror -c /etc/mirror/mirror.yaml` works from anywhere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mirror.charts.config import ChartEntry
from mirror.errors import ConfigError, UnknownKubernetesVersion
from mirror.files.config import FileEntries

DEFAULT_CONFIG_NAME = "mirror.yaml"
_HOSTPORT_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?$"
)
_URL_PATH_RE = re.compile(r"^[A-Za-z0-9._~/-]*$")
_PLATFORM_RE = re.compile(r"^[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# distribution's repository name grammar (components of lowercase letters and digits joined
# by ".", "_", "__" or dashes), as mirror.images.refs checks upstream names.
_REPO_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_PATH_RE = re.compile(rf"^{_REPO_COMPONENT}(?:/{_REPO_COMPONENT})*$")
_TLS_HOST_RE = re.compile(r"^(?:[A-Za-z0-9*](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|[0-9A-Fa-f:.]+)$")


class _Frozen(BaseModel):
    # extra="forbid": an unknown key is a typo until proven otherwise.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class RepoFilter(_Frozen):
    """Which packages of one repo to mirror.

    Patterns are shell globs matched against NAME, NAME-VERSION and NAME-VERSION-RELEASE,
    so "kubeadm", "kubeadm-1.28.*" and "kubeadm-1.28.4-150500.1.1" all work.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    newest: int | None = Field(default=None, ge=1)


class RegistryConfig(_Frozen):
    # url: HOST[:PORT][/PATH]; a path (a Harbor/Quay project, "harbor.example.com/k8s-mirror")
    # is the prefix every mirrored name goes under (mirror.images.refs.RegistryLayout).
    url: str = "localhost:5000"
    tls_verify: bool = False
    embedded: bool = True
    authfile: Path | None = None
    # nested: <url>/<upstream host>/<path>; flat: <url>/<path with / as -> (one level).
    layout: Literal["nested", "flat"] = "nested"
    ca_file: Path | None = None  # PEM CA of an external registry; implies tls_verify: true

    @model_validator(mode="after")
    def _ca_is_for_external(self) -> RegistryConfig:
        # The embedded registry is verified with the mirror's own CA (tls:); a second CA for
        # the same host would have nodes' certs.d/<host>/ca.crt rewritten back and forth.
        if self.ca_file is not None and self.embedded:
            raise ValueError(
                "registry.ca_file is for an external registry (embedded: false); the embedded "
                "registry serves TLS with the mirror's own CA (tls.mode)"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _ca_implies_verify(cls, data: Any) -> Any:
        # A CA is only used when certificates are checked: ca_file alone turns verification
        # on; ca_file with an explicit tls_verify: false is a contradiction, not a default.
        if isinstance(data, dict) and data.get("ca_file") is not None:
            if data.get("tls_verify") is False:
                raise ValueError("registry.ca_file needs tls_verify: true (or leave it out)")
            data = {**data, "tls_verify": True}
        return data
    # The embedded registry's `storage:` (distribution's own config), e.g. {s3: {...},
    # redirect: {disable: true}}; None: filesystem under data_dir/registry/storage.
    storage: dict[str, Any] | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        host, _, path = value.rstrip("/").partition("/")
        if not _HOSTPORT_RE.match(host):
            raise ValueError("must be HOST[:PORT][/PATH] (no scheme)")
        if path and not _REPO_PATH_RE.match(path):
            raise ValueError(
                "path must be lowercase repository components (letters, digits, ._-) separated by /"
            )
        return value.rstrip("/")

    @property
    def host(self) -> str:
        """HOST[:PORT] of url: what serves /v2/ and what authfile entries are keyed by."""
        return self.url.partition("/")[0]

    @property
    def hostname(self) -> str:
        """host of url without its port (an IPv6 literal without brackets)."""
        hostport = self.host
        if hostport.startswith("["):
            return hostport[1 : hostport.index("]")]
        return hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 else hostport

    @property
    def prefix(self) -> str:
        """The path of url ("k8s-mirror"), "" when it has none."""
        return self.url.partition("/")[2]


def tls_covers(names: tuple[str, ...], host: str) -> bool:
    """Whether a certificate for `names` is valid for `host` (one-label wildcards as in TLS)."""
    import ipaddress

    def norm(name: str) -> str:
        name = name.strip("[]").lower()
        try:
            return str(ipaddress.ip_address(name))
        except ValueError:
            return name

    host = norm(host)
    for name in map(norm, names):
        if name == host or (name.startswith("*.") and host.partition(".")[2] == name[2:]):
            return True
    return False


class TlsConfig(_Frozen):
    """HTTPS for the web service and the embedded registry (mirror.tls).

    generate: a private CA and a server certificate made and renewed here (data_dir/tls/);
    files: the site's own certificate, key and CA; off: plain HTTP (or TLS terminated by a
    proxy in front, with base_url https://).
    """

    mode: Literal["generate", "files", "off"] = "off"
    hosts: tuple[str, ...] = ()  # names and IPs in the certificate; () = base_url's and registry's
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            if not _TLS_HOST_RE.match(host):
                raise ValueError(f"bad host {host!r} (a DNS name or an IP address, no port)")
        return value

    @model_validator(mode="after")
    def _check_files(self) -> TlsConfig:
        named = [k for k in ("cert_file", "key_file", "ca_file") if getattr(self, k) is not None]
        if self.mode == "files" and len(named) != 3:
            raise ValueError("mode files needs cert_file, key_file and ca_file")
        if self.mode != "files" and named:
            raise ValueError(f"{named[0]} is only read with mode files")
        return self


class UpstreamConfig(_Frozen):
    registries_conf: Path | None = None
    authfile: Path | None = None


class Config(_Frozen):
    config_path: Path | None = None  # set by load_config, not read from YAML
    data_dir: Path = Path("./data")
    base_url: str = "http://localhost:8080"
    repos_dir: Path = Path("./repos")
    releasever: tuple[str, ...] = ("9",)
    basearch: tuple[str, ...] = ("x86_64",)
    repo_filters: dict[str, RepoFilter] = Field(default_factory=dict)
    # Download tuning; the defaults suit a single utility node.
    download_workers: int = Field(default=8, ge=1, le=64)
    http_timeout: float = Field(default=60.0, gt=0)
    http_retries: int = Field(default=5, ge=0, le=20)
    # Container images (issue: images into a local registry).
    images_file: Path | None = Path("./images.txt")
    kubernetes_versions: tuple[str, ...] = ()  # "v1.36.5" or ranges "v1.34.3..v1.36.5"
    # Where kubeadm's image list comes from: "auto" = the built-in table, else (a version it
    # does not know) the mirrored kubeadm binary; "binary" = the mirrored kubeadm binary
    # whenever its rpm is mirrored, the table as fallback (mirror.kubernetes.images).
    kubeadm_images: Literal["auto", "binary"] = "auto"
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    platforms: tuple[str, ...] | Literal["all"] = ("linux/amd64",)
    image_workers: int = Field(default=4, ge=1, le=32)
    # Web service.
    sync_token: str | None = None  # enables POST /api/sync when set
    files: FileEntries = ()  # files and manifests to mirror (mirror.files)
    charts: tuple[ChartEntry, ...] = ()  # Helm chart repositories (mirror.charts)
    # Mirrors of mirrors (mirror.downstream): repos, images, files and charts of another
    # mirror node (its base_url), in addition to what repos_dir and images_file list.
    upstream_mirror: str | None = None
    upstream_mirror_ca: Path | None = None  # CA file (PEM) for an https upstream_mirror

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        # base_url ends up in .repo files and in shell scripts nodes run as root: only a
        # plain http(s)://host[:port][/path] gets through, nothing a shell would interpret.
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError("must start with http:// or https://")
        if not _HOSTPORT_RE.match(parts.netloc) or parts.query or parts.fragment:
            raise ValueError("must be http(s)://HOST[:PORT][/PATH]")
        if not _URL_PATH_RE.match(parts.path):
            raise ValueError("path may only contain letters, digits and ._~/-")
        return value.rstrip("/")

    @field_validator("upstream_mirror")
    @classmethod
    def _check_upstream_mirror(cls, value: str | None) -> str | None:
        # The same rules as base_url: it is another node's base_url.
        return None if value is None else cls._check_base_url(value)
    @model_validator(mode="after")
    def _check_tls_scheme(self) -> Config:
        # With tls on, `mirror serve` speaks only HTTPS: an http:// base_url would hand nodes
        # URLs nothing answers. https:// with tls off is fine (TLS ended by a proxy in front).
        if self.tls.mode != "off" and not self.base_url.startswith("https://"):
            raise ValueError(f"tls.mode {self.tls.mode} serves HTTPS: base_url must be https://")
        if self.tls.mode == "generate" and self.tls.hosts:
            # A certificate without the name clients use fails every connection later with an
            # x509 error; say so now.
            for host in self.served_hosts:
                if not tls_covers(self.tls.hosts, host):
                    raise ValueError(f"tls.hosts must include {host} (the host nodes connect to)")
        return self

    @field_validator("kubernetes_versions")
    @classmethod
    def _check_versions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Only the syntax is checked here: `vX.Y.Z` or a range `vA.B.C..vX.Y.Z`. Whether kubeadm
        # images are known for a version depends on what is mirrored (its kubeadm rpm), so an
        # unknown one fails that version's images at sync time, not the whole config.
        from mirror.kubernetes import versions

        try:
            return tuple(versions.normalize_entry(text) for text in value)
        except UnknownKubernetesVersion as exc:
            raise ValueError(str(exc)) from None

    @field_validator("platforms")
    @classmethod
    def _check_platforms(
        cls, value: tuple[str, ...] | Literal["all"]
    ) -> tuple[str, ...] | Literal["all"]:
        # Validated here, once, not when the image sync first needs them.
        if value == "all":
            return value
        if not value:
            raise ValueError("must be 'all' or a non-empty list of os/arch[/variant]")
        for text in value:
            if not _PLATFORM_RE.match(text):
                raise ValueError(f"bad platform {text!r} (expected os/arch or os/arch/variant)")
        return value

    @field_validator("releasever", "basearch")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Each value becomes a directory name under data_dir/repos/: no '..', no '/'.
        if not value or any(not _SEGMENT_RE.match(v) for v in value):
            raise ValueError("must be a non-empty list of plain names (letters, digits, ._-)")
        return value

    @property
    def served_hosts(self) -> list[str]:
        """The hosts clients reach our TLS servers by: base_url's, and the embedded
        registry's (what a generated certificate must name)."""
        found = [urlsplit(self.base_url).hostname or ""]
        if self.registry.embedded:
            found.append(self.registry.hostname)
        return [h for h in found if h]

    @property
    def repos_root(self) -> Path:
        """Where published repositories live (served as /repos/)."""
        return self.data_dir / "repos"

    @property
    def keys_root(self) -> Path:
        return self.data_dir / "keys"

    @property
    def state_root(self) -> Path:
        return self.data_dir / "state"


def config_path_from_env(explicit: str | None) -> Path:
    """`-c`, else $MIRROR_CONFIG, else ./mirror.yaml."""
    return Path(explicit or os.environ.get("MIRROR_CONFIG") or DEFAULT_CONFIG_NAME)


def _format_validation_error(source: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"key '{key}': {msg}{more}"


def _resolve(base: Path, value: Path | None) -> Path | None:
    if value is None:
        return None
    value = value.expanduser()
    return value if value.is_absolute() else (base / value).resolve()


def load_config(path: Path) -> Config:
    """Read and validate a config file; every problem is a ConfigError naming file and key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "config file not found (use -c or $MIRROR_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    try:
        raw: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(str(path), f"{where}{problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "top level must be a mapping of keys")
    if "config_path" in raw:
        raise ConfigError(str(path), "key 'config_path': unknown key")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(str(path), _format_validation_error(path, exc)) from None
    resolved = resolve_paths(cfg, path)
    # The default ./images.txt may be absent (no extra images); one named explicitly must exist.
    named = raw.get("images_file") is not None and resolved.images_file is not None
    if named and resolved.images_file is not None and not resolved.images_file.is_file():
        raise ConfigError(str(path), f"key 'images_file': no such file {resolved.images_file}")
    _check_upstream_mirror(path, resolved)
    for key in _TLS_FILES:
        tls_file: Path | None = getattr(resolved.tls, key)
        if tls_file is not None and not tls_file.is_file():
            raise ConfigError(str(path), f"key 'tls.{key}': no such file {tls_file}")
    return resolved


def _check_upstream_mirror(path: Path, cfg: Config) -> None:
    if cfg.upstream_mirror is not None and cfg.upstream_mirror == cfg.base_url:
        raise ConfigError(str(path), "key 'upstream_mirror': is this node's own base_url")
    ca = cfg.upstream_mirror_ca
    if ca is not None and not ca.is_file():
        raise ConfigError(str(path), f"key 'upstream_mirror_ca': no such file {ca}")


_TLS_FILES = ("cert_file", "key_file", "ca_file")


def resolve_paths(cfg: Config, path: Path) -> Config:
    base = path.resolve().parent
    return cfg.model_copy(
        update={
            "config_path": path.resolve(),
            "data_dir": _resolve(base, cfg.data_dir),
            "repos_dir": _resolve(base, cfg.repos_dir),
            "images_file": _resolve(base, cfg.images_file),
            "upstream_mirror_ca": _resolve(base, cfg.upstream_mirror_ca),
            "registry": cfg.registry.model_copy(
                update={
                    "authfile": _resolve(base, cfg.registry.authfile),
                    "ca_file": _resolve(base, cfg.registry.ca_file),
                }
            ),
            "tls": cfg.tls.model_copy(
                update={k: _resolve(base, getattr(cfg.tls, k)) for k in _TLS_FILES}
            ),
            "upstream": cfg.upstream.model_copy(
                update={
                    "registries_conf": _resolve(base, cfg.upstream.registries_conf),
                    "authfile": _resolve(base, cfg.upstream.authfile),
                }
            ),
        }
    )
