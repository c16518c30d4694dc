"""NAME: a warm Python function that returns a full HTTP response (an HTML page)."""

import html
from typing import Any
from urllib.parse import parse_qs

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title></head>
<body>
  <h1>{title}</h1>
  <p>{method} {path}, served by call <code>{call_id}</code>.</p>
  <form method="get"><input name="name" placeholder="your name"> <button>Greet</button></form>
</body>
</html>
"""


def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    name = parse_qs(event["query"]).get("name", ["world"])[0]
    body = PAGE.format(
        title=html.escape(f"Hello, {name}!"),
        method=html.escape(event["method"]),
        path=html.escape(event["path"]),
        call_id=html.escape(context.call_id),
    )
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"},
        "body": body,
    }
