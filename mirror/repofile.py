"""Upstream repository definitions in dnf `.repo` syntax, and their expansion per variable value.

A definition whose baseurl uses `$releasever`/`$basearch`/`$kubernetes_minor` becomes one
*target* per combination of configured values; each target is synced and published on its own
(`/repos/docker-ce-stable/9/x86_64/`, `/repos/kubernetes/v1.36/`). `$kubernetes_minor` takes
every minor `kubernetes_versions` touches (`v1.35.9` -> `v1.35`; a range, every minor in it).
"""

from __future__ import annotations

import configparser
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mirror.config import Config
from mirror.errors import ConfigError

# The variables we substitute. dnf knows more ($arch, $releasever_major, ...); an upstream
# definition using one of those gets a clear error instead of a silently wrong URL.
# kubernetes_minor is a custom dnf variable: nodes read it from /etc/dnf/vars/kubernetes_minor
# (bootstrap.sh writes it), so moving a node to the next minor is a one-file change.
SUPPORTED_VARS = ("releasever", "basearch", "kubernetes_minor")
_VAR_RE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
# A repo id becomes a directory name under data_dir/repos/: it must start with a letter or
# digit, so '.' and '..' (which would publish, and prune, outside the repo) cannot pass.
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_TRUE = {"1", "yes", "true", "on", "True"}
_FALSE = {"0", "no", "false", "off", "False"}


@dataclass(frozen=True)
class RepoDefinition:
    """One enabled [section] of an upstream .repo file, as the upstream wrote it."""

    id: str
    name: str
    baseurls: tuple[str, ...]
    gpgkeys: tuple[str, ...]
    gpgcheck: bool
    repo_gpgcheck: bool
    exclude: tuple[str, ...]
    sslverify: bool
    proxy: str | None
    username: str | None
    password: str | None
    source: Path

    @property
    def variables(self) -> tuple[str, ...]:
        """Variables used in baseurl, in order of first appearance (= publish path order)."""
        seen: list[str] = []
        for url in self.baseurls:
            for name in variables_in(url):
                if name not in seen:
                    seen.append(name)
        return tuple(seen)

    @property
    def key_variables(self) -> tuple[str, ...]:
        """The baseurl variables its gpgkey URLs use too: then each target has its own key
        (pkgs.k8s.io publishes one per minor), published at keys/<id>/<value>....gpg."""
        used = {name for url in self.gpgkeys for name in variables_in(url)}
        return tuple(name for name in self.variables if name in used)

    @property
    def key_url_path(self) -> str:
        """The key's path below /keys/, with the variables left for dnf to expand."""
        return "/".join((self.id, *(f"${v}" for v in self.key_variables))) + ".gpg"


@dataclass(frozen=True)
class RepoTarget:
    """A definition with its variables bound: the unit that is synced and published."""

    definition: RepoDefinition
    values: tuple[tuple[str, str], ...]  # (variable, value) in publish-path order

    @property
    def repo_id(self) -> str:
        return self.definition.id

    @property
    def subpath(self) -> tuple[str, ...]:
        return (self.definition.id, *(v for _, v in self.values))

    @property
    def key(self) -> str:
        """Stable name, also the URL path under /repos/: 'docker-ce-stable/9/x86_64'."""
        return "/".join(self.subpath)

    @property
    def baseurls(self) -> tuple[str, ...]:
        return tuple(expand(u, dict(self.values)) for u in self.definition.baseurls)

    @property
    def key_file(self) -> str:
        """Where its keys are published, below keys/ (`kubernetes/v1.36.gpg`)."""
        varying = self.definition.key_variables
        return "/".join((self.repo_id, *(v for n, v in self.values if n in varying))) + ".gpg"

    @property
    def upstream(self) -> str:  # for status and messages (mirror.content.kind.Item)
        return self.baseurls[0]

    @property
    def gpgkeys(self) -> tuple[str, ...]:
        return tuple(expand(u, dict(self.values)) for u in self.definition.gpgkeys)


def variables_in(text: str) -> list[str]:
    return [m.group(1) or m.group(2) for m in _VAR_RE.finditer(text)]


def expand(text: str, values: dict[str, str]) -> str:
    def repl(match: re.Match[str]) -> str:
        return values[match.group(1) or match.group(2)]

    return _VAR_RE.sub(repl, text)


def _split_list(value: str) -> tuple[str, ...]:
    # dnf accepts whitespace, newlines and commas between list items.
    return tuple(item for item in re.split(r"[\s,]+", value.strip()) if item)


def _bool(source: str, key: str, value: str | None, default: bool) -> bool:
    if value is None:
        return default
    value = value.strip()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(source, f"key '{key}': expected 1/0, yes/no or true/false, got {value!r}")


# A .repo file is a few KiB; these bound what a broken or hostile one can make us hold.
MAX_REPO_FILE = 1 << 20
MAX_LINE = 8192
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SECTION_LINE = re.compile(r"^\[([^\]]*)\]")
_KEY_LINE = re.compile(r"^([^\s=:#;][^=:]*?)\s*[=:]")


def _read_text(path: Path) -> str:
    """The file as text, or ConfigError naming the line of binary junk or an overlong line."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_REPO_FILE + 1)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_REPO_FILE:
        raise ConfigError(str(path), f"larger than {MAX_REPO_FILE} bytes; not a .repo file")
    try:
        text = data.decode("utf-8-sig")  # a byte order mark (Windows editors) is no section
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}: line {line}", "not UTF-8 text (binary file?)") from None
    for number, line_text in enumerate(text.split("\n"), start=1):
        if len(line_text) > MAX_LINE:
            raise ConfigError(f"{path}: line {number}", f"longer than {MAX_LINE} characters")
        junk = _CONTROL.search(line_text)
        if junk:
            raise ConfigError(
                f"{path}: line {number}", f"control character {ord(junk.group()):#04x} (binary?)"
            )
    return text


def _line_index(text: str) -> dict[tuple[str, str], int]:
    """(section, key) -> line number, ("", section) for headers: configparser keeps none,
    and an error that names the line is one a sysadmin can fix without searching."""
    index: dict[tuple[str, str], int] = {}
    section = ""
    for number, line in enumerate(text.split("\n"), start=1):
        header = _SECTION_LINE.match(line)
        if header:
            section = header.group(1).strip()
            index.setdefault(("", section), number)
            continue
        key = _KEY_LINE.match(line)
        if key and section:
            index.setdefault((section, key.group(1).strip().lower()), number)
    return index


def _parse(path: Path, text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True, default_section="\0")
    try:
        parser.read_string(text, source=str(path))
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(
            f"{path}: line {exc.lineno}", "expected a [repo-id] section header"
        ) from None
    except configparser.ParsingError as exc:
        lineno, line = exc.errors[0] if exc.errors else (0, "")
        raise ConfigError(f"{path}: line {lineno}", f"cannot parse {line.strip()!r}") from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(
            f"{path}: line {exc.lineno}", f"duplicate section [{exc.section}]"
        ) from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(
            f"{path}: line {exc.lineno}", f"duplicate key '{exc.option}' in [{exc.section}]"
        ) from None
    except configparser.Error as exc:
        raise ConfigError(str(path), str(exc).splitlines()[0]) from None
    return parser


def parse_repo_file(path: Path) -> list[RepoDefinition]:
    """Parse one .repo file; return its enabled sections. Errors name the file and line/key."""
    text = _read_text(path)
    parser = _parse(path, text)
    lines = _line_index(text)
    result = []
    for section in parser.sections():
        definition = _definition(path, section, parser[section], lines)
        if definition is not None:
            result.append(definition)
    return result


class _Where:
    """Builds the `source` of a ConfigError: file, line of the key (or section), section."""

    def __init__(self, path: Path, section: str, lines: dict[tuple[str, str], int]) -> None:
        self.path, self.section, self.lines = path, section, lines

    def __call__(self, key: str | None = None) -> str:
        line = self.lines.get((self.section, key) if key else ("", self.section))
        if line is None:
            line = self.lines.get(("", self.section))
        where = f": line {line}" if line else ""
        return f"{self.path}{where}: [{self.section}]"


def _definition(
    path: Path, section: str, opts: configparser.SectionProxy, lines: dict[tuple[str, str], int]
) -> RepoDefinition | None:
    src = _Where(path, section, lines)
    if not _bool(src("enabled"), "enabled", opts.get("enabled"), True):
        return None
    _check_repo_id(src(), section)
    for key in ("mirrorlist", "metalink"):
        if (opts.get(key) or "").strip():
            raise ConfigError(
                src(key), f"key '{key}': mirrorlist/metalink are not supported; set baseurl"
            )
    if "baseurl" not in opts:
        raise ConfigError(src(), "key 'baseurl' is missing")
    baseurls = _split_list(opts["baseurl"])
    if not baseurls:
        raise ConfigError(src("baseurl"), "key 'baseurl' is empty")
    for url in baseurls:
        _check_url(src("baseurl"), "baseurl", url)
    gpgkeys = _split_list(opts.get("gpgkey", ""))
    in_baseurl = {v for url in baseurls for v in variables_in(url)}
    for url in gpgkeys:
        _check_url(src("gpgkey"), "gpgkey", url)
        # A target binds only the baseurl's variables; any other one has no value to take.
        extra = [v for v in variables_in(url) if v not in in_baseurl]
        if extra:
            raise ConfigError(
                src("gpgkey"), f"key 'gpgkey': ${extra[0]} is used in gpgkey but not in baseurl"
            )
    gpgcheck = _bool(src("gpgcheck"), "gpgcheck", opts.get("gpgcheck"), False)
    repo_gpgcheck = _bool(src("repo_gpgcheck"), "repo_gpgcheck", opts.get("repo_gpgcheck"), False)
    if (gpgcheck or repo_gpgcheck) and not gpgkeys:
        raise ConfigError(src(), "gpgcheck/repo_gpgcheck is on but key 'gpgkey' is missing")
    return RepoDefinition(
        id=section,
        name=opts.get("name", section).strip(),
        baseurls=baseurls,
        gpgkeys=gpgkeys,
        gpgcheck=gpgcheck,
        repo_gpgcheck=repo_gpgcheck,
        exclude=_split_list(opts.get("exclude", opts.get("excludepkgs", ""))),
        sslverify=_bool(src("sslverify"), "sslverify", opts.get("sslverify"), True),
        proxy=(opts.get("proxy") or "").strip() or None,
        username=(opts.get("username") or "").strip() or None,
        password=opts.get("password"),
        source=path,
    )


def _check_repo_id(src: str, section: str) -> None:
    if "$" in section:
        raise ConfigError(
            src, "repo id must not contain variables: dnf does not expand them in [section]"
        )
    if not _REPO_ID_RE.match(section):
        raise ConfigError(
            src, "repo id must start with a letter or digit and contain only [A-Za-z0-9_.:-]"
        )


def _check_url(src: str, key: str, url: str) -> None:
    """http(s) with a host, and only SUPPORTED_VARS as variables."""
    for var in variables_in(url):
        if var not in SUPPORTED_VARS:
            known = ", ".join(f"${v}" for v in SUPPORTED_VARS)
            raise ConfigError(src, f"variable ${var} is not supported (only {known})")
    if "$" in _VAR_RE.sub("", url):  # ${var:-default}, a lone `$`: dnf syntax we do not expand
        raise ConfigError(src, f"key '{key}': unsupported variable syntax in {url!r}")
    if not url.startswith(("http://", "https://")):
        if key == "gpgkey":
            return  # file:// keys are rejected later, with the URL, when they are fetched
        raise ConfigError(
            src,
            f"key '{key}': unsupported URL {url!r} (http/https only; several URLs are "
            "separated by spaces, a space inside one is written %20)",
        )
    if not urlsplit(url).hostname:
        raise ConfigError(src, f"key '{key}': URL {url!r} has no host")


def load_definitions(cfg: Config) -> list[RepoDefinition]:
    """All enabled sections of repos_dir/*.repo, in file then section order."""
    repos_dir = cfg.repos_dir
    if not repos_dir.is_dir():
        raise ConfigError(
            str(cfg.config_path or "config"), f"key 'repos_dir': {repos_dir} is not a directory"
        )
    definitions: list[RepoDefinition] = []
    seen: dict[str, Path] = {}
    for path in sorted(repos_dir.glob("*.repo")):
        for definition in parse_repo_file(path):
            if definition.id in seen:
                raise ConfigError(
                    f"{path}: [{definition.id}]", f"repo id also defined in {seen[definition.id]}"
                )
            seen[definition.id] = path
            definitions.append(definition)
    unknown = set(cfg.repo_filters) - set(seen)
    if unknown:
        raise ConfigError(
            str(cfg.config_path or "config"),
            f"key 'repo_filters.{sorted(unknown)[0]}': no enabled repo with that id in {repos_dir}",
        )
    return definitions


def variable_values(cfg: Config) -> dict[str, Sequence[str]]:
    """What each supported variable expands to."""
    from mirror.kubernetes.versions import configured_minors

    return {
        "releasever": cfg.releasever,
        "basearch": cfg.basearch,
        "kubernetes_minor": configured_minors(cfg.kubernetes_versions),
    }


def expand_targets(definitions: Iterable[RepoDefinition], cfg: Config) -> list[RepoTarget]:
    values = variable_values(cfg)
    targets = []
    for definition in definitions:
        names = definition.variables
        if "kubernetes_minor" in names and not values["kubernetes_minor"]:
            # Zero minors would silently mirror nothing of a repo the user enabled.
            raise ConfigError(
                f"{definition.source}: [{definition.id}]",
                "baseurl uses $kubernetes_minor but key 'kubernetes_versions' is empty "
                f"in {cfg.config_path or 'the config'}",
            )
        for combo in itertools.product(*(values[n] for n in names)):
            targets.append(RepoTarget(definition, tuple(zip(names, combo, strict=True))))
    return targets


def select_targets(targets: Sequence[RepoTarget], repo_ids: Sequence[str]) -> list[RepoTarget]:
    """Restrict to `--repo` ids; an unknown id is an error rather than a silent no-op."""
    if not repo_ids:
        return list(targets)
    known = {t.repo_id for t in targets}
    for rid in repo_ids:
        if rid not in known:
            raise ConfigError(
                f"--repo {rid}", f"no enabled repo with that id (known: {', '.join(sorted(known))})"
            )
    return [t for t in targets if t.repo_id in repo_ids]
