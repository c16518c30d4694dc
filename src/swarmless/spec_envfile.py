"""The ``.env`` files a spec names (``env_file``): ``KEY=VALUE`` lines, read into ``env``.

Only a file on this machine reads files (:func:`swarmless.spec.load_file`); the gateway takes
``env`` as sent.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from swarmless.exceptions import SpecError
from swarmless.spec_values import BadValue, inside

__all__ = ["read_env_files"]

#: A name in a .env file.
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def read_env_files(files: Any, base_dir: Path) -> dict[str, str]:
    """The variables of ``env_file`` (one path or a list, relative to ``base_dir``), later
    files winning. Lines are ``KEY=VALUE`` (an ``export`` before is allowed), ``#`` starts a
    comment line, a value may be quoted: ``'as is'`` or ``"with \\n escapes"``; an unquoted
    value ends at `` #``. Nothing is expanded. A SpecError names the file and line."""
    names = [files] if isinstance(files, str) else files
    if not isinstance(names, list | tuple) or not all(
        isinstance(n, str) and inside(n) for n in names
    ):
        raise SpecError(
            {"env_file": f"must be relative paths of .env files, like '.env', got {files!r}"}
        )
    out: dict[str, str] = {}
    for name in names:
        path = base_dir / name
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise SpecError({"env_file": f"cannot read {path}: {why}"}) from None
        for number, line in enumerate(text.splitlines(), 1):
            try:
                parsed = _env_line(line)
            except BadValue as e:
                raise SpecError({"env_file": f"{path}, line {number}: {e}"}) from None
            if parsed is not None:
                out[parsed[0]] = parsed[1]
    return out


def _env_line(line: str) -> tuple[str, str] | None:
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if text.startswith("export "):
        text = text[7:].lstrip()
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not _ENV_KEY.fullmatch(key):
        raise BadValue(f"expected KEY=VALUE (a name of letters, digits and '_'), got {line!r}")
    value = value.strip()
    if value[:1] in ("'", '"'):
        quote = value[0]
        end = 1
        chars: list[str] = []
        while end < len(value) and value[end] != quote:
            c = value[end]
            if quote == '"' and c == "\\" and end + 1 < len(value):
                end += 1
                c = {"n": "\n", "t": "\t", "r": "\r"}.get(value[end], value[end])
            chars.append(c)
            end += 1
        rest = value[end + 1 :].strip()
        if end >= len(value) or (rest and not rest.startswith("#")):
            raise BadValue(f"the value of {key} has no closing {quote} (one line per value)")
        return key, "".join(chars)
    comment = re.search(r"\s#", value)
    return key, (value[: comment.start()] if comment else value).strip()
