"""The ``swarmless/__init__.py`` of a function container (:data:`INIT`).

A function container carries the runtime at ``/opt/swarmless/swarmless/runtime`` (mounted
read-only by the docker backend, built into the image by ``swarmless build``) and this text
as ``/opt/swarmless/swarmless/__init__.py``. Importing ``swarmless`` there costs nothing;
its first attribute looked up decides what ``swarmless`` is:

- the image has the full package installed (the SDK with httpx and the Docker SDK): that
  package's ``__init__`` is loaded into this one, so every name is the real one, while
  ``swarmless.runtime`` stays the gateway's own (runtime and gateway always agree); its
  subpackages import from the start (``import swarmless.compat.dockerrun``: the 2016
  ``dockerrun.py`` in a warm container), its folder being on this package's ``__path__``;
- else the names of the in-function client (:mod:`swarmless.runtime.client`):
  ``swarmless.from_env()`` returns a :class:`~swarmless.runtime.client.FunctionClient`
  (invoke, spawn, result) with this container's caller token already set.
"""

from __future__ import annotations

__all__ = ["INIT"]

INIT = '''"""swarmless inside a function container (see swarmless/runtime/package.py)."""
import os as _os
import sys as _sys

_here = _os.path.dirname(_os.path.abspath(__file__))
_CLIENT = ("FunctionClient", "Invocation", "InvokeResult", "SwarmlessError", "from_env")


_found = None


def _find():
    """The __init__.py of an installed swarmless (the full SDK), or None."""
    for entry in _sys.path:
        init = _os.path.join(entry or ".", "swarmless", "__init__.py")
        real = _os.path.dirname(_os.path.abspath(init))
        if real != _here and _os.path.isfile(init):
            return init
    return None


_init = _find()
if _init is not None:  # its subpackages (swarmless.compat, ...) import from the start
    __path__.append(_os.path.dirname(_os.path.abspath(_init)))


def _installed():
    """Load an installed swarmless (the full SDK) into this package, once; True if found."""
    global _found
    if _found is None:
        _found = _init is not None
        if _found:
            with open(_init) as f:
                exec(compile(f.read(), _init, "exec"), globals())
    return _found


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    if _installed() and globals().get("__getattr__") is not __getattr__:
        return globals()["__getattr__"](name)
    if name in globals():
        return globals()[name]
    if name in _CLIENT:
        from swarmless.runtime import client

        return getattr(client, name)
    raise AttributeError(
        f"module 'swarmless' has no attribute {name!r} here: a function container has the "
        "runtime and its client (from_env, invoke, spawn, result); install swarmless in the "
        "image for the rest"
    )
'''
