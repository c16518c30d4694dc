"""What goes over the wire to a gateway and what comes back, without sending anything.

Each request is built here (:class:`GatewayRequest`: method, path, headers, body, its own
read timeout), before an address is chosen, and each answer is read here: a gateway's error
(``X-Swarmless-Error: 1``) is raised as the class, with the fields, that the gateway raised
(:func:`raise_for`); what a function answered is an :class:`InvokeResult`. Sending, and
moving between the gateway's addresses, is :mod:`swarmless.sdk.gateway_base`.
"""

from __future__ import annotations

import dataclasses
import json as jsonlib
from collections.abc import Generator, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

import httpx

from swarmless.exceptions import InvalidArgument, error_from_status
from swarmless.spec import FunctionSpec

__all__ = [
    "POLL",
    "GatewayRequest",
    "InvokeResult",
    "Steps",
    "invoke_request",
    "invoke_result",
    "plain_name",
    "raise_for",
    "spawn_headers",
    "spec_json",
]

T = TypeVar("T")

#: One operation: yields the requests it sends, receives their responses, returns its value.
Steps: TypeAlias = Generator[httpx.Request, httpx.Response, T]

#: Longest single wait the gateway grants a result long-poll (``?wait=``), seconds.
POLL = 30.0


@dataclasses.dataclass(frozen=True)
class InvokeResult:
    """What a function answered to one invocation (sync, or an async call's stored answer)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    call_id: str

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return jsonlib.loads(self.body)


@dataclasses.dataclass(frozen=True)
class GatewayRequest:
    """What to send, before an address is chosen."""

    method: str
    path: str
    params: Mapping[str, str] | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    content: bytes | None = None
    #: Seconds to wait for the answer, when this request needs its own (a long-poll).
    read_timeout: float | None = None


def plain_name(value: str, what: str) -> str:
    """A name or id that goes into a URL path: one segment, nothing to escape."""
    if (
        not isinstance(value, str)
        or not value
        or any(c in value for c in "/?#%\\")
        or not value.isprintable()
        or value != value.strip()
        or value in (".", "..")
    ):
        raise InvalidArgument(f"{what} must be a plain name, got {value!r}")
    return value


def invoke_request(
    name: str,
    data: bytes | str | None,
    *,
    json: Any,
    args: Sequence[str] | None,
    method: str,
    path: str,
    query: Mapping[str, str] | None,
    headers: Mapping[str, str] | None,
    prefix: str = "/function",
) -> GatewayRequest:
    plain_name(name, "function name")
    hdrs = dict(headers or {})
    if args is not None:
        if isinstance(args, str) or not all(isinstance(a, str) for a in args):
            raise InvalidArgument(f"args must be a list of strings, got {args!r}")
        hdrs["X-Swarmless-Args"] = jsonlib.dumps(list(args))
    content: bytes | None
    if json is not None:
        if data is not None:
            raise InvalidArgument("give data or json=, not both")
        content = jsonlib.dumps(json).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif data is None or isinstance(data, bytes):
        content = data
    elif isinstance(data, str):
        content = data.encode()
    else:
        raise InvalidArgument(f"data must be bytes or str, got {type(data).__name__}")
    url = f"{prefix}/{name}" + (f"/{path.lstrip('/')}" if path else "")
    return GatewayRequest(method, url, params=query, headers=hdrs, content=content)


def spawn_headers(
    headers: Mapping[str, str] | None, idempotency_key: str | None, callback_url: str | None
) -> dict[str, str]:
    hdrs = dict(headers or {})
    if idempotency_key is not None:
        hdrs["Idempotency-Key"] = idempotency_key
    if callback_url is not None:
        hdrs["X-Callback-Url"] = callback_url
    return hdrs


def raise_for(response: httpx.Response) -> None:
    """Raise the error a gateway answered with, as the class (and fields) it raised."""
    if response.headers.get("x-swarmless-error") == "1" or (
        response.status_code >= 400 and not response.request.url.path.startswith("/function/")
    ):
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text[:500] or f"HTTP {response.status_code}"}
        if not isinstance(body, dict):
            body = {"message": str(body)}
        # What the gateway also said in headers (older gateways said it only there).
        call_id = response.headers.get("x-call-id")
        if call_id and "call_id" not in body:
            body["call_id"] = call_id
        retry_after = response.headers.get("retry-after", "")
        if "retry_after" not in body and retry_after.isdigit():
            body["retry_after"] = float(retry_after)
        raise error_from_status(response.status_code, body)


def invoke_result(response: httpx.Response) -> InvokeResult:
    raise_for(response)
    return InvokeResult(
        status=response.status_code,
        headers=dict(response.headers),
        body=response.content,
        call_id=response.headers.get("x-call-id", ""),
    )


def spec_json(spec: FunctionSpec | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(spec, FunctionSpec):
        return spec.to_dict()
    return dict(spec)
