#!/usr/bin/env bash
# A throwaway PostgreSQL for the store tests: prints its URL on stdout.
#
#   scripts/postgres.sh         ensure it runs (install postgresql, initdb, start) and print
#                               postgresql://postgres@127.0.0.1:54329/swarmless
#   scripts/postgres.sh stop    stop it (the data stays in /var/tmp/swarmless-pg)
#
# The cluster listens on 127.0.0.1 only, trusts every local connection and lives in
# /var/tmp/swarmless-pg: it is for tests, never for data you want to keep. Installing and
# starting need root (Debian/Ubuntu: apt-get install postgresql). Idempotent; every wait is
# bounded. Messages go to stderr, so `url=$(scripts/postgres.sh)` works.
set -euo pipefail

PORT=${SWARMLESS_PG_PORT:-54329}
DIR=${SWARMLESS_PG_DIR:-/var/tmp/swarmless-pg}
DATA=$DIR/data
LOG=$DIR/postgres.log
DB=swarmless
URL="postgresql://postgres@127.0.0.1:$PORT/$DB"

say() { printf 'postgres: %s\n' "$*" >&2; }

bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  return 1
}

as_postgres() { runuser -u postgres -- "$@"; }
answers() { "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres -t 2 >/dev/null 2>&1; }

if ! BIN=$(bindir); then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "PostgreSQL is not installed, and installing it needs root and apt-get"
    say "fix: sudo apt-get install -y postgresql (then run this script as root)"
    exit 1
  fi
  say "installing postgresql (log: /var/log/swarmless-apt-postgres.log)"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; } \
    >/var/log/swarmless-apt-postgres.log 2>&1 \
    || { say "apt-get install postgresql failed; see /var/log/swarmless-apt-postgres.log"; exit 1; }
  BIN=$(bindir) || { say "postgresql installed but no initdb found under /usr/lib/postgresql"; exit 1; }
fi

if [ "${1:-}" = stop ]; then
  if [ -f "$DATA/postmaster.pid" ]; then
    as_postgres "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >&2
  fi
  exit 0
fi

if ! answers; then
  if [ "$(id -u)" != 0 ]; then
    say "nothing answers on 127.0.0.1:$PORT and starting a cluster needs root"
    exit 1
  fi
  id postgres >/dev/null 2>&1 || { say "no 'postgres' user (is the postgresql package installed?)"; exit 1; }
  mkdir -p "$DIR"
  chown postgres:postgres "$DIR"
  chmod 700 "$DIR"
  if [ ! -f "$DATA/PG_VERSION" ]; then
    say "creating a cluster in $DATA"
    as_postgres "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
  fi
  # A pid file left by a killed server keeps a new one from starting.
  if [ -f "$DATA/postmaster.pid" ] && ! kill -0 "$(head -n 1 "$DATA/postmaster.pid")" 2>/dev/null; then
    rm -f "$DATA/postmaster.pid"
  fi
  say "starting on 127.0.0.1:$PORT (log: $LOG)"
  as_postgres "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
    -o "-p $PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$DIR -c fsync=off" \
    start >/dev/null || { say "the server did not start; see $LOG"; tail -n 20 "$LOG" >&2 || true; exit 1; }
  for _ in $(seq 1 60); do answers && break; sleep 0.5; done
  answers || { say "the server does not answer on 127.0.0.1:$PORT; see $LOG"; exit 1; }
fi

psql_() { "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ "$(psql_ -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
  psql_ -c "CREATE DATABASE $DB" >/dev/null
fi
echo "$URL"
