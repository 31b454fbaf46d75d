#!/usr/bin/env bash
# `make run`: start the web service (which starts the embedded registry when configured),
# run one sync, then keep serving until Ctrl-C. Config: $MIRROR_CONFIG (default ./mirror.yaml).
set -euo pipefail
VENV=${VENV:-.venv}
BIND=${BIND:-0.0.0.0:8080}
mirror="$VENV/bin/mirror"

echo "config: $MIRROR_CONFIG"
"$mirror" serve --bind "$BIND" &
serve_pid=$!
trap 'kill "$serve_pid" 2>/dev/null; wait "$serve_pid" 2>/dev/null || true' EXIT INT TERM

sleep 2
kill -0 "$serve_pid" 2>/dev/null || { echo "mirror serve failed to start" >&2; exit 1; }
echo "web service on http://$BIND (pid $serve_pid); syncing now..."
rc=0
"$mirror" sync || rc=$?
if [ "$rc" -ne 0 ]; then
    echo "mirror sync exited $rc (see the errors above); still serving what was mirrored before." >&2
fi
"$mirror" status || true
echo "serving; press Ctrl-C to stop."
wait "$serve_pid"
