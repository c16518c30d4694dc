"""swarmless: serverless functions on Docker.

>>> import swarmless
>>> swarmless.from_env().run("swarmless/busybox", ["echo", "hi"])
b'hi\\n'

Importing the package imports nothing else: each name below is loaded on first use (see
:mod:`swarmless._lazy`), so ``import swarmless`` costs a CGI front end next to nothing and
the Docker SDK, httpx, SQLAlchemy and Rich are imported only by what needs them.
"""

from __future__ import annotations

from swarmless import _lazy

# Not typing.TYPE_CHECKING: importing typing would double what importing this costs. Type
# checkers take any name TYPE_CHECKING as true.
TYPE_CHECKING = False

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncClient",
    "AsyncGatewayClient",
    "AsyncInvocation",
    "AsyncRun",
    "Client",
    "ContainerError",
    "EngineUnavailable",
    "FunctionFailed",
    "FunctionNotFound",
    "FunctionSpec",
    "GatewayClient",
    "GatewayUnavailable",
    "ImageNotFound",
    "InvalidArgument",
    "Invocation",
    "InvocationNotFound",
    "InvocationRecord",
    "InvocationTimeout",
    "InvokeResult",
    "NoAnswer",
    "NotFound",
    "OOMKilled",
    "PayloadTooLarge",
    "QueueFull",
    "Run",
    "RunTimeout",
    "Settings",
    "SpecError",
    "SwarmlessError",
    "Unauthorized",
    "WaitTimeout",
    "__version__",
    "from_env",
]

_ERRORS = "swarmless.exceptions"
_SDK = "swarmless.sdk"
#: Where each public name lives; imported on first use.
_EXPORTS = {
    "App": "swarmless.native",
    "AsyncClient": _SDK,
    "AsyncGatewayClient": _SDK,
    "AsyncInvocation": _SDK,
    "AsyncRun": _SDK,
    "Client": _SDK,
    "ContainerError": _ERRORS,
    "EngineUnavailable": _ERRORS,
    "FunctionFailed": _ERRORS,
    "FunctionNotFound": _ERRORS,
    "FunctionSpec": "swarmless.spec",
    "GatewayClient": _SDK,
    "GatewayUnavailable": _ERRORS,
    "ImageNotFound": _ERRORS,
    "InvalidArgument": _ERRORS,
    "Invocation": _SDK,
    "InvocationNotFound": _ERRORS,
    "InvocationRecord": "swarmless.records",
    "InvocationTimeout": _ERRORS,
    "InvokeResult": _SDK,
    "NoAnswer": _ERRORS,
    "NotFound": _ERRORS,
    "OOMKilled": _ERRORS,
    "PayloadTooLarge": _ERRORS,
    "QueueFull": _ERRORS,
    "Run": _SDK,
    "RunTimeout": _ERRORS,
    "Settings": "swarmless.config",
    "SpecError": _ERRORS,
    "SwarmlessError": _ERRORS,
    "Unauthorized": _ERRORS,
    "WaitTimeout": _ERRORS,
    "from_env": _SDK,
}

if TYPE_CHECKING:
    from swarmless.config import Settings
    from swarmless.exceptions import (
        ContainerError,
        EngineUnavailable,
        FunctionFailed,
        FunctionNotFound,
        GatewayUnavailable,
        ImageNotFound,
        InvalidArgument,
        InvocationNotFound,
        InvocationTimeout,
        NoAnswer,
        NotFound,
        OOMKilled,
        PayloadTooLarge,
        QueueFull,
        RunTimeout,
        SpecError,
        SwarmlessError,
        Unauthorized,
        WaitTimeout,
    )
    from swarmless.native import App
    from swarmless.records import InvocationRecord
    from swarmless.sdk import (
        AsyncClient,
        AsyncGatewayClient,
        AsyncInvocation,
        AsyncRun,
        Client,
        GatewayClient,
        Invocation,
        InvokeResult,
        Run,
        from_env,
    )
    from swarmless.spec import FunctionSpec
else:

    def __getattr__(name: str) -> object:
        return _lazy.load(__name__, _EXPORTS, name)

    def __dir__() -> list[str]:
        return _lazy.names(__name__, _EXPORTS)


del TYPE_CHECKING
