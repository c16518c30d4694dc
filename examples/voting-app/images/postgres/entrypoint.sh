#!/bin/sh
# First start on an empty data directory: initdb, the superuser's password, the database
# and (for the `votes` database) its schema, in single-user mode (no socket opened); then
# the server in the foreground. Like the postgres image: POSTGRES_PASSWORD (required),
# POSTGRES_USER (default postgres), POSTGRES_DB (default votes, the voting app's).
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-votes}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" --auth-local=trust \
    --auth-host=scram-sha-256 -E UTF8 --no-locale >/dev/null
  rm -f "$pwfile"
  echo "host all all 0.0.0.0/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    echo "CREATE DATABASE \"$db\"" | postgres --single -D "$PGDATA" -c log_checkpoints=off postgres >/dev/null
  fi
  if [ "$db" = votes ]; then
    postgres --single -D "$PGDATA" -c log_checkpoints=off -j votes </usr/local/share/votes-schema.sql >/dev/null
  fi
  echo "entrypoint: created the $db database in $PGDATA"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp "$@"
