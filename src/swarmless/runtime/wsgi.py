"""The ``wsgi`` handler kind: ``module:app``, a PEP 3333 application; the event becomes a
WSGI environ (:func:`wsgi_environ`) and the application's response the result."""

from __future__ import annotations

import sys

from swarmless.runtime.invocation import Call, Handler, Result, header_list

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

__all__ = ["WsgiHandler", "wsgi_environ"]


def _latin1(text: str) -> str:
    """A PEP 3333 native string: the UTF-8 bytes of ``text`` seen as latin-1."""
    return text.encode("utf-8").decode("latin-1")


def wsgi_environ(inv: Call, *, multithread: bool) -> dict[str, Any]:
    """A PEP 3333 environ for one invocation.

    The headers are those the gateway's edge let through: its ``X-Forwarded-For`` (the
    client it vouches for first), ``-Proto`` and ``-Host`` replaced whatever a client sent,
    so ``REMOTE_ADDR``, ``wsgi.url_scheme`` and ``SERVER_NAME`` can be taken from them.
    ``SCRIPT_NAME`` is where the function is served (the event's ``prefix``:
    ``/function/NAME`` or a route like ``/vote``), unless a trusted proxy in front of the
    gateway says otherwise (``X-Forwarded-Prefix``). A
    name with ``_`` (refused by the edge) is skipped rather than merged into the same name
    with ``-``, and no header becomes ``HTTP_PROXY``.
    """
    import io

    event = inv.event
    environ: dict[str, Any] = {
        "REQUEST_METHOD": str(event.get("method") or "GET").upper(),
        "SCRIPT_NAME": _latin1(str(event.get("prefix") or "")),
        "PATH_INFO": _latin1(str(event.get("path") or "/")),
        "QUERY_STRING": str(event.get("query") or ""),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": str(len(inv.body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(inv.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "swarmless.call_id": inv.call_id,
        "swarmless.deadline": inv.deadline,
    }
    for name, value in inv.header_pairs:
        if "_" in name:
            continue
        key = name.upper().replace("-", "_")
        if key == "PROXY":
            continue  # httpoxy: HTTP_PROXY is the proxy of the application's HTTP clients
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
            continue
        if key == "CONTENT_LENGTH":
            continue  # the body we hold is the truth
        key = "HTTP_" + key
        if key in environ:
            sep = "; " if key == "HTTP_COOKIE" else ", "
            environ[key] = environ[key] + sep + _latin1(value)
        else:
            environ[key] = _latin1(value)
    proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[0].strip().lower()
    if proto in ("http", "https"):
        environ["wsgi.url_scheme"] = proto
    prefix = environ.get("HTTP_X_FORWARDED_PREFIX", "").rstrip("/")
    if prefix:
        environ["SCRIPT_NAME"] = prefix
    host = environ.get("HTTP_X_FORWARDED_HOST", "").split(",")[0].strip()
    host = host or environ.get("HTTP_HOST", "")
    name, sep, port = host.rpartition(":")
    if not sep or not port.isdigit() or name.endswith(":"):  # no port, or a bare IPv6
        name, port = host, ""
    environ["SERVER_NAME"] = name or "localhost"
    environ["SERVER_PORT"] = port or ("443" if environ["wsgi.url_scheme"] == "https" else "80")
    forwarded = environ.get("HTTP_X_FORWARDED_FOR", "").split(",")[0].strip()
    if forwarded:
        environ["REMOTE_ADDR"] = forwarded
    return environ


class WsgiHandler(Handler):
    """Runs a WSGI application for each invocation and collects its response."""

    def __init__(self, app: Callable[..., Iterable[bytes]], *, multithread: bool) -> None:
        self.app = app
        self.multithread = multithread

    def __call__(self, inv: Call) -> Result:
        environ = wsgi_environ(inv, multithread=self.multithread)
        response: list[Any] = []
        chunks: list[bytes] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            # Nothing is sent before the application returns, so a late start_response
            # (with exc_info, after an error) may always replace the first one.
            if response and exc_info is None:
                raise AssertionError("start_response called twice without exc_info")
            response[:] = [status, list(headers)]
            return chunks.append

        iterable = self.app(environ, start_response)
        try:
            for chunk in iterable:
                if chunk:
                    chunks.append(bytes(chunk))
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
        if not response:
            raise RuntimeError("the WSGI application returned without calling start_response")
        status_line, headers = response
        code = int(str(status_line).split(None, 1)[0])
        return Result(inv.call_id, b"".join(chunks), status=code, headers=header_list(headers))
