"""The SDK inside a function container: call other functions (standard library only).

A function container has neither httpx nor the Docker SDK, only this runtime (mounted by
the gateway, or built into the image). ``swarmless.from_env()`` there returns a
:class:`FunctionClient`, unless the image has the full ``swarmless`` package installed (then
that one's ``from_env`` wins)::

    import swarmless

    def handle(event, context):
        client = swarmless.from_env()
        upper = client.invoke("upper", "shout this").text
        later = client.spawn("report", json={"day": "monday"})
        return {"upper": upper, "report": later.result(timeout=60).json()}

It reads ``SWARMLESS_GATEWAY_URL`` and the container's own caller token
(``SWARMLESS_TOKEN``), which the gateway gives every function container: the calls made
here are this function's calls, recorded as children of the call being served (the one
this thread serves in a warm container, ``SWARMLESS_CALL_ID`` in a one-shot container or a
forked command). ``invoke``, ``spawn`` and ``result`` behave as those of
:class:`swarmless.GatewayClient`: an error of the gateway (unknown function, timeout, full
queue...) is raised as a :class:`SwarmlessError` whose ``code`` is the gateway's; what the
function answered, whatever its HTTP status, is returned.
"""

from __future__ import annotations

import http.client
import json as jsonlib
import os
import sys
import time
import urllib.parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

__all__ = [
    "FunctionClient",
    "Invocation",
    "InvokeResult",
    "SwarmlessError",
    "current_call",
    "from_env",
]

#: Longest single wait the gateway grants a result long-poll (``?wait=``), seconds.
POLL = 30.0
#: Seconds a sync call may take at most (a function's timeout is 3600 s at most).
CALL_TIMEOUT = 3700.0


class SwarmlessError(Exception):
    """What the gateway refused or could not do; ``code`` is its error code
    (``function_not_found``, ``timeout``, ``queue_full``...), ``status_code`` the HTTP
    status, ``invocation`` the call's id when there is one."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status_code: int = 0,
        invocation: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status_code = status_code
        self.invocation = invocation
        #: The gateway's whole JSON answer (its other fields: ``exit_status``, ``stderr``...).
        self.body = dict(body or {})


class InvokeResult:
    """What a function answered: ``status``, ``headers`` (lower-case names), ``body``,
    ``call_id``; ``text`` and ``json()`` decode the body."""

    __slots__ = ("body", "call_id", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes, call_id: str) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.call_id = call_id

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return jsonlib.loads(self.body)

    def __repr__(self) -> str:
        return f"<InvokeResult {self.status} call {self.call_id} ({len(self.body)} bytes)>"


class Invocation:
    """An async call queued by :meth:`FunctionClient.spawn`; ``result()`` waits for it."""

    __slots__ = ("_client", "id")

    def __init__(self, call_id: str, client: FunctionClient) -> None:
        self.id = call_id
        self._client = client

    def result(self, timeout: float | None = None) -> InvokeResult:
        """Wait for the call to finish; its answer, or its error raised."""
        return self._client.result(self.id, timeout)

    def __repr__(self) -> str:
        return f"<Invocation {self.id}>"


def current_call() -> str | None:
    """The call this thread serves: the warm runtime's, else ``SWARMLESS_CALL_ID``."""
    from swarmless.runtime import invocation

    call: str | None = getattr(invocation.CURRENT, "call_id", None)
    if call is None:
        native = sys.modules.get("swarmless.runtime.native")
        if native is not None:
            call = native.current_call()
    return call or os.environ.get("SWARMLESS_CALL_ID") or None


def from_env(
    *,
    gateway_url: str | None = None,
    token: str | None = None,
    call_id: str | None = None,
    timeout: float | None = None,
) -> FunctionClient:
    """The client of this function container (see the module docstring); the keywords
    override what the environment says."""
    return FunctionClient(gateway_url=gateway_url, token=token, call_id=call_id, timeout=timeout)


class FunctionClient:
    """Calls deployed functions through the gateway, as this function container."""

    def __init__(
        self,
        *,
        gateway_url: str | None = None,
        token: str | None = None,
        call_id: str | None = None,
        timeout: float | None = None,
    ) -> None:
        urls = gateway_url or os.environ.get("SWARMLESS_GATEWAY_URL", "")
        self.gateway_urls = [u.strip().rstrip("/") for u in urls.split(",") if u.strip()]
        if not self.gateway_urls:
            raise SwarmlessError(
                "SWARMLESS_GATEWAY_URL is not set: this is not a function container of a "
                "swarmless gateway (give gateway_url=, or use the full SDK outside one)",
                code="invalid_argument",
            )
        for url in self.gateway_urls:
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise SwarmlessError(
                    f"the gateway URL must be http(s)://host:port, got {url!r}",
                    code="invalid_argument",
                )
        self.token = token if token is not None else os.environ.get("SWARMLESS_TOKEN") or None
        self._call_id = call_id
        self.timeout = CALL_TIMEOUT if timeout is None else float(timeout)

    def __repr__(self) -> str:
        return f"<swarmless FunctionClient {self.gateway_urls[0]}>"

    def __enter__(self) -> FunctionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: every request has its own connection."""

    # -- the calls ------------------------------------------------------------------------

    def invoke(
        self,
        name: str,
        data: bytes | str | None = None,
        *,
        json: Any = None,
        args: Sequence[str] | None = None,
        method: str = "POST",
        path: str = "",
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> InvokeResult:
        """Call function ``name`` and wait for its answer."""
        target = _target("/function", name, path, query)
        hdrs, body = _request_parts(data, json, args, headers)
        return self._answer(self._send(method, target, hdrs, body))

    def spawn(
        self,
        name: str,
        data: bytes | str | None = None,
        *,
        json: Any = None,
        args: Sequence[str] | None = None,
        path: str = "",
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> Invocation:
        """Queue an async call of ``name``; returns once the call is durable."""
        hdrs, body = _request_parts(data, json, args, headers)
        if idempotency_key is not None:
            hdrs["Idempotency-Key"] = idempotency_key
        if callback_url is not None:
            hdrs["X-Callback-Url"] = callback_url
        status, answer_headers, answer = self._send(
            "POST", _target("/async-function", name, path, None), hdrs, body
        )
        _raise_for(status, answer_headers, answer, always=status >= 400)
        call_id = answer_headers.get("x-call-id", "")
        if not call_id:
            raise SwarmlessError(
                f"the gateway accepted the call of {name!r} (HTTP {status}) without a call id",
                status_code=status,
            )
        return Invocation(call_id, self)

    def result(self, call_id: str, timeout: float | None = None) -> InvokeResult:
        """Wait for call ``call_id`` (spawned from this function) and return its answer;
        its error is raised, and ``code == "wait_timeout"`` when ``timeout`` passes first
        (the call goes on)."""
        _segment(call_id, "call id")
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            left = POLL if deadline is None else max(0.0, deadline - time.monotonic())
            wait = min(POLL, left)
            target = f"/invocations/{call_id}/result?wait={wait:.3f}"
            status, headers, body = self._send("GET", target, {}, None, read_timeout=wait + 30)
            _raise_for(status, headers, body, always=status >= 400)
            if status != 202:
                return InvokeResult(status, headers, body, call_id)
            if deadline is not None and time.monotonic() >= deadline:
                raise SwarmlessError(
                    f"call {call_id} is still {headers.get('x-swarmless-status', 'pending')} "
                    f"after {timeout:g}s; it goes on",
                    code="wait_timeout",
                    status_code=504,
                    invocation=call_id,
                )

    def run(self, *_args: Any, **_kwargs: Any) -> Any:
        """Not here: running an image needs the Docker SDK (see the message)."""
        raise SwarmlessError(
            "run() starts containers through the Docker SDK, which is not in this function's "
            "image: install swarmless in the image (requirements.txt: swarmless) and give the "
            "function 'docker: scoped', or call a deployed function with invoke()",
            code="invalid_argument",
        )

    # -- HTTP -------------------------------------------------------------------------------

    def _answer(self, reply: tuple[int, dict[str, str], bytes]) -> InvokeResult:
        status, headers, body = reply
        _raise_for(status, headers, body, always=False)
        return InvokeResult(status, headers, body, headers.get("x-call-id", ""))

    def _send(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        *,
        read_timeout: float | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        headers = dict(headers)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        parent = self._call_id or current_call()
        if parent:
            headers["X-Swarmless-Parent"] = parent
        reasons = []
        for url in self.gateway_urls:
            parts = urllib.parse.urlsplit(url)
            https = parts.scheme == "https"
            connection = http.client.HTTPSConnection if https else http.client.HTTPConnection
            conn = connection(parts.netloc, timeout=read_timeout or self.timeout)
            try:
                try:
                    conn.request(method, parts.path + target, body=body, headers=headers)
                except OSError as e:  # nothing was sent: the next address may answer
                    reasons.append(f"{url}: {e}")
                    continue
                response = conn.getresponse()
                data = response.read()
                answer = {k.lower(): v for k, v in response.getheaders()}
                return response.status, answer, data
            except (OSError, http.client.HTTPException) as e:
                raise SwarmlessError(
                    f"the gateway at {url} did not answer {method} {target}: {e}",
                    code="no_answer",
                    status_code=504,
                ) from None
            finally:
                conn.close()
        raise SwarmlessError(
            "cannot reach the gateway: " + "; ".join(reasons),
            code="gateway_unavailable",
            status_code=503,
        )


def _segment(value: str, what: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or any(c in value for c in "/?#%\\")
        or not value.isprintable()
        or value != value.strip()
        or value in (".", "..")
    ):
        raise SwarmlessError(f"{what} must be a plain name, got {value!r}", code="invalid_argument")
    return value


def _target(prefix: str, name: str, path: str, query: Mapping[str, str] | None) -> str:
    target = f"{prefix}/{_segment(name, 'function name')}"
    if path:
        target += "/" + urllib.parse.quote(path.lstrip("/"), safe="/")
    if query:
        target += "?" + urllib.parse.urlencode(dict(query))
    return target


def _request_parts(
    data: bytes | str | None,
    json: Any,
    args: Sequence[str] | None,
    headers: Mapping[str, str] | None,
) -> tuple[dict[str, str], bytes | None]:
    hdrs = dict(headers or {})
    if args is not None:
        if isinstance(args, str) or not all(isinstance(a, str) for a in args):
            raise SwarmlessError(
                f"args must be a list of strings, got {args!r}", code="invalid_argument"
            )
        hdrs["X-Swarmless-Args"] = jsonlib.dumps(list(args))
    if json is not None:
        if data is not None:
            raise SwarmlessError("give data or json=, not both", code="invalid_argument")
        hdrs.setdefault("Content-Type", "application/json")
        return hdrs, jsonlib.dumps(json).encode()
    if data is None or isinstance(data, bytes):
        return hdrs, data
    if isinstance(data, str):
        return hdrs, data.encode()
    raise SwarmlessError(
        f"data must be bytes or str, got {type(data).__name__}", code="invalid_argument"
    )


def _raise_for(status: int, headers: dict[str, str], body: bytes, *, always: bool) -> None:
    """Raise the gateway's error (an answer of the function itself is not one)."""
    if headers.get("x-swarmless-error") != "1" and not always:
        return
    try:
        parsed = jsonlib.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        parsed = {"message": body.decode("utf-8", "replace")[:500] or f"HTTP {status}"}
    raise SwarmlessError(
        str(parsed.get("message") or f"HTTP {status}"),
        code=str(parsed.get("error") or "error"),
        status_code=status,
        invocation=parsed.get("call_id") or headers.get("x-call-id"),
        body=parsed,
    )
