"""What every page of the dashboard shares: the gateway, the sessions, the templates, the
records behind the numbers, the container history, and the guard (session, CSRF).

Every page and action but the login form and the static files goes through
:meth:`Site.guard`: no valid session, a GET is sent to the login form and anything else
refused; a POST is read as a form and refused (403) unless it carries the session's CSRF
token; a :class:`~swarmless.exceptions.SwarmlessError` becomes an error page with its
status. Every answer carries a strict Content-Security-Policy (scripts and styles from the
package's own static files only; nothing from a CDN).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from starlette.requests import Request as HTTPRequest
from starlette.responses import HTMLResponse, RedirectResponse, Response

from swarmless import __version__
from swarmless.exceptions import InvalidArgument, SwarmlessError
from swarmless.gateway.ui import views
from swarmless.gateway.ui.auth import Forbidden, Session, Sessions, read_form
from swarmless.gateway.ui.stats import ContainerHistory
from swarmless.records import InvocationRecord, now_ms

if TYPE_CHECKING:
    from swarmless.gateway.ui.context import DashboardGateway

__all__ = ["Ctx", "Site", "fmt_ms", "fmt_pct", "fmt_when", "secure"]

log = logging.getLogger("swarmless.gateway")
HERE = Path(__file__).parent
#: How often the container counts are sampled for the charts, seconds.
SAMPLE_EVERY = 10.0
#: How long the records behind the numbers are reused, seconds.
RECORDS_TTL = 5.0
#: What a number without a value shows (an en dash).
NONE = "\u2013"
HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


@dataclasses.dataclass
class Ctx:
    """One guarded request: the request, its session, and its form (POST)."""

    request: HTTPRequest
    session: Session
    form: dict[str, str]


Handler = Callable[["Site", Ctx], Awaitable[Response]]
Endpoint = Callable[[HTTPRequest], Awaitable[Response]]


class Site:
    """What the dashboard's pages of one gateway share (see the module docstring)."""

    def __init__(self, gw: DashboardGateway) -> None:
        self.gw = gw
        self.sessions = Sessions()
        self.history = ContainerHistory()
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(ms=fmt_ms, pct=fmt_pct, when=fmt_when)
        self._sampler: asyncio.Task[None] | None = None
        self._records: tuple[float, list[InvocationRecord]] | None = None
        self._records_lock = asyncio.Lock()

    def open(self, handler: Callable[[Site, HTTPRequest], Awaitable[Response]]) -> Endpoint:
        """A route without a session (the login form): errors become pages too."""

        async def endpoint(request: HTTPRequest) -> Response:
            try:
                response = await handler(self, request)
            except SwarmlessError as e:
                response = self.error(request, None, e.status_code, e.message)
            return secure(response)

        return endpoint

    def guard(self, handler: Handler) -> Endpoint:
        """A page: a session is needed (else: the login form)."""
        return self._guarded(handler, post=False)

    def guard_post(self, handler: Handler) -> Endpoint:
        """An action: a session and its CSRF token are needed (else: 403, nothing done)."""
        return self._guarded(handler, post=True)

    def _guarded(self, handler: Handler, *, post: bool) -> Endpoint:
        async def endpoint(request: HTTPRequest) -> Response:
            session = self.sessions.get(request)
            try:
                if session is None:
                    if post:
                        raise Forbidden("you are not logged in (or the session ended): log in")
                    return self.to_login(request)
                form: dict[str, str] = {}
                if post:
                    header = request.headers.get("x-csrf-token")
                    try:
                        form = await read_form(request)
                    except InvalidArgument:
                        if header is None:  # not a form: no token either
                            self.sessions.check_csrf(session, None)
                        raise
                    self.sessions.check_csrf(session, form.get("csrf") or header)
                if self.gw.dispatcher is None or self.gw.store is None:
                    raise SwarmlessError("the gateway is starting: reload in a moment")
                self.start_sampler()
                response = await handler(self, Ctx(request, session, form))
            except Forbidden as e:
                response = self.error(request, session, 403, str(e))
            except SwarmlessError as e:
                response = self.error(request, session, e.status_code, e.message)
            except Exception as e:  # a bug of ours: still a page that says what happened
                log.exception("unexpected error on %s %s", request.method, request.url.path)
                response = self.error(request, session, 500, f"{type(e).__name__}: {e}")
            return secure(response)

        return endpoint

    def to_login(self, request: HTTPRequest) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        query = urllib.parse.urlencode({"next": target})
        return secure(RedirectResponse(f"/ui/login?{query}", status_code=303))

    # -- rendering -------------------------------------------------------------------------

    def render(
        self,
        request: HTTPRequest,
        session: Session | None,
        template: str,
        *,
        status: int = 200,
        **context: Any,
    ) -> Response:
        replicas = self.gw.replicas
        page = self.env.get_template(template).render(
            csrf=session.csrf if session else "",
            logged_in=session is not None,
            path=request.url.path,
            instance=self.gw.settings.instance,
            version=__version__,
            role=replicas.role if replicas is not None else "starting",
            **context,
        )
        return secure(HTMLResponse(page, status_code=status))

    def error(
        self, request: HTTPRequest, session: Session | None, status: int, message: str
    ) -> Response:
        return self.render(
            request, session, "error.html", status=status, code=status, message=message
        )

    def macros(self) -> Any:
        """The template macros (rows rendered for live updates)."""
        return self.env.get_template("_macros.html").make_module({"csrf": ""})

    # -- what the pages read ---------------------------------------------------------------

    async def records(self) -> list[InvocationRecord]:
        """The newest records (the last hour's numbers), reused for a moment."""
        async with self._records_lock:
            cached = self._records
            if cached is not None and time.monotonic() - cached[0] < RECORDS_TTL:
                return cached[1]
            found = await views.last_hour(self.gw)
            self._records = (time.monotonic(), found)
            return found

    def start_sampler(self) -> None:
        """Sample container counts for the charts, from the first visit on."""
        if self._sampler is None or self._sampler.done():
            self._sampler = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            d = self.gw.dispatcher
            if d is None or d.closing:
                return
            try:
                self.history.add(now_ms(), self.gw.snapshot())
            except Exception:  # a bad sample must not end the charts
                log.exception("sampling containers for the dashboard failed")
            await asyncio.sleep(SAMPLE_EVERY)


def secure(response: Response) -> Response:
    """The dashboard's security headers on ``response``."""
    for k, v in HEADERS.items():
        response.headers.setdefault(k, v)
    return response


def fmt_ms(value: float | None) -> str:
    """``1234.5`` -> ``1.23 s``; ``12.3`` -> ``12 ms``; None -> a dash."""
    if value is None:
        return NONE
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    if value >= 10:
        return f"{value:.0f} ms"
    return f"{value:.1f} ms"


def fmt_pct(value: float | None) -> str:
    return NONE if value is None else f"{100 * value:.0f}%"


def fmt_when(value: int | float | datetime.datetime | None) -> str:
    """Epoch ms (or a datetime) as ``2025-01-31 12:34:56Z``."""
    if value is None:
        return NONE
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(value / 1000))
