"""NAME: a tiny WSGI application (standard library only) with two routes.

GET  /        a greeting (?name=...)
POST /echo    the request body back, with its length, as JSON
"""

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

StartResponse = Callable[..., Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    method = environ["REQUEST_METHOD"]
    path = environ.get("PATH_INFO") or "/"
    if path == "/" and method in ("GET", "HEAD"):
        name = parse_qs(environ.get("QUERY_STRING", "")).get("name", ["world"])[0]
        return respond(start_response, "200 OK", "text/plain; charset=utf-8", f"Hello, {name}!\n")
    if path == "/echo" and method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        data = {"length": len(body), "body": body.decode("utf-8", "replace")}
        return respond(start_response, "200 OK", "application/json", json.dumps(data))
    message = f"no route for {method} {path}\n"
    return respond(start_response, "404 Not Found", "text/plain; charset=utf-8", message)


def respond(
    start_response: StartResponse, status: str, content_type: str, text: str
) -> list[bytes]:
    data = text.encode("utf-8")
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(data)))])
    return [data]
