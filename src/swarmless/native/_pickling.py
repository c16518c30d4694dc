"""Code and arguments as cloudpickle, with the errors a user can act on.

Code travels by value when the container could not import it: ``__main__`` (a script, a
notebook cell) and every module of the user's own project (a file outside the
interpreter's installation and its site-packages). Modules installed there travel by
reference: the container imports them (the standard library, packages given as
``requirements``). swarmless itself never travels: a function handle that code refers to
pickles as a small descriptor (:mod:`swarmless.runtime.native_calls`).
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
import types
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from swarmless.exceptions import InvalidArgument, PayloadTooLarge
from swarmless.runtime.native import hash_of

__all__ = ["code_hash", "dumps_calls", "dumps_function", "local_modules"]

_lock = threading.RLock()  # re-entered: a function whose code refers to another
_installed_roots: tuple[str, ...] | None = None
_seen: dict[str, bool] = {}
_depth = [0]
#: Never by value: the container has its own (the runtime) or does not need them.
_NEVER = ("swarmless", "cloudpickle")


def _roots() -> tuple[str, ...]:
    global _installed_roots
    if _installed_roots is None:
        paths = sysconfig.get_paths()
        found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
        found.update(paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))
        _installed_roots = tuple(os.path.realpath(p) + os.sep for p in found if p)
    return _installed_roots


def _is_local(module: types.ModuleType) -> bool:
    """A module of the user's project (not installed, not built in)."""
    name = module.__name__
    if name == "__main__" or name.split(".", 1)[0] in _NEVER:
        return False
    path = getattr(module, "__file__", None)
    if not path:
        return False
    found = _seen.get(path)
    if found is None:
        found = _seen[path] = not os.path.realpath(path).startswith(_roots())
    return found


def local_modules() -> list[str]:
    """The loaded modules that travel by value (see the module docstring)."""
    return [
        name
        for name, module in list(sys.modules.items())
        if isinstance(module, types.ModuleType) and _is_local(module)
    ]


def code_hash(code: bytes) -> str:
    """The key a container caches loaded code by (32 hex digits of SHA-256)."""
    return hash_of(code)


def dumps_function(func: Callable[..., Any], *, name: str) -> bytes:
    """The function's code (and whatever it refers to), pickled for the container."""
    with _lock:
        added: list[str] = []
        _depth[0] += 1
        if _depth[0] == 1:  # the outermost: a handle's code pickled within it reuses these
            for mod in local_modules():
                if mod not in _by_value():
                    cloudpickle.register_pickle_by_value(sys.modules[mod])
                    added.append(mod)
        try:
            code: bytes = cloudpickle.dumps(func, protocol=5)
            return code
        except Exception as e:
            raise InvalidArgument(
                f"the function {name} cannot be sent to a container: cloudpickle failed on "
                f"{type(e).__name__}: {e} (a global it uses holds a lock, a socket, an open "
                "file...: create such things inside the function)"
            ) from e
        finally:
            _depth[0] -= 1
            for mod in added:
                module = sys.modules.get(mod)
                if module is not None and mod in _by_value():
                    cloudpickle.unregister_pickle_by_value(module)


def _by_value() -> set[str]:
    """The modules registered with cloudpickle to travel by value (by anyone)."""
    found: set[str] = cloudpickle.cloudpickle._PICKLE_BY_VALUE_MODULES
    return found


def dumps_calls(
    calls: Sequence[tuple[Sequence[Any], dict[str, Any]]], *, name: str, limit: int
) -> bytes:
    """``[(args, kwargs), ...]`` pickled, or a clear error naming what would not pickle."""
    try:
        blob: bytes = cloudpickle.dumps(list(calls), protocol=5)
    except Exception as e:
        where = _unpicklable(calls)
        raise InvalidArgument(
            f"the arguments of {name}{where} cannot be sent to a container: "
            f"{type(e).__name__}: {e} (pass plain data, or create such objects inside the "
            "function)"
        ) from e
    if len(blob) > limit:
        raise PayloadTooLarge(
            f"the arguments of {name} are {len(blob)} bytes pickled, over the limit of {limit} "
            "bytes (max_body): pass less (or a path, a URL, a key to the data), or raise "
            "max_body in @app.function"
        )
    return blob


def _unpicklable(calls: Sequence[tuple[Sequence[Any], dict[str, Any]]]) -> str:
    """Which argument would not pickle (`` (argument 2)``, `` (keyword 'f')``), if one."""
    for args, kwargs in calls[:50]:
        for i, value in enumerate(args):
            try:
                cloudpickle.dumps(value)
            except Exception:
                return f" (argument {i + 1}, a {type(value).__name__})"
        for key, value in kwargs.items():
            try:
                cloudpickle.dumps(value)
            except Exception:
                return f" (keyword {key!r}, a {type(value).__name__})"
    return ""
