"""The shape of the gateway's API: what each route takes and answers, as Pydantic models.

The models exist to describe the API (``/openapi.json``, ``/docs``), not to validate it: a spec is
validated once, by :class:`~swarmless.spec.FunctionSpec`, and the routes answer plain dicts.
The models say what those look like, precisely enough that a client can be generated from
them and a fuzzer pointed at them (``tests/reliability/test_fuzz.py`` checks every answer
against them). :data:`OPERATIONS` ties each route to its models and its documented
statuses; :func:`swarmless.gateway.openapi.openapi_schema` turns that into OpenAPI 3.1.

The models themselves are :mod:`swarmless.gateway.api_models` (re-exported here); this
module holds the route table.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel

from swarmless.gateway.api_models import (
    CALL_ID,
    NAME,
    SECRET,
    AsyncAccepted,
    ErrorBody,
    FunctionInfo,
    FunctionSpecBody,
    FunctionSpecModel,
    Health,
    InvocationLogs,
    InvocationModel,
    ScaleBody,
    ScaleInfo,
    ScheduleModel,
    SpecUpdateBody,
)
from swarmless.gateway.openfaas_models import (
    DeleteFunctionRequest,
    FunctionDeployment,
    FunctionStatus,
    GatewayInfo,
    ScaleServiceRequest,
)
from swarmless.records import STATUSES

__all__ = [
    "OPERATIONS",
    "AsyncAccepted",
    "ErrorBody",
    "FunctionInfo",
    "FunctionSpecBody",
    "FunctionSpecModel",
    "Health",
    "InvocationLogs",
    "InvocationModel",
    "Operation",
    "Param",
    "ScaleBody",
    "ScaleInfo",
    "ScheduleModel",
    "SpecUpdateBody",
]


@dataclasses.dataclass(frozen=True)
class Param:
    """A path, query or header parameter."""

    name: str
    where: Literal["path", "query", "header"]
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclasses.dataclass(frozen=True)
class Operation:
    """What one route takes and answers: ``responses`` maps a status to a model, to a media
    type (a raw body), or to None (no body); error statuses answer :class:`ErrorBody`."""

    params: tuple[Param, ...] = ()
    #: A model, one of several models, a media type (a raw body), or None (no body).
    body: type[BaseModel] | tuple[type[BaseModel], ...] | str | None = None
    responses: dict[int, type[BaseModel] | str | tuple[type[BaseModel], str] | None] = (
        dataclasses.field(default_factory=dict)
    )
    errors: tuple[int, ...] = ()
    #: Who may call it: "admin" (the admin token), "worker" (a warm container's token),
    #: "function" (admin token for private functions), or "" (anyone).
    auth: str = "admin"
    #: A list of models answered (a JSON array of them).
    array: bool = False
    tag: str = "admin"


_FN_NAME = Param(
    "name", "path", {"type": "string", "pattern": NAME, "examples": ["hello"]}, "A function.", True
)
_CALL = Param("call_id", "path", {"type": "string", "pattern": CALL_ID}, "A call id.", True)
_SECRET_NAME = Param("name", "path", {"type": "string", "pattern": SECRET}, "A secret name.", True)
_NAMESPACE = Param(
    "namespace", "query", {"type": "string", "enum": ["", "openfaas-fn"]}, "OpenFaaS's only one."
)
_SUB = Param("path", "path", {"type": "string"}, "Passed to the function as its path.", True)
#: Any method of a function call (raw ASGI): the HTTP request is the function's input.
_CALL_METHODS = ("get", "post", "put", "delete", "patch", "head", "options", "trace")
_FUNCTION_ERRORS = (400, 401, 404, 413, 429, 502, 503, 504)

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("/healthz", "get"): Operation(responses={200: Health}, errors=(503,), auth="", tag="gateway"),
    ("/metrics", "get"): Operation(responses={200: "text/plain"}, errors=(401,), tag="gateway"),
    ("/openapi.json", "get"): Operation(
        responses={200: "application/json"}, auth="", tag="gateway"
    ),
    ("/docs", "get"): Operation(responses={200: "text/html"}, auth="", tag="gateway"),
    ("/system/functions", "get"): Operation(
        params=(_NAMESPACE,), responses={200: FunctionInfo}, array=True, errors=(400, 401)
    ),
    # A swarmless spec, or OpenFaaS's FunctionDeployment (it has "service"; answered 202,
    # no body): swarmless.gateway.openfaas.
    ("/system/functions", "post"): Operation(
        body=(FunctionSpecBody, FunctionDeployment),
        responses={200: FunctionInfo, 201: FunctionInfo, 202: None},
        errors=(400, 401, 422, 503),
    ),
    ("/system/functions", "put"): Operation(
        body=(FunctionSpecBody, FunctionDeployment),
        responses={200: FunctionInfo, 201: FunctionInfo, 202: None},
        errors=(400, 401, 404, 422, 503),
    ),
    ("/system/functions", "delete"): Operation(
        body=DeleteFunctionRequest, responses={200: None}, errors=(400, 401, 404), tag="openfaas"
    ),
    ("/system/function/{name}", "get"): Operation(
        params=(_FN_NAME, _NAMESPACE),
        responses={200: FunctionStatus},
        errors=(400, 401, 404),
        tag="openfaas",
    ),
    ("/system/scale-function/{name}", "post"): Operation(
        params=(_FN_NAME,),
        body=ScaleServiceRequest,
        responses={202: None},
        errors=(400, 401, 404),
        tag="openfaas",
    ),
    ("/system/info", "get"): Operation(
        responses={200: GatewayInfo}, errors=(400, 401), tag="openfaas"
    ),
    ("/system/functions/{name}", "get"): Operation(
        params=(_FN_NAME,), responses={200: FunctionInfo}, errors=(401, 404)
    ),
    ("/system/functions/{name}", "put"): Operation(
        params=(_FN_NAME,),
        body=SpecUpdateBody,
        responses={200: FunctionInfo},
        errors=(400, 401, 404, 422, 503),
    ),
    ("/system/functions/{name}", "delete"): Operation(
        params=(_FN_NAME,), responses={204: None}, errors=(401, 404)
    ),
    ("/system/scale/{name}", "post"): Operation(
        params=(_FN_NAME,),
        body=ScaleBody,
        responses={200: FunctionInfo},
        errors=(400, 401, 404, 502, 504),
    ),
    ("/invocations", "get"): Operation(
        params=(
            Param("function", "query", {"type": "string"}, "Only this function's calls."),
            Param("status", "query", {"type": "string", "enum": list(STATUSES)}),
            Param("parent", "query", {"type": "string"}, "Only calls made by this call."),
            Param(
                "limit",
                "query",
                {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
                "Records at most, newest first.",
            ),
        ),
        responses={200: InvocationModel},
        array=True,
        errors=(400, 401),
    ),
    ("/invocations/{call_id}", "get"): Operation(
        params=(_CALL,), responses={200: InvocationModel}, errors=(401, 404)
    ),
    ("/invocations/{call_id}/logs", "get"): Operation(
        params=(_CALL,), responses={200: InvocationLogs}, errors=(401, 404)
    ),
    ("/invocations/{call_id}/result", "get"): Operation(
        params=(
            _CALL,
            Param(
                "wait",
                "query",
                {"type": "number", "minimum": 0},
                "Seconds to wait for the call to end (60 at most).",
            ),
        ),
        responses={200: "*/*", 202: AsyncAccepted},
        errors=(400, 401, 404, 502, 504),
    ),
    ("/invocations/{call_id}/retry", "post"): Operation(
        params=(_CALL,), responses={202: AsyncAccepted}, errors=(400, 401, 404)
    ),
    ("/system/schedules", "get"): Operation(responses={200: ScheduleModel}, array=True),
    ("/system/secrets", "get"): Operation(responses={200: "names"}, errors=(401,)),
    ("/system/secrets/{name}", "put"): Operation(
        params=(_SECRET_NAME,),
        body="application/octet-stream",
        responses={204: None},
        errors=(400, 401),
    ),
    ("/system/secrets/{name}", "post"): Operation(
        params=(_SECRET_NAME,),
        body="application/octet-stream",
        responses={204: None},
        errors=(400, 401),
    ),
    ("/system/secrets/{name}", "delete"): Operation(
        params=(_SECRET_NAME,), responses={204: None}, errors=(401, 404)
    ),
    **{
        ("/function/{name}", m): Operation(
            params=(_FN_NAME,),
            body="*/*",
            responses={200: "*/*"},
            errors=_FUNCTION_ERRORS,
            auth="function",
            tag="functions",
        )
        for m in _CALL_METHODS
    },
    **{
        ("/function/{name}/{path}", m): Operation(
            params=(_FN_NAME, _SUB),
            body="*/*",
            responses={200: "*/*"},
            errors=_FUNCTION_ERRORS,
            auth="function",
            tag="functions",
        )
        for m in _CALL_METHODS
    },
    ("/async-function/{name}", "post"): Operation(
        params=(
            _FN_NAME,
            Param(
                "X-Callback-Url", "header", {"type": "string"}, "POST the result here when done."
            ),
            Param(
                "Idempotency-Key",
                "header",
                {"type": "string", "minLength": 1, "maxLength": 200},
                "Queue once per key.",
            ),
        ),
        body="*/*",
        responses={202: AsyncAccepted},
        errors=(400, 401, 404, 413, 429, 503),
        auth="function",
        tag="functions",
    ),
    ("/runtime/next", "post"): Operation(
        body="*/*",
        responses={200: "*/*", 204: None},
        errors=(400, 401),
        auth="worker",
        tag="runtime",
    ),
    ("/runtime/logs/{call_id}", "post"): Operation(
        params=(_CALL,),
        body="application/octet-stream",
        responses={204: None},
        errors=(400, 401, 404),
        auth="worker",
        tag="runtime",
    ),
}
