"""The gateway as its routes see it: a Protocol, so routes need not import the gateway.

:class:`~swarmless.gateway.app.Gateway` builds the routes (:mod:`~swarmless.gateway.admin`,
:mod:`~swarmless.gateway.sync_routes`, :mod:`~swarmless.gateway.async_routes`) and hands
itself to them as a :class:`GatewayContext`: they read its parts (each None until this
replica is the active one, see :mod:`~swarmless.gateway.active`) and ask through methods;
none of them writes the gateway's attributes, and none imports
:mod:`swarmless.gateway.app` (which imports them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from starlette.applications import Starlette

from swarmless.backends.base import Backend
from swarmless.config import Settings
from swarmless.dispatch.async_runner import AsyncRunner
from swarmless.dispatch.dispatcher import Dispatcher
from swarmless.dispatch.scheduler import Scheduler
from swarmless.gateway.asgi import Scope
from swarmless.gateway.callbacks import CallbackPolicy
from swarmless.gateway.edge import Passed
from swarmless.gateway.replicas import Replicas
from swarmless.proxy.tokens import CallerTokens
from swarmless.scaling.reconciler import Reconciler
from swarmless.store import Store

__all__ = ["GatewayContext"]


class GatewayContext(Protocol):
    """What a route may read of the gateway, and ask it."""

    @property
    def app(self) -> Starlette:
        """The Starlette app of the admin routes (for the OpenAPI description)."""
        ...

    @property
    def settings(self) -> Settings: ...

    @property
    def backend(self) -> Backend: ...

    @property
    def store(self) -> Store | None:
        """The store, once the gateway started."""
        ...

    @property
    def replicas(self) -> Replicas | None:
        """The lease among replicas, once the gateway started."""
        ...

    @property
    def callers(self) -> CallerTokens:
        """The tokens of function containers (who is calling)."""
        ...

    @property
    def callbacks(self) -> CallbackPolicy:
        """Where callbacks may go."""
        ...

    @property
    def dispatcher(self) -> Dispatcher | None:
        """The dispatcher, on the active replica."""
        ...

    @property
    def runner(self) -> AsyncRunner | None:
        """The async runner, on the active replica."""
        ...

    @property
    def scheduler(self) -> Scheduler | None:
        """The schedules, on the active replica."""
        ...

    @property
    def reconcilers(self) -> Mapping[str, Reconciler]:
        """The reconciler of each warm function (on the active replica)."""
        ...

    def check_admin(self, token: str | None) -> None:
        """Unauthorized unless ``token`` is the admin token (or the gateway has none)."""
        ...

    def edge(self, scope: Scope, *, consumed: frozenset[str] = ...) -> Passed:
        """What of this request's headers a function may see."""
        ...

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Containers and calls per function (async ones too)."""
        ...

    def start_reconciler(self, name: str) -> None:
        """Start (or wake) the reconciler of warm function ``name``."""
        ...

    def stop_reconciler(self, name: str) -> None:
        """Stop the reconciler of a function that was removed."""
        ...
