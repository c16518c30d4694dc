"""The Python SDK: run images as functions, call deployed functions."""

from swarmless.sdk.client import AsyncClient, AsyncRun, Client, from_env
from swarmless.sdk.run import Run

__all__ = ["AsyncClient", "AsyncRun", "Client", "Run", "from_env"]
