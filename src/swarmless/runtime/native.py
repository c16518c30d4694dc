"""Python-native functions, inside the container: code and arguments by cloudpickle.

A native function (``@app.function`` in :mod:`swarmless.native`) runs in a *pool*: a warm
function of the generic Python image whose handler is :func:`handle`. No image is built
per function: the caller sends the function's code with each call, the first call of a
container loads it into the waiting interpreter, and later calls find it cached by the
hash of its pickled code (:data:`CACHE_SIZE` functions per container).

The wire format, both ways one HTTP body::

    call   b"SWN1C" + HMAC-SHA256(key, payload) + payload      payload: pickle of
           {"py": "3.11", "fn": name, "hash": str, "code": bytes | None,
            "args": bytes (cloudpickle of [(args, kwargs), ...]), "budget": seconds}
    reply  b"SWN1R" + cloudpickle of
           {"py": "3.11", "items": [item, ...], "logs": {index: (stdout, stderr)}}
           item: (OK, value) | (GENERATOR, [values]) | (ERROR, exception | None, info)

A call is signed with the app's key (a gateway secret mounted into the pool's containers,
whose name is in ``_SWARMLESS_NATIVE_KEY``): a pickle runs code when it is loaded, so only
a caller holding the key (the app's owner, or the app's own containers for nested calls)
may send one; any other caller of the pool may only send JSON (``{"args": [...],
"kwargs": {...}}``) to a function deployed with :meth:`swarmless.native.App.deploy`,
whose code is in another secret (``_SWARMLESS_NATIVE_CODE``). A batch of calls (``map``)
runs item after item until ``budget`` seconds have passed, and replies with what it ran
(the caller sends the rest again): a batch never holds a worker much past its budget, and
a reply over ``_SWARMLESS_NATIVE_LIMIT`` bytes is cut the same way (one result over it is
that item's error).

Standard library only, like the rest of the runtime; cloudpickle (in the generic image)
is imported on the first native call. The caller's side of the format (encoding a call,
decoding a reply, raising a remote exception) is in :mod:`~swarmless.runtime.native_wire`,
so the host SDK and nested calls inside a container share one implementation; this module
re-exports it, every import path unchanged.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import os
import pickle
import sys
import threading
import time
import types

from swarmless.runtime import capture
from swarmless.runtime.native_wire import (
    CALL_MAGIC,
    ERROR,
    GENERATOR,
    OK,
    PYTHON,
    REPLY_MAGIC,
    RemoteError,
    decode_reply,
    encode_call,
    hash_of,
    raise_remote,
)
from swarmless.runtime.native_wire import emit_logs as emit_logs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

__all__ = [
    "CACHE_SIZE",
    "ERROR",
    "GENERATOR",
    "OK",
    "PYTHON",
    "RemoteError",
    "current_call",
    "decode_reply",
    "encode_call",
    "handle",
    "hash_of",
    "raise_remote",
]

#: Functions kept loaded per container (by code hash), least recently used dropped.
CACHE_SIZE = 64
_HERE = os.path.dirname(os.path.abspath(__file__))
_SECRETS = "/run/secrets"


# -- the container's side ---------------------------------------------------------------

_state = threading.local()
_lock = threading.Lock()
#: code hash -> (function, its pickled code): the code is kept for nested calls that
#: name a function by hash only (a function calling itself).
_loaded: collections.OrderedDict[str, tuple[Callable[..., Any], bytes]] = collections.OrderedDict()
#: function name -> the hash of its code loaded last (a function calling itself)
_names: dict[str, str] = {}
_key: list[bytes | None] = []
_deployed: dict[str, tuple[str, bytes]] | None = None


def current_call() -> str | None:
    """The id of the call this thread is serving (nested calls name it as their parent)."""
    call: str | None = getattr(_state, "call_id", None)
    return call


def cached_code(code_hash: str, name: str = "") -> bytes | None:
    """The pickled code loaded here under ``code_hash`` (or, without one, the code of the
    function called ``name`` loaded last)."""
    with _lock:
        found = _loaded.get(code_hash or _names.get(name, ""))
    return None if found is None else found[1]


def native_key() -> bytes | None:
    """The app's signing key, read once from its secret (None when there is none)."""
    with _lock:
        if not _key:
            name = os.environ.get("_SWARMLESS_NATIVE_KEY", "")
            try:
                with open(os.path.join(_SECRETS, name), "rb") as f:
                    _key.append(f.read().strip() or None)
            except OSError:
                _key.append(None)
        return _key[0]


def _load(code_hash: str, code: bytes | None, fn: str) -> Callable[..., Any]:
    with _lock:
        found = _loaded.get(code_hash)
        if found is not None:
            _loaded.move_to_end(code_hash)
            return found[0]
    if code is None:
        code = cached_code(code_hash)
        if code is None:
            raise LookupError(f"the code of {fn} (hash {code_hash}) was not sent")
    if hash_of(code) != code_hash:
        raise ValueError(f"the code of {fn} does not match its hash {code_hash}")
    import cloudpickle  # noqa: F401  what the pickled code refers to

    func: Callable[..., Any] = pickle.loads(code)
    if not callable(func):
        raise TypeError(f"{fn} is not callable once loaded, got {type(func).__name__}")
    with _lock:
        _loaded[code_hash] = (func, code)
        _names[fn] = code_hash
        while len(_loaded) > CACHE_SIZE:
            _loaded.popitem(last=False)
    return func


def _dumps(obj: Any) -> bytes:
    import cloudpickle

    data: bytes = cloudpickle.dumps(obj, protocol=5)
    return data


def _limit() -> int:
    try:
        return int(os.environ.get("_SWARMLESS_NATIVE_LIMIT") or 10 * 1024 * 1024)
    except ValueError:
        return 10 * 1024 * 1024


def _error_item(exc: BaseException) -> tuple[Any, ...]:
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_HERE):
        tb = tb.tb_next  # start at the function's own frames
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    kind = type(exc)
    info: dict[str, Any] = {
        "type": f"{kind.__module__}.{kind.__qualname__}",
        "message": str(exc),
        "traceback": text,
    }
    if exc.__cause__ is None and exc.__context__ is None:  # re-rendered by the caller
        info["frames"] = [tuple(f) for f in traceback.extract_tb(tb)]
        info["tail"] = "".join(traceback.format_exception_only(kind, exc))
    try:
        exc.__traceback__ = None
        pickle.loads(_dumps(exc))  # only an exception that comes back whole
        kept: BaseException | None = exc
    except BaseException:
        kept = None
    return (ERROR, kept, info)


def _run_one(func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    value = func(*args, **kwargs)
    if hasattr(value, "__await__"):
        import asyncio

        value = asyncio.run(_awaited(value))
    if isinstance(value, types.GeneratorType):
        return (GENERATOR, list(value))
    return (OK, value)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def run_batch(
    func: Callable[..., Any], calls: Sequence[tuple[Sequence[Any], dict[str, Any]]], budget: float
) -> tuple[list[tuple[Any, ...]], dict[int, tuple[str, str]]]:
    """Run ``calls`` in order until ``budget`` seconds have passed (at least one)."""
    items: list[tuple[Any, ...]] = []
    marks: list[tuple[int, int, int]] = []  # (index, where its stdout, stderr end)
    started = time.monotonic()
    # One capture for the batch (one per call would cost more than a tiny call): each
    # call's share is cut out by where the text stood when it ended.
    with capture.capturing() as (out, err):
        for index, (args, kwargs) in enumerate(calls):
            if index and time.monotonic() - started > budget:
                break
            before = (out._size, err._size)
            try:
                item = _run_one(func, args, kwargs)
            except BaseException as e:  # the function's failure is the caller's to see
                item = _error_item(e)
            items.append(item)
            if (out._size, err._size) != before:
                marks.append((index, out._size, err._size))
    logs: dict[int, tuple[str, str]] = {}
    if marks:
        text_out, text_err = out.getvalue(), err.getvalue()
        # Also into the call's record at the gateway (swarmless logs CALL).
        sys.stdout.write(text_out)
        sys.stderr.write(text_err)
        o_at = e_at = 0
        for index, o_end, e_end in marks:
            logs[index] = (text_out[o_at:o_end], text_err[e_at:e_end])
            o_at, e_at = o_end, e_end
    return items, logs


def _reply(items: list[tuple[Any, ...]], logs: dict[int, tuple[str, str]], fn: str) -> bytes:
    """The reply's body: pickled whole when it can be, else item by item (an item that
    does not pickle, or alone is over the limit, becomes that item's error); a reply over
    the limit is cut after the last item that fits (the caller sends the rest again)."""
    limit = _limit() - 4096
    try:
        body = _dumps({"py": PYTHON, "items": items, "logs": logs})
        if len(body) <= limit:
            return REPLY_MAGIC + body
    except Exception:
        pass
    kept: list[tuple[Any, ...]] = []
    size = 0
    for item in items:
        try:
            blob = _dumps(item)
        except Exception as e:
            what = f"the result of {fn} could not be pickled: {type(e).__name__}: {e}"
            item = _error_item(TypeError(what))
            blob = _dumps(item)
        if len(blob) > limit:
            what = (
                f"the result of {fn} is {len(blob)} bytes pickled, over the pool's limit of "
                f"{limit + 4096} bytes (max_output): return less, or raise max_output"
            )
            item = _error_item(OverflowError(what))
            blob = _dumps(item)
        if kept and size + len(blob) > limit:
            break  # the rest goes again in the next batch
        kept.append(item)
        size += len(blob)
    logs = {i: v for i, v in logs.items() if i < len(kept)}
    return REPLY_MAGIC + _dumps({"py": PYTHON, "items": kept, "logs": logs})


def _native_call(body: bytes) -> bytes:
    key = native_key()
    payload = body[len(CALL_MAGIC) + 32 :]
    signature = body[len(CALL_MAGIC) : len(CALL_MAGIC) + 32]
    if key is None or not hmac.compare_digest(
        hmac.new(key, payload, hashlib.sha256).digest(), signature
    ):
        raise PermissionError("the call is not signed with this app's key: refused")
    envelope = pickle.loads(payload)  # signed by the app's owner: trusted
    fn = str(envelope.get("fn") or "function")
    if envelope.get("py") != PYTHON:
        raise RuntimeError(
            f"{fn} was pickled by Python {envelope.get('py')} and this container runs Python "
            f"{PYTHON}: cloudpickle needs the same minor version on both sides (use a "
            f"Python {PYTHON} interpreter locally, or an image with Python {envelope.get('py')})"
        )
    code_hash, code = str(envelope.get("hash") or ""), envelope.get("code")
    if not code_hash and code is None:  # a caller that has only the name: the deployed code
        code_hash, code = _deployed_code(fn)
    func = _load(code_hash, code, fn)
    calls = pickle.loads(envelope["args"])
    items, logs = run_batch(func, calls, float(envelope.get("budget") or 0.0))
    return _reply(items, logs, fn)


def _deployed_code(name: str) -> tuple[str, bytes]:
    """The code of the deployed function ``name`` (from the pool's code secret)."""
    global _deployed
    if _deployed is None:
        path = os.path.join(_SECRETS, os.environ.get("_SWARMLESS_NATIVE_CODE", ""))
        try:
            with open(path, "rb") as f:
                _deployed = pickle.loads(f.read())  # written by the app's owner at deploy
        except OSError:
            _deployed = {}
    found = _deployed.get(name)
    if found is None:
        known = ", ".join(sorted(_deployed)) or "none (deploy the app with app.deploy())"
        raise LookupError(f"no deployed function {name!r} in this pool; deployed: {known}")
    return found


def _json_call(event: dict[str, Any]) -> dict[str, Any]:
    name = str(event.get("path") or "/").strip("/")
    try:
        code_hash, code = _deployed_code(name)
        data = event.get("json") if event.get("body") else {}
        if not isinstance(data, dict) or set(data) - {"args", "kwargs"}:
            raise ValueError('the body must be JSON: {"args": [...], "kwargs": {...}}')
        args, kwargs = data.get("args") or [], data.get("kwargs") or {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError('"args" must be a list and "kwargs" an object')
        _, value = _run_one(_load(code_hash, code, name), args, kwargs)
        body = json.dumps(value)
        status = 200
    except BaseException as e:
        _, _, info = _error_item(e)
        body, status = json.dumps({"error": info["type"], **info}), 500
    return {"statusCode": status, "body": body, "headers": {"Content-Type": "application/json"}}


def handle(event: dict[str, Any], context: Any) -> Any:
    """The pool's handler: a signed native call (or batch), or JSON for a deployed one."""
    _state.call_id = getattr(context, "call_id", None)
    try:
        body = event.get("body") or b""
        if body.startswith(CALL_MAGIC):
            try:
                return _native_call(body)
            except BaseException as e:
                blob = {"py": PYTHON, "items": [_error_item(e)], "logs": {}, "failed": True}
                return REPLY_MAGIC + _dumps(blob)
        return _json_call(event)
    finally:
        _state.call_id = None
