"""Python-native functions: ``@app.function()``, called with ``.remote()``, ``.map()``...

:class:`App` groups functions and their options (:mod:`swarmless.native.app`); each
decorated function becomes a :class:`Function` handle (:mod:`swarmless.native.function`)
whose calls carry its code and arguments by cloudpickle to a pool of warm containers of a
generic Python image (:mod:`swarmless.native.images`), batched for ``map``
(:mod:`swarmless.native.mapping`). A spawned call is a :class:`FunctionCall`; an exception
raised in the container comes back as itself, or as a :class:`RemoteError` when its class
cannot be rebuilt here. :func:`lookup` finds a function of a deployed app by name. Each name
is imported on first use (:mod:`swarmless._lazy`).
"""

from __future__ import annotations

from swarmless import _lazy

TYPE_CHECKING = False

__all__ = ["App", "Function", "FunctionCall", "RemoteError", "lookup"]

_EXPORTS = {
    "App": "swarmless.native.app",
    "Function": "swarmless.native.function",
    "FunctionCall": "swarmless.native.function",
    "RemoteError": "swarmless.runtime.native",
    "lookup": "swarmless.native.app",
}

if TYPE_CHECKING:
    from swarmless.native.app import App, lookup
    from swarmless.native.function import Function, FunctionCall
    from swarmless.runtime.native import RemoteError
else:

    def __getattr__(name: str) -> object:
        return _lazy.load(__name__, _EXPORTS, name)

    def __dir__() -> list[str]:
        return _lazy.names(__name__, _EXPORTS)


del TYPE_CHECKING
