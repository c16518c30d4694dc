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
import functools
import ipaddress
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import NamedTuple

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
#: No forwarding header sent (or none believed): what :func:`filter_headers` reads then.
_NOTHING_SENT: dict[str, list[str]] = {n: [] for n in FORWARDED_SET}
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


#: What a header name is to :func:`filter_headers` (see :func:`_name`).
_K_PLAIN, _K_DROP, _K_HOST, _K_CONNECTION = 0, 1, 2, 3
_K_AUTHORIZATION, _K_FORWARD_SET, _K_FORWARDING = 4, 5, 6


@functools.lru_cache(maxsize=4096)
def _name(raw: bytes) -> tuple[str, int]:
    """A header's name as it came (``raw``): its lower case, checked by :func:`_check_name`
    (which raises for an invalid one: never remembered), and what it is to
    :func:`filter_headers`: dropped whoever sends it (hop-by-hop, ``Proxy``, the gateway's
    own ``X-Swarmless-*``), ``Host``, ``Connection``, ``Authorization``, a forwarding header
    the gateway sets itself, another forwarding header (trusted proxies only), or plain.
    Remembered for valid names, bounded, so a client sending ever new names costs memory
    only up to the bound."""
    name = raw.decode("latin-1")
    _check_name(name)
    lower = name.lower()
    if lower == "connection":  # hop-by-hop too: dropped, once what it names is read
        return lower, _K_CONNECTION
    if lower in HOP_BY_HOP or (lower.startswith("x-swarmless-") and lower not in _OURS_KEPT):
        return lower, _K_DROP
    if lower == "host":
        return lower, _K_HOST
    if lower == "authorization":
        return lower, _K_AUTHORIZATION
    if lower in FORWARDED_SET:
        return lower, _K_FORWARD_SET
    if lower.startswith("x-forwarded-") or lower in _FORWARDING:
        return lower, _K_FORWARDING
    return lower, _K_PLAIN


@functools.lru_cache(maxsize=4096)
def _host_port(value: str) -> bool:
    """Whether ``value`` is a host with an optional port (:data:`_HOST_PORT`), remembered."""
    return _HOST_PORT.fullmatch(value) is not None


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


class Passed(NamedTuple):
    """What the edge lets through to a function (a named tuple: immutable, and cheaper to
    make, once per call, than a frozen dataclass)."""

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
    nets = trusted_proxies if isinstance(trusted_proxies, tuple) else tuple(trusted_proxies)
    peer_ip, peer_text, trusted = _peer(str(peer[0]), nets) if peer else (None, "", False)
    # One pass: every header checked (the first bad one refused, in order), and dropped or
    # kept; what a Connection header names is dropped after, if there was one.
    headers: list[tuple[str, str]] = []
    sent: dict[str, list[str]] | None = None  # the client's X-Forwarded-*: a trusted peer's
    named: set[str] | None = None
    host_header = ""
    hosts = 0
    for k, v in raw:
        name, kind = _name(k)
        value = v.decode("latin-1").strip(" \t")
        if not (value.isascii() and value.isprintable()) and _CTL.search(value):
            raise InvalidArgument(
                f"header {k.decode('latin-1')[:80]!r} has a control character in its value; refused"
            )
        if kind == _K_HOST:
            hosts += 1
            if hosts > 1:
                raise InvalidArgument("the request has two Host headers; refused")
        elif kind == _K_CONNECTION:
            if named is None:
                named = set()
            named.update(t.strip().lower() for t in value.split(","))
            continue
        if kind == _K_DROP or name in consumed:
            continue
        if secret and (secret in value or secret in name):
            continue  # the admin token, wherever a client put it
        if kind == _K_AUTHORIZATION:
            if _carries_credential(value, secret, is_credential):
                continue
        elif kind == _K_FORWARD_SET:
            if trusted:
                if sent is None:
                    sent = {n: [] for n in FORWARDED_SET}
                sent[name].append(value)
            continue
        elif kind == _K_FORWARDING:
            if not trusted:
                continue
        elif kind == _K_HOST:
            host_header = value
        headers.append((name, value))
    if named is not None:
        named -= _PROTECTED
        if named:
            headers = [h for h in headers if h[0] not in named]
            if sent is not None:
                # A named forwarding header is not believed, even from a trusted proxy.
                sent = {n: ([] if n in named else vs) for n, vs in sent.items()}
    if sent is None:
        sent = _NOTHING_SENT

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
    forwarded_host = host_header if host_header and _host_port(host_header) else ""
    if trusted and sent["x-forwarded-host"]:
        first = sent["x-forwarded-host"][0].split(",")[0].strip()
        if _host_port(first):
            forwarded_host = first
    if not forwarded_host and server:
        forwarded_host = f"{server[0]}:{server[1]}" if server[1] else str(server[0])
        if not _host_port(forwarded_host):
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
