"""The gateway's API description as a self-contained HTML page with a try-it form (no CDN:
it works offline), from the OpenAPI 3.1 document :mod:`swarmless.gateway.openapi` builds
(:func:`openapi_schema`, re-exported here).
"""

from __future__ import annotations

import html
import json
from typing import Any

from swarmless.gateway.openapi import openapi_schema as openapi_schema

__all__ = ["docs_page", "openapi_schema"]


_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:1em 2em}header a{color:#9cd}
main{max-width:70em;margin:0 auto;padding:1em 2em}
details{background:#fff;border:1px solid #d8dde5;border-radius:6px;margin:.4em 0}
summary{cursor:pointer;padding:.5em .8em;list-style:none}
summary::-webkit-details-marker{display:none}
.m{display:inline-block;min-width:4.2em;font:bold 12px monospace;text-align:center;
padding:.2em .4em;border-radius:3px;color:#fff;background:#6b7280}
.get{background:#2563eb}.post{background:#16a34a}.put{background:#d97706}
.delete{background:#dc2626}.patch{background:#7c3aed}
.p{font-family:monospace;margin:0 .6em}.s{color:#4b5563}
.body{padding:.2em 1em 1em;border-top:1px solid #e5e7eb}
pre{background:#f3f4f6;padding:.6em;overflow:auto;font-size:13px;border-radius:4px}
table{border-collapse:collapse}td,th{text-align:left;padding:.2em .6em;vertical-align:top}
input,textarea{font:13px monospace;width:100%;box-sizing:border-box}
button{margin-top:.4em}.lock{font-size:12px;color:#92400e}
th{font-size:12px;color:#4b5563}label{display:block;margin:.3em 0}
"""

_SCRIPT = """
const tok = document.getElementById('token');
tok.value = sessionStorage.getItem('swarmless-token') || '';
tok.addEventListener('change', () => sessionStorage.setItem('swarmless-token', tok.value));
for (const form of document.querySelectorAll('form.try')) {
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    let path = form.dataset.path;
    const query = new URLSearchParams();
    const headers = {};
    for (const input of form.querySelectorAll('input[data-in]')) {
      if (input.value === '') continue;
      if (input.dataset.in === 'path') {
        path = path.replace('{' + input.name + '}', encodeURIComponent(input.value));
      } else if (input.dataset.in === 'query') {
        query.set(input.name, input.value);
      } else {
        headers[input.name] = input.value;
      }
    }
    if (tok.value) headers['Authorization'] = 'Bearer ' + tok.value;
    const init = {method: form.dataset.method.toUpperCase(), headers};
    const body = form.querySelector('textarea');
    if (body && body.value !== '') {
      init.body = body.value;
      headers['Content-Type'] = form.dataset.type || 'application/octet-stream';
    }
    const out = form.querySelector('output');
    out.textContent = '...';
    try {
      const q = query.toString();
      const r = await fetch(path + (q ? '?' + q : ''), init);
      let text = await r.text();
      try { text = JSON.stringify(JSON.parse(text), null, 2); } catch (e) {}
      out.textContent = r.status + ' ' + r.statusText + '\\n' + text;
    } catch (e) {
      out.textContent = String(e);
    }
  });
}
"""


def _type(schema: Any) -> str:
    """A schema as a short readable type (HTML): a model is a link to its table."""
    if not isinstance(schema, dict) or not schema:
        return "any"
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = html.escape(ref.rsplit("/", 1)[1])
        return f"<a href='#schema-{name}'>{name}</a>"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(_type(s) for s in schema[key])
    if "enum" in schema:
        return "one of " + ", ".join(
            f"<code>{html.escape(json.dumps(v))}</code>" for v in schema["enum"]
        )
    if "const" in schema:
        return f"<code>{html.escape(json.dumps(schema['const']))}</code>"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type(schema.get('items'))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {_type(schema['additionalProperties'])}"
    limits = [
        f"{word} {html.escape(json.dumps(schema[key]))}"
        for key, word in (
            ("minimum", "&ge;"),
            ("exclusiveMinimum", "&gt;"),
            ("maximum", "&le;"),
            ("exclusiveMaximum", "&lt;"),
            ("minLength", "length &ge;"),
            ("maxLength", "length &le;"),
            ("pattern", "matching"),
        )
        if key in schema
    ]
    return html.escape(str(kind)) + (f" ({', '.join(limits)})" if limits else "")


def _model_html(name: str, schema: dict[str, Any]) -> str:
    """A component schema as a table of its fields."""
    required = set(schema.get("required", []))
    rows = "".join(
        f"<tr><td><code>{html.escape(field)}</code>{' *' if field in required else ''}</td>"
        f"<td>{_type(body)}</td>"
        f"<td>{html.escape(json.dumps(body['default'])) if 'default' in body else ''}</td>"
        f"<td>{html.escape(body.get('description', ''))}</td></tr>"
        for field, body in schema.get("properties", {}).items()
    )
    extra = "" if schema.get("additionalProperties") is False else "<p>More fields may come.</p>"
    return (
        f"<details id='schema-{html.escape(name)}'><summary><code>{html.escape(name)}</code> "
        f"<span class='s'>{html.escape(schema.get('description', ''))}</span></summary>"
        "<div class='body'><table><tr><th>field (* required)</th><th>type</th><th>default</th>"
        f"<th></th></tr>{rows}</table>{extra}</div></details>"
    )


def _example(schema: dict[str, Any], media: dict[str, Any]) -> str:
    """The first example of a request body's model, as JSON to edit."""
    body = media.get("schema", {})
    ref = body.get("$ref") or next((s["$ref"] for s in body.get("oneOf", [])), "")
    model = schema["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {}) if ref else {}
    examples = model.get("examples") or []
    return json.dumps(examples[0], indent=2) if examples else ""


def _op_html(path: str, method: str, op: dict[str, Any], schema: dict[str, Any]) -> str:
    rows = []
    inputs = []
    for p in op.get("parameters", []):
        name = html.escape(p["name"])
        rows.append(
            f"<tr><td><code>{name}</code>{' *' if p.get('required') else ''}</td>"
            f"<td>{p['in']}</td><td>{_type(p['schema'])}</td>"
            f"<td>{html.escape(p.get('description', ''))}</td></tr>"
        )
        inputs.append(f"<label>{name} ({p['in']})<input name='{name}' data-in='{p['in']}'></label>")
    parts = [f"<p>{html.escape(op.get('description', ''))}</p>" if "description" in op else ""]
    if rows:
        parts.append(
            "<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th><th></th></tr>"
            + "".join(rows)
            + "</table>"
        )
    body_type, example = "", ""
    if "requestBody" in op:
        body_type, media = next(iter(op["requestBody"]["content"].items()))
        example = _example(schema, media)
        parts.append(
            f"<h4>Request body</h4><p><code>{html.escape(body_type)}</code>: "
            f"{_type(media.get('schema'))}</p>"
        )
    answers = "".join(
        f"<tr><td><code>{status}</code></td><td>{html.escape(r['description'])}</td>"
        + "".join(
            f"<td><code>{html.escape(media_type)}</code></td><td>{_type(m.get('schema'))}</td>"
            for media_type, m in r.get("content", {}).items()
        )
        + "</tr>"
        for status, r in op["responses"].items()
    )
    parts.append(f"<h4>Responses</h4><table>{answers}</table>")
    textarea = (
        f"<label>body<textarea rows='6'>{html.escape(example)}</textarea></label>"
        if body_type
        else ""
    )
    parts.append(
        f"<h4>Try it</h4><form class='try' data-method='{method}' "
        f"data-path='{html.escape(path)}' data-type='{html.escape(body_type)}'>"
        f"{''.join(inputs)}{textarea}<button>Send</button><pre><output></output></pre></form>"
    )
    lock = " <span class='lock'>token</span>" if op.get("security") else ""
    return (
        f"<details id='{html.escape(op.get('operationId', ''))}'><summary>"
        f"<span class='m {method}'>{method.upper()}</span>"
        f"<span class='p'>{html.escape(path)}</span>"
        f"<span class='s'>{html.escape(op.get('summary', ''))}</span>{lock}</summary>"
        f"<div class='body'>{''.join(parts)}</div></details>"
    )


def docs_page(schema: dict[str, Any]) -> str:
    """The API as one HTML page: operations by tag, their parameters, bodies and answers
    (with the schemas they use), and a try-it form for each; no external resource."""
    sections = []
    for tag in schema.get("tags", []):
        ops = [
            _op_html(path, method, op, schema)
            for path, methods in schema["paths"].items()
            for method, op in methods.items()
            if tag["name"] in op.get("tags", [])
        ]
        if ops:
            sections.append(
                f"<h2>{html.escape(tag['name'])}</h2><p>{html.escape(tag['description'])}</p>"
                + "".join(ops)
            )
    models = "".join(
        _model_html(name, body) for name, body in schema["components"]["schemas"].items()
    )
    info = schema["info"]
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>swarmless API</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{html.escape(info['title'])} {html.escape(info['version'])}</h1>"
        f"<p>{html.escape(info.get('description', ''))}</p>"
        "<p><a href='/openapi.json'>openapi.json</a> (OpenAPI 3.1)</p></header><main>"
        "<label>Bearer token (kept in this tab only) <input id='token' type='password' "
        "autocomplete='off'></label>"
        f"{''.join(sections)}<h2>Schemas</h2>{models}</main>"
        f"<script>{_SCRIPT}</script></body></html>"
    )
