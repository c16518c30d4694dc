"""What runs INSIDE a warm container: ``python -m swarmless.runtime``.

The runtime pulls work from the gateway (see ``docs/runtime-api.md``). It starts
``SWARMLESS_CONCURRENCY`` poller threads; each keeps one connection to
``SWARMLESS_RUNTIME_API`` and loops: send the previous result, run the call the gateway
answers with, repeat. One exchange per call: on a framed connection
(:mod:`~swarmless.runtime.frames`, an HTTP upgrade) when the gateway offers it, else
``POST /runtime/next`` on a keep-alive HTTP connection.

The layout (each imports only those below it):

- :mod:`~swarmless.runtime.loop`: the pollers and the process's life (204 poll again, 410
  drain and exit 0, 401 exit 1, capped backoff on connection errors, giving up after
  ``SWARMLESS_RUNTIME_GIVE_UP`` seconds without contact);
- :mod:`~swarmless.runtime.poll_frames`: a poller's connection (``Channel``): framed when
  the gateway offers it, else the HTTP requests of :mod:`~swarmless.runtime.poll_http`
  (``/runtime/next``, ``/runtime/logs``, the upgrade; retry, refused, dropped);
- :mod:`~swarmless.runtime.frames`: the framed connection's frames (the gateway imports it
  too);
- :mod:`~swarmless.runtime.config`: the settings read from the environment;
- :mod:`~swarmless.runtime.handlers`: the handler kinds that turn one invocation into one
  result: ``python`` there, ``wsgi`` in :mod:`~swarmless.runtime.wsgi`, ``command`` in
  :mod:`~swarmless.runtime.command`, ``cgi`` in :mod:`~swarmless.runtime.cgi`;
  :func:`~swarmless.runtime.handlers.run_handler` runs one;
- :mod:`~swarmless.runtime.invocation`: what they share (a
  :class:`~swarmless.runtime.invocation.Call`, its result, the handler interface, an
  exception as a result);
- :mod:`~swarmless.runtime.capture`: thread-aware ``sys.stdout``/``sys.stderr`` so each
  invocation's prints become that invocation's logs;
- :mod:`~swarmless.runtime.bytecode`: the runtime's imports compiled once per image (the
  docker backend mounts them; the runtime lets go of the prefix before the handler);
- :mod:`~swarmless.runtime.client`: the SDK inside a function (``swarmless.from_env()``:
  invoke, spawn, result, with the container's caller token), loaded only when used.

Standard library only, and nothing else from the swarmless package: a function image
carries just this directory and the ``swarmless/__init__.py`` of
:mod:`~swarmless.runtime.package`. Imports are kept lazy (no
``typing``, no ``asyncio`` unless the handler is ``async def``, no ``subprocess`` unless the
handler is a command) so start time and idle memory stay small.
"""

from __future__ import annotations

from swarmless.runtime.config import RuntimeConfig
from swarmless.runtime.loop import main, serve

__all__ = ["RuntimeConfig", "main", "serve"]
