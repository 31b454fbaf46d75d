"""deploy/: systemd units, crontab, gunicorn.conf.py, nginx site, Containerfile.

Checked with the real tools where they are installed (systemd-analyze, gunicorn, nginx), each
skipped with the reason when absent. Servers listen on loopback only, run in their own session
and are killed by pid.
"""

from __future__ import annotations

import ast
import os
import re
import runpy
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import stop_process

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SERVICES = ("mirror-web.service", "mirror-registry.service", "mirror-sync.service")
UNITS = (*SERVICES, "mirror-sync.timer")
VENV = "/opt/mirror/venv"
CONFIG_ENV = "MIRROR_CONFIG=/etc/mirror/mirror.yaml"


# --- helpers --------------------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """systemd unit syntax: [Section], Key=Value, repeated keys kept in order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections.setdefault(current, [])
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        assert "=" in line, f"{path.name}: not Key=Value: {line!r}"
        key, value = line.split("=", 1)
        sections[current].append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}: expected one value, got {found}"
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(*logs: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in logs if p.exists())


def wait_port(port: int, proc: subprocess.Popen[bytes], *logs: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}:\n{_tail(*logs)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}:\n{_tail(*logs)}")


stop = stop_process  # started in its own session: signal its group, by its pid


# --- systemd units: static --------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_services_run_sandboxed_as_mirror(name: str) -> None:
    unit = parse_unit(DEPLOY / name)
    assert one(unit, "Service", "User") == "mirror"
    assert one(unit, "Service", "Group") == "mirror"
    assert CONFIG_ENV in values(unit, "Service", "Environment")
    assert one(unit, "Service", "ExecStart").startswith(f"{VENV}/bin/")
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "ReadWritePaths") == "/var/lib/mirror"
    for key in ("PrivateTmp", "NoNewPrivileges", "ProtectHome", "PrivateDevices"):
        assert one(unit, "Service", key) == "yes", key
    assert one(unit, "Service", "CapabilityBoundingSet") == ""
    # Files are published for nginx, which runs as another user.
    assert one(unit, "Service", "UMask") == "0022"


def test_registry_unit_runs_mirror_registry() -> None:
    unit = parse_unit(DEPLOY / "mirror-registry.service")
    assert one(unit, "Service", "ExecStart") == f"{VENV}/bin/mirror registry"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_web_unit_never_starts_a_registry() -> None:
    unit = parse_unit(DEPLOY / "mirror-web.service")
    exec_start = one(unit, "Service", "ExecStart")
    assert exec_start == f"{VENV}/bin/gunicorn --config /etc/mirror/gunicorn.conf.py"
    assert "mirror serve" not in exec_start and "registry" not in exec_start
    assert "mirror-registry.service" in one(unit, "Unit", "After")
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_sync_unit_counts_only_the_lock_as_success() -> None:
    unit = parse_unit(DEPLOY / "mirror-sync.service")
    assert one(unit, "Service", "Type") == "oneshot"
    assert one(unit, "Service", "ExecStart") == f"{VENV}/bin/mirror sync"
    success = {tok for v in values(unit, "Service", "SuccessExitStatus") for tok in v.split()}
    # 75 = another sync holds the lock; 1 (some failed), 2 (config), 3 (environment) are
    # failures the unit state must show.
    assert success == {"75"}
    assert "Install" not in unit  # started by the timer only


def test_timer_every_six_hours() -> None:
    unit = parse_unit(DEPLOY / "mirror-sync.timer")
    assert one(unit, "Timer", "Persistent") == "true"
    assert one(unit, "Timer", "RandomizedDelaySec")
    assert one(unit, "Timer", "Unit") == "mirror-sync.service"
    assert one(unit, "Install", "WantedBy") == "timers.target"
    spec = one(unit, "Timer", "OnCalendar")
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed: OnCalendar not evaluated")
    out = subprocess.run(
        [analyze, "calendar", "--iterations=4", spec],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TZ": "UTC"},  # no DST step between two runs
    ).stdout
    times = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+)", out)
    assert len(times) == 4, out
    from datetime import datetime

    stamps = [datetime.fromisoformat(t) for t in times]
    gaps = {(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)}
    assert gaps == {6 * 3600.0}, out


# --- systemd units: systemd-analyze -----------------------------------------------------------


def _systemd_analyze() -> str:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package: systemd)")
    return analyze


@pytest.fixture
def units_copy(tmp_path: Path) -> Path:
    """The units with /opt/mirror/venv pointing at stub executables that exist, because
    `systemd-analyze verify` checks that ExecStart's program is there."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("mirror", "gunicorn"):
        stub = venv / "bin" / name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    units = tmp_path / "units"
    units.mkdir()
    for name in UNITS:
        text = (DEPLOY / name).read_text()
        (units / name).write_text(text.replace(VENV, str(venv)))
    return units


def test_systemd_analyze_verify(units_copy: Path) -> None:
    analyze = _systemd_analyze()
    proc = subprocess.run(
        [analyze, "verify", "--man=no", *(str(units_copy / n) for n in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on unknown keys and unparsable values ("..., ignoring"): any message
    # about our files is a failure too.
    ours = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if str(units_copy) in line or any(n in line for n in UNITS)
    ]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr


def test_systemd_analyze_verify_catches_mistakes(units_copy: Path) -> None:
    """The check above would notice a typo: verify reports it (on stderr, exit 0)."""
    analyze = _systemd_analyze()
    broken = units_copy / "mirror-sync.service"
    broken.write_text(broken.read_text().replace("PrivateTmp=yes", "PrivateTmpp=yes"))
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert "PrivateTmpp" in proc.stdout + proc.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_systemd_security_exposure(units_copy: Path, name: str) -> None:
    analyze = _systemd_analyze()
    helptext = subprocess.run([analyze, "--help"], capture_output=True, text=True).stdout
    if "--offline" not in helptext or "--threshold" not in helptext:
        pytest.skip("systemd-analyze security --offline/--threshold needs systemd >= 250")
    proc = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=25", str(units_copy / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Exposure 0.0 (locked down) .. 10.0 (unprotected); threshold is in tenths: 2.5 "OK".
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr


# --- crontab ---------------------------------------------------------------------------------

_CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_ENV_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\s*=")


def _cron_field_ok(field: str, low: int, high: int) -> bool:
    for part in field.split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return False
        if base == "*":
            continue
        lo, _, hi = base.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return False
        if not low <= int(lo) <= high or (hi and not int(lo) <= int(hi) <= high):
            return False
    return True


def _crontab() -> tuple[dict[str, str], list[tuple[list[str], str]]]:
    env: dict[str, str] = {}
    jobs = []
    for raw in (DEPLOY / "crontab").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if _ENV_LINE.match(line):
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
            continue
        fields = line.split(None, 5)
        assert len(fields) == 6, f"not 5 time fields + command: {line!r}"
        jobs.append((fields[:5], fields[5]))
    return env, jobs


def test_crontab_line_parses() -> None:
    env, jobs = _crontab()
    assert len(jobs) == 1
    times, command = jobs[0]
    for field, (low, high) in zip(times, _CRON_RANGES, strict=True):
        assert _cron_field_ok(field, low, high), f"bad cron field {field!r} in {times}"
    assert times[1] == "*/6"
    assert "%" not in command  # cron turns an unescaped % into a newline
    assert f"{VENV}/bin/mirror sync" in command
    assert "flock" not in command  # the CLI locks itself (exit 75)
    assert env.get("MAILTO")
    assert env["MIRROR_CONFIG"] == "/etc/mirror/mirror.yaml"


@pytest.mark.parametrize("exit_code", [0, 1, 2, 3, 75])
def test_crontab_command_is_quiet_only_on_success(tmp_path: Path, exit_code: int) -> None:
    """cron mails whatever the job prints: nothing on exit 0, the code and the log otherwise."""
    env, jobs = _crontab()
    stub = tmp_path / "mirror"
    stub.write_text(
        '#!/bin/sh\necho "INFO repos: 3 ok" >&2\necho "mirror sync: 1 failed" >&2\n'
        f"exit {exit_code}\n"
    )
    stub.chmod(0o755)
    command = jobs[0][1].replace(f"{VENV}/bin/mirror", str(stub))
    run_env = {"HOME": str(tmp_path), "TMPDIR": str(tmp_path), **env}
    run_env["PATH"] = os.environ["PATH"]
    proc = subprocess.run(
        [env.get("SHELL", "/bin/sh"), "-c", command],
        capture_output=True,
        text=True,
        env=run_env,
        timeout=30,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == exit_code
    if exit_code == 0:
        assert output == ""
    else:
        assert f"exited {exit_code}" in output and "mirror sync: 1 failed" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror"]  # temp log removed


# --- gunicorn.conf.py --------------------------------------------------------------------------


def _load_gunicorn_conf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, object]:
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    # setenv first so monkeypatch records "absent" and removes what the conf file sets
    # (delenv of an absent variable records nothing, and the value would leak).
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    for var in ("MIRROR_BIND", "MIRROR_WORKERS", "MIRROR_THREADS"):
        monkeypatch.delenv(var, raising=False)
    return runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))


def test_gunicorn_conf_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = _load_gunicorn_conf(monkeypatch, tmp_path)
    assert conf["wsgi_app"] == "mirror.web.wsgi:app"
    assert conf["bind"] == ["127.0.0.1:8080"]
    assert conf["worker_class"] == "mirror.web.server.BoundedThreadWorker"  # gthread, bounded
    assert conf["workers"] == 4 and conf["threads"] == 4
    assert conf["sendfile"] is None  # gunicorn: None = sendfile on; True would turn it OFF
    assert conf["accesslog"] == "-"
    assert "%(r)s" in str(conf["access_log_format"])
    assert conf["control_socket"] == str(tmp_path / "run" / "gunicorn.ctl")
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "run" / "prometheus")


def test_gunicorn_conf_names_are_gunicorn_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every public name is a setting gunicorn knows (it ignores unknown ones silently), and
    gunicorn's own validators accept every value."""
    from gunicorn.config import Config

    conf = _load_gunicorn_conf(monkeypatch, tmp_path)
    cfg = Config()
    tree = ast.parse((DEPLOY / "gunicorn.conf.py").read_text())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)} | {
        t.id
        for n in tree.body
        if isinstance(n, ast.Assign | ast.AnnAssign)
        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
        if isinstance(t, ast.Name)
    }
    from mirror.web.gunicorn_settings import SHARED  # what `mirror serve` uses too

    defined |= set(SHARED)
    public = {k: conf[k] for k in defined if not k.startswith("_")}
    assert {"wsgi_app", "bind", "workers", "on_starting", "child_exit"} <= set(public)
    unknown = sorted(set(public) - set(cfg.settings))
    assert not unknown, f"not gunicorn settings: {unknown}"
    for key, value in public.items():
        cfg.set(key, value)
    assert cfg.worker_class_str == "mirror.web.server.BoundedThreadWorker"
    monkeypatch.delenv("SENDFILE", raising=False)
    assert cfg.sendfile is True  # what the workers look at: sendfile(2) for file responses


def test_gunicorn_conf_agrees_with_mirror_serve(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """mirror-web.service and `mirror serve` run gunicorn the same way."""
    from mirror.web.server import gunicorn_options

    conf = _load_gunicorn_conf(monkeypatch, tmp_path)
    ours = gunicorn_options("127.0.0.1:8080", workers=4, threads=4)
    for key in ("worker_class", "workers", "threads", "timeout", "graceful_timeout"):
        assert conf[key] == ours[key], key
    assert conf["access_log_format"] == ours["access_log_format"]
    assert "sendfile" not in ours and conf["sendfile"] is None  # both leave sendfile on


def test_gunicorn_conf_env_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MIRROR_BIND", "0.0.0.0:8080")
    monkeypatch.setenv("MIRROR_WORKERS", "2")
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    # setenv first so monkeypatch records "absent" and removes what the conf file sets
    # (delenv of an absent variable records nothing, and the value would leak).
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    conf = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    assert conf["bind"] == ["0.0.0.0:8080"] and conf["workers"] == 2


# --- gunicorn + the app, for real ------------------------------------------------------------

WSGI_PROBE = """\
# What mirror/web/wsgi.py holds: the app for gunicorn's wsgi_app = "mirror.web.wsgi:app".
from mirror.config import config_path_from_env, load_config
from mirror.web import create_app

app = create_app(load_config(config_path_from_env(None)))
"""

RPM_BYTES = bytes(range(256)) * 64  # 16 KiB stand-in for an rpm
REPOMD = b'<?xml version="1.0"?>\n<repomd/>\n'


@dataclass
class Site:
    root: Path  # temp dir
    repos: Path  # <data_dir>/repos
    web_port: int


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """gunicorn with deploy/gunicorn.conf.py and the real app, on a loopback port, serving a
    data dir with one published repo."""
    pytest.importorskip("gunicorn")
    root = tmp_path_factory.mktemp("deploy-site")
    (root / "repos.d").mkdir()
    repo = root / "data" / "repos" / "el9" / "x86_64"
    (repo / "Packages").mkdir(parents=True)
    (repo / "repodata").mkdir()
    (repo / "Packages" / "tool-1.0-1.x86_64.rpm").write_bytes(RPM_BYTES)
    (repo / "repodata" / "repomd.xml").write_bytes(REPOMD)
    (repo / "repodata" / ".repomd.xml.tmp-1").write_bytes(b"half written")
    (root / "mirror.yaml").write_text(
        "data_dir: ./data\nrepos_dir: ./repos.d\nimages_file: null\n"
        "registry: {url: '127.0.0.1:1', embedded: false}\n"
    )
    (root / "probe").mkdir()
    (root / "probe" / "mirror_wsgi_probe.py").write_text(WSGI_PROBE)
    port = free_port()
    env = {
        **os.environ,
        "MIRROR_CONFIG": str(root / "mirror.yaml"),
        "MIRROR_BIND": f"127.0.0.1:{port}",
        "MIRROR_WORKERS": "1",
        "MIRROR_THREADS": "2",
        "RUNTIME_DIRECTORY": str(root / "run"),
        "PYTHONPATH": os.pathsep.join([str(root / "probe"), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    (root / "run").mkdir()
    gunicorn = Path(sys.executable).with_name("gunicorn")
    cmd = [str(gunicorn), "--config", str(DEPLOY / "gunicorn.conf.py")]
    try:
        import mirror.web.wsgi  # noqa: F401  (once it exists, the conf's own wsgi_app is used)
    except ImportError:
        cmd.append("mirror_wsgi_probe:app")  # overrides wsgi_app, same content
    log = root / "gunicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_port(port, proc, log)
        deadline = time.monotonic() + 20
        while True:  # bound by the arbiter first; the worker loads the app after
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, _tail(log)
            time.sleep(0.1)
        yield Site(root, root / "data" / "repos", port)
    finally:
        stop(proc)


def test_gunicorn_serves_the_app_with_the_conf(site: Site) -> None:
    base = f"http://127.0.0.1:{site.web_port}"
    resp = requests.get(f"{base}/repos/el9/x86_64/repodata/repomd.xml", timeout=5)
    assert resp.status_code == 200 and resp.content == REPOMD
    assert "no-cache" in resp.headers["Cache-Control"]
    rng = requests.get(
        f"{base}/repos/el9/x86_64/Packages/tool-1.0-1.x86_64.rpm",
        headers={"Range": "bytes=100-199"},
        timeout=5,
    )
    assert rng.status_code == 206 and rng.content == RPM_BYTES[100:200]
    # prometheus multiprocess dir from the conf: counters of every worker add up.
    metrics = requests.get(f"{base}/metrics", timeout=5).text
    assert "mirror_http_requests" in metrics
    assert any((site.root / "run" / "prometheus").iterdir())
    # gunicorn's arbiter opens its control socket in a thread of its own, a moment after the
    # workers answer: wait for it rather than race it.
    control = site.root / "run" / "gunicorn.ctl"
    deadline = time.monotonic() + 10
    while not control.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert control.exists() or not _gunicorn_has_control_socket()


def _gunicorn_has_control_socket() -> bool:
    from gunicorn.config import Config

    return "control_socket" in Config().settings


# --- nginx ------------------------------------------------------------------------------------


def _nginx() -> str:
    found = os.environ.get("NGINX") or shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if not found:
        pytest.skip("nginx not installed (Debian package: nginx-light)")
    return found


def _nginx_version(nginx: str) -> tuple[int, ...]:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in match.groups()) if match else (0,)


def _nginx_temp_paths(nginx: str, tmp: Path) -> str:
    """Temp dirs of the compiled-in modules, under tmp (the defaults are under /var/lib)."""
    build = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    lines = [f"client_body_temp_path {tmp}/client_body;"]
    for module in ("proxy", "fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in build:
            lines.append(f"{module}_temp_path {tmp}/{module};")
    return "\n        ".join(lines)


def site_config(repos: Path, listen_port: int, web_port: int) -> str:
    """deploy/nginx-mirror.conf with only its addresses and data dir moved to the test's."""
    text = (DEPLOY / "nginx-mirror.conf").read_text()
    swaps = [
        ("listen 80;", f"listen 127.0.0.1:{listen_port};"),
        ("listen [::]:80;", ""),
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{web_port};"),
    ]
    for old, new in swaps:
        assert text.count(old) == 1, f"nginx-mirror.conf no longer has exactly one {old!r}"
        text = text.replace(old, new)
    assert "root /var/lib/mirror/data;" in text
    return text.replace("/var/lib/mirror/data", str(repos.parent))


def test_nginx_deploy_conf_is_what_mirror_serve_runs() -> None:
    """One source for the location rules: the deploy file is the generator's output."""
    from mirror.web.nginx import deploy_config

    assert (DEPLOY / "nginx-mirror.conf").read_text() == deploy_config(), (
        "regenerate: python -m mirror.web.nginx > deploy/nginx-mirror.conf"
    )


def nginx_setup(tmp: Path, repos: Path, web_port: int) -> tuple[list[str], int]:
    """A minimal nginx.conf including the site, everything under tmp; returns argv, port."""
    nginx = _nginx()
    port = free_port()
    (tmp / "site.conf").write_text(site_config(repos, port, web_port))
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
    {_nginx_temp_paths(nginx, tmp)}
    include {tmp}/site.conf;
}}
"""
    )
    argv = [nginx, "-p", str(tmp), "-c", str(conf)]
    if _nginx_version(nginx) >= (1, 19, 5):
        argv += ["-e", str(tmp / "error.log")]  # not the compiled-in /var/log/nginx/...
    return argv, port


def test_nginx_config_syntax(tmp_path: Path) -> None:
    argv, _ = nginx_setup(tmp_path, tmp_path / "repos", free_port())
    proc = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "test is successful" in proc.stderr
    assert "[warn]" not in proc.stderr and "[emerg]" not in proc.stderr, proc.stderr


@pytest.fixture
def nginx_site(tmp_path: Path, site: Site) -> Iterator[str]:
    argv, port = nginx_setup(tmp_path, site.repos, site.web_port)
    log = tmp_path / "nginx.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_port(port, proc, log, tmp_path / "error.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def test_nginx_serves_repos_from_disk(nginx_site: str, site: Site) -> None:
    rpm = f"{nginx_site}/repos/el9/x86_64/Packages/tool-1.0-1.x86_64.rpm"
    full = requests.get(rpm, timeout=5)
    assert full.status_code == 200 and full.content == RPM_BYTES
    assert full.headers["Content-Type"] == "application/x-rpm"
    assert full.headers["Server"].startswith("nginx")  # from disk, not proxied
    assert "Cache-Control" not in full.headers

    part = requests.get(rpm, headers={"Range": "bytes=1000-1999"}, timeout=5)
    assert part.status_code == 206
    assert part.content == RPM_BYTES[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(RPM_BYTES)}"

    tail = requests.get(rpm, headers={"Range": "bytes=-10"}, timeout=5)
    assert tail.status_code == 206 and tail.content == RPM_BYTES[-10:]

    repomd = requests.get(f"{nginx_site}/repos/el9/x86_64/repodata/repomd.xml", timeout=5)
    assert repomd.status_code == 200 and repomd.content == REPOMD
    assert repomd.headers["Cache-Control"] == "no-cache"
    assert repomd.headers["Content-Type"].startswith("text/xml")

    hidden = requests.get(f"{nginx_site}/repos/el9/x86_64/repodata/.repomd.xml.tmp-1", timeout=5)
    assert hidden.status_code == 404

    listing = requests.get(f"{nginx_site}/repos/el9/x86_64/Packages/", timeout=5)
    assert listing.status_code == 200 and "tool-1.0-1.x86_64.rpm" in listing.text

    # A sync renames a new repomd.xml into place: the next request sees it (no fd cache).
    new = b'<?xml version="1.0"?>\n<repomd revision="2"/>\n'
    target = site.repos / "el9" / "x86_64" / "repodata" / "repomd.xml"
    tmp = target.with_name(".repomd.xml.tmp-2")
    tmp.write_bytes(new)
    os.replace(tmp, target)
    try:
        again = requests.get(f"{nginx_site}/repos/el9/x86_64/repodata/repomd.xml", timeout=5)
        assert again.content == new
    finally:
        target.write_bytes(REPOMD)


def test_nginx_proxies_the_rest_to_gunicorn(nginx_site: str) -> None:
    health = requests.get(f"{nginx_site}/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert health.headers["Server"].startswith("nginx")
    repofile = requests.get(f"{nginx_site}/repofiles/mirror.repo", timeout=5)
    assert repofile.status_code == 200 and "Generated by the air-gap mirror" in repofile.text


# --- Containerfile, README ----------------------------------------------------------------------

_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def test_containerfile() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    logical: list[str] = []
    continued = False
    for raw in text.splitlines():
        line = raw.strip()
        if not continued and (not line or line.startswith("#")):
            continue
        if not continued:
            logical.append(line)
        continued = line.endswith("\\")
    assert logical[0].split()[0] == "FROM"
    assert logical[0].split()[1].startswith(("docker.io/library/python:3.11-slim", "rockylinux"))
    for instr in logical:
        assert instr.split()[0] in _INSTRUCTIONS, instr
    for package in ("skopeo", "createrepo", "docker-registry", "gnupg"):
        assert package in text, package
    assert re.search(r'^VOLUME \["/var/lib/mirror"\]', text, re.M)
    assert re.search(r'^CMD \["mirror", "serve", "--bind", "0\.0\.0\.0:8080"\]', text, re.M)
    assert re.search(r"^EXPOSE 8080/tcp 5000/tcp", text, re.M)
    assert "MIRROR_CONFIG=/etc/mirror/mirror.yaml" in text
    # What it copies from the build context (the repository root) exists.
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in src.split():
            assert (DEPLOY.parent / path).exists(), path


def test_readme_covers_install_and_alerting() -> None:
    text = (DEPLOY / "README.md").read_text()
    for needle in (
        "useradd",
        "python3.11 -m venv /opt/mirror/venv",
        "systemctl enable --now mirror-sync.timer",
        "--add-port=8080/tcp",
        "--add-port=5000/tcp",
        "semanage fcontext",
        "restorecon",
        "httpd_sys_content_t",
        "setsebool -P httpd_can_network_connect 1",
        "semanage port",
        "| 75 |",
    ):
        assert needle in text, needle
