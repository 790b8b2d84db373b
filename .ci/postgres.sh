#!/usr/bin/env bash
# A throwaway PostgreSQL for CI: `.ci/postgres.sh start` prints its URL (export it as
# IDEM_TEST_POSTGRES_URL); `.ci/postgres.sh stop` stops it and removes its files.
# As root, the server runs as the `postgres` user (created if missing): PostgreSQL refuses root.
set -euo pipefail

STATE=${IDEM_PG_STATE:-/tmp/idem-gateway-ci-postgres}
PG_USER=postgres

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi
}

bindir() {
    local initdb
    initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$initdb" ] || initdb=$(command -v initdb || true)
    [ -n "$initdb" ] || { echo "postgres.sh: no PostgreSQL binaries (initdb) found" >&2; exit 1; }
    dirname "$initdb"
}

start() {
    local bin port
    bin=$(bindir)
    if [ -f "$STATE/url" ]; then cat "$STATE/url"; return; fi
    if [ "$(id -u)" = 0 ] && ! id -u "$PG_USER" >/dev/null 2>&1; then
        useradd --system --no-create-home "$PG_USER"
    fi
    mkdir -p "$STATE"
    [ "$(id -u)" = 0 ] && chown "$PG_USER" "$STATE"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_pg "$bin/initdb" -D "$STATE/data" -A trust -U postgres -E UTF8 --no-sync >"$STATE/initdb.log" 2>&1 \
        || { cat "$STATE/initdb.log" >&2; exit 1; }
    as_pg "$bin/pg_ctl" -D "$STATE/data" -l "$STATE/log" -w start \
        -o "-h 127.0.0.1 -p $port -k $STATE -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        >/dev/null || { cat "$STATE/log" >&2; exit 1; }
    echo "postgresql+psycopg://postgres@127.0.0.1:$port/postgres" | tee "$STATE/url"
}

stop() {
    [ -d "$STATE/data" ] && as_pg "$(bindir)/pg_ctl" -D "$STATE/data" -m fast -w stop >/dev/null || true
    rm -rf "$STATE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
