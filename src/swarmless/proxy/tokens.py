"""Who is calling from inside a function container: one token per container.

Every function container gets a token of its own in ``SWARMLESS_TOKEN`` (so that
``swarmless.from_env().invoke(...)`` works inside it with no setup) and, when its spec says
``docker: scoped``, the same token in the path of its ``DOCKER_HOST``
(``tcp://<gateway ip>:<proxy port>/_swarmless/<token>``; the Docker SDK for Python and the
``docker`` CLI both keep a path in DOCKER_HOST and prefix every request with it).

Why a token and not only the source address: an address is reused by the next container
the moment one exits, and a container with ``NET_RAW`` can try to spoof a neighbour's. A
token names exactly one container (a one-shot call or a warm worker) for as long as it
lives; the proxy also checks that the connection comes from that container's address, so
a token handed to a child is worth nothing there.

A grant is revoked when its call ends (one-shot) or its container dies (warm workers).
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from typing import Any

from swarmless.spec import FunctionSpec

__all__ = ["PATH_PREFIX", "CallerTokens", "Grant"]

#: The token's place in a DOCKER_HOST path: ``/_swarmless/<token>/v1.41/...``.
PATH_PREFIX = "/_swarmless/"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Grant:
    """The identity behind one token: a function's one-shot call or warm worker."""

    token: str
    function: str
    call_id: str | None = None
    worker_id: str | None = None

    @property
    def label(self) -> tuple[str, str]:
        """The label that finds this grant's container on the engine."""
        if self.worker_id is not None:
            return "swarmless.worker", self.worker_id
        return "swarmless.call", self.call_id or ""


class CallerTokens:
    """Issues, looks up and revokes the tokens of function containers (thread-safe)."""

    def __init__(self) -> None:
        self._grants: dict[str, Grant] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        #: ``tcp://ip:port`` of the scoped Docker API, once it listens.
        self.docker_url: str | None = None

    def grant(
        self, spec: FunctionSpec, *, call_id: str | None = None, worker_id: str | None = None
    ) -> tuple[Grant, dict[str, str]]:
        """A new grant for one container, and the environment that carries it."""
        if (call_id is None) == (worker_id is None):
            raise ValueError("a grant is for one call or one worker")
        g = Grant(
            token=secrets.token_urlsafe(24),
            function=spec.name,
            call_id=call_id,
            worker_id=worker_id,
        )
        with self._lock:
            self._grants[g.token] = g
            self._by_key[g.label] = g.token
        env = {"SWARMLESS_TOKEN": g.token}
        if spec.docker == "scoped" and self.docker_url:
            env["DOCKER_HOST"] = f"{self.docker_url}{PATH_PREFIX}{g.token}"
        return g, env

    def grants(self) -> list[Grant]:
        """The live grants."""
        with self._lock:
            return list(self._grants.values())

    def lookup(self, token: str | None) -> Grant | None:
        if not token:
            return None
        with self._lock:
            return self._grants.get(token)

    def revoke(self, token: str) -> None:
        with self._lock:
            g = self._grants.pop(token, None)
            if g is not None:
                self._by_key.pop(g.label, None)

    def revoke_container(self, labels: dict[str, str]) -> None:
        """Revoke the grant of a container that died (found by its labels)."""
        for key in ("swarmless.worker", "swarmless.call"):
            value = labels.get(key)
            if value:
                with self._lock:
                    token = self._by_key.get((key, value))
                if token is not None:
                    self.revoke(token)

    def caller(self, token: str | None, dispatcher: Any) -> Grant | None:
        """The live grant behind a bearer token (a warm worker must still be known)."""
        g = self.lookup(token)
        if g is not None and g.worker_id is not None:
            found = dispatcher.workers.get(g.worker_id)
            if found is None or found[0].state == "gone":
                return None
        return g

    def parent(self, grant: Grant, claimed: str | None, dispatcher: Any) -> str | None:
        """The call a function-to-function call is made from.

        A one-shot container makes calls for its one call. A warm container may serve
        several calls at once, so the caller says which (``X-Swarmless-Parent``, set by
        the SDK from ``SWARMLESS_CALL_ID``), and it is believed only for a call that
        container holds right now.
        """
        if grant.call_id is not None:
            return grant.call_id
        if not claimed:
            return None
        found = dispatcher.workers.get(grant.worker_id)
        if found is not None and claimed in found[0].in_hand:
            return claimed
        return None
