"""Dispatch: what happens to a call between the gateway's edge and a container.

- :mod:`~swarmless.dispatch.dispatcher`: the warm hot path, in-flight accounting, drain;
  its base :mod:`~swarmless.dispatch.table`: the function table (deploy, update, remove);
  :mod:`~swarmless.dispatch.deadlines`: the warm calls' deadlines, one timer for all;
  :mod:`~swarmless.dispatch.pool`: a warm function's workers (what travels through it
  in :mod:`~swarmless.dispatch.pool_types`);
- :mod:`~swarmless.dispatch.workers`: worker ids and tokens, deaths, crashes;
- :mod:`~swarmless.dispatch.oneshot`: one-shot and CGI calls (:mod:`~swarmless.dispatch.cgi`);
- :mod:`~swarmless.dispatch.recorder`: records and logs, written behind;
- :mod:`~swarmless.dispatch.async_runner` and :mod:`~swarmless.dispatch.scheduler`: the
  durable queue's runner (each call's run and outcome in
  :mod:`~swarmless.dispatch.async_attempts`, callbacks in
  :mod:`~swarmless.dispatch.async_callbacks`, its limits in
  :mod:`~swarmless.dispatch.async_limits`) and cron schedules;
  :mod:`~swarmless.dispatch.metrics`.

Import the module you need: ``__all__`` names the submodules, none is imported here.
"""

__all__ = [
    "async_attempts",
    "async_callbacks",
    "async_limits",
    "async_runner",
    "background",
    "cgi",
    "deadlines",
    "dispatcher",
    "metrics",
    "oneshot",
    "pool",
    "pool_types",
    "recorder",
    "request",
    "scheduler",
    "table",
    "workers",
]


def __getattr__(name: str) -> object:
    """A submodule, imported on first use (PEP 562)."""
    if name in __all__:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
