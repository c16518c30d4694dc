"""Names a package exports without importing them until first used (PEP 562).

``import swarmless`` must stay cheap: a CGI front end pays for it on every request, and
most of what the package offers pulls in the Docker SDK, httpx, SQLAlchemy or Rich. So a
package's ``__init__`` lists where each public name lives and imports it on first access::

    _EXPORTS = {"Client": "swarmless.sdk.client", ...}

    TYPE_CHECKING = False  # typing is not imported either
    if TYPE_CHECKING:  # what type checkers and readers see
        from swarmless.sdk.client import Client
    else:
        def __getattr__(name: str) -> object:
            return _lazy.load(__name__, _EXPORTS, name)
    del TYPE_CHECKING

``from swarmless import Client``, ``swarmless.Client`` and ``from swarmless import *`` work
as with eager imports; once loaded, a name is an ordinary module attribute. The
``__getattr__`` is hidden from type checkers, so a misspelt name is still an error there.
Standard library only.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["load", "names"]


def load(package: str, exports: Mapping[str, str], name: str) -> object:
    """The value of ``package.name``, imported from the module ``exports`` names for it."""
    module = exports.get(name)
    if module is None:  # the import system asks for __path__ and the like: answer cheaply
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    import importlib  # here: importlib brings warnings, which `import swarmless` need not

    value = getattr(importlib.import_module(module), name)
    # Later accesses find an ordinary attribute, without coming back here.
    setattr(sys.modules[package], name, value)
    return value


def names(package: str, exports: Mapping[str, str]) -> list[str]:
    """``dir()`` of a package: what it holds now and what it would load."""
    return sorted({*vars(sys.modules[package]), *exports})
