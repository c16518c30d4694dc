"""Who may use the dashboard: a login with the admin token, a session cookie, CSRF tokens.

- **Login.** The form takes the admin token and checks it as the admin API does
  (:meth:`Gateway.check_admin`). The token is never put in a page, a script or a cookie:
  a successful login creates a **session**, a random id kept in this gateway's memory
  (:class:`Sessions`, bounded, 12 hours each), and only that id goes to the browser.
- **The cookie** ``swarmless_ui`` is ``HttpOnly`` (no script reads it), ``SameSite=Strict``
  (no other site's page or link sends it), ``Path=/ui``, and ``Secure`` when the browser
  talks https to the gateway, or to a proxy in ``trusted_proxies`` that says so with
  ``X-Forwarded-Proto: https``. On plain http (a gateway on localhost) a Secure cookie would
  never come back, so it is not set there: put the dashboard behind https elsewhere.
- **CSRF.** Every POST carries a token, in the form field ``csrf`` or the header
  ``X-CSRF-Token``: the HMAC-SHA256 of the session id under a secret of this gateway
  process, compared in constant time. The login form has one too, bound to a short-lived
  pre-login cookie, so no other site can log a browser in with its own token. A POST
  without the right token is refused (403) before it does anything.
- **Logout** forgets the session on the gateway, so the cookie is worthless even if kept.
  Sessions live in the active gateway's memory: a restart or a fail-over asks for a new
  login.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import time
import urllib.parse
from collections import OrderedDict

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response

from swarmless.exceptions import InvalidArgument, PayloadTooLarge

__all__ = [
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "Forbidden",
    "Session",
    "Sessions",
    "clear_cookie",
    "read_form",
    "safe_next",
    "set_cookie",
]

SESSION_COOKIE = "swarmless_ui"
LOGIN_COOKIE = "swarmless_ui_login"
#: How long a session lasts, seconds (it is not extended by use).
SESSION_TTL = 12 * 3600.0
#: How long a login form stays valid, seconds.
LOGIN_TTL = 3600
#: Sessions kept at most; the oldest is forgotten first.
MAX_SESSIONS = 512
#: Largest form the dashboard reads (a spec, an invocation's body).
FORM_LIMIT = 1024 * 1024


class Forbidden(Exception):
    """A POST without the right CSRF token (answered 403, nothing done)."""


@dataclasses.dataclass(frozen=True)
class Session:
    """One logged-in browser."""

    id: str
    expires: float
    csrf: str


class Sessions:
    """The logged-in browsers of one gateway process, and the secret of its CSRF tokens."""

    def __init__(self, *, ttl: float = SESSION_TTL, limit: int = MAX_SESSIONS) -> None:
        self._secret = secrets.token_bytes(32)
        self._ttl = ttl
        self._limit = limit
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def _mac(self, purpose: str, value: str) -> str:
        msg = f"{purpose}\x00{value}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def create(self) -> Session:
        """A new session (the oldest one goes when there are too many)."""
        now = time.monotonic()
        for sid in [s.id for s in self._sessions.values() if s.expires <= now]:
            del self._sessions[sid]
        while len(self._sessions) >= self._limit:
            self._sessions.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        session = Session(id=sid, expires=now + self._ttl, csrf=self._mac("session", sid))
        self._sessions[sid] = session
        return session

    def get(self, request: HTTPRequest) -> Session | None:
        """The session of this request's cookie, if it is one that is still valid."""
        sid = request.cookies.get(SESSION_COOKIE)
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        if session.expires <= time.monotonic():
            del self._sessions[sid]
            return None
        return session

    def end(self, session: Session) -> None:
        """Forget ``session`` (logout)."""
        self._sessions.pop(session.id, None)

    def check_csrf(self, session: Session, sent: str | None) -> None:
        """Forbidden unless ``sent`` is this session's CSRF token."""
        if not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise Forbidden("the form's CSRF token is missing or wrong: reload the page and retry")

    # -- the login form -------------------------------------------------------------------

    def login_nonce(self) -> str:
        """A new pre-login nonce (its cookie) with its expiry: ``<expiry>.<random>``."""
        return f"{int(time.time()) + LOGIN_TTL}.{secrets.token_urlsafe(16)}"

    def login_csrf(self, nonce: str) -> str:
        """The CSRF token of the login form bound to ``nonce``."""
        return self._mac("login", nonce)

    def check_login_csrf(self, nonce: str | None, sent: str | None) -> None:
        """Forbidden unless ``sent`` belongs to the pre-login cookie ``nonce``, unexpired."""
        if not nonce or not sent:
            raise Forbidden("the login form expired or cookies are off: reload it and retry")
        expiry, _, _ = nonce.partition(".")
        if not expiry.isdigit() or int(expiry) < time.time():
            raise Forbidden("the login form expired: reload it and retry")
        if not hmac.compare_digest(sent.encode(), self.login_csrf(nonce).encode()):
            raise Forbidden("the login form's CSRF token is wrong: reload it and retry")


def set_cookie(response: Response, name: str, value: str, *, secure: bool, max_age: int) -> None:
    """A dashboard cookie: HttpOnly, SameSite=Strict, Path=/ui, Secure on https."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/ui",
        secure=secure,
        httponly=True,
        samesite="strict",
    )


def clear_cookie(response: Response, name: str, *, secure: bool) -> None:
    response.delete_cookie(name, path="/ui", secure=secure, httponly=True, samesite="strict")


async def read_form(request: HTTPRequest, limit: int = FORM_LIMIT) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict; a repeated field, a body over
    ``limit`` bytes, another content type or bytes that are not UTF-8 are refused."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise InvalidArgument(f"a form was expected, got content type {ctype or 'none'!r}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the form is over the limit of {limit} bytes")
        chunks.append(chunk)
    try:
        text = b"".join(chunks).decode("utf-8")
        pairs = urllib.parse.parse_qsl(
            text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=64
        )
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidArgument(f"the form could not be read: {e}") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise InvalidArgument(f"the form has field {key!r} twice")
        form[key] = value
    return form


def safe_next(value: str | None) -> str:
    """Where to go after logging in: a dashboard path only (never another site)."""
    if not value or not (value == "/ui" or value.startswith("/ui/")):
        return "/ui/"
    parts = urllib.parse.urlsplit(value)
    if parts.scheme or parts.netloc or "\\" in value or any(ord(c) < 0x21 for c in value):
        return "/ui/"
    return value
