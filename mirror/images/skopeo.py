"""A thin typed wrapper over the `skopeo` binary (1.9.x); every copy goes through it.

Reading digests is not skopeo's job here (one process per manifest is what made a no-op sync
slow): mirror.images.regapi asks the registries directly; skopeo runs only to copy.

What skopeo 1.9.3 can and cannot do, and what we do about it:

- `--registries-conf FILE` is a global option (before the verb); 1.9 ignores
  $CONTAINERS_REGISTRIES_CONF. Upstream redirects and `insecure = true` come from that file,
  so for upstream sources we pass no `--src-tls-verify` at all: an explicit flag would override
  the file's `insecure`. Our own registry gets `--{src,dest}-tls-verify` from registry.tls_verify,
  and `--{src,dest}-cert-dir` (a directory holding ca.crt) when it serves TLS with our CA.
- Digests: `copy --preserve-digests` keeps index and manifest digests (it fails rather
  than convert a format). Pushing to a digest reference (`repo@sha256:...`) works; a reference with
  both a tag and a digest does not ("Docker references with both a tag and digest are currently
  not supported"), so pinned sources are always read as `repo@digest`.
- Platform subsets: 1.9 only has `--multi-arch system|all|index-only` (no instance selection,
  no index editing). A subset index would have a new digest, and pushing the original index
  with only some of its children fails at distribution ("manifest blob unknown"). So:
  "all" and any list of two or more platforms copy the whole index (`--all`, digest kept);
  exactly one platform copies that platform's manifest by its digest (plus --override-os/arch).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mirror.errors import EnvironmentProblem, ImageSyncError
from mirror.images.manifest import Platform

RETRY_TIMES = 3
COPY_TIMEOUT = 3600.0
_MSG_RE = re.compile(r'level=(?:fatal|error) msg="((?:[^"\\]|\\.)*)"')
_NOISE_RE = re.compile(
    r'^(?:Error parsing image name "[^"]*": |initializing source \S+: |'
    r"copying system image from manifest list: |choosing an image from manifest list \S+: )+"
)
_MAX_MESSAGE = 400


class SkopeoError(ImageSyncError):
    """skopeo failed for one image; `reason` is its stderr reduced to one line."""

    def __init__(self, image: str, reason: str) -> None:
        super().__init__(image, reason)
        self.reason = reason


@dataclass(frozen=True)
class Endpoint:
    """How to talk to one side. tls_verify None: leave it to registries.conf (upstreams)."""

    tls_verify: bool | None = None
    authfile: Path | None = None
    cert_dir: Path | None = None  # a directory holding ca.crt (--{src,dest}-cert-dir)


def one_line(stderr: str, returncode: int) -> str:
    """skopeo's stderr as one meaningful line: the fatal msg without logrus noise, the
    "Error parsing image name ..." wrappers (the caller names the image) or repeats."""
    found = _MSG_RE.findall(stderr)
    if found:
        text = re.sub(r"\\(.)", lambda m: " " if m[1] in "nt" else m[1], found[-1])
    else:
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        text = lines[-1] if lines else f"skopeo exited with code {returncode}"
    text = _NOISE_RE.sub("", " ".join(text.split()))
    # "manifest unknown: manifest unknown" -> "manifest unknown"
    text = re.sub(r"(\b[\w ]+): \1\b", r"\1", text)
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3] + "..."
    return text


_MISSING_BINARY = (
    "skopeo not found on PATH: install the skopeo package "
    "(apt-get install skopeo, or dnf install skopeo)"
)


def binary() -> str:
    found = shutil.which("skopeo")
    if found is None:
        raise EnvironmentProblem(_MISSING_BINARY)
    return found


def _global_args(registries_conf: Path | None) -> list[str]:
    args = [binary()]
    if registries_conf is not None:
        args += ["--registries-conf", str(registries_conf)]
    policies = [Path("/etc/containers/policy.json")]
    policies.append(Path(os.environ.get("HOME", "/root")) / ".config/containers/policy.json")
    if not any(p.exists() for p in policies):
        # No containers-policy.json on this host: skopeo refuses to run without one. The
        # mirror copies images verbatim (digests preserved); it does not enforce signatures.
        args.append("--insecure-policy")
    return args


def _bool(flag: str, value: bool | None) -> list[str]:
    return [] if value is None else [f"{flag}={'true' if value else 'false'}"]


def _path(flag: str, value: Path | None) -> list[str]:
    return [] if value is None else [flag, str(value)]


def _run(args: Sequence[str], image: str, timeout: float) -> bytes:
    try:
        proc = subprocess.run(
            list(args), capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise EnvironmentProblem(_MISSING_BINARY) from None
    except subprocess.TimeoutExpired:
        raise SkopeoError(image, f"skopeo timed out after {timeout:.0f}s") from None
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", errors="replace")
        raise SkopeoError(image, one_line(stderr, proc.returncode))
    return proc.stdout


def copy(
    src: str,
    dest: str,
    *,
    all_platforms: bool,
    platform: Platform | None = None,
    src_endpoint: Endpoint | None = None,
    dest_endpoint: Endpoint | None = None,
    registries_conf: Path | None = None,
    image: str | None = None,
) -> None:
    """`skopeo copy --preserve-digests docker://src docker://dest`.

    all_platforms: copy a whole index (`--all`). Otherwise skopeo copies one image; pass the
    platform's manifest digest as `src` (as sync does) so the copy is exactly what was
    compared; `platform` adds --override-os/--override-arch(/--override-variant) so an index
    source still resolves to that platform. skopeo 1.9 cannot copy a subset of an index (see
    the module docstring): callers wanting several platforms pass all_platforms=True.
    """
    src_endpoint, dest_endpoint = src_endpoint or Endpoint(), dest_endpoint or Endpoint()
    args = _global_args(registries_conf)
    if platform is not None and not all_platforms:
        args += ["--override-os", platform.os, "--override-arch", platform.arch]
        if platform.variant:
            args += ["--override-variant", platform.variant]
    args += ["copy", "--preserve-digests", "--quiet", "--retry-times", str(RETRY_TIMES)]
    if all_platforms:
        args.append("--all")
    args += [
        *_bool("--src-tls-verify", src_endpoint.tls_verify),
        *_path("--src-authfile", src_endpoint.authfile),
        *_path("--src-cert-dir", src_endpoint.cert_dir),
        *_bool("--dest-tls-verify", dest_endpoint.tls_verify),
        *_path("--dest-authfile", dest_endpoint.authfile),
        *_path("--dest-cert-dir", dest_endpoint.cert_dir),
        f"docker://{src}",
        f"docker://{dest}",
    ]
    _run(args, image or src, COPY_TIMEOUT)


def copy_all(src: str, dest: str, *, registry: Endpoint, image: str) -> None:
    """`skopeo copy --all --preserve-digests SRC DEST` between our registry and an OCI image
    layout (mirror.transfer): SRC and DEST carry their transport ("docker://...",
    "oci:DIR:REF"). `registry`'s TLS, CA and credentials apply to the docker:// side (skopeo
    ignores them for oci:)."""
    args = [*_global_args(None), "copy", "--all", "--preserve-digests", "--quiet"]
    args += ["--retry-times", str(RETRY_TIMES)]
    for side, ref in (("src", src), ("dest", dest)):
        if ref.startswith("docker://"):
            args += [
                *_bool(f"--{side}-tls-verify", registry.tls_verify),
                *_path(f"--{side}-authfile", registry.authfile),
                *_path(f"--{side}-cert-dir", registry.cert_dir),
            ]
    _run([*args, src, dest], image, COPY_TIMEOUT)
