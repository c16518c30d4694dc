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
) -> dict[str, str]:
    """The meta-variables of RFC 3875 section 4.1 for one request."""
    env = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "swarmless",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": server_name,
        "SERVER_PORT": str(server_port),
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": f"/function/{function}",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REMOTE_ADDR": remote_addr,
        "REMOTE_PORT": str(remote_port),
        "REQUEST_URI": f"/function/{function}{path}" + (f"?{query}" if query else ""),
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
    """Split a CGI response into status, headers and body (RFC 3875 section 6)."""
    cut = -1
    sep = b""
    for candidate in (b"\r\n\r\n", b"\n\n"):
        i = output.find(candidate)
        if i != -1 and (cut == -1 or i < cut):
            cut, sep = i, candidate
    if cut == -1:
        raise FunctionFailed(
            "malformed CGI response: no blank line after the headers "
            f"(first bytes: {output[:80]!r})"
        )
    head, body = output[:cut], output[cut + len(sep) :]
    status = 200
    headers: list[tuple[str, str]] = []
    for raw in head.replace(b"\r\n", b"\n").split(b"\n"):
        if not raw.strip():
            continue
        name, colon, value = raw.decode("latin-1").partition(":")
        if not colon or not name.strip():
            raise FunctionFailed(f"malformed CGI response header line: {raw[:80]!r}")
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            code = value.split(" ", 1)[0]
            if not code.isdigit() or not 100 <= int(code) <= 599:
                raise FunctionFailed(f"malformed CGI Status header: {value!r}")
            status = int(code)
        else:
            headers.append((name, value))
    if status == 200 and any(n.lower() == "location" for n, _ in headers):
        status = 302
    if not headers and status == 200:
        raise FunctionFailed("malformed CGI response: no Content-Type, Location or Status header")
    problem = answer_problem(status, headers)
    if problem is not None:
        raise FunctionFailed(f"malformed CGI response: {problem}")
    return status, headers, b"" if status in NO_BODY else body
