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
    NotFound,
    OOMKilled,
    PayloadTooLarge,
    QueueFull,
    RunTimeout,
    SpecError,
    SwarmlessError,
    Unauthorized,
)
from swarmless.sdk import AsyncClient, AsyncRun, Client, Invocation, InvokeResult, Run, from_env
from swarmless.spec import FunctionSpec

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncRun",
    "Client",
    "ContainerError",
    "EngineUnavailable",
    "FunctionFailed",
    "FunctionNotFound",
    "FunctionSpec",
    "GatewayUnavailable",
    "ImageNotFound",
    "InvalidArgument",
    "Invocation",
    "InvocationNotFound",
    "InvocationTimeout",
    "InvokeResult",
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
    "__version__",
    "from_env",
]
