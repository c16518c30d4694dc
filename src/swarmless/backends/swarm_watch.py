"""Noticing death on a Swarm, part of :class:`swarmless.backends.swarm.SwarmBackend`.

A thread polls the manager's tasks and nodes every ``poll_interval`` seconds; a worker
whose task ended or whose node is not ``ready`` is reported to the backend's subscribers
(its calls are requeued, the reconciler starts a replacement, Swarm places it on a live
node). A poll that finds the manager not answering tells the engine's listeners it is
down, the next one that succeeds that it is back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from swarmless.backends.base import EngineBackend
from swarmless.backends.swarm_oneshot import LOST, NOT_RUN, TERMINAL, exit_code, latest
from swarmless.engine import LABEL_GATEWAY, LABEL_WORKER, engine_failure

__all__ = ["TaskWatch"]

log = logging.getLogger("swarmless.backend.swarm")


class TaskWatch(EngineBackend):
    """The poller of :class:`swarmless.backends.swarm.SwarmBackend` (which sets its state)."""

    poll_interval: float
    _lock: threading.Lock
    _stop: threading.Event
    #: Warm services being watched: service id -> worker id.
    _workers: dict[str, str]
    #: Why a task did not run (``Status.Err``), for container_logs.
    _errors: dict[str, str]
    #: The latest poll: tasks by service, the nodes that are not ready, their hostnames.
    _tasks: dict[str, list[dict[str, Any]]]
    _down: set[str]
    _hostnames: dict[str, str]

    def _watch(self) -> None:
        """Poll until closed. A poll that finds the manager not answering (refused, or no
        answer within ``engine_timeout``: a frozen one) tells the engine's listeners it is
        down, the next one that succeeds that it is back (as the docker backend's watcher)."""
        down: str | None = None
        while not self._stop.wait(self.poll_interval):
            try:
                self._poll()
            except Exception as e:  # the manager may be briefly away; keep watching
                log.debug("poll failed: %s", e)
                why = engine_failure(e)
                if why is not None and down is None:
                    log.warning("the Swarm manager does not answer (%s): still polling", why)
                    down = why
                    self._tell_engine(why)
                continue
            if down is not None:
                log.warning("the Swarm manager answers again: finding what changed meanwhile")
                down = None
                self._tell_engine(None)

    def _tell_engine(self, down: str | None) -> None:
        """From the poller's thread: tell the engine's listeners, on the event loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._engine_changed, down)

    def _poll(self) -> None:
        api = self.client.api
        nodes = api.nodes()
        tasks = api.tasks(filters={"label": f"{LABEL_GATEWAY}={self.settings.instance}"})
        by_service: dict[str, list[dict[str, Any]]] = {}
        for t in tasks:
            by_service.setdefault(t["ServiceID"], []).append(t)
        down = {n["ID"] for n in nodes if (n.get("Status") or {}).get("State") != "ready"}
        with self._lock:
            self._tasks, self._down = by_service, down
            self._hostnames = {
                n["ID"]: (n.get("Description") or {}).get("Hostname", "") for n in nodes
            }
            watched = dict(self._workers)
        for sid, wid in watched.items():
            state = self._dead(by_service.get(sid, []), down)
            if state is not None:
                self._report(sid, wid, state)

    def _dead(self, tasks: Sequence[Mapping[str, Any]], down: set[str]) -> int | None:
        """The exit status of a worker service's task when it is gone, else None."""
        task = latest(tasks)
        if task is None:
            return None  # not scheduled yet (or removed by us)
        status = task.get("Status") or {}
        state = status.get("State", "")
        if state in TERMINAL:
            code = exit_code(task)
            if code is None:
                code = LOST if state in ("shutdown", "orphaned", "remove") else NOT_RUN
            if status.get("Err"):
                with self._lock:
                    self._errors[task["ServiceID"]] = str(status["Err"])
            return code
        if task.get("NodeID") in down:
            node = self._hostnames.get(task["NodeID"], task["NodeID"])
            with self._lock:
                self._errors[task["ServiceID"]] = f"node {node} went down"
            return LOST
        return None

    def _report(self, service_id: str, worker_id: str, code: int) -> None:
        with self._lock:
            if self._workers.pop(service_id, None) is None:
                return
        self._revoke(worker_id)
        loop = self._loop
        if self._exit_callbacks and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._exited, service_id, worker_id, code, False)

    def placement(self) -> dict[str, str]:
        """Where each service's task runs now: service id -> node hostname."""
        with self._lock:
            out = {}
            for sid, tasks in self._tasks.items():
                task = latest(tasks)
                if task is not None and task.get("NodeID"):
                    out[sid] = self._hostnames.get(task["NodeID"], task["NodeID"])
            return out

    def _revoke(self, worker_id: str) -> None:
        if self._callers is not None:
            self._callers.revoke_container({LABEL_WORKER: worker_id})
