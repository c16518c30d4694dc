"""The vocabulary of the scoped Docker API's policy: who asks, what, and the answer.

:class:`Caller`, :class:`Target`, :class:`ProxyRequest` are the facts the proxy looks up;
:class:`Verdict` is the policy's answer; the helpers below read JSON the way Go's decoder
does (any case, zero values) and refuse everything else with a named rule
(:class:`Refused`). Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from swarmless.labels import LABEL_INSTANCE, LABEL_KIND, LABEL_MANAGED, LABEL_OWNER

__all__ = [
    "MIN_API",
    "SDK_LABELS",
    "BadValue",
    "Caller",
    "NotFound",
    "ProxyRequest",
    "Refused",
    "Route",
    "Target",
    "Verdict",
    "allow",
    "allowed_image",
    "fields_of",
    "integer",
    "is_zero",
    "normalize_image",
    "parse_json",
    "query_params",
    "refuse",
    "strings",
    "to_json",
]


#: Labels swarmless's own ``Client.run`` puts on every container: dropped, not refused (the
#: proxy sets managed and kind itself), so ``swarmless.from_env().run()`` works inside.
SDK_LABELS = frozenset({LABEL_MANAGED, LABEL_KIND, LABEL_INSTANCE, LABEL_OWNER, "swarmless.image"})

#: Older API versions accept a HostConfig at start time, past the create checks.
MIN_API = (1, 24)

MiB = 1024**2


@dataclasses.dataclass(frozen=True, kw_only=True)
class Caller:
    """The function container that sent the request, and the caps on its children."""

    container: str
    function: str
    #: The network children join (the caller's own).
    network: str
    #: Caps per child: memory (bytes), CPUs, PIDs; and children at once.
    memory: int = 256 * MiB
    cpus: float = 1.0
    pids: int = 512
    max_children: int = 20
    #: Labels forced on every child besides the swarmless ones (gateway instance, tests).
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The call a one-shot or cgi caller serves (its children are reported to its record).
    call_id: str | None = None
    #: Seconds its children may outlive it (its function's ``children_timeout``).
    children_timeout: float = 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Target:
    """The container a request names, as the engine knows it."""

    id: str
    labels: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class ProxyRequest:
    """One request and the facts about it the server looked up."""

    method: str
    #: The path without the token prefix, as sent (not decoded).
    path: str
    query: str
    body: bytes
    caller: Caller
    #: The container the path names (for an exec route: the exec's container); None
    #: when the route names none or the engine knows no such container.
    target: Target | None = None
    #: Allowed images: normalised name -> image id ("" when not on the engine).
    images: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: How many children the caller has now that have not exited, creates in flight
    #: included, and how many exited ones it keeps (asked for create only).
    children: int = 0
    exited: int = 0
    #: Labels of the allowed images, by image id (a child inherits them).
    image_labels: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Route:
    """A request path the proxy knows: which endpoint, naming which object."""

    endpoint: str
    #: ``"v1.41"`` or ``""`` (unversioned), kept on the forwarded path.
    version: str
    #: A container name or id (container routes), an exec id (exec routes), an image name.
    ref: str | None = None
    action: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Verdict:
    """Allowed (with the exact request to forward) or refused (with the rule's name)."""

    allowed: bool
    rule: str
    reason: str = ""
    status: int = 200
    method: str = ""
    path: str = ""
    query: str = ""
    #: The body to forward (None: none); stdio endpoints hijack the connection.
    body: bytes | None = None
    hijack: bool = False
    #: Where a child may run (create only): ``(op, hostname)`` pairs, op ``==`` or
    #: ``!=``, from classic Swarm's ``constraint:node==HOSTNAME`` entries of its Env.
    placement: tuple[tuple[str, str], ...] = ()

    @property
    def message(self) -> str:
        return f"swarmless proxy refused this request: {self.reason} (rule {self.rule})"

    def url(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")


def refuse(rule: str, reason: str, status: int = 403) -> Verdict:
    return Verdict(allowed=False, rule=rule, reason=reason, status=status)


# -- JSON -----------------------------------------------------------------------------


class Refused(Exception):
    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.rule, self.reason = rule, reason


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seen: set[str] = set()
    for key, value in pairs:
        if not key.isascii():
            raise Refused("json", f"non-ASCII key {key!r}: the engine may fold it to a field")
        if key.lower() in seen:
            raise Refused("duplicate-key", f"key {key!r} appears twice (keys match any case)")
        seen.add(key.lower())
        out[key] = value
    return out


def parse_json(body: bytes, what: str) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body, object_pairs_hook=_pairs)
    except Refused:
        raise
    except (ValueError, RecursionError) as e:
        raise Refused("json", f"the {what} body is not valid JSON: {e}") from None


def to_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode()


def is_zero(value: Any) -> bool:
    """Go's zero value (what the engine reads when the field is absent).

    An object counts as a map: any key makes it non-zero (the struct-valued fields are
    checked field by field).
    """
    if value is None or value is False or value == "" or value == 0:
        return True
    if isinstance(value, dict | list):
        return not value
    return False


def fields_of(obj: Any, fields: tuple[str, ...], where: str) -> dict[str, Any]:
    """``obj`` with its keys mapped to the canonical field names, Go-style (any case).

    Unknown fields are dropped when zero-valued (what the engine would read anyway) and
    refused otherwise.
    """
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise Refused("json", f"{where} must be a JSON object")
    canonical = {f.lower(): f for f in fields}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = canonical.get(key.lower())
        if name is None:
            if is_zero(value):
                continue
            raise Refused("unknown-field", f"{where}.{key} is not a field the proxy knows")
        out[name] = value
    return out


def integer(value: Any, where: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise Refused("json", f"{where} must be an integer, got {value!r}")
    return value


def strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Refused("json", f"{where} must be a list of strings")
    return value


class NotFound(Refused):
    """A container or exec instance the caller may not see: 404, as if it did not exist."""


class BadValue(Refused):
    """A value the proxy cannot read the way the caller meant it: 400."""


# -- images -----------------------------------------------------------------------------

_HEX64 = re.compile(r"^(sha256:)?[0-9a-f]{64}$")


def normalize_image(ref: str) -> str:
    """A full image reference: ``busybox`` -> ``docker.io/library/busybox:latest``.

    Image ids come back as ``sha256:<64 hex>``; anything that is not a plain reference
    comes back unchanged (and matches no allowlist entry).
    """
    ref = ref.strip()
    if _HEX64.match(ref):
        return ref if ref.startswith("sha256:") else f"sha256:{ref}"
    name, at, digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    first, sep, _ = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"):
        name = f"docker.io/{name}" if sep else f"docker.io/library/{name}"
    if at:
        return f"{name}@{digest}"
    return f"{name}:{tag or 'latest'}"


def allowed_image(ref: Any, images: Mapping[str, str]) -> str:
    """The reference to forward for an allowed image (its id when on the engine)."""
    if not isinstance(ref, str) or not ref.strip():
        raise Refused("image", "no image given")
    key = normalize_image(ref)
    if key in images:
        return images[key] or ref
    if key.startswith("sha256:") and key in images.values():
        return key
    # The allowlist is not listed: it names other functions' images.
    raise Refused(
        "image", f"image {ref!r} is not on this gateway's allowlist for children (proxy_images)"
    )


# -- query and verdicts --------------------------------------------------------------


def query_params(query: str, *, allowed: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """The query's parameters, each at most once (the engine reads the first of repeats)."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise Refused("query", "the query string does not decode") from None
    names = [k for k, _ in pairs]
    if len(set(names)) != len(names):
        raise Refused("query", "a query parameter appears twice")
    if allowed is not None:
        for name in names:
            if name not in allowed:
                raise Refused("query", f"query parameter {name!r} is not allowed here")
    return pairs


def allow(
    req: ProxyRequest,
    route: Route,
    path: str,
    query: list[tuple[str, str]],
    body: bytes | None = None,
    *,
    hijack: bool = False,
    placement: tuple[tuple[str, str], ...] = (),
) -> Verdict:
    prefix = f"/{route.version}" if route.version else ""
    return Verdict(
        allowed=True,
        rule=route.endpoint,
        method=req.method,
        path=f"{prefix}/{path}",
        query=urlencode(query),
        body=body,
        hijack=hijack,
        placement=placement,
    )
