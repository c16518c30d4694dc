"""Backends: one small interface, two engines.

- :mod:`~swarmless.backends.base`: the :class:`Backend` interface the gateway drives;
- :mod:`~swarmless.backends.docker` (with ``docker_config``, ``docker_events``): one
  Docker Engine (user-defined bridge network);
- :mod:`~swarmless.backends.swarm` (with ``swarm_nodes``, ``swarm_oneshot``,
  ``swarm_specs``, ``swarm_watch``): a Docker Swarm (services on an attachable overlay
  network).

Import the module you need: ``__all__`` names the submodules, none is imported here.
"""

__all__ = [
    "base",
    "docker",
    "docker_config",
    "docker_events",
    "swarm",
    "swarm_nodes",
    "swarm_oneshot",
    "swarm_specs",
    "swarm_watch",
]


def __getattr__(name: str) -> object:
    """A submodule, imported on first use (PEP 562)."""
    if name in __all__:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
