#!/bin/bash
# Run a command against a private, throw-away PostgreSQL cluster.
#
#   tests/with-postgres.sh CMD [ARGS...]
#
# The cluster lives in a fresh temporary directory, listens only on a Unix socket in that
# directory (plus 127.0.0.1 on a free port), has fsync off, and is removed afterwards. initdb
# refuses to run as root, so as root the cluster runs as the unprivileged user XREG_TEST_PGUSER
# (default "postgres", which Debian's postgresql package creates).
#
# CMD sees:
#   XREG_TEST_CONNINFO  libpq connection string for database "xreg" as a superuser
#   XREG_TEST_PGDATA    the data directory
#   XREG_TEST_PGCTL     a command prefix that runs pg_ctl as the cluster's owner, e.g.
#                       "$XREG_TEST_PGCTL stop -m fast" / "$XREG_TEST_PGCTL start -w"
#   PGHOST PGPORT PGUSER PGDATABASE  for psql
set -euo pipefail

bindir=${XREG_PG_BINDIR:-/usr/lib/postgresql/15/bin}
if [ ! -x "$bindir/initdb" ]; then
    echo "with-postgres: $bindir/initdb not found (install postgresql-15)" >&2
    if [ "${CI:-}" = true ]; then exit 1; fi
    exit 77
fi

run_as=()
owner=$(id -un)
if [ "$(id -u)" = 0 ]; then
    owner=${XREG_TEST_PGUSER:-postgres}
    run_as=(runuser -u "$owner" --)
fi

base=$(mktemp -d "${TMPDIR:-/tmp}/xreg-pg.XXXXXX")
chmod 755 "$base"
[ "$(id -u)" = 0 ] && chown "$owner" "$base"
data=$base/data

cleanup() {
    "${run_as[@]}" "$bindir/pg_ctl" -D "$data" stop -m immediate >/dev/null 2>&1 || true
    rm -rf "$base"
}
trap cleanup EXIT

# A free TCP port: ask the kernel, then let PostgreSQL take it (a race is retried by the caller).
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

"${run_as[@]}" "$bindir/initdb" -D "$data" -A trust -U postgres --nosync -E UTF8 --locale=C.UTF-8 \
    >"$base/initdb.log" 2>&1 || { cat "$base/initdb.log" >&2; exit 1; }
cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$base'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
logging_collector = off
log_min_messages = warning
CONF
"${run_as[@]}" "$bindir/pg_ctl" -D "$data" -l "$base/postgres.log" -w -t 60 start >/dev/null \
    || { cat "$base/postgres.log" >&2; exit 1; }
"${run_as[@]}" "$bindir/createdb" -h "$base" -p "$port" -U postgres xreg

export PGHOST=$base PGPORT=$port PGUSER=postgres PGDATABASE=xreg
export XREG_TEST_CONNINFO="host=$base port=$port user=postgres dbname=xreg"
export XREG_TEST_PGDATA=$data
export XREG_TEST_PGLOG=$base/postgres.log
export XREG_TEST_PGCTL="${run_as[*]} $bindir/pg_ctl -D $data -l $base/postgres.log -w -t 60"

set +e
"$@"
rc=$?
exit $rc
