"""The gateway's edge: what of a client's request reaches a function, and where callbacks go.

One filter, :func:`filter_headers`, stands between every request and every mode: the sync
route (warm, cgi and oneshot functions, and calls from one function to another) and the
async intake, which stores what the filter let through and replays it later. The CGI
environment and the WSGI environ are built from its output alone. What it does:

1. **The gateway's credentials never reach a function.** An ``Authorization`` header is
   dropped when it carries the admin token or a token the gateway issued (a function
   container's caller token, a warm worker's token), in any scheme: the credentials of
   ``Bearer``, the user and the password of ``Basic``, any word of another scheme. Any
   header that contains the admin token anywhere is dropped too. ``X-Swarmless-*``
   request headers are the gateway's own business (``X-Swarmless-Parent``,
   ``X-Swarmless-Forwarded-By``): dropped, except ``X-Swarmless-Args``, a one-shot call's
   arguments.

   **A user's own ``Authorization`` is kept.** A public function that checks its callers
   itself (a JWT, its own Basic credentials) gets the header unchanged: it is the user's,
   not the gateway's. (A CGI script still does not see it: RFC 3875 4.1.18.)
2. **Hop-by-hop headers are dropped**: ``Connection`` and every header it names,
   ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``, ``Transfer-Encoding``,
   ``Upgrade``, ``Proxy-Authorization``, ``Proxy-Authenticate``; and ``Proxy``, which a CGI
   environment would turn into ``HTTP_PROXY``, the proxy of the script's own HTTP clients
   ("httpoxy").
3. **Ambiguous names are refused, never merged.** CGI and WSGI spell ``X-Foo`` and
   ``X_Foo`` both ``HTTP_X_FOO``, so a client could pose as a header the gateway sets
   (``X_Forwarded_For``). The gateway refuses (400) **every header name with an
   underscore**, not only pairs that collide: a lone ``X_Forwarded_For`` would collide with
   the gateway's own ``X-Forwarded-For``, and no standard header has one (nginx and Apache
   drop them silently; a clear 400 says why). Also refused: a name that is not an RFC 9110
   token, a value with a control character, two ``Host`` headers.
4. **``X-Forwarded-For``, ``-Proto`` and ``-Host`` are the gateway's.** The client's are
   believed only when the connection comes from a proxy in ``trusted_proxies`` (CIDRs,
   default none). ``X-Forwarded-For`` starts at the client as far as the gateway can vouch
   for it (the rightmost address that is not a trusted proxy) and goes on with the trusted
   proxies after it, so ``X-Forwarded-For.split(",")[0]``, what most frameworks read, is
   the real client. The other forwarding headers (``Forwarded``, ``X-Real-IP``,
   ``X-Forwarded-Prefix``, ...) pass only from a trusted proxy.

The other half of the edge, where callbacks (``X-Callback-Url``) may go, is
:mod:`swarmless.gateway.callbacks`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import functools
import ipaddress
import re
from collections.abc import Callable, Collection, Iterable, Sequence

from swarmless.exceptions import InvalidArgument

__all__ = [
    "HOP_BY_HOP",
    "IPAddress",
    "IPNetwork",
    "Passed",
    "filter_headers",
    "ip",
    "networks",
    "within",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: RFC 9110 ``tchar``, less ``_`` (see the module docstring, point 3).
_TCHAR = frozenset("!#$%&'*+-.^`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
#: Control characters a field value may not hold (HTAB is allowed).
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: Headers of one hop, never of the function's request; ``proxy`` is httpoxy.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy",
    }
)
#: Headers ``Connection`` may not remove: the function needs them.
_PROTECTED = frozenset({"host", "content-length", "content-type"})
#: The forwarding headers the gateway sets itself.
FORWARDED_SET = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host")
#: Other forwarding headers: from a trusted proxy only.
_FORWARDING = frozenset(
    {
        "forwarded",
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
    }
)
#: The one ``X-Swarmless-*`` request header a function gets: a one-shot call's arguments.
_OURS_KEPT = frozenset({"x-swarmless-args"})
#: A host, with an optional port, as ``Host`` and ``X-Forwarded-Host`` carry it.
_HOST_PORT = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
#: Fragments of a credential (token68 characters and a bit more).
_WORD = re.compile(r"[A-Za-z0-9._~+/=-]+")


def ip(text: str) -> IPAddress | None:
    """``text`` as an address (``[v6]`` brackets allowed; IPv4-mapped IPv6 as IPv4), or None."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@functools.lru_cache(maxsize=4096)
def _ip_cached(text: str) -> IPAddress | None:
    """:func:`ip`, remembered: a client's ``X-Forwarded-For`` entries repeat."""
    return ip(text)


@functools.lru_cache(maxsize=4096)
def _peer(host: str, nets: tuple[IPNetwork, ...]) -> tuple[IPAddress | None, str, bool]:
    """A connection's peer ``host``: its address, that address as text, and whether it is
    one of the trusted proxies ``nets``. Remembered per peer and trusted-proxies setting:
    the same keep-alive clients call again and again, and parsing an address every call
    was a measurable share of the gateway's work (issue 16)."""
    addr = ip(host)
    if addr is None:
        return None, "", False
    return addr, str(addr), within(addr, nets)


@functools.lru_cache(maxsize=4096)
def _checked_name(name: str) -> str:
    """The lower case of header ``name``, checked by :func:`_check_name` (which raises for an
    invalid one: never remembered). Remembered for valid names, bounded, so a client sending
    ever new names costs memory only up to the bound."""
    _check_name(name)
    return name.lower()


def networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """The CIDR entries among ``entries`` (an address is a /32 or a /128)."""
    found: list[IPNetwork] = []
    for entry in entries:
        with contextlib.suppress(ValueError):
            found.append(ipaddress.ip_network(entry.strip(), strict=False))
    return tuple(found)


def within(addr: IPAddress, nets: Iterable[IPNetwork]) -> bool:
    """Whether ``addr`` is in one of ``nets``."""
    return any(addr.version == n.version and addr in n for n in nets)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Passed:
    """What the edge lets through to a function."""

    #: The request's headers (lower-case names), the gateway's forwarding headers last.
    headers: list[tuple[str, str]]
    #: The client's address, as far as the gateway can vouch for it ('' when unknown).
    client: str
    #: The client's port: the peer's when the client is the peer, else 0.
    client_port: int
    #: ``http`` or ``https``, as the client used it.
    scheme: str


def filter_headers(
    raw: Iterable[tuple[bytes, bytes]],
    *,
    peer: Sequence[object] | None,
    scheme: str = "http",
    server: Sequence[object] | None = None,
    trusted_proxies: Collection[IPNetwork] = (),
    admin_token: str | None = None,
    is_credential: Callable[[str], bool] | None = None,
    consumed: Collection[str] = (),
) -> Passed:
    """The headers of a request (an ASGI scope's ``headers``) as a function may see them.

    ``peer`` is the connection's ``(host, port)`` (the scope's ``client``), ``server`` the
    gateway's (for ``X-Forwarded-Host`` when the client sent no ``Host``).
    ``is_credential`` says whether a string is a token of the gateway's (the admin token
    is checked in any case); ``consumed`` names headers the gateway acted on (the async
    intake's ``X-Callback-Url``, ``Idempotency-Key``). Raises :class:`InvalidArgument`
    (400) for a request whose headers cannot be passed on unambiguously.
    """
    secret = admin_token or ""
    pairs: list[tuple[str, str]] = []
    hosts = 0
    named: set[str] = set()
    for k, v in raw:
        raw_name = k.decode("latin-1")
        value = v.decode("latin-1").strip(" \t")
        name = _checked_name(raw_name)
        if _CTL.search(value):
            raise InvalidArgument(
                f"header {raw_name[:80]!r} has a control character in its value; refused"
            )
        if name == "host":
            hosts += 1
            if hosts > 1:
                raise InvalidArgument("the request has two Host headers; refused")
        elif name == "connection":
            named.update(t.strip().lower() for t in value.split(","))
        pairs.append((name, value))
    named -= _PROTECTED

    nets = trusted_proxies if isinstance(trusted_proxies, tuple) else tuple(trusted_proxies)
    peer_ip, peer_text, trusted = _peer(str(peer[0]), nets) if peer else (None, "", False)
    headers: list[tuple[str, str]] = []
    sent: dict[str, list[str]] = {n: [] for n in FORWARDED_SET}
    host_header = ""
    for name, value in pairs:
        if name in HOP_BY_HOP or name in named or name in consumed:
            continue
        if secret and (secret in value or secret in name):
            continue  # the admin token, wherever a client put it
        if name.startswith("x-swarmless-") and name not in _OURS_KEPT:
            continue
        if name == "authorization" and _carries_credential(value, secret, is_credential):
            continue
        if name in sent:
            sent[name].append(value)
            continue
        if (name.startswith("x-forwarded-") or name in _FORWARDING) and not trusted:
            continue
        if name == "host":
            host_header = value
        headers.append((name, value))

    # X-Forwarded-For: the chain the trusted proxies vouch for, and the peer.
    vouched: list[str] = []
    if peer_ip is not None and not trusted:  # the common case: the peer is the client
        vouched = [peer_text]
    elif peer_ip is not None:
        chain = [_ip_cached(e) for vs in sent["x-forwarded-for"] for e in vs.split(",")]
        chain.append(peer_ip)
        i = len(chain) - 1
        while i > 0:  # walk left past trusted proxies, onto what each of them vouches for
            here, before = chain[i], chain[i - 1]
            if here is None or before is None or not within(here, nets):
                break
            i -= 1
        vouched = [str(a) for a in chain[i:] if a is not None]
    if vouched:
        headers.append(("x-forwarded-for", ", ".join(vouched)))
    proto = scheme if scheme in ("http", "https") else "http"
    if trusted and sent["x-forwarded-proto"]:
        first = sent["x-forwarded-proto"][0].split(",")[0].strip().lower()
        if first in ("http", "https"):
            proto = first
    headers.append(("x-forwarded-proto", proto))
    forwarded_host = host_header if _HOST_PORT.fullmatch(host_header) else ""
    if trusted and sent["x-forwarded-host"]:
        first = sent["x-forwarded-host"][0].split(",")[0].strip()
        if _HOST_PORT.fullmatch(first):
            forwarded_host = first
    if not forwarded_host and server:
        forwarded_host = f"{server[0]}:{server[1]}" if server[1] else str(server[0])
        if not _HOST_PORT.fullmatch(forwarded_host):
            forwarded_host = ""
    if forwarded_host:
        headers.append(("x-forwarded-host", forwarded_host))
    client = vouched[0] if vouched else (str(peer[0]) if peer else "")
    port = 0
    if peer and len(vouched) == 1 and peer_ip is not None:
        given = peer[1]
        if type(given) is int:
            port = given
        else:
            with contextlib.suppress(TypeError, ValueError):
                port = int(str(given))
    return Passed(headers=headers, client=client, client_port=port, scheme=proto)


def _check_name(name: str) -> None:
    shown = name if len(name) <= 80 else name[:77] + "..."
    if not name:
        raise InvalidArgument("a request header has an empty name; refused")
    if "_" in name:
        raise InvalidArgument(
            f"header name {shown!r} has an underscore: refused, because a function's "
            "CGI or WSGI environment could not tell it from the same name with '-'; "
            f"send {shown.replace('_', '-')!r}"
        )
    if not _TCHAR.issuperset(name):
        raise InvalidArgument(f"header name {shown!r} is not a valid HTTP field name; refused")


def _carries_credential(
    value: str, secret: str, is_credential: Callable[[str], bool] | None
) -> bool:
    """Whether an ``Authorization`` value carries one of the gateway's tokens."""
    candidates = {value.strip(), *_WORD.findall(value)}
    scheme, _, rest = re.sub(r"\s+", " ", value.strip()).partition(" ")
    candidates.add(rest)
    if scheme.lower() == "basic" and rest:
        try:
            decoded = base64.b64decode(rest + "=" * (-len(rest) % 4), validate=False)
        except (binascii.Error, ValueError):
            decoded = b""
        text = decoded.decode("latin-1")
        if secret and secret in text:
            return True
        user, _, password = text.partition(":")
        candidates.update((text, user, password))
    for c in candidates:
        if not c:
            continue
        if secret and c == secret:
            return True
        if is_credential is not None and is_credential(c):
            return True
    return False
