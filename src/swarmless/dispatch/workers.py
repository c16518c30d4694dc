"""The worker registry: which warm containers exist, their tokens, and their deaths.

Every warm worker gets an id and a token of its own when the reconciler starts it
(:meth:`WorkerRegistry.new`); a container pulls work only with its token
(:meth:`WorkerRegistry.for_token`, the runtime API's check). The backend tells the
registry when a container dies (the gateway's wiring subscribes
:meth:`WorkerRegistry.container_exited`): the worker is forgotten and its calls in hand go
back to its pool's queue, unless the kernel killed it for its memory limit (they fail as
OOM-killed: running them again would only repeat it); a container that died before it
asked for work is a crash: its last lines go to the pool (:meth:`WarmPool.crash`), which
fails what waits and lets the planner back off.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Mapping

from swarmless.backends.base import Backend
from swarmless.dispatch.background import Background
from swarmless.dispatch.pool import WarmPool, Worker
from swarmless.exceptions import OOMKilled, SwarmlessError

__all__ = ["WorkerRegistry"]

log = logging.getLogger("swarmless.dispatch")

#: Exit statuses of a container stopped from outside (SIGKILL, SIGTERM): not a crash.
_KILLED = (137, 143)


class WorkerRegistry:
    """The live warm workers of every pool, by id and by token."""

    def __init__(self, backend: Backend, background: Background) -> None:
        self._backend = backend
        self._background = background
        self._by_token: dict[str, tuple[Worker, WarmPool]] = {}
        self._by_id: dict[str, tuple[Worker, WarmPool]] = {}

    @property
    def tokens(self) -> Mapping[str, tuple[Worker, WarmPool]]:
        """Live workers by token (whether a bearer token is a worker's)."""
        return self._by_token

    @property
    def workers(self) -> Mapping[str, tuple[Worker, WarmPool]]:
        """Live workers by id (who a caller token's worker is, what it holds)."""
        return self._by_id

    def new(self, pool: WarmPool) -> Worker:
        """A new worker of ``pool`` (its container is started by the caller)."""
        worker = Worker(
            id=secrets.token_hex(6),
            token=secrets.token_urlsafe(24),
            function=pool.spec.name,
            version=pool.version,
        )
        pool.add_worker(worker)
        self._by_token[worker.token] = (worker, pool)
        self._by_id[worker.id] = (worker, pool)
        return worker

    def forget(self, worker: Worker) -> None:
        """``worker`` is gone: its token opens nothing any more."""
        self._by_token.pop(worker.token, None)
        self._by_id.pop(worker.id, None)

    def for_token(self, token: str) -> tuple[Worker, WarmPool] | None:
        """The live worker holding ``token``, and its pool."""
        found = self._by_token.get(token)
        if found is None or found[0].state == "gone":
            return None
        return found

    async def stop(self, worker: Worker, grace: float = 0) -> None:
        """Stop and remove ``worker``'s container (after ``grace`` seconds of SIGTERM)."""
        if worker.container:
            with contextlib.suppress(SwarmlessError):
                await self._backend.stop_container(worker.container, grace=grace)

    def recycle(self, pool: WarmPool, worker: Worker) -> None:
        """``worker`` is stuck: forget it (its other calls go back to the queue) and stop
        its container in the background."""
        pool.gone(worker)
        self.forget(worker)
        self._background.spawn(self.stop(worker))

    def container_exited(
        self, container_id: str, worker_id: str | None, exit_code: int, oom: bool = False
    ) -> None:
        """The engine says a container died: forget the worker, requeue its calls.

        A container the kernel killed for its memory limit fails the calls it held (as
        OOM-killed, in their records) instead: running them again would only repeat it.
        """
        if worker_id is None:
            return
        found = self._by_id.get(worker_id)
        if found is None:
            return
        worker, pool = found
        before = worker.state
        held = pool.gone(worker, requeue=not oom)
        self.forget(worker)
        if oom:
            limit = f"{pool.spec.memory} bytes" if pool.spec.memory else "its memory limit"
            for call in held:
                if not call.finished:
                    call.future.set_exception(
                        OOMKilled(
                            function=pool.spec.name,
                            exit_status=exit_code,
                            stderr=f"OOM-killed: the container exceeded {limit}".encode(),
                        )
                    )
        elif held:
            log.warning("worker %s died with %d call(s) in hand: requeued", worker.id, len(held))
        if before == "starting" and exit_code not in _KILLED:
            self._background.spawn(self._crashed(pool, worker, exit_code))
        else:
            self._background.spawn(self.stop(worker))

    async def _crashed(self, pool: WarmPool, worker: Worker, exit_code: int) -> None:
        """A worker exited before it asked for work: fail what waits, with its output."""
        tail = ""
        if worker.container:
            tail = await self._backend.container_logs(worker.container)
            await self.stop(worker)
        reason = (
            f"function {pool.spec.name!r}: its container exited with status {exit_code} "
            "before it asked for work" + (f": {tail}" if tail else "")
        )
        log.warning("%s", reason)
        pool.crash(reason)
