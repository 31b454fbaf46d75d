"""kubeadm's own image list: extract /usr/bin/kubeadm from a mirrored rpm and ask it.

`kubeadm config images list --kubernetes-version vX.Y.Z` is what `kubeadm init` pulls, by
definition; the built-in table (mirror.kubeadm_images) only describes it. The binary comes
from an rpm upstream signed and the repo sync verified, but it is still a program from the
internet run on the utility node, so it runs with what it needs and nothing more:

- the rpm payload is unpacked by bsdtar (libarchive; or rpm2cpio | cpio), one member only,
  into a fresh directory, and the result must be a regular file;
- an empty environment, stdin from /dev/null, a timeout, a cap on what it may print;
- as root: in a new network namespace (`unshare -n`, no interfaces but a down loopback) and
  as `nobody` (`setpriv`, no new privileges); otherwise as the calling user, clean env.

Results are cached per version under data_dir/state/kubeadm/, keyed by the rpm's checksum.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import pwd
import selectors
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mirror import fsutil
from mirror.config import Config
from mirror.errors import EnvironmentProblem, MirrorError
from mirror.images.refs import BadReference, parse_reference
from mirror.kubernetes.packages import KubePackage

log = logging.getLogger("mirror.kubernetes")
MEMBER = "usr/bin/kubeadm"
RUN_TIMEOUT = 60.0
EXTRACT_TIMEOUT = 300.0
MAX_OUTPUT = 64 * 1024
MAX_IMAGES = 64
UNPRIVILEGED_USER = "nobody"
CACHE_FORMAT = 1


class KubeadmBinaryError(MirrorError):
    """kubeadm of one version could not give its image list (extraction, run or output)."""

    def __init__(self, version: str, rpm: str, message: str) -> None:
        super().__init__(f"kubeadm {version} ({rpm}): {message}")
        self.version = version
        self.rpm = rpm


@dataclass(frozen=True)
class BinaryList:
    version: str
    images: tuple[str, ...]
    rpm: str  # NVRA of the rpm it came from
    checksum: str  # of that rpm (primary's pkgId)


def cache_dir(cfg: Config) -> Path:
    return cfg.state_root / "kubeadm"


def _cache_file(cfg: Config, version: str) -> Path:
    return cache_dir(cfg) / f"{version}.json"


def load_cached(cfg: Config, version: str) -> BinaryList | None:
    try:
        data = json.loads(_cache_file(cfg, version).read_text())
        if data.get("format") != CACHE_FORMAT or data.get("version") != version:
            return None
        return BinaryList(version, tuple(data["images"]), data["rpm"], data["checksum"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_cached(cfg: Config, result: BinaryList) -> None:
    doc = {
        "format": CACHE_FORMAT,
        "version": result.version,
        "images": list(result.images),
        "rpm": result.rpm,
        "checksum": result.checksum,
    }
    fsutil.atomic_write_text(_cache_file(cfg, result.version), json.dumps(doc, indent=2) + "\n")


# --- extraction ----------------------------------------------------------------------------


def _extract_argv(rpm: Path, dest: Path) -> list[list[str]]:
    """argv lists of a pipeline writing ./usr/bin/kubeadm below `dest`."""
    bsdtar = shutil.which("bsdtar")
    if bsdtar:  # libarchive reads the rpm container and its payload compressions itself
        return [[bsdtar, "-x", "-f", str(rpm), "-C", str(dest), "--no-same-owner", f"./{MEMBER}"]]
    rpm2cpio, cpio = shutil.which("rpm2cpio"), shutil.which("cpio")
    if rpm2cpio and cpio:
        return [[rpm2cpio, str(rpm)], [cpio, "-i", "-d", "--quiet", "-D", str(dest), f"./{MEMBER}"]]
    raise EnvironmentProblem(
        "neither bsdtar nor rpm2cpio+cpio found: install libarchive-tools (bsdtar) or cpio"
    )


def _run_pipeline(argvs: list[list[str]]) -> str | None:
    """Run argv lists connected by pipes (no shell); None on success, else the reason.

    Each process's stderr goes to its own temp file, not a pipe: with pipes, a process
    filling its stderr while we wait on another would block, and the pipeline with it."""
    procs: list[subprocess.Popen[bytes]] = []
    errs: list[IO[bytes]] = []
    with contextlib.ExitStack() as stack:
        try:
            for i, argv in enumerate(argvs):
                last = i == len(argvs) - 1
                errs.append(stack.enter_context(tempfile.TemporaryFile()))
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL if i == 0 else procs[-1].stdout,
                    stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                    stderr=errs[-1],
                )
                if i > 0 and procs[-1].stdout is not None:
                    procs[-1].stdout.close()  # the next process owns the pipe now
                procs.append(proc)
            deadline = time.monotonic() + EXTRACT_TIMEOUT
            for proc in procs:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            failed = [_failure(p, err) for p, err in zip(procs, errs, strict=True) if p.returncode]
            return "; ".join(failed) or None
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def _failure(proc: subprocess.Popen[bytes], err: IO[bytes]) -> str:
    name = Path(str(proc.args[0] if isinstance(proc.args, list) else proc.args)).name
    err.seek(0)
    # The first line is the cause; bsdtar's last is "Error exit delayed ...".
    text = err.read(MAX_OUTPUT).decode(errors="replace").strip().splitlines()
    return f"{name} exited {proc.returncode}: {text[0] if text else ''}"


def extract(pkg: KubePackage, dest: Path) -> Path:
    """/usr/bin/kubeadm of `pkg` as dest/usr/bin/kubeadm (mode 0755)."""
    problem = _run_pipeline(_extract_argv(pkg.path, dest))
    binary = dest / MEMBER
    if problem is not None and "Not found in archive" in problem:
        raise KubeadmBinaryError(f"v{pkg.version}", pkg.nvra, f"the rpm has no /{MEMBER}")
    if problem is not None:
        raise KubeadmBinaryError(
            f"v{pkg.version}", pkg.nvra, f"cannot extract /{MEMBER}: {problem}"
        )
    try:
        st = binary.lstat()
    except FileNotFoundError:
        raise KubeadmBinaryError(f"v{pkg.version}", pkg.nvra, f"the rpm has no /{MEMBER}") from None
    if not stat.S_ISREG(st.st_mode):  # a symlink would point anywhere on this machine
        raise KubeadmBinaryError(f"v{pkg.version}", pkg.nvra, f"/{MEMBER} is not a regular file")
    binary.chmod(0o755)
    return binary


# --- running -------------------------------------------------------------------------------


@functools.cache
def _unshare_net() -> list[str] | None:
    """argv prefix for a network namespace of its own: `unshare -n` as root; otherwise inside
    a user namespace (`--map-current-user`), where the kernel allows unprivileged ones. Not
    every container allows either, so it is tried once; None when it does not work."""
    tool = shutil.which("unshare")
    if tool is None:
        return None
    argv = [tool, "-n"] if os.geteuid() == 0 else [tool, "--map-current-user", "--net"]
    try:
        probe = subprocess.run([*argv, "true"], capture_output=True, timeout=10, env={})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [*argv, "--"] if probe.returncode == 0 else None


def _drop_to_nobody() -> list[str] | None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        return None
    try:
        user = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        return None
    ids = [f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    return [setpriv, *ids, "--no-new-privs", "--"]


def sandbox_prefix() -> tuple[list[str], str]:
    """argv prefix that drops network and privileges where possible, and what it does. The
    namespace comes first: creating it needs the root that setpriv then gives up."""
    prefix: list[str] = []
    notes = []
    net = _unshare_net()
    if net is not None:
        prefix += net
        notes.append("no network")
    nobody = _drop_to_nobody()
    if nobody is not None:
        prefix += nobody
        notes.append(f"as {UNPRIVILEGED_USER}")
    return prefix, ", ".join(notes) or "as the current user, with network"


def run_images_list(binary: Path, version: str, rpm: str) -> list[str]:
    """`kubeadm config images list --kubernetes-version V`, sandboxed; its parsed output."""
    prefix, how = sandbox_prefix()
    argv = [*prefix, str(binary), "config", "images", "list", "--kubernetes-version", version]
    log.debug("running %s (%s)", " ".join(argv), how)
    try:
        code, out, err = _bounded_run(argv, binary.parent, RUN_TIMEOUT, MAX_OUTPUT)
    except subprocess.TimeoutExpired:
        raise KubeadmBinaryError(version, rpm, f"did not finish in {RUN_TIMEOUT:.0f}s") from None
    except OSError as exc:
        raise KubeadmBinaryError(version, rpm, f"cannot run: {exc.strerror or exc}") from None
    if out is None:
        raise KubeadmBinaryError(version, rpm, f"printed over {MAX_OUTPUT} bytes")
    if code != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        last = lines[-1][:300] if lines else "no message"
        raise KubeadmBinaryError(version, rpm, f"exited {code}: {last}")
    return parse_output(out, version, rpm)


def _bounded_run(
    argv: list[str], cwd: Path, timeout: float, cap: int
) -> tuple[int, bytes | None, bytes]:
    """Run with an empty environment; (exit code, stdout or None past `cap`, stderr's last
    `cap` bytes). Both pipes are drained as the program writes (no deadlock on a chatty
    stderr), stdout is refused as soon as it exceeds `cap` (a hostile binary cannot make us
    buffer gigabytes), and one deadline covers the whole run."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={},  # nothing from ours: no proxy settings, no KUBECONFIG, no HOME
        cwd=cwd,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        try:
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise subprocess.TimeoutExpired(argv, timeout)
                for key, _ in sel.select(remaining):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    key.data.extend(chunk)
                    if key.data is out and len(out) > cap:
                        proc.kill()
                        proc.wait()
                        return -9, None, bytes(err)
                    if key.data is err:
                        del err[:-cap]
            code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
            proc.stderr.close()
    return code, bytes(out), bytes(err)


def parse_output(out: bytes, version: str, rpm: str) -> list[str]:
    """One image reference per line, as kubeadm prints them; anything else is refused."""
    if len(out) > MAX_OUTPUT:
        raise KubeadmBinaryError(version, rpm, f"printed over {MAX_OUTPUT} bytes")
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError:
        raise KubeadmBinaryError(version, rpm, "printed non-UTF-8 output") from None
    images: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            ref = parse_reference(line)
        except BadReference as exc:
            raise KubeadmBinaryError(version, rpm, f"printed {line[:80]!r}: {exc}") from None
        if ref.upstream not in images:
            images.append(ref.upstream)
    if not images or len(images) > MAX_IMAGES:
        raise KubeadmBinaryError(version, rpm, f"printed {len(images)} images")
    # A kubeadm that answers for another version (wrong rpm, broken flag) is not believed.
    if not any(i.endswith(f"/kube-apiserver:{version}") for i in images):
        raise KubeadmBinaryError(version, rpm, f"its list has no kube-apiserver:{version}")
    return images


def host_arch_packages(packages: list[KubePackage]) -> list[KubePackage]:
    """kubeadm rpms this machine can execute: its own arch first, then noarch."""
    machine = os.uname().machine
    order = {machine: 0, "noarch": 1}
    usable = [p for p in packages if p.name == "kubeadm" and p.arch in order]
    return sorted(usable, key=lambda p: order[p.arch])


def images_from_rpm(cfg: Config, pkg: KubePackage, version: str) -> BinaryList:
    """Extract, run, parse, cache. The scratch dir lives in the system temp dir: `nobody`
    must be able to reach the binary, which a 0700 data_dir would forbid."""
    scratch = Path(tempfile.mkdtemp(prefix="mirror-kubeadm-"))
    try:
        scratch.chmod(0o755)
        binary = extract(pkg, scratch)
        for parent in (binary.parent, binary.parent.parent):
            parent.chmod(0o755)
        images = run_images_list(binary, version, pkg.nvra)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = BinaryList(version, tuple(images), pkg.nvra, pkg.checksum)
    save_cached(cfg, result)
    log.info("kubeadm %s: image list from %s (%d images)", version, pkg.nvra, len(images))
    return result
