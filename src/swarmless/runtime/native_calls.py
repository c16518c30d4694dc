"""Calls from one native function to another, inside a container (standard library only).

A :class:`swarmless.native.Function` handle that a function's code refers to is pickled as
a :class:`RemoteFunction`: the container has neither httpx nor the rest of the SDK, only
this runtime. It calls the gateway at ``SWARMLESS_GATEWAY_URL`` with the container's own
caller token (``SWARMLESS_TOKEN``), names the call it serves as the parent
(``X-Swarmless-Parent``: the gateway records the new call as its child), and signs with
the app's key from the container's secret, so only functions of the same app can call each
other with pickles. ``remote``, ``map`` and ``starmap`` (batched, a few batches at once,
results in order) and ``local`` work as on the caller's side.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import pickle
import urllib.parse

from swarmless.runtime import native

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any

__all__ = ["RemoteFunction", "remote_function"]

#: Calls per batch of ``map`` and seconds a batch may run, inside a container.
BATCH = 256
BUDGET = 1.0
IN_FLIGHT = 4


def remote_function(desc: dict[str, Any]) -> RemoteFunction:
    """What a pickled function handle becomes once loaded (see the module docstring)."""
    return RemoteFunction(desc)


class RemoteFunction:
    """A native function called from inside another one."""

    def __init__(self, desc: dict[str, Any]) -> None:
        self.desc = desc
        self.app: str = desc["app"]
        self.pool: str = desc["pool"]
        self.name: str = desc["name"]

    def __reduce__(self) -> tuple[Any, ...]:
        return (remote_function, (self.desc,))

    def __repr__(self) -> str:
        return f"<native function {self.app}.{self.name} (nested)>"

    def _code(self) -> bytes:
        code: bytes | None = self.desc.get("code") or native.cached_code(
            self.desc["hash"], self.name
        )
        if code is None:
            raise LookupError(f"the code of {self.name} is not in this container")
        return code

    def _send(self, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> dict[str, Any]:
        key = native.native_key()
        if key is None:
            raise PermissionError(
                f"cannot call {self.app}.{self.name} from here: this container has no key of "
                f"app {self.app!r} (only functions of the same app call each other)"
            )
        import cloudpickle

        code = self._code()
        body = native.encode_call(
            key,
            fn=self.name,
            code_hash=self.desc["hash"] or native.hash_of(code),
            code=code,
            args=cloudpickle.dumps(calls, protocol=5),
            budget=BUDGET,
        )
        url = urllib.parse.urlsplit(os.environ.get("SWARMLESS_GATEWAY_URL", ""))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise RuntimeError("SWARMLESS_GATEWAY_URL is not set: not inside a function?")
        cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        conn = cls(url.hostname, url.port, timeout=3600)
        headers = {
            "Authorization": f"Bearer {os.environ.get('SWARMLESS_TOKEN', '')}",
            "Content-Type": "application/x-swarmless-native",
        }
        parent = native.current_call()
        if parent:
            headers["X-Swarmless-Parent"] = parent
        try:
            path = f"{url.path.rstrip('/')}/function/{self.pool}/{self.name}"
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.getheader("X-Swarmless-Error") == "1" or resp.status >= 400:
            try:
                err = json.loads(data)
            except ValueError:
                err = {"message": data[:500].decode("utf-8", "replace")}
            raise native.RemoteError(
                str(err.get("error") or f"HTTP {resp.status}"), str(err.get("message") or "")
            )
        reply = native.decode_reply(data)
        if reply.get("failed"):
            _, exc, info = reply["items"][0]
            native.raise_remote(exc, info)
        return reply

    def _results(self, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        """Every call's outcome, as ``(kind, value, info)``, sending the rest again when a
        reply stopped early."""
        out: list[Any] = []
        while len(out) < len(calls):
            reply = self._send(calls[len(out) :])
            for i, item in enumerate(reply["items"]):
                native.emit_logs(reply["logs"], i)
                out.append(item)
        return out

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        (item,) = self._results([(args, kwargs)])
        return _value(item, raising=True)

    def map(
        self,
        *iterables: Iterable[Any],
        order: bool = True,
        return_exceptions: bool = False,
        max_concurrency: int | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Iterator[Any]:
        return self.starmap(
            zip(*iterables, strict=False),
            order=order,
            return_exceptions=return_exceptions,
            max_concurrency=max_concurrency,
            kwargs=kwargs,
        )

    def starmap(
        self,
        iterable: Iterable[Any],
        *,
        order: bool = True,
        return_exceptions: bool = False,
        max_concurrency: int | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Iterator[Any]:
        """Batches of :data:`BATCH`, at most ``max_concurrency`` (4) at once; results in
        order (``order`` is accepted for the caller's signature)."""
        del order
        extra = dict(kwargs or {})
        width = max(1, min(max_concurrency or IN_FLIGHT, 32))
        batches = _chunks(((tuple(a), extra) for a in iterable), BATCH)
        with concurrent.futures.ThreadPoolExecutor(width) as pool:
            pending: list[concurrent.futures.Future[list[Any]]] = []
            for batch in batches:
                pending.append(pool.submit(self._results, batch))
                if len(pending) >= width:
                    yield from _values(pending.pop(0).result(), return_exceptions)
            for fut in pending:
                yield from _values(fut.result(), return_exceptions)

    def local(self, *args: Any, **kwargs: Any) -> Any:
        return pickle.loads(self._code())(*args, **kwargs)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _values(items: list[Any], return_exceptions: bool) -> Iterator[Any]:
    for item in items:
        yield _value(item, raising=not return_exceptions)


def _value(item: tuple[Any, ...], *, raising: bool) -> Any:
    if item[0] == native.OK:
        return item[1]
    if item[0] == native.GENERATOR:
        return iter(item[1])
    try:
        native.raise_remote(item[1], item[2])
    except BaseException as e:
        if raising:
            raise
        return e
    raise AssertionError("unreachable")
