"""The downstream side: A's index fetched, validated and kept; what the kinds take from it.

Kept under data_dir/state/downstream/: `index.json` (the document as served),
`mirror.repo` (its .repo definitions, loaded by mirror.repofile.load_definitions next to
repos_dir's) and `registries.conf` (generated for the image copies). Nothing here touches
the network except `fetch`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirror import fsutil, state
from mirror.config import Config
from mirror.downstream.document import UpstreamIndex, parse
from mirror.downstream.index import PATH
from mirror.errors import ConfigError, MirrorError
from mirror.http import Fetcher, FetchError, RequestOptions

if TYPE_CHECKING:
    from mirror.content.kind import SyncRequest
    from mirror.files.config import FileEntry
    from mirror.images.refs import ImageJob
    from mirror.repofile import RepoDefinition, RepoTarget

log = logging.getLogger("mirror.downstream")
KIND_NAME = "upstream_mirror"
INDEX_LIMIT = 32 * 1024 * 1024  # thousands of images and files are a few MiB of JSON


class UpstreamIndexError(MirrorError):
    """The upstream mirror's index is unusable (one line naming the URL and what is wrong)."""


def store_dir(cfg: Config) -> Path:
    # Not state/upstream_mirror/: that holds the kind's records (one JSON file per key).
    return cfg.state_root / "downstream"


def index_url(cfg: Config) -> str:
    assert cfg.upstream_mirror is not None
    return cfg.upstream_mirror + PATH


def request_options(cfg: Config) -> RequestOptions:
    """For every request to the upstream mirror (index, repos, keys, files)."""
    return RequestOptions(ca_file=cfg.upstream_mirror_ca)


def fetch(cfg: Config, fetcher: Fetcher, etag: str | None) -> tuple[bytes | None, str | None]:
    """(body, etag) of a changed index, (None, etag) for a 304. MirrorError otherwise."""
    url = index_url(cfg)
    headers = {"If-None-Match": f'"{etag}"'} if etag else {}
    try:
        reply = fetcher.request(
            "GET", url, request_options(cfg), headers=headers, limit=INDEX_LIMIT
        )
    except FetchError as exc:
        raise UpstreamIndexError(f"cannot fetch {url}: {exc}") from None
    if reply.status == 304 and etag:
        return None, etag
    if reply.status != 200:
        raise UpstreamIndexError(
            f"{url}: HTTP {reply.status} (is it a mirror node of this version?)"
        )
    return reply.body, reply.headers.get("etag", "").strip().removeprefix("W/").strip('"') or None


def store(cfg: Config, body: bytes) -> UpstreamIndex:
    """Validate `body` completely (its .repo text parsed too), then keep it: mirror.repo
    last-but-one and index.json last, each replaced atomically."""
    from mirror.repofile import parse_repo_file

    url = index_url(cfg)
    try:
        index = parse(body)
    except ValueError as exc:
        raise UpstreamIndexError(f"{url}: bad index: {exc}") from None
    directory = store_dir(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, prefix=".check-", suffix=".repo") as tmp:
        tmp.write(index.repofile)
        tmp.flush()
        try:
            parse_repo_file(Path(tmp.name))
        except ConfigError as exc:
            raise UpstreamIndexError(f"{url}: bad repofile in the index: {exc}") from None
    fsutil.atomic_write_text(directory / "mirror.repo", index.repofile)
    fsutil.atomic_write(directory / "index.json", body)
    return index


def load_stored(cfg: Config) -> UpstreamIndex | None:
    """The index last fetched, or None (never fetched, or unreadable)."""
    if cfg.upstream_mirror is None:
        return None
    path = store_dir(cfg) / "index.json"
    try:
        st = path.stat()
        return _parsed(path, st.st_mtime_ns, st.st_size)
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=4)
def _parsed(path: Path, mtime_ns: int, size: int) -> UpstreamIndex:
    """Parsed once per version of the file: every repo, file and chart of a sync asks."""
    return parse(path.read_bytes())


def fresh_index(cfg: Config, request: SyncRequest) -> UpstreamIndex | None:
    """The index when this very sync fetched (or revalidated) it, else None: only a fresh
    index may stand in for asking A whether something changed."""
    if cfg.upstream_mirror is None:
        return None
    record = state.load(cfg.state_root, KIND_NAME, cfg.upstream_mirror)
    if not record.ok or (record.last_success or "") < request.started:
        return None
    return load_stored(cfg)


# --- repos -------------------------------------------------------------------------------


def upstream_definitions(cfg: Config) -> list[RepoDefinition]:
    """A's .repo definitions as last fetched ([] before the first fetch); requests to A use
    upstream_mirror_ca."""
    from mirror.repofile import parse_repo_file

    path = store_dir(cfg) / "mirror.repo"
    if cfg.upstream_mirror is None or not path.is_file():
        return []
    return [
        dataclasses.replace(
            d, name=d.name.removesuffix(" (mirror)"), sslcacert=cfg.upstream_mirror_ca
        )
        for d in parse_repo_file(path)
    ]


def add_upstream_definitions(
    cfg: Config, definitions: list[RepoDefinition], seen: dict[str, Path]
) -> bool:
    """Append A's definitions whose id repos_dir does not define (B's own win, with a
    warning); False when A's index was never fetched."""
    if not (store_dir(cfg) / "mirror.repo").is_file():
        return False
    for definition in upstream_definitions(cfg):
        if definition.id in seen:
            log.warning(
                "repo %s: defined in %s and by upstream_mirror; using %s",
                definition.id,
                seen[definition.id],
                seen[definition.id],
            )
            continue
        seen[definition.id] = definition.source
        definitions.append(definition)
    return True


def is_upstream_definition(cfg: Config, definition: RepoDefinition) -> bool:
    return definition.source == store_dir(cfg) / "mirror.repo"


def repo_unchanged(
    cfg: Config, target: RepoTarget, record: state.RepoRecord, request: SyncRequest
) -> bool:
    """A's repomd.xml (by the fresh index) is the one B's copy was published from."""
    if request.dry_run or not is_upstream_definition(cfg, target.definition):
        return False
    index = fresh_index(cfg, request)
    sha = index.repos.get(target.key) if index else None
    if sha is None:
        return False
    from mirror.yum.sync import unchanged_since

    return unchanged_since(cfg, target, record, sha)


# --- images ------------------------------------------------------------------------------


def with_upstream_images(cfg: Config, jobs: list[ImageJob]) -> list[ImageJob]:
    """`jobs` plus one for every image of the stored index (named in B's registry by B's
    rules); an index row that does not parse is skipped with a warning."""
    from mirror.images.refs import BadReference, parse_reference
    from mirror.images.sources import with_found_images

    index = load_stored(cfg)
    if index is None:
        return jobs
    found = []
    for image in index.images:
        try:
            found.append((parse_reference(image.upstream), KIND_NAME))
        except BadReference as exc:
            log.warning("upstream_mirror: image %r skipped: %s", image.upstream, exc)
    return with_found_images(cfg, jobs, found)


def with_known_digests(cfg: Config, jobs: list[Any], request: SyncRequest) -> list[Any]:
    """Each job of an image pulled from A that the fresh index lists carries A's digest: the
    image sync then asks A's registry nothing when B already holds that digest."""
    from mirror.images.refs import ImageJob

    index = fresh_index(cfg, request)
    if index is None:
        return jobs
    from_a = _redirects(index, _own_registries_conf(cfg)[1])
    digests = {i.upstream: i.digest for i in index.images if i.upstream in from_a}
    return [
        dataclasses.replace(job, known_digest=digests[job.key])
        if isinstance(job, ImageJob) and job.key in digests
        else job
        for job in jobs
    ]


def _own_registries_conf(cfg: Config) -> tuple[str, set[str]]:
    """B's own upstream.registries_conf: its text and the prefixes it defines."""
    import tomllib

    path = cfg.upstream.registries_conf
    if path is None:
        return "", set()
    try:
        own = path.read_text(encoding="utf-8")
        parsed = tomllib.loads(own)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not TOML: {exc}") from None
    return own, {str(r.get("prefix") or r.get("location")) for r in parsed.get("registry", [])}


def _redirects(index: UpstreamIndex, own_prefixes: set[str]) -> dict[str, tuple[str, str]]:
    """upstream reference -> (repository prefix, A's repository) for every image pulled
    from A: those whose repository B's own registries.conf does not name itself."""
    from mirror.images.refs import BadReference, parse_reference

    found = {}
    for image in index.images:
        try:  # both names as strictly as images.txt lines: they go into a TOML file
            prefix = parse_reference(image.upstream).repository
            location = parse_reference(image.mirrored[0]).repository
        except BadReference:
            continue
        if prefix not in own_prefixes:
            found[image.upstream] = (prefix, location)
    return found


def registries_conf(cfg: Config) -> Path | None:
    """A containers-registries.conf sending every repository A mirrors to A's registry,
    after B's own upstream.registries_conf (whose prefixes win); None without an index."""
    index = load_stored(cfg)
    if index is None:
        return None
    own, own_prefixes = _own_registries_conf(cfg)
    blocks = [own.rstrip() + "\n"] if own.strip() else []
    blocks.append(
        f"# Generated for upstream_mirror {cfg.upstream_mirror}: A's registry {index.registry}\n"
    )
    written: set[str] = set()
    for prefix, location in _redirects(index, own_prefixes).values():
        if prefix in written:  # nginx:1.25 and nginx@sha256:...: one repository
            continue
        written.add(prefix)
        blocks.append(
            f"[[registry]]\nprefix = {json.dumps(prefix)}\n"
            f"location = {json.dumps(location)}\n"
            f"insecure = {'true' if index.registry_insecure else 'false'}\n"
        )
    path = store_dir(cfg) / "registries.conf"
    text = "\n".join(blocks)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        fsutil.atomic_write_text(path, text)
    return path


def registry_cas(cfg: Config) -> dict[str, Path]:
    """host -> CA file for the hosts A's registry is reached at (its registry.url's, and
    those the generated registries.conf sends repositories to): upstream_mirror_ca, copied
    alone to state/downstream/registry-ca/ca.crt, because skopeo's --src-cert-dir reads every
    *.crt of a directory (and *.cert/*.key pairs as client certificates). {} without
    upstream_mirror_ca or a stored index (A's registry then needs the system trust)."""
    index = load_stored(cfg)
    if cfg.upstream_mirror_ca is None or index is None:
        return {}
    hosts = {index.registry.split("/", 1)[0]}
    own = _own_registries_conf(cfg)[1]
    hosts |= {location.split("/", 1)[0] for _, location in _redirects(index, own).values()}
    try:
        data = cfg.upstream_mirror_ca.read_bytes()
    except OSError as exc:
        raise ConfigError(
            str(cfg.config_path or "config"),
            f"key 'upstream_mirror_ca': cannot read {cfg.upstream_mirror_ca}: {exc.strerror}",
        ) from None
    target = store_dir(cfg) / "registry-ca" / "ca.crt"
    if not target.is_file() or target.read_bytes() != data:
        target.parent.mkdir(parents=True, exist_ok=True)
        fsutil.atomic_write(target, data, 0o644)
    return dict.fromkeys(hosts, target)


def image_config(cfg: Config) -> Config:
    """cfg with upstream.registries_conf the generated one (images of A come from A)."""
    path = registries_conf(cfg) if cfg.upstream_mirror is not None else None
    if path is None:
        return cfg
    return cfg.model_copy(
        update={"upstream": cfg.upstream.model_copy(update={"registries_conf": path})}
    )


# --- files -------------------------------------------------------------------------------


def file_entries(cfg: Config) -> list[FileEntry]:
    """A `files:` entry per file of the stored index, pinned to A's sha256, at the same
    path; paths B's own `files:` publish are left to those."""
    from mirror.files.config import FileEntry

    index = load_stored(cfg)
    if index is None:
        return []
    own = {entry.path for entry in cfg.files}
    entries = []
    for row in index.files:
        if row.path in own:
            continue
        try:
            entries.append(
                FileEntry(
                    url=f"{cfg.upstream_mirror}/files/{row.path}", sha256=row.sha256, path=row.path
                )
            )
        except ValueError as exc:
            log.warning("upstream_mirror: file %r skipped: %s", row.path, str(exc).splitlines()[0])
    return entries


def file_unchanged(cfg: Config, entry: FileEntry, record: Any, request: SyncRequest) -> bool:
    """The fresh index lists the file with the sha256 B published (and still has)."""
    if request.dry_run or not entry.url.startswith(f"{cfg.upstream_mirror}/files/"):
        return False
    index = fresh_index(cfg, request)
    listed = {row.path: row.sha256 for row in index.files} if index else {}
    return listed.get(entry.path) == entry.sha256 == record.sha256 and record.sha256 is not None


# --- charts ------------------------------------------------------------------------------


def with_upstream_charts(cfg: Config) -> Config:
    """cfg with a `charts:` entry per chart of the stored index (A's /charts/<repo>/, the
    versions A holds); repo names B's own entries publish are left to those."""
    from mirror.charts.config import ChartEntry
    from mirror.charts.repos import chart_repos

    index = load_stored(cfg)
    if index is None or not index.charts:
        return cfg
    own = {repo.key for repo in chart_repos(cfg)}
    entries = list(cfg.charts)
    for repo in index.charts:
        if repo.repo_name in own:
            continue
        versions: dict[str, list[str]] = {}
        for name, version in repo.charts:
            versions.setdefault(name, []).append(version)
        for name, wanted in versions.items():
            try:
                entries.append(
                    ChartEntry(
                        repo=f"{cfg.upstream_mirror}/charts/{repo.repo_name}",
                        name=name,
                        versions=tuple(wanted),
                        repo_name=repo.repo_name,
                    )
                )
            except ValueError as exc:
                log.warning("upstream_mirror: chart %r skipped: %s", name, str(exc).splitlines()[0])
    return cfg.model_copy(update={"charts": tuple(entries)})


def chart_index_sha256(
    cfg: Config, repo_key: str, upstream: str, request: SyncRequest
) -> str | None:
    """What the fresh index says A's index.yaml of this chart repository is (None: ask)."""
    if request.dry_run or upstream != f"{cfg.upstream_mirror}/charts/{repo_key}":
        return None
    index = fresh_index(cfg, request)
    found = {repo.repo_name: repo.index_sha256 for repo in index.charts} if index else {}
    return found.get(repo_key)
