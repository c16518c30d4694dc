"""swarmless: serverless functions on Docker.

>>> import swarmless
>>> swarmless.from_env().run("swarmless/busybox", ["echo", "hi"])
b'hi\\n'
"""

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

__version__ = "0.1.0"

__all__ = [
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
