"""The runtime's own imports, compiled ahead, once per image (:func:`main`).

Many Python images ship their standard library without ``.pyc`` files (Debian's
``python3`` in a slim image), and a container's file system starts fresh each time: every
module the runtime imports (``http.client`` and ``email``, ``json``, ``urllib.parse``,
``socket``...) is compiled from source at each container start, some 150-250 ms of CPU
before the runtime asks for work, where ``run()`` of the same image imports next to
nothing. So once per image the docker backend runs this module in a container of that
image with ``PYTHONPYCACHEPREFIX`` pointing inside it (no network, nothing of the host
written): importing what the runtime imports writes their bytecode there; the backend copies
it out and mounts it read-only at :data:`BYTECODE_MOUNT` into the image's warm containers,
``PYTHONPYCACHEPREFIX`` set to it. The runtime then clears the prefix
(:func:`release`) before it loads the handler: the function's own modules, and their
``__pycache__``, are read as ever. Python checks every ``.pyc`` against its source's mtime
and size: a cache that no longer matches costs a compile, never a wrong module.
"""

from __future__ import annotations

import os
import sys

__all__ = ["BYTECODE_MOUNT", "MODULES", "main", "release"]

#: Where warm containers find the bytecode of the runtime's imports (read-only).
BYTECODE_MOUNT = "/opt/swarmless-pyc"

#: What the runtime imports before it loads a handler (the poll loop imports everything
#: the runtime needs on its way to the first call), the modules of the handler kinds (each
#: container imports its own kind's, :func:`swarmless.runtime.handlers.import_kind`), and
#: the HTTP side (imported only when the gateway takes no HELLO: a standby, an ``https``
#: runtime API); their own imports come with them.
MODULES = (
    "swarmless.runtime.loop",
    "swarmless.runtime.cgi",
    "swarmless.runtime.wsgi",
    "swarmless.runtime.poll_http",
)


def release() -> None:
    """The runtime's imports are done: modules imported from now on (the handler's) use
    their own ``__pycache__``, and forked commands do not inherit the prefix."""
    if sys.pycache_prefix == BYTECODE_MOUNT:
        sys.pycache_prefix = None
        os.environ.pop("PYTHONPYCACHEPREFIX", None)


def main() -> int:
    """Import :data:`MODULES` (with ``PYTHONPYCACHEPREFIX`` set, their bytecode is written
    there); 0 when the prefix was set, else 2 (nothing was cached)."""
    import importlib

    if not sys.pycache_prefix:
        sys.stderr.write("swarmless-runtime: PYTHONPYCACHEPREFIX is not set: nothing cached\n")
        return 2
    for name in MODULES:
        importlib.import_module(name)
    return 0
