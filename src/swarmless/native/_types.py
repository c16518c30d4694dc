"""What the parts of :mod:`swarmless.native` see of each other (no import cycle)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from swarmless.native._runner import Runner
    from swarmless.sdk.gateway import AsyncGatewayClient

__all__ = ["AppLike", "FunctionLike", "OptionsLike", "Pool"]


@dataclasses.dataclass(frozen=True)
class Pool:
    """A deployed pool: its name and the request body limit calls must keep to."""

    name: str
    max_body: int


class OptionsLike(Protocol):
    @property
    def timeout(self) -> float: ...
    @property
    def max_containers(self) -> int: ...
    @property
    def concurrency(self) -> int: ...


class AppLike(Protocol):
    """What a function handle needs of its app."""

    name: str
    runner: Runner

    @property
    def gateway(self) -> AsyncGatewayClient: ...
    @property
    def key(self) -> bytes: ...
    def pool_name(self, function: Any) -> str: ...
    async def pool(self, function: Any) -> Pool: ...


class FunctionLike(Protocol):
    """What ``map`` needs of a function handle."""

    name: str
    app: AppLike

    @property
    def options(self) -> OptionsLike: ...
    async def send(
        self, calls: list[tuple[tuple[Any, ...], dict[str, Any]]], budget: float
    ) -> dict[str, Any]: ...
    def outcome(self, reply: dict[str, Any], index: int, *, raising: bool = True) -> Any: ...
