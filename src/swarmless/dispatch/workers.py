"""The worker registry: which warm containers exist, their tokens, and their deaths.

Every warm worker gets an id and a token of its own when the reconciler starts it
(:meth:`WorkerRegistry.new`); a container pulls work only with its token
(:meth:`WorkerRegistry.for_token`, the runtime API's check). The backend tells the
registry when a container dies (the gateway's wiring subscribes
:meth:`WorkerRegistry.container_exited`); when the engine answers again after an outage,
the gateway hands it the engine's listing (:meth:`WorkerRegistry.resync`), and a
reconciler that finds a ready worker silent asks the engine about it. A dead worker is
forgotten, and the calls it held:

- fail with the container's exit reason and last lines (502): a call may have had effects
  before its container died, so it is never run again behind the caller's back;
- unless the function is idempotent (``retry_sync``): a sync call then goes back to the
  front of the queue, :data:`MAX_RERUNS` times at most;
- an async call fails to its runner, which retries it as the function's policy says;
- a container the kernel killed for its memory limit fails its calls as OOM-killed.

A container that died before it asked for work is a crash: its last lines go to the pool
(:meth:`WarmPool.crash`), which fails what waits and lets the planner back off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Mapping, Sequence

from swarmless.backends.base import Backend, ContainerInfo
from swarmless.dispatch.background import Background
from swarmless.dispatch.pool import Call, WarmPool, Worker
from swarmless.exceptions import ContainerError, FunctionFailed, OOMKilled, SwarmlessError

__all__ = ["WorkerRegistry"]

log = logging.getLogger("swarmless.dispatch")

#: Exit statuses of a container stopped from outside (SIGKILL, SIGTERM): not a crash.
_KILLED = (137, 143)
#: Container states of a live worker.
ALIVE = ("running", "paused")
#: Times a call of an idempotent function (``retry_sync``) is run again after its
#: container died under it.
MAX_RERUNS = 2
#: Seconds spent reading a dead container's last lines for the error of its calls.
LOGS_WAIT = 2.0


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
        """``worker`` is stuck (a call it held ran past its timeout): forget it and stop its
        container in the background; the other calls it held fail, or run again when the
        function is idempotent (``retry_sync``)."""
        held = pool.gone(worker, requeue=False)
        self.forget(worker)
        failed = self._run_again(pool, held)
        why = "its container was stopped: another call it held ran past its timeout"
        for call in failed:
            if not call.finished:
                call.future.set_exception(FunctionFailed(f"function {pool.spec.name!r}: {why}"))
        self._background.spawn(self.stop(worker))

    def container_exited(
        self, container_id: str, worker_id: str | None, exit_code: int, oom: bool = False
    ) -> None:
        """The engine says a container died: forget its worker.

        The calls it held fail with the container's exit reason (a 502: a call may have had
        effects before its container died, so it is not silently run again), unless the
        function is idempotent (``retry_sync``: a sync call runs again, twice at most). An
        async call fails to its runner, which retries it as its policy says. A container
        the kernel killed for its memory limit fails its calls as OOM-killed, always.
        """
        if worker_id is None:
            return
        found = self._by_id.get(worker_id)
        if found is not None:
            self._died(found[1], found[0], exit_code, oom=oom)

    def lost(self, worker: Worker) -> None:
        """The engine no longer runs ``worker``'s container, though nobody said it died (a
        reconciler asked after the worker fell silent): as :meth:`container_exited`."""
        found = self._by_id.get(worker.id)
        if found is not None:
            self._died(found[1], found[0], None)

    def resync(self, found: Sequence[ContainerInfo], *, asked: float) -> list[str]:
        """The engine answers again (it may have restarted): what it lists is what runs.

        ``found`` is the engine's list, asked for at ``asked`` (monotonic). A worker whose
        container is not listed, or is no longer running, died while nobody was told (its
        calls fail or run again, as in :meth:`container_exited`). Returns the ids of the
        worker containers listed that belong to no live worker (to be removed).

        Only the workers whose container had started before the list was asked for are
        judged by it: one started since may be missing from it and be running (a slow list
        killed a healthy worker that had just started; its own start, its exit event or
        the reconciler's silence check tell about it).
        """
        listed = {c.id: c for c in found}
        orphans = [c.id for c in found if c.kind == "worker" and c.worker_id not in self._by_id]
        for worker, pool in list(self._by_id.values()):
            if not worker.container:  # being started: its start tells how that went
                continue
            if worker.launched_at is None or worker.launched_at >= asked:
                continue  # started after the list was asked for: the list cannot tell
            c = listed.get(worker.container)
            if c is None or c.status not in ALIVE:
                self._died(pool, worker, None)
        return orphans

    def _died(
        self, pool: WarmPool, worker: Worker, exit_code: int | None, *, oom: bool = False
    ) -> None:
        before = worker.state
        held = [c for c in pool.gone(worker, requeue=False) if not c.finished]
        self.forget(worker)
        failed = held if oom else self._run_again(pool, held)
        if held and not oom:
            log.warning(
                "worker %s died with %d call(s) in hand: %d run again, %d failed",
                worker.id,
                len(held),
                len(held) - len(failed),
                len(failed),
            )
        crashed = before == "starting" and exit_code is not None and exit_code not in _KILLED
        # Its container is removed in the background; the pool counts it until then.
        if failed or crashed:
            self._background.spawn(
                pool.stopping_while(
                    self._explain(pool, worker, exit_code, oom=oom, calls=failed, crashed=crashed)
                )
            )
        else:
            self._background.spawn(pool.stopping_while(self.stop(worker)))

    def _run_again(self, pool: WarmPool, held: list[Call]) -> list[Call]:
        """Requeue the calls of ``held`` that may run again; returns the others."""
        failed = []
        for call in held:
            if call.finished:
                continue
            if (
                pool.spec.retry_sync
                and call.record.kind != "async"
                and call.record.attempt <= MAX_RERUNS
            ):
                pool.requeue(call)
            else:
                failed.append(call)
        return failed

    async def _explain(
        self,
        pool: WarmPool,
        worker: Worker,
        exit_code: int | None,
        *,
        oom: bool,
        calls: list[Call],
        crashed: bool,
    ) -> None:
        """Fail ``calls`` (and the pool, if the worker ``crashed`` before it asked for work)
        with what the container printed last; then remove it."""
        spec = pool.spec
        tail = ""
        if worker.container and not oom:
            with contextlib.suppress(TimeoutError):
                tail = await asyncio.wait_for(
                    self._backend.container_logs(worker.container), LOGS_WAIT
                )
        for call in calls:
            if call.finished:
                continue
            if oom:
                limit = f"{spec.memory} bytes" if spec.memory else "its memory limit"
                call.future.set_exception(
                    OOMKilled(
                        function=spec.name,
                        exit_status=exit_code if exit_code is not None else -1,
                        stderr=f"OOM-killed: the container exceeded {limit}".encode(),
                    )
                )
                continue
            why = f"its container stopped while it ran this call ({_how(exit_code)})"
            if call.record.kind == "async":  # its runner retries it, as its policy says
                pass
            elif spec.retry_sync:
                why += f"; run {call.record.attempt} times, each container died: not run again"
            else:
                why += "; not run again: the function is not marked idempotent (retry_sync)"
            call.future.set_exception(
                ContainerError(
                    function=spec.name,
                    exit_status=exit_code if exit_code is not None else -1,
                    stderr=(why + (f"\n{tail}" if tail else "")).encode(),
                )
            )
        if crashed:
            reason = (
                f"function {spec.name!r}: its container exited with status {exit_code} "
                "before it asked for work" + (f": {tail}" if tail else "")
            )
            log.warning("%s", reason)
            pool.crash(reason)
        await self.stop(worker)


def _how(exit_code: int | None) -> str:
    if exit_code is None:
        return "found stopped; the engine did not say how it ended"
    if exit_code == 137:
        return "killed: status 137"
    if exit_code == 143:
        return "stopped: status 143"
    return f"status {exit_code}"
