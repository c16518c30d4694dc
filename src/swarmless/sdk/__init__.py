"""The Python SDK: run images as functions, call deployed functions.

Every client has an asyncio twin with the same methods: :class:`Client` and
:class:`AsyncClient`, :class:`GatewayClient` and :class:`AsyncGatewayClient`,
:class:`Invocation` and :class:`AsyncInvocation`, :class:`Run` and :class:`AsyncRun`.
Each name is imported on first use (:mod:`swarmless._lazy`): the gateway clients bring
httpx, ``run()`` the Docker SDK, and neither is paid for before it is needed.
"""

from __future__ import annotations

from swarmless import _lazy

# Not typing.TYPE_CHECKING: importing typing would double what importing this costs. Type
# checkers take any name TYPE_CHECKING as true.
TYPE_CHECKING = False

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

_CLIENT = "swarmless.sdk.client"
_ASYNC_CLIENT = "swarmless.sdk.client_async"
_GATEWAY = "swarmless.sdk.gateway"
_ASYNC_GATEWAY = "swarmless.sdk.gateway_async"
#: Where each public name lives; imported on first use.
_EXPORTS = {
    "AsyncClient": _ASYNC_CLIENT,
    "AsyncGatewayClient": _ASYNC_GATEWAY,
    "AsyncInvocation": _ASYNC_GATEWAY,
    "AsyncRun": _ASYNC_CLIENT,
    "Client": _CLIENT,
    "GatewayClient": _GATEWAY,
    "Invocation": _GATEWAY,
    "InvokeResult": "swarmless.sdk.gateway_wire",
    "Run": "swarmless.sdk.run",
    "from_env": _CLIENT,
}

if TYPE_CHECKING:
    from swarmless.sdk.client import Client, from_env
    from swarmless.sdk.client_async import AsyncClient, AsyncRun
    from swarmless.sdk.gateway import GatewayClient, Invocation
    from swarmless.sdk.gateway_async import AsyncGatewayClient, AsyncInvocation
    from swarmless.sdk.gateway_wire import InvokeResult
    from swarmless.sdk.run import Run
else:

    def __getattr__(name: str) -> object:
        return _lazy.load(__name__, _EXPORTS, name)

    def __dir__() -> list[str]:
        return _lazy.names(__name__, _EXPORTS)


del TYPE_CHECKING
