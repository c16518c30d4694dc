#!/usr/bin/env python3
"""record-vote: record one vote in PostgreSQL, as a one-shot task.

    record-vote VOTER_ID VOTE [CAST_AT_MS]

The 2016 app's worker, as a container per vote: it upserts the voter's row (one row per
voter, so a changed vote is counted once) and exits. ``CAST_AT_MS`` (epoch milliseconds of
the click; default now) keeps the newest vote when a retried older call arrives late. The
database is ``DATABASE_URL`` (libpq URL). Exit status: 0 recorded (or older than the vote
already there), 1 the database failed (the reason on stderr, so the invocation record shows
it and the async path retries), 2 bad arguments.
"""

from __future__ import annotations

import json
import os
import sys
import time

UPSERT = """
INSERT INTO votes (voter_id, vote, cast_at) VALUES (%s, %s, %s)
ON CONFLICT (voter_id) DO UPDATE SET vote = EXCLUDED.vote, cast_at = EXCLUDED.cast_at
WHERE votes.cast_at <= EXCLUDED.cast_at
"""
OPTIONS = ("a", "b")


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: record-vote VOTER_ID VOTE [CAST_AT_MS]", file=sys.stderr)
        return 2
    voter, vote = argv[0], argv[1]
    if not voter or len(voter) > 64 or vote not in OPTIONS:
        print(f"record-vote: bad vote {vote!r} for voter {voter!r}", file=sys.stderr)
        return 2
    try:
        cast_at = int(argv[2]) if len(argv) == 3 else int(time.time() * 1000)
    except ValueError:
        print(f"record-vote: CAST_AT_MS must be epoch ms, got {argv[2]!r}", file=sys.stderr)
        return 2
    import psycopg2  # after the argument checks: a usage error needs no database

    try:
        conn = psycopg2.connect(os.environ["DATABASE_URL"], connect_timeout=5)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(UPSERT, (voter, vote, cast_at))
                recorded = cur.rowcount == 1
        finally:
            conn.close()
    except (psycopg2.Error, KeyError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        print(f"record-vote: the vote of {voter} was not recorded: {reason}", file=sys.stderr)
        return 1
    print(json.dumps({"voter_id": voter, "vote": vote, "cast_at": cast_at, "recorded": recorded}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
