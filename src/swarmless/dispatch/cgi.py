"""CGI/1.1 (RFC 3875) on both sides: the environment of a request, the parse of a response.

The headers come from the gateway's edge (:mod:`swarmless.gateway.edge`), which has
already dropped the gateway's credentials, hop-by-hop headers and ``Proxy``, set
``X-Forwarded-*`` and refused names with ``_``. The environment still guards itself: it
never holds ``HTTP_PROXY`` (httpoxy: the proxy of the script's own HTTP clients), never
takes a name with ``_`` (it would pose as the same name with ``-``), and headers of one
name are joined, as RFC 3875 4.1.18 says.
"""

from __future__ import annotations

from collections.abc import Sequence

from swarmless.dispatch.request import NO_BODY, answer_problem
from swarmless.exceptions import FunctionFailed
from swarmless.runtime.cgi import CGIResponseError
from swarmless.runtime.cgi import parse_cgi_response as _parse

__all__ = ["cgi_environ", "parse_cgi_response"]

#: Headers a CGI script never sees (RFC 3875 4.1.18: credentials are the server's business).
_HIDDEN = {"authorization", "proxy-authorization", "content-type", "content-length", "connection"}
#: Meta-variables no header may set: a script's HTTP client takes HTTP_PROXY for its proxy.
_NEVER = {"HTTP_PROXY"}


def cgi_environ(
    *,
    function: str,
    method: str,
    path: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    body_length: int,
    remote_addr: str,
    remote_port: int,
    server_name: str,
    server_port: int,
    scheme: str = "http",
    prefix: str | None = None,
) -> dict[str, str]:
    """The meta-variables of RFC 3875 section 4.1 for one request; ``prefix`` is where the
    function is served (``SCRIPT_NAME``: ``/function/NAME`` unless a route says else)."""
    script = f"/function/{function}" if prefix is None else prefix
    env = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "swarmless",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": server_name,
        "SERVER_PORT": str(server_port),
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": script,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REMOTE_ADDR": remote_addr,
        "REMOTE_PORT": str(remote_port),
        "REQUEST_URI": f"{script}{path}" + (f"?{query}" if query else ""),
        "REQUEST_SCHEME": scheme,
    }
    if scheme == "https":
        env["HTTPS"] = "on"
    for name, value in headers:
        lower = name.lower()
        if lower == "content-type":
            env["CONTENT_TYPE"] = value
        elif lower not in _HIDDEN and "_" not in lower:
            key = "HTTP_" + lower.upper().replace("-", "_")
            if key not in _NEVER:
                env[key] = f"{env[key]}, {value}" if key in env else value
    if body_length:
        env["CONTENT_LENGTH"] = str(body_length)
    return env


def parse_cgi_response(output: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Split a CGI response into status, headers and body (RFC 3875 section 6), with the
    parser warm ``cgi`` handlers use too (:func:`swarmless.runtime.cgi.parse_cgi_response`);
    FunctionFailed for a response that is malformed or cannot be sent as HTTP."""
    try:
        status, headers, body = _parse(output)
    except CGIResponseError as e:
        raise FunctionFailed(str(e)) from None
    problem = answer_problem(status, headers)
    if problem is not None:
        raise FunctionFailed(f"malformed CGI response: {problem}")
    return status, headers, b"" if status in NO_BODY else body
