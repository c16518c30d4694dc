"""Schemathesis hooks for tests/reliability/test_fuzz.py (``SCHEMATHESIS_HOOKS``).

The fuzzer may deploy any function the schema allows. On a shared 2-core engine with no
registry, some valid specs would be costly without testing anything more: an image on an
unreachable registry (a pull that waits for a TCP timeout), 1000 warm containers, a schedule
firing every second. Just before each call, a deploy body's *valid* values of those fields
are steered to cheap ones (a local image or one that is surely absent, at most 2 containers,
a 5 s timeout, a yearly schedule); invalid values are left as they are, so the negative
cases still test validation.
"""

from __future__ import annotations

import ast
import functools
import threading
import zlib
from typing import Any

import schemathesis

_parse = ast.parse
_parse_lock = threading.Lock()


@functools.wraps(_parse)
def _serialised_parse(*args: Any, **kwargs: Any) -> Any:
    with _parse_lock:
        return _parse(*args, **kwargs)


# The run has several workers (threads). CPython 3.11's AST constructor keeps its recursion
# depth per interpreter, not per thread: two ast.parse at once (Hypothesis parses a filter's
# lambda to describe it) fail with "AST constructor recursion depth mismatch", an error of
# the fuzzer, not of the gateway. One parse at a time (they are rare: a cache keeps them).
ast.parse = _serialised_parse  # type: ignore[assignment]

#: A local image, or one that is surely absent (its pull fails at once: no such host).
IMAGES = ("swarmless/busybox:latest", "swarmless-fuzz/absent:1")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def steer(body: dict[str, Any]) -> None:
    """Make a deploy body cheap to run (valid values only; see the module's docstring)."""
    image = body.get("image")
    if isinstance(image, str) and image:
        body["image"] = IMAGES[zlib.crc32(image.encode("utf-8", "replace")) % len(IMAGES)]
    for field, most in (("min_containers", 1), ("buffer", 1), ("max_containers", 2)):
        if _int(body.get(field)) and body[field] > most:
            body[field] = most
    if _num(body.get("timeout")) and body["timeout"] > 5:
        body["timeout"] = 5
    if isinstance(body.get("schedule"), str) and body["schedule"].strip():
        body["schedule"] = "0 0 1 1 *"


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    deploys = case.operation.path.startswith("/system/functions")
    if deploys and case.method.upper() in ("POST", "PUT") and isinstance(case.body, dict):
        steer(case.body)
    scales = case.operation.path.startswith("/system/scale/")
    if scales and isinstance(case.body, dict) and _num(case.body.get("wait")):
        case.body["wait"] = min(case.body["wait"], 2)  # valid, and short: a scale waits


#: What a function's own failure answers through the gateway (documented 502 and 504).
FUNCTION_FAILURES = {"function_failed", "container_error", "oom_killed", "invocation_timeout"}


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but three: a call of a function (``/function/*``, an async call's
    result) that answers 502 or 504 with the function's own failure (it could not start,
    exited non-zero, timed out) is the documented answer, not a server error of the
    gateway; so is a scale that waited (``"wait"``) and answers 504 ``wait_timeout`` or 502
    ``function_failed``; and a function takes any method, so none is "undeclared" there.
    Any other 5xx, and any 5xx elsewhere, stays a failure."""
    code = getattr(failure, "code", None)  # schemathesis' failure codes
    path = case.operation.path
    if code == "ST204" and path.startswith("/function/"):
        return False  # every method goes to the function (QUERY too): none is undeclared
    if code != "ST101":  # a server error
        return True
    if response.status_code not in (502, 504):
        return True
    if path == "/system/scale/{name}":
        # a scale that waited: its containers not all ready in time (the pin stays), or
        # one of them exited before it was ready (the fuzzer's images may not serve)
        try:
            return response.json().get("error") not in ("wait_timeout", "function_failed")
        except (ValueError, AttributeError):
            return True
    if not path.startswith(("/function/", "/invocations/{call_id}/result")):
        return True
    if case.method.upper() == "HEAD":
        # A HEAD answer has no body to name the failure: the gateway's error answers carry
        # X-Swarmless-Error (a bare 5xx from anywhere else does not).
        marked = response.headers.get("x-swarmless-error") or []  # lower-case keys, lists
        return "1" not in ([marked] if isinstance(marked, str) else marked)
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return True
    return error not in FUNCTION_FAILURES
