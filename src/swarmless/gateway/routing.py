"""Functions served at their own routes, besides ``/function/NAME/``.

A spec's ``routes`` (validated in :mod:`swarmless.spec`) are path prefixes (``/result``)
and host names (``vote.example.com``). A request the gateway does not serve itself goes to
the function whose route it matches, as if it were ``/function/NAME/<rest>``, with the
route as the prefix the app is served at (``SCRIPT_NAME`` of CGI and WSGI), so an app
written for the web root works unchanged: the 2016 result page polls ``/result/votes``.

- A host name takes every path of requests whose ``Host`` is that name (any port), with
  the prefix ``""``.
- A path prefix takes itself and every path below it (segment by segment: ``/result``
  serves ``/result`` and ``/result/votes``, not ``/results``); the longest prefix wins.
- Host names are matched before path prefixes. The gateway's own paths
  (:data:`swarmless.spec.RESERVED_PATHS`) are never a function's, whatever the host: a
  spec that claims one is refused (422), and two functions may not claim one route (the
  dispatcher refuses the second deploy).
"""

from __future__ import annotations

from collections.abc import Mapping

from swarmless.spec import RESERVED_PATHS, FunctionSpec

__all__ = ["Routed", "find_route", "is_reserved"]


def is_reserved(path: str) -> bool:
    """Whether ``path`` is one of the gateway's own (``/``, where the gateway shows its
    dashboard, is a host route's root)."""
    return any(path == r or path.startswith(r + "/") for r in RESERVED_PATHS)


class Routed:
    """A request that matched a function's route."""

    __slots__ = ("function", "path", "prefix")

    def __init__(self, function: str, prefix: str, path: str) -> None:
        self.function = function
        #: The route: ``SCRIPT_NAME`` of the app.
        self.prefix = prefix
        #: The rest of the path: ``PATH_INFO``.
        self.path = path


def _host(scope_headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in scope_headers:
        if name == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):
                return host.partition("]")[0] + "]"
            return host.partition(":")[0].rstrip(".")
    return ""


def find_route(
    functions: Mapping[str, tuple[FunctionSpec, int]],
    path: str,
    headers: list[tuple[bytes, bytes]],
) -> Routed | None:
    """The function whose route ``path`` (on the request's ``Host``) matches, or None."""
    if is_reserved(path):
        return None
    host: str | None = None
    best: Routed | None = None
    for name, (spec, _) in functions.items():
        for route in spec.routes:
            if route[0] != "/":
                if host is None:
                    host = _host(headers)
                if route == host:
                    return Routed(name, "", path)
            elif (path == route or path.startswith(route + "/")) and (
                best is None or len(route) > len(best.prefix)
            ):
                best = Routed(name, route, path[len(route) :])
    return best
