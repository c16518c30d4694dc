"""The dashboard's forms: log in and out, deploy, scale, remove, invoke, redrive.

Each action answers with a redirect to the page that shows its outcome (POST, then GET),
except invoke, whose page shows the function's answer, and a refused deploy, whose page
keeps the spec that was sent beside what is wrong with it.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

from starlette.requests import Request as HTTPRequest
from starlette.responses import RedirectResponse, Response

from swarmless.exceptions import InvalidArgument, SwarmlessError, Unauthorized
from swarmless.gateway.ui import actions, pages
from swarmless.gateway.ui.auth import (
    LOGIN_COOKIE,
    LOGIN_TTL,
    SESSION_COOKIE,
    SESSION_TTL,
    Forbidden,
    clear_cookie,
    read_form,
    safe_next,
    set_cookie,
)

if TYPE_CHECKING:
    from swarmless.gateway.ui.context import DashboardGateway
    from swarmless.gateway.ui.site import Ctx, Site

__all__ = ["deploy", "function_action", "login", "login_page", "logout", "redrive"]


def is_https(gw: DashboardGateway, request: HTTPRequest) -> bool:
    """Whether the browser reached the gateway over https: the request's own scheme, or a
    trusted proxy's ``X-Forwarded-Proto`` (the edge decides whom to believe)."""
    try:
        return gw.edge(request.scope).scheme == "https"
    except InvalidArgument:
        return request.url.scheme == "https"


def _login_form(
    site: Site,
    request: HTTPRequest,
    *,
    status: int = 200,
    error: str | None = None,
    next_url: str | None = None,
) -> Response:
    nonce = site.sessions.login_nonce()
    response = site.render(
        request,
        None,
        "login.html",
        status=status,
        error=error,
        login_csrf=site.sessions.login_csrf(nonce),
        next=safe_next(next_url or request.query_params.get("next")),
    )
    set_cookie(response, LOGIN_COOKIE, nonce, secure=is_https(site.gw, request), max_age=LOGIN_TTL)
    return response


async def login_page(site: Site, request: HTTPRequest) -> Response:
    """``GET /ui/login``: the form (a logged-in browser goes on to the dashboard)."""
    if site.sessions.get(request) is not None:
        return RedirectResponse(safe_next(request.query_params.get("next")), status_code=303)
    return _login_form(site, request)


async def login(site: Site, request: HTTPRequest) -> Response:
    """``POST /ui/login``: check the token as the admin API does, then start a session."""
    form = await read_form(request, limit=16 * 1024)
    try:
        site.sessions.check_login_csrf(request.cookies.get(LOGIN_COOKIE), form.get("csrf"))
    except Forbidden as e:
        return _login_form(site, request, status=403, error=str(e), next_url=form.get("next"))
    try:
        site.gw.check_admin(form.get("token", "").strip() or None)
    except Unauthorized:
        return _login_form(
            site,
            request,
            status=401,
            error="that is not this gateway's admin token",
            next_url=form.get("next"),
        )
    session = site.sessions.create()
    secure = is_https(site.gw, request)
    response = RedirectResponse(safe_next(form.get("next")), status_code=303)
    set_cookie(response, SESSION_COOKIE, session.id, secure=secure, max_age=int(SESSION_TTL))
    clear_cookie(response, LOGIN_COOKIE, secure=secure)
    return response


async def logout(site: Site, ctx: Ctx) -> Response:
    """``POST /ui/logout``: the session ends on the gateway too."""
    site.sessions.end(ctx.session)
    response = RedirectResponse("/ui/login", status_code=303)
    clear_cookie(response, SESSION_COOKIE, secure=is_https(site.gw, ctx.request))
    return response


def _function_url(name: str, done: str | None = None) -> str:
    url = f"/ui/functions/{urllib.parse.quote(name, safe='')}"
    return f"{url}?done={done}" if done else url


async def deploy(site: Site, ctx: Ctx) -> Response:
    """``POST /ui/deploy``: deploy (or update) a function from the spec in the form."""
    text = ctx.form.get("spec", "")
    try:
        spec = actions.parse_spec(text)
        _, created = await actions.deploy(site.gw, spec)
    except SwarmlessError as e:
        return await pages.functions(site, ctx, spec_text=text, error=e, status=e.status_code)
    return RedirectResponse(
        _function_url(spec.name, "deployed" if created else "updated"), status_code=303
    )


async def function_action(site: Site, ctx: Ctx) -> Response:
    """``POST /ui/functions/{name}/{scale|remove|invoke}``."""
    name = ctx.request.path_params["name"]
    action = ctx.request.path_params["action"]
    gw = site.gw
    assert gw.dispatcher is not None
    gw.dispatcher.get(name)  # FunctionNotFound: a 404 page
    if action == "scale":
        actions.scale(gw, name, ctx.form.get("containers", ""))
        return RedirectResponse(_function_url(name, "scaled"), status_code=303)
    if action == "remove":
        await actions.remove(gw, name)
        return RedirectResponse("/ui/?done=removed", status_code=303)
    if action == "invoke":
        answer = await actions.invoke(gw, name, ctx.form, ctx.request.scope)
        return await pages.function(site, ctx, answer=answer)
    raise InvalidArgument(f"no action {action!r}: scale, remove or invoke")


async def redrive(site: Site, ctx: Ctx) -> Response:
    """``POST /ui/invocations/{id}/redrive``: a dead letter goes back to the queue."""
    call_id = ctx.request.path_params["call_id"]
    await actions.redrive(site.gw, call_id)
    back = ctx.form.get("back")
    if back is not None and safe_next(back) == back:
        target = back + ("&" if "?" in back else "?") + "done=redriven"
    else:
        target = f"/ui/invocations/{urllib.parse.quote(call_id, safe='')}?done=redriven"
    return RedirectResponse(target, status_code=303)
