"""gunicorn settings for mirror-web.service: `gunicorn --config /etc/mirror/gunicorn.conf.py`.

Same choices as `mirror serve` (mirror/web/server.py), in gunicorn's own config format so an
admin can tune them without touching code. Environment knobs (set them in a systemd drop-in,
`systemctl edit mirror-web`):

  MIRROR_CONFIG   the mirror.yaml the app loads (the unit sets /etc/mirror/mirror.yaml)
  MIRROR_BIND     listen address, default 127.0.0.1:8080 (what nginx-mirror.conf proxies to);
                  mirror-web.service sets 0.0.0.0:8080 so nodes can also reach it directly
  MIRROR_WORKERS  worker processes, default 4 (threads per worker: MIRROR_THREADS, 4)

With `tls.mode` on in mirror.yaml and a bind that is not loopback (nodes connect to gunicorn
itself), gunicorn serves HTTPS with the mirror's certificate (mirror.tls), made or renewed
here at every start and `systemctl reload`. On loopback, nginx in front does TLS (see
deploy/README.md).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

# The app: mirror/web/wsgi.py holds `app = create_app(load_config(config_path_from_env(None)))`.
wsgi_app = "mirror.web.wsgi:app"

bind = [os.environ.get("MIRROR_BIND", "127.0.0.1:8080")]

# The settings `mirror serve` uses too (worker class, timeouts, logs, trusted proxies): one
# gunicorn configuration for both. gunicorn reads this module's globals.
from mirror.web.gunicorn_settings import SHARED as _SHARED  # noqa: E402

globals().update(_SHARED)



def _loopback(address: str) -> bool:
    host = address.rpartition(":")[0] if address.startswith("[") else address.split(":")[0]
    return host in ("127.0.0.1", "localhost", "[::1]")


def _tls_files() -> tuple[str | None, str | None]:
    if all(_loopback(b) for b in bind):
        return None, None
    from mirror import tls
    from mirror.config import config_path_from_env, load_config

    path = config_path_from_env(None)
    files = tls.ensure(load_config(path)) if path.is_file() else None
    return (str(files.cert), str(files.key)) if files is not None else (None, None)


certfile, keyfile = _tls_files()

workers = int(os.environ.get("MIRROR_WORKERS", "4"))
threads = int(os.environ.get("MIRROR_THREADS", "4"))
# sendfile ON. /repos/ files go out through wsgi.file_wrapper, i.e. sendfile(2). Careful:
# gunicorn's `sendfile` is the --no-sendfile switch; ANY value, True included, turns sendfile
# OFF (gunicorn/config.py: Config.sendfile). None = unset = on (unless $SENDFILE says no).
sendfile = None

# Load the app in each worker after the fork, not in the master: `systemctl reload mirror-web`
# (SIGHUP) then starts workers that re-read mirror.yaml and repos_dir. A config error shows
# in the journal as a worker boot failure, and the unit fails.
preload_app = False

proc_name = "mirror-web"

# systemd's RuntimeDirectory=mirror-web (/run/mirror-web), else a private temp dir.
_runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or tempfile.mkdtemp(
    prefix="mirror-web-"
)
# Newer gunicorn (27 here) opens a control socket, by default in $HOME/.gunicorn/, i.e. in
# /var/lib/mirror; keep it in the runtime dir. (Older gunicorn ignores unknown settings.)
control_socket = os.path.join(_runtime, "gunicorn.ctl")

# /metrics must add up the request counters of every worker: prometheus_client's
# multiprocess mode, with a directory that is empty when the server starts.
_prom_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.path.join(_runtime, "prometheus"))


def on_starting(server: Any) -> None:
    """Master, once (not on reload): start with no counters from a previous run."""
    os.makedirs(_prom_dir, exist_ok=True)
    for name in os.listdir(_prom_dir):
        if name.endswith(".db"):  # prometheus_client's files only, whatever the dir is
            os.remove(os.path.join(_prom_dir, name))


def child_exit(server: Any, worker: Any) -> None:
    """A worker ended: drop its live gauges (counters it wrote are kept, as they should)."""
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
