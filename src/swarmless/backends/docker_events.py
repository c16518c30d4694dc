"""Watching one Docker Engine, part of :class:`swarmless.backends.docker.DockerBackend`.

Function containers are watched through the engine's event stream, so a worker that dies
is noticed at once: the backend's subscribers are told (:meth:`~.base.Backend.subscribe`).
When the stream breaks (the engine restarted, the connection dropped) the watcher
reconnects with a backoff, and the engine's listeners (:meth:`~.base.Backend.watch_engine`)
hear that it went down and came back.

An engine that accepts connections but never answers (a frozen ``dockerd``) leaves the
event stream silent, not broken. So every call waits at most ``engine_timeout`` for an
answer, a heartbeat pings the engine every :data:`HEARTBEAT_EVERY` seconds (with the same
bound), and a call or a ping that finds the engine not answering declares it down and
ends the event stream: the watcher reconnects, and tells when the engine is back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import docker

from swarmless.backends.base import EngineBackend
from swarmless.engine import LABEL_MANAGED, LABEL_WORKER, connect, engine_failure
from swarmless.exceptions import SwarmlessError

__all__ = ["HEARTBEAT_EVERY", "RECONNECT_MAX", "RECONNECT_MIN", "WATCH_TIMEOUT", "EngineWatch"]

log = logging.getLogger("swarmless.backend")
T = TypeVar("T")

#: Seconds between two tries to reach an engine that stopped answering (doubling).
RECONNECT_MIN = 0.2
RECONNECT_MAX = 5.0
#: Seconds the event watcher's own client waits for an answer (its stream waits forever).
WATCH_TIMEOUT = 10
#: Seconds between two pings of the engine (each waits at most ``engine_timeout``).
HEARTBEAT_EVERY = 2.0


class EngineWatch(EngineBackend):
    """The event watcher and heartbeat of :class:`swarmless.backends.docker.DockerBackend`
    (which sets their state and starts their threads)."""

    #: The watcher's event stream (closed to end it), None before the first.
    _events: Any
    _closing: threading.Event
    #: Why the engine is down, as the watcher last saw it (its thread's view); None: up.
    _watched_down: str | None

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` in the pool; an engine that does not answer it is declared down at once."""
        try:
            return await super()._call(fn, *args, **kwargs)
        except Exception as e:
            why = engine_failure(e)
            if why is not None:
                self._engine_lost(why)
            raise

    def _engine_lost(self, why: str) -> None:
        """From any thread: a call found the engine not answering. Tell the listeners now,
        and end the event stream (a frozen engine leaves it silent): the watcher reconnects
        and tells them when the engine answers again."""
        if self._closing.is_set() or self._loop is None:
            return
        self._tell_engine(why)
        events = self._events
        if events is not None:
            with contextlib.suppress(Exception):
                events.close()

    def _beat(self) -> None:
        """Ping the engine every :data:`HEARTBEAT_EVERY` seconds while it is thought up."""
        client: docker.DockerClient | None = None
        timeout = self.settings.engine_timeout
        while not self._closing.wait(HEARTBEAT_EVERY):
            if self._watched_down is not None:  # the watcher is on it
                continue
            try:
                if client is None:
                    client = connect(self.settings.docker_host, timeout=timeout)
                client.api.ping()
            except Exception as e:
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
                client = None
                self._engine_lost(engine_failure(e) or _reason(e))
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _watch_events(self) -> None:
        """Follow the engine's container events until the backend closes.

        The stream breaks when the engine stops (a restart of dockerd) or the connection
        drops: the subscribers hear that the engine is down, and the watcher reconnects
        with a backoff (:data:`RECONNECT_MIN` doubling to :data:`RECONNECT_MAX`). Back, it
        asks for the events it missed while the engine kept them (``since``) and tells the
        subscribers the engine is up: they list the containers to find the rest (an engine
        that restarted forgot its events, not its stopped containers).
        """
        filters = {
            "type": "container",
            "event": ["die", "oom"],
            "label": [f"{LABEL_MANAGED}=true"],
        }
        oom: set[str] = set()  # the engine reports "oom" just before the "die" it causes
        since: int | None = None
        delay = RECONNECT_MIN
        client: docker.DockerClient | None = None
        while not self._closing.is_set():
            try:
                if client is None:
                    client = connect(self.settings.docker_host, timeout=WATCH_TIMEOUT)
                client.ping()
                self._events = client.events(decode=True, filters=filters, since=since)
            except Exception as e:
                self._tell_engine(engine_failure(e) or _reason(e))
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
                client = None
                self._closing.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            delay = RECONNECT_MIN
            self._tell_engine(None)
            why = "the event stream ended"
            try:
                for ev in self._events:
                    since = int(ev.get("time") or 0) or since
                    self._event(ev, oom)
            except Exception as e:
                why = engine_failure(e) or _reason(e)
            # Ended on purpose by a call that found the engine not answering: its reason
            # stands (a stream that ends says less).
            if not self._closing.is_set() and self._watched_down is None:
                self._tell_engine(why)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _event(self, ev: dict[str, Any], oom: set[str]) -> None:
        attrs = (ev.get("Actor") or {}).get("Attributes") or {}
        cid = ev.get("id") or (ev.get("Actor") or {}).get("ID", "")
        if ev.get("status") == "oom" or ev.get("Action") == "oom":
            oom.add(cid)
            return
        try:
            code = int(attrs.get("exitCode", -1))
        except ValueError:
            code = -1
        killed = cid in oom
        oom.discard(cid)
        loop = self._loop
        if self._exit_callbacks and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._exited, cid, attrs.get(LABEL_WORKER), code, killed)

    def _tell_engine(self, down: str | None) -> None:
        """From the watcher's thread: the engine is down (why) or up (None)."""
        if (down is None) != (self._watched_down is None):
            self._watched_down = down
            if down is None:
                log.warning("the Docker Engine answers again: finding what changed meanwhile")
            else:
                log.warning("the Docker Engine does not answer (%s): reconnecting", down)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._engine_changed, down)


def _reason(e: BaseException) -> str:
    """Why the engine did not answer, in a few words."""
    if isinstance(e, SwarmlessError):
        return e.message
    text = str(e) or type(e).__name__
    for marker in ("Connection refused", "No such file or directory", "Connection reset"):
        if marker in text:
            return marker
    return text[:200]
