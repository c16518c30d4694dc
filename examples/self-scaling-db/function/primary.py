"""The primary: PostgreSQL plus a controller that keeps its own streaming replicas alive.

Deployed as a warm swarmless function with ``docker: scoped`` and exactly one container
(``min_containers = max_containers = 1``): the runtime imports this module once, which
starts PostgreSQL (``initdb`` on the container's own disk, then the server as a child
process) and the controller in a thread; the handler :func:`status` answers each call with
what the controller sees (the front end asks it where the replicas are).

The controller talks to the Docker API it was given (``DOCKER_HOST``: the gateway's scoped
API, which shows this container its own children and nothing else), once a second:

1. the nodes (``GET /nodes``: on a Swarm the cluster's nodes and their state; on one engine
   the engine itself; an API without ``/nodes`` counts as one node too);
2. each replica it started: gone, exited, or its node no longer ``ready``: lost. A lost
   replica is killed and removed (in the background: a dead node's child may not answer)
   and its replication slot dropped once the primary lets go of it (``wal_sender_timeout``);
3. fewer replicas than wanted: a new child from this very image running ``replica.sh``
   (``pg_basebackup`` with its own slot, then a hot standby streaming from this primary's
   address), placed by ``constraint:node==HOSTNAME`` in its environment on the live node
   holding the fewest replicas, never this primary's own node while another is live;
4. ``pg_stat_replication`` joined to the slots: which replica streams, its replay LSN.

Settings (the function's environment): ``SELFDB_PASSWORD`` (required; the ``postgres``
superuser's and the ``replicator`` role's password), ``SELFDB_REPLICAS`` (default 2),
``SELFDB_IMAGE`` (the replicas' image: this function's own, the only one the scoped API
lets it start besides other deployed functions'), ``SELFDB_FSYNC`` (``on``; ``off`` for
throwaway test clusters).
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import socket
import subprocess
import threading
import time
import urllib.parse
from typing import Any

import docker
import docker.errors
import psycopg2
import psycopg2.extensions

PGDATA = os.environ.get("PGDATA", "/var/lib/postgresql/data")
PASSWORD = os.environ.get("SELFDB_PASSWORD", "")
WANTED = int(os.environ.get("SELFDB_REPLICAS", "2"))
IMAGE = os.environ.get("SELFDB_IMAGE", "")
FSYNC = os.environ.get("SELFDB_FSYNC", "on")
FUNCTION = os.environ.get("SWARMLESS_FUNCTION", "selfdb")
#: Where this container runs (the swarm backend sets it; one engine: the engine's name).
NODE = os.environ.get("SWARMLESS_NODE", "")
TICK = 1.0
#: A replica not streaming for this long (since its start, or since it last did) is replaced.
STREAM_DEADLINE = 180.0
#: Seconds a node that lost a replica is the last choice for a new one.
SUSPECT_FOR = 60.0
#: The primary's WAL senders give up on a silent replica after this (its slot is then free).
WAL_SENDER_TIMEOUT = "10s"
SETTINGS = """
# selfdb (primary.py)
listen_addresses = '*'
unix_socket_directories = '/tmp'
wal_level = replica
max_wal_senders = 20
max_replication_slots = 20
wal_sender_timeout = {timeout}
hot_standby = on
fsync = {fsync}
shared_buffers = 32MB
"""
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id    bigserial PRIMARY KEY,
    body  text NOT NULL,
    at    timestamptz NOT NULL DEFAULT now()
);
"""


def log(message: str) -> None:
    """To the container's own stderr (``docker logs``), not into a call's captured log."""
    line = f"{time.strftime('%H:%M:%S')} selfdb: {message}\n"
    with contextlib.suppress(OSError):
        os.write(2, line.encode())


class Replica:
    """One child replica as the controller knows it."""

    def __init__(self, name: str, slot: str, node: str, container: Any) -> None:
        self.name = name
        self.slot = slot
        self.node = node
        self.container = container
        self.id = str(container.id)
        self.host = ""
        self.started = time.monotonic()
        #: When the primary last saw it stream (its start, until it does).
        self.seen = self.started
        self.state = "starting"
        self.replay_lsn: str | None = None

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id[:12],
            "slot": self.slot,
            "node": self.node,
            "host": self.host,
            "state": self.state,
            "replay_lsn": self.replay_lsn,
        }


class Controller:
    """PostgreSQL's supervisor and its replicas' keeper (one per primary container)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.replicas: dict[str, Replica] = {}
        #: Slots of lost replicas still to drop (the primary may hold them a moment).
        self.stale_slots: set[str] = set()
        #: Nodes that just lost a replica, and when: avoided for a while (a node whose
        #: child died is often a node about to be marked down).
        self.suspect: dict[str, float] = {}
        self.nodes: list[dict[str, str]] = []
        self.nodes_known = False
        self.events: collections.deque[str] = collections.deque(maxlen=50)
        self.started = 0
        self.ready = False
        self.error = ""
        self.host = ""
        self.server: subprocess.Popen[bytes] | None = None
        self.conn: psycopg2.extensions.connection | None = None
        self.docker: Any = None
        self.stop = threading.Event()

    # -- the events the status shows ------------------------------------------------------

    def event(self, message: str) -> None:
        log(message)
        with self.lock:
            self.events.append(f"{time.strftime('%H:%M:%S')} {message}")

    # -- PostgreSQL ------------------------------------------------------------------------

    def start_postgres(self) -> None:
        if not PASSWORD:
            raise RuntimeError("SELFDB_PASSWORD is not set")
        if not os.path.exists(os.path.join(PGDATA, "PG_VERSION")):
            pwfile = "/tmp/selfdb-pw"
            with open(pwfile, "w") as f:
                f.write(PASSWORD + "\n")
            subprocess.run(
                [
                    "initdb",
                    "-D",
                    PGDATA,
                    "-U",
                    "postgres",
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-locale",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            os.unlink(pwfile)
            with open(os.path.join(PGDATA, "pg_hba.conf"), "a") as f:
                f.write("host replication replicator all scram-sha-256\n")
                f.write("host all all all scram-sha-256\n")
            # In postgresql.conf, not on the command line: the base backup copies it, and a
            # standby needs max_wal_senders and friends at least as high as its primary's.
            with open(os.path.join(PGDATA, "postgresql.conf"), "a") as f:
                f.write(SETTINGS.format(fsync=FSYNC, timeout=WAL_SENDER_TIMEOUT))
        self.server = subprocess.Popen(["postgres", "-D", PGDATA])
        deadline = time.monotonic() + 60
        while True:
            if self.server.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.server.returncode}")
            try:
                conn = psycopg2.connect(host="/tmp", user="postgres", dbname="postgres")
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                self.stop.wait(0.2)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'replicator'")
            if cur.fetchone() is None:
                cur.execute(
                    "CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD %s", (PASSWORD,)
                )
            cur.execute(SCHEMA)
        self.conn = conn

    def sql(self, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        assert self.conn is not None
        with self.conn.cursor() as cur:
            cur.execute(query, args)
            return list(cur.fetchall()) if cur.description else []

    # -- the Docker API ----------------------------------------------------------------------

    def own_address(self) -> str:
        """This container's address on the function network, where the replicas reach it:
        what its hostname resolves to (Docker writes the address on the container's network
        into /etc/hosts: the bridge on one engine, the overlay on a Swarm, never the
        node's gateway bridge); else the source address towards the scoped API."""
        with contextlib.suppress(OSError):
            found = socket.gethostbyname(socket.gethostname())
            if not found.startswith("127."):
                return found
        url = urllib.parse.urlsplit(os.environ.get("DOCKER_HOST", ""))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((url.hostname or "192.0.2.1", url.port or 2375))
            return str(s.getsockname()[0])

    def read_nodes(self) -> list[dict[str, str]]:
        """The live nodes: (hostname, state, availability, role), ready and active ones."""
        try:
            raw = self.docker.api._get(self.docker.api._url("/nodes"), timeout=10)
        except Exception as e:  # the engine or the proxy away: one node
            if self.nodes_known:
                raise
            raw = None
            self.event(f"no node list ({e}): one node, this one")
        if raw is not None and raw.status_code == 200:
            nodes = []
            for n in raw.json():
                nodes.append(
                    {
                        "id": str(n.get("ID", "")),
                        "hostname": str((n.get("Description") or {}).get("Hostname", "")),
                        "state": str((n.get("Status") or {}).get("State", "")),
                        "addr": str((n.get("Status") or {}).get("Addr", "")),
                        "availability": str((n.get("Spec") or {}).get("Availability", "")),
                        "role": str((n.get("Spec") or {}).get("Role", "")),
                    }
                )
            self.nodes_known = True
            return nodes
        if raw is not None and self.nodes_known:
            raise RuntimeError(f"GET /nodes answered {raw.status_code}")
        # An API without /nodes (a scoped API on one engine that does not answer it): the
        # engine is the only node; children are placed nowhere in particular.
        return [
            {
                "id": "",
                "hostname": NODE or "local",
                "state": "ready",
                "addr": "",
                "availability": "active",
                "role": "",
            }
        ]

    @staticmethod
    def live(nodes: list[dict[str, str]]) -> list[str]:
        return [
            n["hostname"]
            for n in nodes
            if n["state"] == "ready" and n["availability"] in ("active", "")
        ]

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.start_postgres()
            self.host = self.own_address()
            self.docker = docker.from_env(timeout=30)
            self.event(f"primary up at {self.host} (node {NODE or '?'})")
            self.ready = True
        except Exception as e:  # shown by status(); the server may be half up
            self.error = f"{type(e).__name__}: {e}"
            log(f"could not start: {self.error}")
            return
        while not self.stop.is_set():
            try:
                self.tick()
            except Exception as e:  # logged; the next tick tries again
                self.event(f"tick failed: {type(e).__name__}: {str(e)[:300]}")
                if self.conn is not None and self.conn.closed:
                    with contextlib.suppress(Exception):
                        self.conn = psycopg2.connect(
                            host="/tmp", user="postgres", dbname="postgres"
                        )
                        self.conn.autocommit = True
            self.stop.wait(TICK)

    def tick(self) -> None:
        nodes = self.read_nodes()
        live = self.live(nodes)
        with self.lock:
            self.nodes = nodes
        for replica in list(self.replicas.values()):
            reason = self.lost(replica, live)
            if reason:
                self.retire(replica, reason)
        self.drop_stale_slots()
        while len(self.replicas) < WANTED and live:
            self.launch(live)
        self.observe()

    def lost(self, replica: Replica, live: list[str]) -> str | None:
        """Why ``replica`` is lost, or None while it is alive."""
        if self.nodes_known and replica.node not in live:
            return f"its node {replica.node} is not ready"
        try:
            replica.container.reload()
        except docker.errors.NotFound:
            return "its container is gone"
        attrs = replica.container.attrs
        state = attrs.get("State") or {}
        if state.get("Status") in ("exited", "dead"):
            return f"it exited ({state.get('ExitCode')})"
        if not replica.host:
            for net in ((attrs.get("NetworkSettings") or {}).get("Networks") or {}).values():
                if net.get("IPAddress"):
                    replica.host = str(net["IPAddress"])
        waited = time.monotonic() - replica.seen
        if replica.state != "streaming" and waited > STREAM_DEADLINE:
            return f"not streaming for {waited:.0f}s"
        return None

    def retire(self, replica: Replica, reason: str) -> None:
        self.event(f"replica {replica.name} on {replica.node} lost: {reason}")
        with self.lock:
            del self.replicas[replica.name]
        self.stale_slots.add(replica.slot)
        self.suspect[replica.node] = time.monotonic()

        def remove() -> None:  # a dead node's child may keep a request waiting
            with contextlib.suppress(Exception):
                replica.container.remove(force=True)

        threading.Thread(target=remove, daemon=True).start()

    def drop_stale_slots(self) -> None:
        for slot in list(self.stale_slots):
            rows = self.sql("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            if not rows:
                self.stale_slots.discard(slot)
            elif not rows[0][0]:
                self.sql("SELECT pg_drop_replication_slot(%s)", (slot,))
                self.stale_slots.discard(slot)
                self.event(f"dropped the slot {slot}")

    def place(self, live: list[str]) -> str:
        """The live node with the fewest replicas; a node that lost one in the last
        ``SUSPECT_FOR`` seconds last, then this primary's own (each only while there is a
        choice)."""
        load = collections.Counter(r.node for r in self.replicas.values())
        now = time.monotonic()
        recent = {n for n, at in self.suspect.items() if now - at < SUSPECT_FOR}
        return min(
            live,
            key=lambda n: (
                n in recent and len(set(live) - recent) > 0,
                n == NODE and len(live) > 1,
                load[n],
                n,
            ),
        )

    def launch(self, live: list[str]) -> None:
        node = self.place(live)
        self.started += 1
        tag = secrets.token_hex(3)
        slot = f"r{self.started}_{tag}"
        name = f"{FUNCTION}-replica-{self.started}-{tag}"
        env = [
            f"PRIMARY_HOST={self.host}",
            f"PGPASSWORD={PASSWORD}",
            f"SELFDB_SLOT={slot}",
        ]
        if self.nodes_known:
            env.append(f"constraint:node=={node}")
        try:
            container = self.docker.containers.run(
                IMAGE,
                ["sh", "/function/replica.sh"],
                detach=True,
                name=name,
                environment=env,
                labels={"selfdb.role": "replica", "selfdb.slot": slot, "selfdb.node": node},
            )
        except docker.errors.DockerException as e:
            # Created but not started, maybe: not left behind (the next tick tries again).
            with contextlib.suppress(docker.errors.DockerException):
                self.docker.containers.get(name).remove(force=True)
            raise RuntimeError(f"starting replica {name} on {node}: {e}") from None
        with self.lock:
            self.replicas[name] = Replica(name, slot, node, container)
        self.event(f"started replica {name} on {node}")

    def observe(self) -> None:
        """Who streams, from the primary's own view (a walsender on the replica's slot)."""
        rows = self.sql(
            "SELECT s.slot_name, r.state, r.replay_lsn::text "
            "FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid "
            # The standby itself (cluster_name = its slot), not pg_basebackup's WAL stream.
            "WHERE r.application_name = s.slot_name"
        )
        seen = {slot: (state, lsn) for slot, state, lsn in rows}
        with self.lock:
            for replica in self.replicas.values():
                state, lsn = seen.get(replica.slot, (None, None))
                if state == "streaming":
                    if replica.state != "streaming":
                        self.events.append(
                            f"{time.strftime('%H:%M:%S')} replica {replica.name} streaming"
                        )
                        log(f"replica {replica.name} streaming")
                    replica.state = "streaming"
                    replica.replay_lsn = lsn
                    replica.seen = time.monotonic()
                elif replica.state == "streaming":
                    replica.state = "disconnected"

    def view(self) -> dict[str, Any]:
        lsn = None
        if self.ready:
            # Its own connection: the controller's is the loop thread's.
            with (
                contextlib.suppress(psycopg2.Error),
                contextlib.closing(psycopg2.connect(host="/tmp", user="postgres")) as conn,
                conn.cursor() as cur,
            ):
                cur.execute("SELECT pg_current_wal_lsn()::text")
                lsn = cur.fetchone()[0]
        with self.lock:
            return {
                "ready": self.ready,
                "error": self.error,
                "primary": {"host": self.host, "node": NODE, "lsn": lsn},
                "wanted": WANTED,
                "replicas": [r.view() for r in self.replicas.values()],
                "nodes": list(self.nodes),
                "events": list(self.events),
            }


CONTROLLER = Controller()
threading.Thread(target=CONTROLLER.run, name="selfdb-controller", daemon=True).start()


def status(event: Any, context: Any) -> dict[str, Any]:
    """The primary's view: where it is, its replicas (streaming or not), nodes, events."""
    return CONTROLLER.view()
