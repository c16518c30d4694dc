"""The Python SDK: run images as functions, call deployed functions."""

from swarmless.sdk.client import AsyncClient, AsyncRun, Client, from_env
from swarmless.sdk.gateway import Invocation, InvokeResult
from swarmless.sdk.run import Run

__all__ = ["AsyncClient", "AsyncRun", "Client", "Invocation", "InvokeResult", "Run", "from_env"]
