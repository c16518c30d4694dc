"""The gateway's OpenAPI 3.1 description, from the routes and their models.

What each route takes and answers is in :data:`swarmless.gateway.schemas.OPERATIONS`
(Pydantic models turned into JSON Schema); its summary and description are the first line
and the rest of the endpoint's docstring. The raw-ASGI hot paths (``/function/*``,
``/async-function/*``, ``/runtime/*``), which the router does not know, are described from
the same table. Every error answers the same JSON shape (``Error``). The HTML page of it
is :mod:`swarmless.gateway.docs`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute, Route

from swarmless import __version__
from swarmless.gateway.schemas import OPERATIONS, ErrorBody, Operation

__all__ = ["openapi_schema"]

_REF = "#/components/schemas/{model}"

#: Summaries of the routes that are not Starlette endpoints (raw ASGI).
_RAW_DOCS: dict[str, str] = {
    "/function/{name}": "Call a function synchronously; the HTTP request is its input.\n\n"
    "Any method. The answer is the function's: its status, headers and body, with "
    "X-Call-Id. Public functions need no token; private ones the admin token.",
    "/function/{name}/{path}": "Call a function with a sub-path (the function sees /{path}).",
    "/async-function/{name}": "Queue a call durably: 202 with its id (X-Call-Id).\n\n"
    "The store holds the call before the gateway answers. Read its answer at "
    "/invocations/{call_id}/result.",
    "/runtime/next": "A warm container's runtime takes its next call (worker token).\n\n"
    "Posts the result of the previous call (X-Swarmless-Result-For) and long-polls for the "
    "next: 200 with a call, 204 when none came, 410 when the worker is retired.",
    "/runtime/logs/{call_id}": "A warm container's runtime sends what one call printed.",
}

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No content",
    400: "Bad request: the message says what was wrong",
    401: "Unauthorized: missing or wrong bearer token",
    404: "Not found",
    413: "Payload too large",
    422: "Invalid function spec: `fields` names each field that is wrong",
    429: "Queue full: retry after Retry-After seconds",
    502: "The function failed (its exit status and stderr, when it has them)",
    503: "Unavailable: the engine or the active gateway does not answer; retry",
    504: "The call timed out (its container was killed)",
}


@functools.cache
def _components() -> dict[str, Any]:
    models: set[type[BaseModel]] = {ErrorBody}
    for op in OPERATIONS.values():
        if isinstance(op.body, type):
            models.add(op.body)
        elif isinstance(op.body, tuple):  # one of several shapes
            models.update(op.body)
        for answer in op.responses.values():
            if isinstance(answer, type):
                models.add(answer)
    ordered = sorted(models, key=lambda m: m.__name__)
    _, top = models_json_schema([(m, "validation") for m in ordered], ref_template=_REF)
    return dict(sorted(top.get("$defs", {}).items()))


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": _REF.format(model=model.__name__)}


def _content(answer: Any, array: bool) -> dict[str, Any] | None:
    if answer is None:
        return None
    if answer == "names":
        return {"application/json": {"schema": {"type": "array", "items": {"type": "string"}}}}
    if isinstance(answer, str):
        return {answer: {"schema": {}}}
    schema = _ref(answer)
    return {"application/json": {"schema": {"type": "array", "items": schema} if array else schema}}


def _operation_id(path: str, method: str) -> str:
    words = path.strip("/").replace("{", "").replace("}", "").replace(".", "_").split("/")
    return "_".join([method, *words])


def _operation(path: str, method: str, op: Operation, doc: str) -> dict[str, Any]:
    summary, _, rest = doc.partition("\n")
    out: dict[str, Any] = {
        "operationId": _operation_id(path, method),
        "summary": summary.strip(),
        "tags": [op.tag],
    }
    if rest.strip():
        out["description"] = inspect.cleandoc(rest)
    if op.params:
        out["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required or p.where == "path",
                "schema": p.schema,
                **({"description": p.description} if p.description else {}),
            }
            for p in op.params
        ]
    if op.body is not None:
        body: dict[str, Any]
        if isinstance(op.body, str):
            body = {op.body: {"schema": {}}}
        elif isinstance(op.body, tuple):
            body = {"application/json": {"schema": {"oneOf": [_ref(m) for m in op.body]}}}
        else:
            body = {"application/json": {"schema": _ref(op.body)}}
        out["requestBody"] = {"required": not isinstance(op.body, str), "content": body}
    responses: dict[str, Any] = {}
    for status, answer in op.responses.items():
        entry: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "OK")}
        content = _content(answer, op.array)
        if content is not None:
            entry["content"] = content
        responses[str(status)] = entry
    errors = set(op.errors)
    if op.auth in ("admin", "worker"):
        errors.add(401)
    for status in sorted(errors):
        responses[str(status)] = {
            "description": _STATUS_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": _ref(ErrorBody)}},
        }
    out["responses"] = responses
    if op.auth == "admin":
        out["security"] = [{"bearer": []}, {"basic": []}]
    elif op.auth == "function":
        out["security"] = [{}, {"bearer": []}, {"basic": []}]
    elif op.auth == "worker":
        out["security"] = [{"worker": []}]
    return out


def openapi_schema(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway: every route of ``routes`` and the raw-ASGI
    ones, with their parameters, bodies, answers (errors too) and security."""
    docs: dict[tuple[str, str], str] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        handlers = getattr(route.endpoint, "handlers", {})  # admin.by_method
        for method in route.methods or ():
            if method != "HEAD":
                endpoint = handlers.get(method, route.endpoint)
                docs[(route.path, method.lower())] = inspect.getdoc(endpoint) or ""
    paths: dict[str, dict[str, Any]] = {}
    for (path, method), op in OPERATIONS.items():
        doc = docs.get((path, method)) or _RAW_DOCS.get(path, "")
        paths.setdefault(path, {})[method] = _operation(path, method, op, doc)
    for (path, method), doc in sorted(docs.items()):  # a route without a described shape
        if path not in paths or method not in paths[path]:
            paths.setdefault(path, {})[method] = {
                "summary": doc.partition("\n")[0],
                "tags": ["undescribed"],
                "responses": {"default": {"description": "see the summary"}},
            }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "swarmless gateway",
            "version": __version__,
            "description": "Serverless functions on Docker. Admin routes need the gateway's "
            "admin token (`Authorization: Bearer <token>`, in the data directory's `token` "
            "file; or basic auth, user `admin`, the token as password, as OpenFaaS has it). "
            "OpenFaaS's management routes are served too (tag `openfaas`). Every error "
            'answers JSON: `{"error": code, "message": ...}`.',
        },
        "tags": [
            {"name": "functions", "description": "Calling functions (raw ASGI fast paths)."},
            {"name": "admin", "description": "Deploying and inspecting (admin token)."},
            {"name": "gateway", "description": "Health, metrics and this description."},
            {"name": "runtime", "description": "What warm containers call (worker token)."},
            {
                "name": "openfaas",
                "description": "OpenFaaS's management API: its paths and bodies (faas-cli).",
            },
        ],
        "components": {
            "schemas": _components(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The gateway's admin token.",
                },
                "basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "User admin, the admin token as password (as OpenFaaS).",
                },
                "worker": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A warm container's own token (SWARMLESS_WORKER_TOKEN).",
                },
            },
        },
        "paths": paths,
    }
