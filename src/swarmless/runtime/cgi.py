"""The ``cgi`` handler kind, and the CGI response parser the gateway shares.

A warm container of a ``cgi`` function keeps running (its runtime, its page cache, the
interpreter's files in memory) and forks its command per call, as the fork-per-call
watchdogs do: the command gets a CGI/1.1 environment (RFC 3875 section 4.1) for the
request, the body on its stdin, and writes a CGI response (headers, a blank line, the
body) on its stdout, which becomes the call's answer. So a CGI script in any language (a
Perl page, a shell script) is served warm exactly as a ``mode: cgi`` container serves it,
without a container start per request.

The environment is built from the event the gateway's edge filtered (no credentials of
the gateway, no ``Proxy`` header, forwarding headers its own): ``SCRIPT_NAME`` is where
the function is served (``/function/NAME`` or a route like ``/result``), ``PATH_INFO``
the rest; ``SERVER_NAME``/``SERVER_PORT`` come from ``X-Forwarded-Host`` (else ``Host``),
``REMOTE_ADDR`` from the first ``X-Forwarded-For``, ``HTTPS`` from ``X-Forwarded-Proto``.
A header name with ``_`` is skipped and none becomes ``HTTP_PROXY`` (httpoxy);
``Authorization`` is not passed (RFC 3875 4.1.18). A non-zero exit is an error carrying
stderr, a malformed response a 502 saying what was wrong, and at the deadline the
command's process group is killed.

:func:`parse_cgi_response` is the one parser of CGI responses: the gateway's one-shot
``cgi`` mode (:mod:`swarmless.dispatch.cgi`) uses it too. Standard library only, like the
rest of the runtime.
"""

from __future__ import annotations

import os

from swarmless.runtime.command import CommandHandler, Outcome
from swarmless.runtime.invocation import Call, Result

__all__ = ["CGIResponseError", "CgiHandler", "cgi_environ", "parse_cgi_response"]

#: Headers a CGI script never sees (RFC 3875 4.1.18: credentials are the server's business).
_HIDDEN = {"authorization", "proxy-authorization", "content-type", "content-length", "connection"}
#: Meta-variables of a request; the container's own environment may not pose as them.
_META = frozenset(
    {
        "AUTH_TYPE",
        "CONTENT_LENGTH",
        "CONTENT_TYPE",
        "GATEWAY_INTERFACE",
        "HTTPS",
        "PATH_INFO",
        "PATH_TRANSLATED",
        "QUERY_STRING",
        "REMOTE_ADDR",
        "REMOTE_HOST",
        "REMOTE_IDENT",
        "REMOTE_PORT",
        "REMOTE_USER",
        "REQUEST_METHOD",
        "REQUEST_SCHEME",
        "REQUEST_URI",
        "SCRIPT_NAME",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "SERVER_SOFTWARE",
    }
)


class CGIResponseError(ValueError):
    """What a command wrote is not a CGI response (the message says why)."""


def parse_cgi_response(output: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Split a CGI response into status, headers and body (RFC 3875 section 6).

    ``Status: 404 Not Found`` sets the status (200 without it; 302 with a ``Location``);
    lines may end in CRLF or LF. Raises :class:`CGIResponseError` for output that is not
    a CGI response (no blank line after the headers, a line that is not a header, a bad
    status, no header at all).
    """
    cut = -1
    sep = b""
    for candidate in (b"\r\n\r\n", b"\n\n"):
        i = output.find(candidate)
        if i != -1 and (cut == -1 or i < cut):
            cut, sep = i, candidate
    if cut == -1:
        raise CGIResponseError(
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
            raise CGIResponseError(f"malformed CGI response header line: {raw[:80]!r}")
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            code = value.split(" ", 1)[0]
            if not code.isdigit() or not 100 <= int(code) <= 599:
                raise CGIResponseError(f"malformed CGI Status header: {value!r}")
            status = int(code)
        else:
            headers.append((name, value))
    if status == 200 and any(n.lower() == "location" for n, _ in headers):
        status = 302
    if not headers and status == 200:
        raise CGIResponseError("malformed CGI response: no Content-Type, Location or Status header")
    return status, headers, body


def _host_port(host: str, https: bool) -> tuple[str, str]:
    name, sep, port = host.rpartition(":")
    if not sep or not port.isdigit() or name.endswith(":"):  # no port, or a bare IPv6
        name, port = host, ""
    return name or "localhost", port or ("443" if https else "80")


def cgi_environ(inv: Call, base: dict[str, str]) -> dict[str, str]:
    """The environment of the command for one invocation: ``base`` (the container's),
    less anything that poses as a request's meta-variable, plus those of this request."""
    event = inv.event
    env = {k: v for k, v in base.items() if not k.startswith("HTTP_") and k not in _META}
    http: dict[str, str] = {}
    content_type = ""
    for name, value in inv.header_pairs:
        lower = name.lower()
        if lower == "content-type":
            content_type = value
        elif lower not in _HIDDEN and "_" not in lower:
            key = "HTTP_" + lower.upper().replace("-", "_")
            if key != "HTTP_PROXY":
                http[key] = f"{http[key]}, {value}" if key in http else value
    scheme = http.get("HTTP_X_FORWARDED_PROTO", "").split(",")[0].strip().lower()
    scheme = scheme if scheme in ("http", "https") else "http"
    host = http.get("HTTP_X_FORWARDED_HOST", "").split(",")[0].strip()
    server, port = _host_port(host or http.get("HTTP_HOST", ""), scheme == "https")
    prefix = str(event.get("prefix") or "")
    path = str(event.get("path") or "")
    query = str(event.get("query") or "")
    env.update(http)
    env.update(
        {
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_SOFTWARE": "swarmless",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_NAME": server,
            "SERVER_PORT": port,
            "REQUEST_METHOD": str(event.get("method") or "GET").upper(),
            "SCRIPT_NAME": prefix,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REMOTE_ADDR": http.get("HTTP_X_FORWARDED_FOR", "").split(",")[0].strip(),
            "REQUEST_URI": prefix + path + (f"?{query}" if query else ""),
            "REQUEST_SCHEME": scheme,
            "SWARMLESS_CALL_ID": inv.call_id,
        }
    )
    if scheme == "https":
        env["HTTPS"] = "on"
    if content_type:
        env["CONTENT_TYPE"] = content_type
    if inv.body:
        env["CONTENT_LENGTH"] = str(len(inv.body))
    if inv.deadline is not None:
        env["SWARMLESS_DEADLINE"] = str(int(inv.deadline * 1000))
    return env


class CgiHandler(CommandHandler):
    """Forks ``sh -c COMMAND`` per invocation as a CGI script: the request as CGI/1.1 in,
    the CGI response on its stdout out."""

    def environ(self, inv: Call) -> dict[str, str]:
        return cgi_environ(inv, dict(os.environ))

    def answer(self, inv: Call, done: Outcome) -> Result:
        try:
            status, headers, body = parse_cgi_response(done.stdout)
        except CGIResponseError as e:
            return Result(inv.call_id, done.stdout[-4000:], status=502, error=str(e), exit_code=0)
        if status in (204, 304):
            body = b""
        return Result(inv.call_id, body, status=status, headers=headers, exit_code=0)
