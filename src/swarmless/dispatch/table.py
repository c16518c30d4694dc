"""The dispatcher's function table: deployed functions and their warm pools.

:class:`FunctionTable` (the base of :class:`~swarmless.dispatch.dispatcher.Dispatcher`)
owns ``functions`` (name -> spec and version) and ``pools`` (a warm function's
:class:`~swarmless.dispatch.pool.WarmPool`): loading them from the store, deploy and
update (the image and secrets checked, no two functions on one route), remove (the
queue failed, the workers drained). It also answers what the reconciler asks of the
dispatcher about workers, which the worker registry and the background do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any

from swarmless.backends.base import Backend
from swarmless.dispatch.background import Background
from swarmless.dispatch.oneshot import OneShotCalls
from swarmless.dispatch.pool import WarmPool, Worker
from swarmless.dispatch.workers import WorkerRegistry
from swarmless.exceptions import (
    EngineUnavailable,
    FunctionNotFound,
    InvocationTimeout,
    SpecError,
    SwarmlessError,
)
from swarmless.spec import FunctionSpec
from swarmless.store import Store

__all__ = ["FunctionTable"]


class FunctionTable:
    """Deployed functions, their warm pools, and the workers the reconciler asks for."""

    def __init__(
        self,
        *,
        store: Store,
        backend: Backend,
        workers: WorkerRegistry,
        oneshot: OneShotCalls,
        background: Background,
    ) -> None:
        self.store = store
        self.backend = backend
        self._workers = workers
        self._oneshot = oneshot
        self._background = background
        self.functions: dict[str, tuple[FunctionSpec, int]] = {}
        self.pools: dict[str, WarmPool] = {}
        #: Held from a deploy's check of its routes to its install (no two claim one).
        self._deploying = asyncio.Lock()

    # -- functions -----------------------------------------------------------------

    async def load(self) -> None:
        """Load the deployed functions from the store."""
        for spec, version in await self.store.list_functions():
            self._install(spec, version)

    def _install(self, spec: FunctionSpec, version: int) -> None:
        self.functions[spec.name] = (spec, version)
        if spec.mode == "warm":
            pool = self.pools.get(spec.name)
            if pool is None:
                self.pools[spec.name] = WarmPool(spec, version)
            else:
                pool.update(spec, version)
        else:
            old = self.pools.pop(spec.name, None)
            if old is not None:
                old.retire_all()
            self._oneshot.forget(spec.name)

    def get(self, name: str) -> tuple[FunctionSpec, int]:
        """The spec and version of a deployed function; raises FunctionNotFound."""
        try:
            return self.functions[name]
        except KeyError:
            raise FunctionNotFound(name) from None

    async def deploy(self, spec: FunctionSpec) -> int:
        """Deploy or update ``spec``; returns its new version."""
        if not spec.image:
            raise SpecError({"image": "an image is required (build it first: swarmless build)"})
        try:
            await self.backend.ensure_image(spec.image)
        except (EngineUnavailable, InvocationTimeout):
            raise  # not the spec's fault: 503 (retry once the engine answers), 504 (a pull)
        except SwarmlessError as e:
            raise SpecError({"image": e.message}) from e
        if spec.secrets:
            missing = set(spec.secrets) - set(await self.backend.list_secrets())
            if missing:
                raise SpecError(
                    {
                        "secrets": f"no secret named {', '.join(sorted(missing))}; create it "
                        "first: swarmless secret create NAME FILE"
                    }
                )
        async with self._deploying:
            self._check_routes(spec)
            version = await self.store.put_function(spec)
            self._install(spec, version)
        return version

    def _check_routes(self, spec: FunctionSpec) -> None:
        """SpecError when another function is served at one of ``spec``'s routes."""
        for name, (other, _) in self.functions.items():
            taken = set(spec.routes) & set(other.routes) if name != spec.name else set()
            if taken:
                raise SpecError(
                    {
                        "routes": f"{sorted(taken)[0]!r} is already function {name!r}'s "
                        "route: remove it there first"
                    }
                )

    async def remove(self, name: str) -> None:
        """Remove a function: its queue is failed, its workers drained."""
        self.get(name)
        await self.store.delete_function(name)
        self.functions.pop(name, None)
        self._oneshot.forget(name)
        pool = self.pools.pop(name, None)
        if pool is not None:
            pool.fail_pending(lambda: FunctionNotFound(name))
            for w in pool.retire_all():
                if w.container:
                    self.spawn(self.stop_worker(w, grace=w.busy * 5.0))

    # -- what the reconciler asks (the worker registry and the background do it) ---------

    def new_worker(self, pool: WarmPool) -> Worker:
        return self._workers.new(pool)

    def forget_worker(self, worker: Worker) -> None:
        self._workers.forget(worker)

    async def stop_worker(self, worker: Worker, grace: float = 0) -> None:
        await self._workers.stop(worker, grace)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, keeping a reference and logging its failure."""
        self._background.spawn(coro)

    @property
    def tokens(self) -> Mapping[str, tuple[Worker, WarmPool]]:
        """Live warm workers by token."""
        return self._workers.tokens

    @property
    def workers(self) -> Mapping[str, tuple[Worker, WarmPool]]:
        """Live warm workers by id."""
        return self._workers.workers
