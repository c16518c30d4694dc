#!/bin/sh
# A streaming replica, started by the primary's controller as its child container:
# copy the primary (pg_basebackup over the replication protocol, WAL streamed alongside),
# create this replica's own replication slot on the primary (-C -S: the primary keeps the
# WAL this replica has not received yet), write primary_conninfo and standby.signal (-R),
# then run PostgreSQL as a hot standby that streams from the primary from then on.
# Environment (set by the controller): PRIMARY_HOST, PGPASSWORD (the replicator's),
# SELFDB_SLOT (this replica's slot, also its cluster_name: the walsender's
# application_name on the primary).
set -eu
: "${PRIMARY_HOST:?}" "${PGPASSWORD:?}" "${SELFDB_SLOT:?}"
echo "replica $SELFDB_SLOT: base backup from $PRIMARY_HOST"
pg_basebackup -h "$PRIMARY_HOST" -p 5432 -U replicator -D "$PGDATA" \
  -X stream -R -C -S "$SELFDB_SLOT" --checkpoint=fast --no-password
echo "replica $SELFDB_SLOT: streaming from $PRIMARY_HOST"
exec postgres -D "$PGDATA" \
  -c cluster_name="$SELFDB_SLOT" -c wal_receiver_timeout=10s \
  -c wal_retrieve_retry_interval=1s
