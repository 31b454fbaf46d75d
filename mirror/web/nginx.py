"""nginx in front of the app: the one source of the location rules.

`site_config()` is the `upstream` + `server` part, used both by `mirror serve` (inside the
nginx.conf it generates, `main_config()`) and for `deploy/nginx-mirror.conf`, which is this
module's output for the deploy layout (`python -m mirror.web.nginx > deploy/nginx-mirror.conf`;
tests/test_deploy.py checks the two agree).

nginx serves from disk: `/repos/`, `/keys/`, `/files/` and `/charts/` (published by sync),
and the rendered node documents under `<data_dir>/www/` (mirror.web.static). Everything
else, and any rendered path asked for with a query string or not rendered yet, goes to
gunicorn.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from mirror.files import content_types
from mirror.web import documents
from mirror.web.static import WWW_DIR

DEPLOY_DATA_DIR = Path("/var/lib/mirror/data")
DEPLOY_LISTEN = ("80", "[::]:80")
DEPLOY_UPSTREAM = "127.0.0.1:8080"

_PROXY = """\
        proxy_pass http://mirror_app;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_connect_timeout 5s;
        # gunicorn's own timeout is 120 s.
        proxy_read_timeout 130s;"""


def _types(mapping: dict[str, str], indent: str) -> str:
    inner = "".join(f"{indent}    {mime:27} {ext};\n" for mime, ext in mapping.items())
    return f"{indent}types {{\n{inner}{indent}}}"


def _by_type(mimetypes: dict[str, str]) -> dict[str, str]:
    """suffix -> type, as nginx's `types {}` wants it: type -> suffixes."""
    by_type: dict[str, list[str]] = {}
    for ext, mime in mimetypes.items():
        by_type.setdefault(mime, []).append(ext)
    return {mime: " ".join(exts) for mime, exts in by_type.items()}


def _rendered_location() -> str:
    """The regex matching every URL a rendered document may have (mirror.web.documents)."""
    alts = [re.escape(p) for p in documents.PREFIXES]
    alts += [re.escape(p) + "$" for p in documents.EXACT]
    return "^(" + "|".join(alts) + ")"


def site_config(data_dir: Path, listen: Sequence[str], upstream: str) -> str:
    """upstream{} + server{}: static files from `data_dir`, the rest proxied to `upstream`."""
    listens = "".join(f"    listen {addr};\n" for addr in listen)
    # The app adds "; charset=utf-8" to text/* only; so does nginx.
    charset_types = " ".join(sorted({t for t in documents.MIMETYPES.values() if "text/" in t}))
    return f"""\
upstream mirror_app {{
    server {upstream};
    keepalive 16;
}}

server {{
{listens}
    # Files come straight from the data dir: sendfile, byte ranges, ETag and Last-Modified.
    root {data_dir};
    # No symlink below the data dir is followed: a link planted in a published tree must not
    # hand out a file from elsewhere (the app refuses them too).
    disable_symlinks on from=$document_root;
    sendfile on;
    tcp_nopush on;
    # Byte ranges (dnf resumes large rpms) need the file as it is on disk: never gzip here.
    gzip off;
    max_ranges 16;
    etag on;
    # No open_file_cache: repomd.xml is replaced by rename(2) at the end of every sync, and
    # a cached descriptor would keep serving the old one.
    absolute_redirect off;
    # Slow or hostile clients are cut off instead of holding a connection (slowloris).
    client_header_timeout 10s;
    client_body_timeout 10s;
    send_timeout 60s;
    client_max_body_size 1m;

    # Published repos: <data_dir>/repos/.
    location ^~ /repos/ {{
        autoindex on;
        autoindex_exact_size off;
        autoindex_localtime off;
{_types(_by_type(documents.REPO_MIMETYPES), "        ")}
        default_type application/octet-stream;

        # Like the app: hidden files (temporary `.repomd.xml.tmp-*`) and partial downloads
        # are not part of a published tree.
        location ~ "/\\.|\\.part$" {{
            return 404;
        }}

        # repomd.xml (and .asc/.key) is the one file that changes in place: clients and any
        # proxy must revalidate it every time (the files it lists carry checksums in their
        # names). nginx's ETag is mtime-size only, equal for two same-size repomd.xml
        # published within a second, so no conditional answers (304) for it at all.
        location ~ "/repomd\\.xml(\\.[a-z]+)?$" {{
            add_header Cache-Control "no-cache" always;
            etag off;
            if_modified_since off;
        }}
    }}

    # Repo keys: <data_dir>/keys/<repo-id>.gpg, or keys/<repo-id>/<minor>.gpg when they vary.
    location ^~ /keys/ {{
        types {{
            application/pgp-keys gpg;
        }}
        default_type application/octet-stream;
        location ~ "/\\." {{
            return 404;
        }}
    }}

    # Mirrored files (<data_dir>/files/, mirror.files) and chart repositories
    # (<data_dir>/charts/<repo-name>/, mirror.charts): upstream content, so one type table
    # with nothing a browser would run, and no sniffing; archives never get a Content-Encoding.
    location ^~ /files/ {{
        autoindex on;
        autoindex_exact_size off;
{_types(_by_type(content_types.MIMETYPES), "        ")}
        default_type {content_types.DEFAULT};
        add_header X-Content-Type-Options "nosniff" always;
        location ~ "/\\.|\\.part$" {{
            return 404;
        }}
    }}

    location ^~ /charts/ {{
        autoindex on;
        autoindex_exact_size off;
{_types(_by_type(content_types.MIMETYPES), "        ")}
        default_type {content_types.DEFAULT};
        add_header X-Content-Type-Options "nosniff" always;
        location ~ "/\\.|\\.part$" {{
            return 404;
        }}
        # index.yaml is rewritten in place by every charts sync (as repomd.xml is): always
        # revalidated, and no mtime-size ETag that two same-size indexes could share.
        location ~ "/index\\.yaml$" {{
            add_header Cache-Control "no-cache" always;
            add_header X-Content-Type-Options "nosniff" always;
            etag off;
            if_modified_since off;
        }}
    }}

    # Node documents rendered at sync and start time into <data_dir>/{WWW_DIR}/ (.repo files,
    # hosts.toml, setup scripts, CRI-O config, images.txt). With a query string the app renders
    # them (e.g. /containerd/setup.sh?kubernetes_version=...), as it does for any not rendered.
    location ~ "{_rendered_location()}" {{
        root {data_dir / WWW_DIR};
{_types(_by_type(documents.MIMETYPES), "        ")}
        default_type text/plain;
        charset utf-8;
        charset_types {charset_types};
        error_page 418 = @app;
        if ($args != "") {{
            return 418;
        }}
        location ~ "/\\." {{
            return 404;
        }}
        try_files $uri @app;
    }}

    location @app {{
{_PROXY}
    }}

    # Everything else (status page, /api/, /metrics, /healthz, /kubeadm/config.yaml): the app.
    location / {{
{_PROXY}
    }}
}}
"""


def find_nginx() -> str | None:
    """nginx on PATH, or in the sbin directories a non-root PATH often lacks."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/sbin")


def temp_paths(nginx: str, runtime: Path) -> str:
    """Temp dirs of the compiled-in modules, under `runtime` (the compiled-in defaults under
    /var/lib/nginx may not exist or be writable)."""
    build = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10).stderr
    lines = [f"client_body_temp_path {runtime}/client_body;"]
    for module in ("proxy", "fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in build:
            lines.append(f"{module}_temp_path {runtime}/{module};")
    return "\n    ".join(lines)


def worker_user(data_dir: Path) -> str | None:
    """The `user` line when the master runs as root: the owner of the data dir, i.e. the
    account that syncs into it, so the workers can read what it publishes (on a deploy
    layout that is `mirror`; a root-owned data dir means root workers). None when not root:
    then the workers run as we do and nginx ignores `user`."""
    if os.geteuid() != 0:
        return None
    import grp
    import pwd

    st = data_dir.stat()
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:  # ids without names: nginx only takes names
        return "root root"
    return f"{user} {group}"


def main_config(
    *, nginx: str, site: str, runtime: Path, logs: Path, user: str | None, workers: str = "auto"
) -> str:
    """The whole nginx.conf `mirror serve` runs nginx with (`daemon off`, in the foreground,
    as its child): pid and temp files in `runtime`, logs in `logs` and errors on stderr."""
    user_line = f"user {user};\n" if user else ""
    return f"""\
# Generated by `mirror serve` at every start; edits are lost. The site part is
# mirror.web.nginx.site_config(), the same as deploy/nginx-mirror.conf.
daemon off;
{user_line}worker_processes {workers};
pid {runtime}/nginx.pid;
error_log stderr warn;
error_log {logs}/nginx-error.log warn;
# SIGQUIT (graceful stop) waits at most this long for requests in flight.
worker_shutdown_timeout 5s;
events {{
    worker_connections 4096;
}}
http {{
    access_log {logs}/nginx-access.log combined buffer=64k flush=1s;
    {temp_paths(nginx, runtime)}
    server_tokens off;
    default_type application/octet-stream;
    keepalive_timeout 65s;
    tcp_nodelay on;

{site}}}
"""


DEPLOY_HEADER = """\
# /etc/nginx/conf.d/mirror.conf: nginx in front of mirror-web (gunicorn).
#
# GENERATED by `python -m mirror.web.nginx > deploy/nginx-mirror.conf` from the rules
# `mirror serve` runs nginx with (mirror/web/nginx.py); edit those, not this file.
#
# nginx serves the published yum trees and keys itself (the bulk of the traffic: rpms and
# repodata, with sendfile and byte ranges, no Python in the path) and the node documents
# `mirror sync` renders into <data_dir>/www/; everything else (status page, /metrics,
# /api/, /kubeadm/config.yaml, any request with a query string on a rendered path) goes to
# gunicorn on 127.0.0.1:8080. Nodes then use base_url: http://<this host>/ (port 80).
#
# Rocky 9: the stock /etc/nginx/nginx.conf includes conf.d/*.conf before its own server{} on
# port 80, so this server is the default for port 80. Elsewhere, add `default_server` to the
# listen lines or set server_name to the name in base_url.
# SELinux: see README.md (httpd_sys_content_t on the data dir, httpd_can_network_connect).

"""


def deploy_config() -> str:
    return DEPLOY_HEADER + site_config(DEPLOY_DATA_DIR, DEPLOY_LISTEN, DEPLOY_UPSTREAM)


if __name__ == "__main__":
    print(deploy_config(), end="")
