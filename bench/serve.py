"""serving scenarios: `mirror serve` vs nginx serving the same files, loaded with wrk.

A one-package upstream (a signed ~1 MB rpm) is synced with `mirror sync` (untimed, verified),
then `mirror serve --bind 127.0.0.1:PORT` starts exactly as a user starts it. nginx gets a
minimal generated config: sendfile on, the published tree under /repos/ and a static copy of
the /repofiles/mirror.repo that mirror serves. Both must serve byte-identical bodies before
any load is measured; then `wrk -t2 -cC -dDs --latency URL` per URL, connection count and
server, alternating which server goes first.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    BenchError,
    Checks,
    Section,
    Service,
    SummaryRow,
    free_port,
    http_get,
    log,
    markdown_table,
    median,
    mirror_cmd,
    mirror_env,
    ordered,
    ratio,
    run_measured,
    sha256_file,
    shown,
    span,
    wait_http,
)
from bench.yum import REPO_ID, build_signed, write_repo_file
from tests.fixtures import GpgKey, Pkg, UpstreamServer, make_repo

RPM_PAYLOAD = 1_000_000  # bytes of incompressible payload: a ~1 MB rpm
URLS = {
    "rpm": ("serving a 1 MB rpm", 0.9),
    "repomd": ("serving repomd.xml", 0.9),
    "repofile": ("serving /repofiles/mirror.repo", 0.5),
}


@dataclass(frozen=True)
class ServeOptions:
    duration: int = 10  # seconds per wrk run
    connections: tuple[int, ...] = (32, 256)
    threads: int = 2
    runs: int = 3


@dataclass(frozen=True)
class WrkResult:
    rps: float
    transfer: float  # bytes/s
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    socket_errors: int


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_BYTES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise BenchError(f"wrk: cannot parse latency {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse_wrk(text: str) -> WrkResult:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text, re.MULTILINE)
        if not match:
            raise BenchError(f"wrk output has no {pattern!r}:\n{text[-2000:]}")
        return match

    transfer = find(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return WrkResult(
        rps=float(find(r"^Requests/sec:\s+([\d.]+)")[1]),
        transfer=float(transfer[1]) * _BYTES[transfer[2]],
        p50_ms=_ms(find(r"^\s+50%\s+(\S+)")[1]),
        p99_ms=_ms(find(r"^\s+99%\s+(\S+)")[1]),
        requests=int(find(r"^\s+(\d+) requests in")[1]),
        non2xx=int(non2xx[1]) if non2xx else 0,
        socket_errors=sum(int(x) for x in sock.groups()) if sock else 0,
    )


def nginx_config(work: Path, port: int, repos: Path, static: Path) -> Path:
    """Minimal nginx: sendfile on, the published tree, a static copy of mirror.repo."""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the 0700 scratch dir
    conf = work / "nginx.conf"
    conf.write_text(
        f"# written by bench/serve.py\n{user}daemon off;\nworker_processes auto;\n"
        f"pid {work}/nginx.pid;\nerror_log {work}/error.log warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "    include /etc/nginx/mime.types;\n    default_type application/octet-stream;\n"
        f"    access_log {work}/access.log;\n    sendfile on;\n    tcp_nopush on;\n"
        + "".join(
            f"    {sub}_temp_path {work}/tmp/{sub.split('_')[0]};\n"
            for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"    server {{\n        listen 127.0.0.1:{port};\n"
        f"        location /repos/ {{ alias {repos}/; }}\n"
        f"        location = /repofiles/mirror.repo {{ alias {static}/mirror.repo; "
        "default_type text/plain; }\n    }\n}\n"
    )
    return conf


def wrk(url: str, connections: int, opts: ServeOptions, log_file: Path) -> WrkResult:
    cmd = ["wrk", f"-t{opts.threads}", f"-c{connections}", f"-d{opts.duration}s", "--latency", url]
    run_measured(cmd, log_file, timeout=opts.duration + 60, name="wrk")
    return parse_wrk(log_file.read_text())


def publish_fixture(
    work: Path, key: GpgKey, checks: Checks, python: str, src: Path, port: int
) -> tuple[Path, dict[str, Path]]:
    """Upstream with one ~1 MB signed rpm, synced by mirror. Returns (config, url -> file)."""
    repo = work / "upstream" / "repo"
    build_signed(
        [Pkg("bench-big", "1.0", payload_size=RPM_PAYLOAD)], repo, key, work / "scratch", "Packages"
    )
    make_repo(repo, key)
    base = work / "mirror"
    base.mkdir()
    config = base / "mirror.yaml"
    config.write_text(
        "# written by bench/serve.py\n"
        f"data_dir: ./data\nbase_url: http://127.0.0.1:{port}\nrepos_dir: ./repos.d\n"
        f"registry:\n  url: 127.0.0.1:{free_port()}\n  embedded: false\n"
    )
    with UpstreamServer(work / "upstream") as server:
        write_repo_file(base / "repos.d", server, repo)
        run_measured(
            mirror_cmd(python, config, "sync", "--only", "repos"),
            work / "logs" / "sync.log",
            mirror_env(src),
            base,
            name="mirror sync",
        )
    (rpm,) = (repo / "Packages").glob("*.rpm")
    published = base / "data" / "repos" / REPO_ID
    files = {
        "rpm": published / "Packages" / rpm.name,
        "repomd": published / "repodata" / "repomd.xml",
    }
    checks.ok("serve", sha256_file(files["rpm"]) == sha256_file(rpm), "published rpm differs")
    checks.ok(
        "serve",
        files["repomd"].read_bytes() == (repo / "repodata/repomd.xml").read_bytes(),
        "published repomd.xml differs",
    )
    return config, files


def run_serve(
    work: Path, key: GpgKey, opts: ServeOptions, checks: Checks, python: str, src: Path
) -> Section:
    section = Section("serve")
    mport, nport = free_port(), free_port()
    config, files = publish_fixture(work, key, checks, python, src, mport)
    paths = {
        "rpm": f"/repos/{REPO_ID}/Packages/{files['rpm'].name}",
        "repomd": f"/repos/{REPO_ID}/repodata/repomd.xml",
        "repofile": "/repofiles/mirror.repo",
    }
    serve_cmd = mirror_cmd(python, config, "serve", "--bind", f"127.0.0.1:{mport}")
    section.commands["serve mirror"] = shown(serve_cmd, config.parent, src)
    results: dict[tuple[str, int, str], list[WrkResult]] = {}
    services: list[Service] = []
    try:
        mirror = Service.start(
            "mirror serve",
            serve_cmd,
            work / "logs" / "mirror-serve.log",
            mirror_env(src),
            config.parent,
        )
        services.append(mirror)
        wait_http(f"http://127.0.0.1:{mport}{paths['repofile']}", 60, mirror)
        status, repofile = http_get(f"http://127.0.0.1:{mport}{paths['repofile']}")
        checks.ok(
            "serve",
            status == 200 and f"[{REPO_ID}]".encode() in repofile,
            f"mirror.repo from mirror serve: HTTP {status}",
        )
        static = work / "static"
        static.mkdir()
        files["repofile"] = static / "mirror.repo"
        files["repofile"].write_bytes(repofile)

        conf = nginx_config(work / "nginx", nport, config.parent / "data" / "repos", static)
        nginx_cmd = [
            "nginx",
            "-c",
            str(conf),
            "-p",
            str(work / "nginx"),
            "-e",
            str(work / "nginx" / "error.log"),
        ]
        check = subprocess.run([*nginx_cmd, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise BenchError(f"nginx -t: {check.stderr.strip()}")
        nginx = Service.start("nginx", nginx_cmd, work / "logs" / "nginx.log")
        services.append(nginx)
        section.commands["serve nginx"] = shown(nginx_cmd) + f"   # config: {conf}"
        wait_http(f"http://127.0.0.1:{nport}{paths['repofile']}", 30, nginx)
        ports = {"mirror": mport, "nginx": nport}
        for what, path in paths.items():
            want = files[what].read_bytes()
            for server, port in ports.items():
                status, body = http_get(f"http://127.0.0.1:{port}{path}")
                checks.ok(
                    "serve",
                    status == 200 and body == want,
                    f"{server} {path}: HTTP {status}, {len(body)} bytes, "
                    f"want {len(want)} identical bytes",
                )

        for run in range(opts.runs):
            for what, path in paths.items():
                for conns in opts.connections:
                    for server in ordered(["mirror", "nginx"], run):
                        for svc in services:
                            if not svc.alive():
                                raise BenchError(f"{svc.name} died:\n{svc.tail()}")
                        url = f"http://127.0.0.1:{ports[server]}{path}"
                        label = f"run{run}-{what}-c{conns}-{server}"
                        res = wrk(url, conns, opts, work / "logs" / f"wrk-{label}.log")
                        checks.ok("serve", res.requests > 0, f"wrk {label}: no requests")
                        results.setdefault((what, conns, server), []).append(res)
                        log(
                            f"serve run {run + 1}/{opts.runs} {what:8} c{conns:<3} {server:6} "
                            f"{res.rps:9.0f} req/s p99 {res.p99_ms:7.2f} ms "
                            f"non-2xx {res.non2xx} socket errors {res.socket_errors}"
                        )
    finally:
        for svc in reversed(services):
            svc.stop()
    wrk_example = shown(
        [
            "wrk",
            f"-t{opts.threads}",
            f"-c{opts.connections[0]}",
            f"-d{opts.duration}s",
            "--latency",
            "URL",
        ]
    )
    section.commands["serve load"] = wrk_example + "   # URL: " + ", ".join(paths.values())
    section.rows = summary(results, opts)
    section.details.append(detail_table(results, opts, paths))
    return section


def _fmt(res: list[WrkResult]) -> str:
    return f"{median(r.rps for r in res):,.0f} req/s, p99 {median(r.p99_ms for r in res):.1f} ms"


def summary(
    results: dict[tuple[str, int, str], list[WrkResult]], opts: ServeOptions
) -> list[SummaryRow]:
    rows = []
    for what, (name, target) in URLS.items():
        for conns in opts.connections:
            m, n = results[(what, conns, "mirror")], results[(what, conns, "nginx")]
            r = ratio(median(x.rps for x in m), median(x.rps for x in n))
            errors = sum(x.non2xx + x.socket_errors for x in m)
            met = r is not None and r >= target and errors == 0
            notes = (
                f"non-2xx {sum(x.non2xx for x in m)} vs {sum(x.non2xx for x in n)}, "
                f"socket errors {sum(x.socket_errors for x in m)} vs "
                f"{sum(x.socket_errors for x in n)}"
            )
            rows.append(
                SummaryRow(
                    f"{name}, {conns} connections",
                    _fmt(m),
                    _fmt(n) + " (nginx)",
                    r,
                    f"≥ {target}× req/s",
                    met,
                    notes,
                )
            )
    return rows


def detail_table(
    results: dict[tuple[str, int, str], list[WrkResult]], opts: ServeOptions, paths: dict[str, str]
) -> str:
    header = [
        "url",
        "conns",
        "server",
        "req/s",
        "min-max req/s",
        "transfer MiB/s",
        "p50 ms",
        "p99 ms",
        "non-2xx",
        "socket errors",
        "mirror/nginx req/s",
    ]
    rows = []
    for what, path in paths.items():
        for conns in opts.connections:
            for server in ("mirror", "nginx"):
                res = results[(what, conns, server)]
                rps = [r.rps for r in res]
                cell = ""
                if server == "nginx":
                    mirror_rps = median(r.rps for r in results[(what, conns, "mirror")])
                    cell = f"{mirror_rps / median(rps):.2f}x" if median(rps) else "-"
                rows.append(
                    [
                        path,
                        str(conns),
                        server,
                        f"{median(rps):,.0f}",
                        span(rps, "{:,.0f}"),
                        f"{median(r.transfer for r in res) / 1024**2:.1f}",
                        f"{median(r.p50_ms for r in res):.2f}",
                        f"{median(r.p99_ms for r in res):.2f}",
                        str(sum(r.non2xx for r in res)),
                        str(sum(r.socket_errors for r in res)),
                        cell,
                    ]
                )
    note = (
        f"wrk -t{opts.threads} -d{opts.duration}s --latency, {opts.runs} run(s) per cell, medians; "
        "non-2xx and socket errors are totals over the runs. wrk, mirror serve and nginx "
        f"share the machine's {os.cpu_count()} cores."
    )
    return "### serving: mirror serve vs nginx\n\n" + markdown_table(header, rows) + "\n\n" + note
