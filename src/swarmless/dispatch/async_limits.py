"""How much of a function's async work the runner takes on, and how long it holds it.

A function's limit (:func:`async_limit`) is its ``async_concurrency``, by default its
``max_containers x concurrency``; the runner holds up to :data:`AHEAD` times it (running
and waiting in memory) and hands :func:`in_flight_limit` calls to the dispatcher at once.

A call accepted by this gateway is handed over (written leased to it, kept in memory)
while fewer than :func:`hand_over_limit` calls are held (:data:`HAND_OVER` times the
limit, at most :data:`HAND_OVER_MAX`, never fewer than a claim holds): a burst is taken in
hand as it is accepted, not written queued and claimed back a batch at a time.

A lease covers the wait in memory too: ``AHEAD x timeout + 30 s`` for a claim (a call in
memory has fewer than ``AHEAD - 1`` rounds of the function's limit before it, each round
ending within the timeout), ``(held / limit + 2) x timeout + 30 s`` for a call handed
over with ``held`` calls before it (:func:`hand_over_lease_ms`). A long lease delays
nothing after a crash: a gateway that restarts, or the replica that takes over (same
instance), takes back its calls at once. A gateway that stops gives back the calls it
holds but has not started, not counted as attempts.
"""

from __future__ import annotations

from swarmless.spec import FunctionSpec

__all__ = [
    "AHEAD",
    "HAND_OVER",
    "HAND_OVER_MAX",
    "LEASE_SLACK",
    "async_limit",
    "hand_over_lease_ms",
    "hand_over_limit",
    "in_flight_limit",
    "lease_ms",
]

#: Calls held per function (running and waiting in memory), as a multiple of its limit,
#: up to which the runner claims from the store.
AHEAD = 8
#: Calls held per function, as a multiple of its limit, up to which a call accepted by
#: this gateway is handed over at accept (bodies bounded by ``CLAIM_BYTES`` in all).
HAND_OVER = 64
#: Calls held per function up to which calls are handed over at accept, at most (memory
#: stays bounded for functions with a large limit).
HAND_OVER_MAX = 4096
#: A lease is ``AHEAD x timeout`` plus this (seconds).
LEASE_SLACK = 30.0


def async_limit(spec: FunctionSpec) -> int:
    """How many async calls of a function run at once."""
    return spec.async_concurrency or spec.max_containers * spec.concurrency


def in_flight_limit(spec: FunctionSpec) -> int:
    """How many async calls of a function the runner hands to the dispatcher at once: its
    :func:`async_limit`, and with the default limit (every container's capacity) half as
    many again, which wait in the pool's queue: a worker that answers a call then gets
    the next one in the same exchange instead of asking for it again (as under sync
    load). Never more running at once than the limit."""
    limit = async_limit(spec)
    return limit if spec.async_concurrency else limit + max(1, limit // 2)


def lease_ms(spec: FunctionSpec) -> int:
    """How long a claim of a call of ``spec`` lasts: its wait in memory and its run."""
    return int((AHEAD * spec.timeout + LEASE_SLACK) * 1000)


def hand_over_limit(spec: FunctionSpec) -> int:
    """Calls of ``spec`` held below which one accepted here is handed over at accept."""
    limit = async_limit(spec)
    return max(AHEAD * limit, min(HAND_OVER * limit, HAND_OVER_MAX))


def hand_over_lease_ms(spec: FunctionSpec, held: int) -> int:
    """How long the lease of a call of ``spec`` handed over at accept lasts, with ``held``
    calls of it held before it: the rounds of the function's limit before it ends (each
    within the timeout), its own, and one more; never shorter than a claim's."""
    rounds = held // async_limit(spec) + 2
    return max(lease_ms(spec), int((rounds * spec.timeout + LEASE_SLACK) * 1000))
