#!/bin/sh
# First start on an empty data directory: initdb, the password, the `votes` database and
# its schema (single-user mode, no socket opened); then the server in the foreground.
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb -D "$PGDATA" -U postgres --pwfile="$pwfile" --auth-local=trust \
    --auth-host=scram-sha-256 -E UTF8 --no-locale >/dev/null
  rm -f "$pwfile"
  echo "host all all 0.0.0.0/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
  echo "CREATE DATABASE votes" | postgres --single -D "$PGDATA" -c log_checkpoints=off postgres >/dev/null
  postgres --single -D "$PGDATA" -c log_checkpoints=off -j votes </usr/local/share/votes-schema.sql >/dev/null
  echo "entrypoint: created the votes database in $PGDATA"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp "$@"
