"""What the runtime reads from its environment (docs/runtime-api.md), and where it says so.

:class:`RuntimeConfig` is checked once, at start: a bad value stops the process with one
line on stderr (:func:`log`: the container's own stderr, never an invocation's log).
"""

from __future__ import annotations

import os
import sys
import urllib.parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = ["RuntimeConfig", "log"]


def log(message: str) -> None:
    """A line on the container's own stderr (never in an invocation's log)."""
    stream = sys.__stderr__
    if stream is not None:
        stream.write(f"swarmless-runtime: {message}\n")
        stream.flush()


class RuntimeConfig:
    """What the runtime reads from its environment (docs/runtime-api.md)."""

    __slots__ = (
        "api",
        "concurrency",
        "function",
        "give_up",
        "handler",
        "handler_kind",
        "token",
        "workdir",
    )

    def __init__(
        self,
        *,
        api: str,
        token: str,
        function: str = "",
        handler: str = "",
        handler_kind: str = "python",
        concurrency: int = 1,
        workdir: str = "/function",
        give_up: float = 60.0,
    ) -> None:
        parts = urllib.parse.urlsplit(api)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"SWARMLESS_RUNTIME_API must be an http(s) URL, got {api!r}")
        if not token:
            raise ValueError("SWARMLESS_WORKER_TOKEN is not set")
        if not 1 <= concurrency <= 1024:
            raise ValueError(f"SWARMLESS_CONCURRENCY must be 1..1024, got {concurrency}")
        if give_up <= 0:
            raise ValueError(f"SWARMLESS_RUNTIME_GIVE_UP must be > 0, got {give_up}")
        self.api = api.rstrip("/")
        self.token = token
        self.function = function
        self.handler = handler
        self.handler_kind = handler_kind
        self.concurrency = concurrency
        self.workdir = workdir
        self.give_up = give_up

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RuntimeConfig:
        env = os.environ if environ is None else environ

        def number(name: str, default: str, kind: type[int] | type[float]) -> Any:
            raw = env.get(name) or default
            try:
                return kind(raw)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {raw!r}") from None

        return cls(
            api=env.get("SWARMLESS_RUNTIME_API", ""),
            token=env.get("SWARMLESS_WORKER_TOKEN", ""),
            function=env.get("SWARMLESS_FUNCTION", ""),
            handler=env.get("SWARMLESS_HANDLER", ""),
            handler_kind=env.get("SWARMLESS_HANDLER_KIND") or "python",
            concurrency=number("SWARMLESS_CONCURRENCY", "1", int),
            workdir=env.get("SWARMLESS_WORKDIR") or "/function",
            give_up=number("SWARMLESS_RUNTIME_GIVE_UP", "60", float),
        )
