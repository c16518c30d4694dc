"""The gateway: one ASGI app (see :mod:`swarmless.gateway.app` for the route list).

- :mod:`~swarmless.gateway.app`: routing, the admin check;
  :mod:`~swarmless.gateway.lifecycle`: the admin token, start-up, the store's retries, stop;
  :mod:`~swarmless.gateway.active`: the active replica's wiring;
- :mod:`~swarmless.gateway.edge` and :mod:`~swarmless.gateway.callbacks`: what reaches a
  function, where callbacks go;
- :mod:`~swarmless.gateway.sync_routes`, :mod:`~swarmless.gateway.async_routes`,
  :mod:`~swarmless.gateway.runtime_api` (and its framed connection,
  :mod:`~swarmless.gateway.runtime_frames`), :mod:`~swarmless.gateway.admin` (with
  ``admin_functions``, ``admin_invocations``, ``admin_http``),
  :mod:`~swarmless.gateway.openfaas`, :mod:`~swarmless.gateway.ui`: the routes;
  :mod:`~swarmless.gateway.openapi` and :mod:`~swarmless.gateway.docs`: the API's
  description and its page;
  :mod:`~swarmless.gateway.routing`: functions at their own paths and host names;
- :mod:`~swarmless.gateway.replicas`: the lease among replicas
  (:mod:`~swarmless.gateway.replica_lease`) and a standby's forwarding
  (:mod:`~swarmless.gateway.forward`);
  :mod:`~swarmless.gateway.server`: uvicorn and the drain.

Import the module you need: ``__all__`` names the submodules, none is imported here.
"""

__all__ = [
    "active",
    "admin",
    "admin_functions",
    "admin_http",
    "admin_invocations",
    "api_models",
    "app",
    "asgi",
    "async_routes",
    "callbacks",
    "capacity",
    "context",
    "docs",
    "edge",
    "forward",
    "lifecycle",
    "openapi",
    "openfaas",
    "openfaas_mapping",
    "openfaas_models",
    "replica_lease",
    "replicas",
    "rollout",
    "routing",
    "runtime_api",
    "runtime_frames",
    "schemas",
    "server",
    "sync_routes",
    "ui",
]


def __getattr__(name: str) -> object:
    """A submodule, imported on first use (PEP 562)."""
    if name in __all__:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
