"""The store's tables and how a database gets to the current schema.

Tables (SQLAlchemy Core; the same on SQLite and PostgreSQL)::

    meta             key -> value: schema_version, the gateway token, ...
    functions        one row per deployed function: its spec (JSON), digest and version
    invocations      one row per call, a column per field of swarmless.records.InvocationRecord
    invocation_logs  the stdout and stderr of one call, keyed by its id
    async_queue      the durable queue of async calls (and their idempotency keys)
    invocation_results  what a finished async call answered
    invocation_children the child containers a call started (scoped Docker API), how each ended
    leases           name -> holder and until when: which gateway replica is active

Call ids begin with their creation time (``swarmless.records.new_call_id``), so the primary
keys of ``invocations``, ``invocation_logs``, ``invocation_results`` and ``async_queue``
sort by age: retention (``swarmless.store.retention``) deletes by ranges of ids.

Timestamps are epoch milliseconds (``swarmless.records.now_ms``), like the records.

Migrations are an ordered list of steps; ``meta.schema_version`` counts the steps applied.
A new database gets the current tables at once (``create_all``) and is stamped with the
latest version; an older one gets the steps it misses, in order, all in one transaction
(SQLite and PostgreSQL both roll DDL back), so a failed upgrade leaves it as it was.

To change the schema: change the tables here, append a step that brings a database of the
previous version to the new one, and never edit a step that has shipped (v2 added the
durable async queue, v3 the leases of replicated gateways, v4 their contention, v5 the
outcome of a call's child containers).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    false,
    inspect,
    select,
    text,
)

from swarmless.exceptions import SwarmlessError

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "async_queue",
    "functions",
    "invocation_children",
    "invocation_logs",
    "invocation_results",
    "invocations",
    "leases",
    "meta",
    "metadata",
    "schema_version",
    "upgrade",
]

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("value", Text, nullable=False),
)

functions = Table(
    "functions",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("spec", Text, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

invocations = Table(
    "invocations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("function", String(63), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("queued_at", BigInteger, nullable=False),
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger),
    Column("wait_ms", Float),
    Column("init_ms", Float),
    Column("run_ms", Float),
    Column("cold", Boolean),
    Column("container", String(128)),
    Column("attempt", Integer, nullable=False),
    Column("exit_code", Integer),
    Column("http_status", Integer),
    Column("request_size", BigInteger, nullable=False),
    Column("response_size", BigInteger),
    Column("error", Text),
    Column("parent", String(64)),
    Column("callback", Text),
    Column("late", Boolean, nullable=False, server_default=false()),
    Index("ix_invocations_function_queued_at", "function", "queued_at"),
    Index("ix_invocations_status", "status"),
    Index("ix_invocations_parent", "parent"),
)

invocation_logs = Table(
    "invocation_logs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("stdout", LargeBinary, nullable=False),
    Column("stderr", LargeBinary, nullable=False),
)


#: The durable queue of async calls. A row stays after its call finished (``state`` done,
#: body dropped) so that an ``Idempotency-Key`` still finds its call id.
async_queue = Table(
    "async_queue",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("function", String(63), nullable=False),
    #: queued | leased | done
    Column("state", String(8), nullable=False),
    Column("method", String(16), nullable=False),
    Column("path", Text, nullable=False),
    Column("query", Text, nullable=False),
    Column("headers", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("callback_url", Text),
    Column("idempotency_key", String(200)),
    Column("parent", String(64)),
    Column("late", Boolean, nullable=False, server_default=false()),
    Column("enqueued_at", BigInteger, nullable=False),
    Column("not_before", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("lease_owner", String(200)),
    Column("lease_until", BigInteger),
    Index("ix_async_queue_state_not_before", "state", "not_before"),
    Index("ix_async_queue_idempotency", "function", "idempotency_key", unique=True),
)

#: What a finished async call answered, for ``Invocation.result()``.
invocation_results = Table(
    "invocation_results",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("status", Integer, nullable=False),
    Column("headers", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
)

#: The child containers a call started through the scoped Docker API, and how each ended
#: (they may outlive the call: the spec's ``children_timeout``). Keyed by the call's id.
invocation_children = Table(
    "invocation_children",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("container", String(64), primary_key=True),
    Column("image", Text),
    Column("exit_code", Integer),
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger, nullable=False),
    Column("duration_ms", Float),
    Column("killed", Boolean, nullable=False),
    Column("error", Text),
)

#: Who holds a named lease until when (epoch ms): the active replica of several gateways
#: sharing one store. ``url`` is where the other replicas reach the holder.
leases = Table(
    "leases",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("url", Text, nullable=False),
    Column("until", BigInteger, nullable=False),
    #: Until when (epoch ms) another replica is known to want the lease.
    Column("contended_until", BigInteger),
)


def _v1(conn: Connection) -> None:
    """The first schema: meta, functions, invocations, invocation_logs."""
    metadata.create_all(conn, tables=[meta, functions, invocations, invocation_logs])


def _v2(conn: Connection) -> None:
    """The async queue: async_queue, invocation_results, callback and late on records."""
    conn.execute(text("ALTER TABLE invocations ADD COLUMN callback TEXT"))
    conn.execute(text("ALTER TABLE invocations ADD COLUMN late BOOLEAN NOT NULL DEFAULT false"))
    metadata.create_all(conn, tables=[async_queue, invocation_results])


def _v3(conn: Connection) -> None:
    """Leases: one active gateway among the replicas sharing a store."""
    metadata.create_all(conn, tables=[leases])


def _v4(conn: Connection) -> None:
    """Contended leases: a holder learns that another replica stands by. (A database
    that was at v2 got the column from v3's ``create_all`` already.)"""
    if "contended_until" not in {c["name"] for c in inspect(conn).get_columns("leases")}:
        conn.execute(text("ALTER TABLE leases ADD COLUMN contended_until BIGINT"))


def _v5(conn: Connection) -> None:
    """The outcome of the child containers a call started (``invocation_children``)."""
    metadata.create_all(conn, tables=[invocation_children])


#: Step i (0-based) brings a database from version i to version i + 1.
MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3, _v4, _v5]
SCHEMA_VERSION = len(MIGRATIONS)

# Any constant works; it only has to be the same for every gateway on one database.
_PG_LOCK = 0x5377_4C73


def schema_version(conn: Connection) -> int:
    """The version of the schema in this database; 0 for an empty one."""
    if not inspect(conn).has_table("meta"):
        return 0
    value = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    return int(value) if value is not None else 0


def _stamp(conn: Connection, version: int) -> None:
    done = conn.execute(
        meta.update().where(meta.c.key == "schema_version").values(value=str(version))
    )
    if done.rowcount == 0:
        conn.execute(meta.insert().values(key="schema_version", value=str(version)))


def upgrade(conn: Connection) -> tuple[int, int]:
    """Bring the database to :data:`SCHEMA_VERSION`; returns (version before, version now).

    Runs inside the caller's transaction. On PostgreSQL an advisory lock makes two gateways
    that start at once take turns; on SQLite the single writer does the same.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
    before = schema_version(conn)
    if before > SCHEMA_VERSION:
        raise SwarmlessError(
            f"the store's schema is version {before}, newer than this swarmless knows "
            f"({SCHEMA_VERSION}): upgrade swarmless"
        )
    if before == 0:
        metadata.create_all(conn)
        _stamp(conn, SCHEMA_VERSION)
        return before, SCHEMA_VERSION
    for version in range(before, SCHEMA_VERSION):
        MIGRATIONS[version](conn)
    _stamp(conn, SCHEMA_VERSION)
    return before, SCHEMA_VERSION
