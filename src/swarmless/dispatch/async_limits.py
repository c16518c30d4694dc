"""How much of a function's async work the runner takes on, and how long it holds it.

A function's limit (:func:`async_limit`) is its ``async_concurrency``, by default its
``max_containers x concurrency``; the runner holds up to :data:`AHEAD` times it (running
and waiting in memory) and hands :func:`in_flight_limit` calls to the dispatcher at once.

A lease covers the wait in memory too: ``AHEAD x timeout + 30 s`` (a call in memory has
fewer than ``AHEAD - 1`` rounds of the function's limit before it, each round ending
within the timeout). A long lease delays nothing after a crash: a gateway that restarts,
or the replica that takes over (same instance), takes back its calls at once. A gateway
that stops gives back the calls it holds but has not started, not counted as attempts.
"""

from __future__ import annotations

from swarmless.spec import FunctionSpec

__all__ = ["AHEAD", "LEASE_SLACK", "async_limit", "in_flight_limit", "lease_ms"]

#: Calls held per function (running and waiting in memory), as a multiple of its limit.
AHEAD = 8
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
