"""NAME: a warm Python function for swarmless.

``event`` has ``method``, ``path``, ``query`` (the raw query string), ``headers`` (lower-case
names), ``body`` (bytes) and ``json`` (the parsed body, or None). Return a dict or list
(answered as JSON), a str or bytes, or a dict with ``statusCode`` for full control.
"""

from typing import Any
from urllib.parse import parse_qs


def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    data = event["json"] if isinstance(event["json"], dict) else {}
    query = parse_qs(event["query"])
    name = data.get("name") or query.get("name", ["world"])[0]
    print(f"greeting {name}")  # lands in this invocation's log
    return {
        "message": f"Hello, {name}!",
        "function": context.function,
        "call_id": context.call_id,
    }
