"""The gateway's API description: OpenAPI 3 from the routes and their docstrings, and a
self-contained HTML page listing it (no CDN: it works offline)."""

from __future__ import annotations

import html
import inspect
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Route

from swarmless import __version__

__all__ = ["docs_page", "openapi_schema"]

#: The raw-ASGI routes, which the router does not know.
_FAST_PATHS: dict[str, dict[str, Any]] = {
    "/function/{name}": {
        m: {"summary": "Invoke a function synchronously; the HTTP request is its input."}
        for m in ("get", "post", "put", "delete", "patch")
    },
    "/async-function/{name}": {
        "post": {"summary": "Queue an async call durably; 202 with X-Call-Id."}
    },
    "/runtime/next": {"post": {"summary": "Warm containers pull their next call (worker token)."}},
}


def openapi_schema(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """OpenAPI 3 paths from ``routes`` (summary: each endpoint's first docstring line)."""
    paths: dict[str, dict[str, Any]] = {k: dict(v) for k, v in _FAST_PATHS.items()}
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        doc = inspect.getdoc(route.endpoint) or ""
        for method in sorted(route.methods or ()):
            if method == "HEAD":
                continue
            op: dict[str, Any] = {"summary": doc.splitlines()[0] if doc else ""}
            if route.path.startswith(("/system", "/invocations")):
                op["security"] = [{"bearer": []}]
            paths.setdefault(route.path, {})[method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "swarmless gateway", "version": __version__},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }


def docs_page(schema: dict[str, Any]) -> str:
    """An HTML table of the API: method, path, summary."""
    rows = []
    for path, ops in sorted(schema["paths"].items()):
        for method, op in ops.items():
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td>"
                f"<td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op.get('summary', ''))}</td></tr>"
            )
    return (
        "<!doctype html><title>swarmless API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:.2em .8em}</style>"
        f"<h1>swarmless gateway {__version__}</h1>"
        "<p><a href='/openapi.json'>openapi.json</a></p>"
        f"<table>{''.join(rows)}</table>"
    )
