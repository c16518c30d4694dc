"""Where a callback may go: the other half of the gateway's edge.

``X-Callback-Url`` makes the gateway send a request where a caller says: without a check,
to the gateway's own admin API on loopback, the Docker engine, the cloud metadata service
(169.254.169.254) or a function's container (server-side request forgery). A
:class:`CallbackPolicy` checks a callback twice:

- at intake (``POST /async-function/...``, 400 with the reason): the URL, its scheme, an
  address literal in any form a resolver accepts (``127.1``, ``2130706433``, ``[::ffff:
  127.0.0.1]``) and the names that are loopback by definition (``localhost``); no DNS
  lookup there, the answer could change by the time the call ends;
- at delivery (:mod:`swarmless.dispatch.async_runner`): every address the host resolves
  to, then the request goes to the checked address itself (the URL's host stays in
  ``Host`` and in TLS's SNI and certificate check), so a name cannot resolve to one address
  for the check and another for the connection (DNS rebinding). Redirects: see the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import re
import socket
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

import httpx

from swarmless.backends.base import Backend, EngineBackend
from swarmless.config import Settings
from swarmless.engine import endpoint
from swarmless.exceptions import InvalidArgument
from swarmless.gateway.edge import IPAddress, IPNetwork, ip, networks, within

__all__ = ["CallbackPolicy", "blocked_networks", "local_addresses"]

log = logging.getLogger("swarmless.gateway")

#: Cloud metadata services outside link-local (Alibaba, Oracle, AWS over IPv6).
_METADATA = networks(["100.100.100.200/32", "192.0.0.192/32", "fd00:ec2::254/128"])
#: ``0.0.0.0/8`` is "this network": Linux connects some of it to the host itself.
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Longest callback URL accepted.
MAX_URL = 2048


def _embedded_v4(addr: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches too (mapped, 6to4, Teredo, NAT64)."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return []
    found = [a for a in (addr.ipv4_mapped, addr.sixtofour) if a is not None]
    if addr.teredo is not None:
        found.extend(addr.teredo)
    if addr in _NAT64:
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return found


class CallbackPolicy:
    """Where a callback may go: ``callback_allow``, or the default refusals.

    Default (``callback_allow`` empty): refused are loopback, link-local (the cloud metadata
    address 169.254.169.254 among them), unspecified and ``0.0.0.0/8``, multicast,
    reserved and broadcast addresses, a few metadata addresses outside link-local, the
    ``blocked`` networks (the function network's subnet, the Docker engine's addresses,
    the gateway's configured addresses) and every address of this machine
    (``local``, read again every ``refresh`` seconds); an IPv6 address that reaches an IPv4
    one (mapped, 6to4, Teredo, NAT64) is judged as that one too. Everything else is allowed.

    With ``callback_allow``: an address in one of its networks is allowed; a host name in
    it is allowed when its addresses pass the default refusals (naming a host does not open
    loopback or the metadata service: list their addresses for that); nothing else is.
    """

    def __init__(
        self,
        *,
        allow: Iterable[str] = (),
        blocked: Iterable[tuple[IPNetwork, str]] = (),
        local: Callable[[], Collection[IPAddress]] | None = None,
        refresh: float = 10.0,
    ) -> None:
        entries = [e.strip() for e in allow if e.strip()]
        self.allow_networks = networks(entries)
        self.allow_names = frozenset(_name(e) for e in entries if ip(e) is None and "/" not in e)
        self.restricted = bool(entries)
        self.blocked = tuple(blocked)
        self._local = local if local is not None else local_addresses
        self._refresh = refresh
        self._local_cache: tuple[float, frozenset[IPAddress]] = (-1e9, frozenset())

    def local(self) -> frozenset[IPAddress]:
        """This machine's addresses (cached ``refresh`` seconds)."""
        at, found = self._local_cache
        if time.monotonic() - at > self._refresh:
            found = frozenset(self._local())
            self._local_cache = (time.monotonic(), found)
        return found

    def check_url(self, url: str) -> httpx.URL:
        """The parsed URL, if a callback may be sent there as far as the URL tells;
        else :class:`InvalidArgument` with the reason. No DNS lookup (see :meth:`resolve`)."""
        if len(url) > MAX_URL:
            raise InvalidArgument(f"X-Callback-Url is longer than {MAX_URL} characters")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError) as e:
            raise InvalidArgument(f"X-Callback-Url is not a valid URL ({e}): {url!r}") from None
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            raise InvalidArgument(f"X-Callback-Url must be an http(s) URL, got {url!r}")
        host = parsed.raw_host.decode("ascii", "replace")
        literal = _literal(host)
        if literal is not None:
            self.check_address(literal, named=False)
            return parsed
        if not re.fullmatch(r"[A-Za-z0-9.-]+", host) or ".." in host or host.startswith("."):
            raise InvalidArgument(f"X-Callback-Url has an invalid host {host!r}")
        name = _name(host)
        if self.restricted:
            if name not in self.allow_names and not self.allow_networks:
                raise InvalidArgument(
                    f"callback to {name!r} refused: the host is not in callback_allow"
                )
        elif name == "localhost" or name.endswith(".localhost"):
            raise InvalidArgument(f"callback to {name!r} refused: a loopback host name")
        return parsed

    def check_address(self, addr: IPAddress, *, named: bool) -> None:
        """Refuse (:class:`InvalidArgument`) a callback to ``addr``; ``named``: its host is
        a name in ``callback_allow``."""
        addr = ip(str(addr)) or addr
        if self.restricted:
            if within(addr, self.allow_networks):
                return
            if not named:
                raise InvalidArgument(f"callback to {addr} refused: not in callback_allow")
        why = self._refused(addr)
        for v4 in _embedded_v4(addr):
            why = why or self._refused(v4)
        if why:
            raise InvalidArgument(f"callback to {addr} refused: {why}")

    def _refused(self, addr: IPAddress) -> str:
        if addr.is_loopback:
            return "a loopback address"
        if addr.is_link_local:
            return "a link-local address (cloud metadata services live there)"
        if addr.is_unspecified or (addr.version == 4 and addr in _THIS_NETWORK):
            return "an unspecified address"
        if addr.is_multicast:
            return "a multicast address"
        if addr.is_reserved:  # 240.0.0.0/4 holds the broadcast address
            return "a reserved address"
        if within(addr, _METADATA):
            return "a cloud metadata address"
        for net, what in self.blocked:
            if addr.version == net.version and addr in net:
                return what
        if addr in self.local():
            return "an address of the gateway's own machine"
        return ""

    async def resolve(self, url: httpx.URL, *, timeout: float = 10.0) -> list[IPAddress]:
        """The addresses a callback to ``url`` may connect to: every one its host resolves
        to, each checked (one refused refuses the callback: :class:`InvalidArgument`).
        ``OSError`` when the name does not resolve."""
        host = url.raw_host.decode("ascii", "replace")
        literal = _literal(host)
        if literal is not None:
            self.check_address(literal, named=False)
            return [literal]
        loop = asyncio.get_running_loop()
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
            )
        except TimeoutError:
            raise OSError(f"resolving {host!r} took over {timeout:g}s") from None
        found: list[IPAddress] = []
        for *_, sockaddr in infos:
            addr = ip(str(sockaddr[0]).split("%", 1)[0])
            if addr is not None and addr not in found:
                found.append(addr)
        if not found:
            raise OSError(f"{host!r} resolves to no address")
        named = _name(host) in self.allow_names
        for addr in found:
            try:
                self.check_address(addr, named=named)
            except InvalidArgument as e:
                raise InvalidArgument(f"{host} resolves to {addr}: {e.message}") from None
        return found


def _name(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _literal(host: str) -> IPAddress | None:
    """``host`` as an address, legacy IPv4 forms (``127.1``, ``0x7f.1``, ``2130706433``,
    which a resolver would accept) included."""
    found = ip(host)
    if found is not None:
        return found
    if re.fullmatch(r"[0-9A-Fa-fXx.]+", host) and re.match(r"[0-9]", host):
        with contextlib.suppress(OSError):
            return ipaddress.IPv4Address(socket.inet_aton(host))
    return None


def local_addresses() -> set[IPAddress]:
    """This machine's addresses (Linux: every interface's; elsewhere: its name's)."""
    found: set[IPAddress] = set()
    with contextlib.suppress(OSError):
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        for prev, line in itertools.pairwise(lines):
            if line.strip().endswith("host LOCAL"):
                addr = ip(prev.strip().lstrip("|-+ ").strip())
                if addr is not None:
                    found.add(addr)
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            hexa = line.split(" ", 1)[0]
            if len(hexa) == 32:
                with contextlib.suppress(ValueError):
                    found.add(ipaddress.IPv6Address(int(hexa, 16)))
    with contextlib.suppress(OSError):
        for *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None):
            addr = ip(str(sockaddr[0]).split("%", 1)[0])
            if addr is not None:
                found.add(addr)
    return found


#: Refused when the function network's subnet cannot be read (fail closed).
_PRIVATE = networks(["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"])


async def blocked_networks(settings: Settings, backend: Backend) -> list[tuple[IPNetwork, str]]:
    """The networks a default :class:`CallbackPolicy` refuses besides the fixed ones: the
    function network's subnet, the Docker engine's addresses and the gateway's own
    configured ones (its listening host, the address containers reach it at, its
    advertised and peer URLs). Read once, at start (the backend started)."""
    blocked: list[tuple[IPNetwork, str]] = []
    subnets: list[IPNetwork] = []
    if isinstance(backend, EngineBackend):
        try:
            subnets = await asyncio.to_thread(_subnets, backend, settings.network)
        except Exception as e:  # any engine failure: fail closed below
            log.warning("could not read the subnet of network %r: %s", settings.network, e)
    if subnets:
        what = f"an address of the function network {settings.network!r}"
        blocked.extend((net, what) for net in subnets)
    else:
        what = "a private address (the function network's subnet is unknown)"
        blocked.extend((net, what) for net in _PRIVATE)
    engine_hosts: list[str] = []
    with contextlib.suppress(ValueError):
        engine_hosts.append(endpoint(settings.docker_host).host)
    for addr in await _resolve_all(engine_hosts):
        blocked.append((ipaddress.ip_network(addr), "the Docker engine's address"))
    own = [settings.host, backend.runtime_host()]
    for url in (settings.advertise_url, settings.peer_url):
        if url:
            own.append(urllib.parse.urlsplit(url).hostname or "")
    for addr in await _resolve_all(own):
        blocked.append((ipaddress.ip_network(addr), "one of the gateway's own addresses"))
    return blocked


def _subnets(backend: EngineBackend, network: str) -> list[IPNetwork]:
    net = backend.client.networks.get(network)
    configs = (net.attrs.get("IPAM") or {}).get("Config") or []
    return list(networks(str(c.get("Subnet") or "") for c in configs if c.get("Subnet")))


async def _resolve_all(hosts: Iterable[str]) -> list[IPAddress]:
    """The addresses of ``hosts`` (names resolved, best effort; the unspecified skipped)."""
    loop = asyncio.get_running_loop()
    found: list[IPAddress] = []
    for host in hosts:
        if not host:
            continue
        literal = ip(host)
        addrs: list[IPAddress] = []
        if literal is not None:
            addrs = [literal]
        else:
            try:
                infos = await asyncio.wait_for(loop.getaddrinfo(host, None), 5.0)
            except (OSError, TimeoutError) as e:
                log.debug("could not resolve %r: %s", host, e)
                continue
            addrs = [a for *_, s in infos if (a := ip(str(s[0]).split("%", 1)[0])) is not None]
        found.extend(a for a in addrs if not a.is_unspecified and a not in found)
    return found
