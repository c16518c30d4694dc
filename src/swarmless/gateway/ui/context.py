"""What the dashboard needs of the gateway: the routes' view of it, and its settings.

A Protocol, so the dashboard's modules never import :mod:`swarmless.gateway.app` (which
mounts them): :class:`~swarmless.gateway.app.Gateway` satisfies it as it is.
"""

from __future__ import annotations

from typing import Protocol

from swarmless.config import Settings
from swarmless.gateway.context import GatewayContext

__all__ = ["DashboardGateway"]


class DashboardGateway(GatewayContext, Protocol):
    """The gateway as the dashboard sees it."""

    @property
    def settings(self) -> Settings:
        """The gateway's settings (instance, backend, port, trusted proxies)."""
        ...
