"""A native function's handle: ``remote``, ``spawn``, ``map``, ``starmap``, ``local``.

Each has an async twin (``await f.remote.aio(x)``, ``async for y in f.map.aio(xs)``).
A call sends the function's code (pickled once, then reused) and its arguments to the
function's pool, signed with the app's key; the reply carries the result, or the
exception, which is raised here as the same type where it can be rebuilt (else a
:class:`~swarmless.runtime.native.RemoteError`), with the remote traceback as a note; what
the call printed in the container is printed here.

Pickled inside another function's code, a handle becomes a small descriptor that the
container turns into a :class:`~swarmless.runtime.native_calls.RemoteFunction`.
"""

from __future__ import annotations

import dataclasses
import threading
import types
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from swarmless.exceptions import InvalidArgument
from swarmless.native import _pickling
from swarmless.native._runner import Twin
from swarmless.runtime import native as wire
from swarmless.runtime.native_calls import remote_function

if TYPE_CHECKING:
    from swarmless.native._types import AppLike, Pool

__all__ = ["Function", "FunctionCall", "Options"]

NATIVE_TYPE = "application/x-swarmless-native"
_pickling_now = threading.local()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    """What ``@app.function(...)`` takes (``App(...)`` takes the same, as defaults)."""

    image: str | None = None
    requirements: tuple[str, ...] = ()
    timeout: float = 300.0
    memory: int | str | None = None
    cpus: float | None = None
    min_containers: int = 0
    max_containers: int = 10
    concurrency: int = 1
    retries: int = 0
    secrets: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    idle_timeout: float = 300.0
    max_body: int | str = 10 * 1024 * 1024
    max_output: int | str = 10 * 1024 * 1024

    @classmethod
    def build(cls, base: Options | None = None, **given: Any) -> Options:
        """Options from keyword arguments, over ``base``; unknown names are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise InvalidArgument(
                f"unknown option(s) {', '.join(unknown)}; "
                f"the options are {', '.join(sorted(known))}"
            )
        values = {k: v for k, v in given.items() if v is not None or k in ("memory", "cpus")}
        if "requirements" in values:
            reqs = values["requirements"]
            if isinstance(reqs, str):
                raise InvalidArgument(f"requirements must be a list of strings, got {reqs!r}")
            values["requirements"] = tuple(reqs)
        if "secrets" in values:
            values["secrets"] = tuple(values["secrets"])
        if "env" in values:
            values["env"] = tuple(sorted(dict(values["env"]).items()))
        return dataclasses.replace(base, **values) if base else cls(**values)


class Function:
    """A Python function that runs in a container (made by ``@app.function()``)."""

    def __init__(
        self, app: AppLike, raw: Callable[..., Any] | None, *, name: str, options: Options
    ):
        self.app = app
        self.raw = raw
        self.name = name
        self.options = options
        self._code: tuple[str, bytes | None] | None = None
        self._lock = threading.Lock()
        if raw is not None:
            for attr in ("__module__", "__qualname__", "__doc__"):
                setattr(self, attr, getattr(raw, attr, None))
            self.__wrapped__ = raw
        #: ``f.remote(*args, **kwargs)``: run in a container, return its result.
        self.remote = Twin(self._remote, self._remote_aio)
        #: ``f.spawn(...)``: queue the call (durable, retried); a :class:`FunctionCall`.
        self.spawn = Twin(self._spawn, self._spawn_aio)
        #: ``f.map(xs, ys, order=True, max_concurrency=None, return_exceptions=False)``.
        self.map = Twin(self._map, self._map_aio)
        #: ``f.starmap([(x, y), ...], ...)``: like map, each item the arguments of a call.
        self.starmap = Twin(self._starmap, self._starmap_aio)

    def __repr__(self) -> str:
        return f"<native function {self.app.name}.{self.name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"{self.name} is a native function: call {self.name}.remote(...) to run it in a "
            f"container, or {self.name}.local(...) to run it here"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Inside another function's code: a descriptor the container can call."""
        busy: set[int] = getattr(_pickling_now, "ids", set())
        code_hash, code = self._code_hash_and_code(pickle_code=id(self) not in busy)
        desc = {
            "app": self.app.name,
            "pool": self.app.pool_name(self),
            "name": self.name,
            "hash": code_hash,
            "code": code,
        }
        return (remote_function, (desc,))

    # -- code ---------------------------------------------------------------------------

    def _code_hash_and_code(self, *, pickle_code: bool = True) -> tuple[str, bytes | None]:
        if self.raw is None:
            return "", None  # looked up by name: the deployed code runs
        with self._lock:
            if self._code is not None:
                return self._code
        if not pickle_code:  # a function that refers to itself: the container has it
            return "", None
        busy: set[int] = getattr(_pickling_now, "ids", set())
        _pickling_now.ids = busy | {id(self)}
        try:
            code = _pickling.dumps_function(self.raw, name=self.name)
        finally:
            _pickling_now.ids = busy
        found = (_pickling.code_hash(code), code)
        with self._lock:
            self._code = found
        return found

    # -- the one implementation of a call ----------------------------------------------

    async def _pool(self) -> Pool:
        return await self.app.pool(self)

    async def _body(
        self, calls: list[tuple[tuple[Any, ...], dict[str, Any]]], budget: float, pool: Pool
    ) -> bytes:
        code_hash, code = self._code_hash_and_code()
        args = _pickling.dumps_calls(calls, name=self.name, limit=pool.max_body - 65536)
        body = wire.encode_call(
            self.app.key, fn=self.name, code_hash=code_hash, code=code, args=args, budget=budget
        )
        if len(body) > pool.max_body:
            raise InvalidArgument(
                f"the code of {self.name} with its arguments is {len(body)} bytes pickled, over "
                f"the limit of {pool.max_body} bytes (max_body): does it refer to a large "
                "global? load such data inside the function"
            )
        return body

    async def send(
        self, calls: list[tuple[tuple[Any, ...], dict[str, Any]]], budget: float
    ) -> dict[str, Any]:
        """Run ``calls`` in one round trip; the decoded reply (items may stop short)."""
        pool = await self._pool()
        body = await self._body(calls, budget, pool)
        answer = await self.app.gateway.invoke(
            pool.name, body, path=self.name, headers={"Content-Type": NATIVE_TYPE}
        )
        reply = _checked(wire.decode_reply(answer.body))
        reply["sent_bytes"] = len(body)
        return reply

    async def _remote_aio(self, *args: Any, **kwargs: Any) -> Any:
        reply = await self.app.runner.wrap(self.send([(args, kwargs)], budget=0.0))
        return self.outcome(reply, 0)

    def _remote(self, *args: Any, **kwargs: Any) -> Any:
        reply = self.app.runner.run(self.send([(args, kwargs)], budget=0.0))
        return self.outcome(reply, 0)

    def outcome(self, reply: dict[str, Any], index: int, *, raising: bool = True) -> Any:
        """The value of a reply's item (its prints printed here first), or its exception
        raised (or returned when not ``raising``), in the caller's own thread."""
        wire.emit_logs(reply["logs"], index)
        item = reply["items"][index]
        if item[0] == wire.OK:
            return item[1]
        if item[0] == wire.GENERATOR:
            return iter(item[1])
        try:
            wire.raise_remote(item[1], _localized(item[2], self.raw))
        except BaseException as e:
            if raising:
                raise
            return e
        raise AssertionError("unreachable")

    async def _spawn_core(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> FunctionCall:
        pool = await self._pool()
        body = await self._body([(args, kwargs)], 0.0, pool)
        spawned = await self.app.gateway.spawn(
            pool.name, body, path=self.name, headers={"Content-Type": NATIVE_TYPE}
        )
        return FunctionCall(self, spawned.id)

    def _spawn(self, *args: Any, **kwargs: Any) -> FunctionCall:
        return self.app.runner.run(self._spawn_core(args, kwargs))

    async def _spawn_aio(self, *args: Any, **kwargs: Any) -> FunctionCall:
        return await self.app.runner.wrap(self._spawn_core(args, kwargs))

    # -- map ----------------------------------------------------------------------------

    def _map(
        self,
        *iterables: Iterable[Any],
        order: bool = True,
        max_concurrency: int | None = None,
        return_exceptions: bool = False,
        kwargs: dict[str, Any] | None = None,
    ) -> Iterator[Any]:
        if not iterables:
            raise InvalidArgument(f"{self.name}.map needs at least one iterable")
        return self._starmap(
            zip(*iterables, strict=False),
            order=order,
            max_concurrency=max_concurrency,
            return_exceptions=return_exceptions,
            kwargs=kwargs,
        )

    def _map_aio(
        self,
        *iterables: Iterable[Any],
        order: bool = True,
        max_concurrency: int | None = None,
        return_exceptions: bool = False,
        kwargs: dict[str, Any] | None = None,
    ) -> AsyncIterator[Any]:
        if not iterables:
            raise InvalidArgument(f"{self.name}.map needs at least one iterable")
        return self._starmap_aio(
            zip(*iterables, strict=False),
            order=order,
            max_concurrency=max_concurrency,
            return_exceptions=return_exceptions,
            kwargs=kwargs,
        )

    def _starmap(self, iterable: Iterable[Any], **options: Any) -> Iterator[Any]:
        from swarmless.native.mapping import Mapper

        return Mapper(self, iterable, **options).sync()

    def _starmap_aio(self, iterable: Iterable[Any], **options: Any) -> AsyncIterator[Any]:
        from swarmless.native.mapping import Mapper

        return Mapper(self, iterable, **options).aio()

    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function here, in this process (as a plain call)."""
        if self.raw is None:
            raise InvalidArgument(f"{self.name} was looked up by name: its code is not here")
        return self.raw(*args, **kwargs)


def _checked(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply whose whole call failed (refused, wrong Python, code that would not load)
    raises that failure."""
    if reply.get("failed"):
        _, exc, info = reply["items"][0]
        wire.raise_remote(exc, info)
    return reply


def _localized(info: dict[str, Any], raw: Callable[..., Any] | None) -> dict[str, Any]:
    """The remote traceback with this side's file names and source lines: code that
    travelled by value ran as ``<dynamic-code>``; its line numbers are this side's."""
    frames = info.get("frames")
    if not frames or raw is None or any(f[0] == "<dynamic-code>" for f in frames) is False:
        return info
    import linecache
    import traceback

    files: dict[str, str] = {}

    def add(code: Any) -> None:
        if isinstance(code, types.CodeType) and code.co_name not in files:
            files[code.co_name] = code.co_filename
            for const in code.co_consts:
                add(const)

    add(getattr(raw, "__code__", None))
    for value in list(getattr(raw, "__globals__", {}).values()):
        value = getattr(value, "raw", None) or value
        add(getattr(value, "__code__", None))
    rows = []
    for filename, lineno, name, line in frames:
        if filename == "<dynamic-code>" and name in files:
            filename = files[name]
            line = linecache.getline(filename, lineno).strip() or line
        rows.append((filename, lineno, name, line))
    text = "Traceback (most recent call last):\n"
    text += "".join(traceback.StackSummary.from_list(rows).format()) + info.get("tail", "")
    return {**info, "traceback": text}


class FunctionCall:
    """A spawned call: durable, retried per the function's ``retries``; ``get()`` waits."""

    def __init__(self, function: Function, call_id: str) -> None:
        self.function = function
        self.call_id = call_id
        #: ``call.get(timeout=None)``: the result (or the exception) once the call ends.
        self.get = Twin(self._get, self._get_aio)

    def __repr__(self) -> str:
        return f"<FunctionCall {self.function.name} {self.call_id}>"

    async def _get_core(self, timeout: float | None) -> dict[str, Any]:
        answer = await self.function.app.gateway.result(self.call_id, timeout)
        return _checked(wire.decode_reply(answer.body))

    def _get(self, timeout: float | None = None) -> Any:
        return self.function.outcome(self.function.app.runner.run(self._get_core(timeout)), 0)

    async def _get_aio(self, timeout: float | None = None) -> Any:
        reply = await self.function.app.runner.wrap(self._get_core(timeout))
        return self.function.outcome(reply, 0)
