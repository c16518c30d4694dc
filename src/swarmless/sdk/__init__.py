"""The Python SDK: run images as functions, call deployed functions.

Every client has an asyncio twin with the same methods: :class:`Client` and
:class:`AsyncClient`, :class:`GatewayClient` and :class:`AsyncGatewayClient`,
:class:`Invocation` and :class:`AsyncInvocation`, :class:`Run` and :class:`AsyncRun`.
"""

from swarmless.sdk.client import AsyncClient, AsyncRun, Client, from_env
from swarmless.sdk.gateway import (
    AsyncGatewayClient,
    AsyncInvocation,
    GatewayClient,
    Invocation,
    InvokeResult,
)
from swarmless.sdk.run import Run

__all__ = [
    "AsyncClient",
    "AsyncGatewayClient",
    "AsyncInvocation",
    "AsyncRun",
    "Client",
    "GatewayClient",
    "Invocation",
    "InvokeResult",
    "Run",
    "from_env",
]
