"""The dashboard's routes: which page or action answers which path, behind which guard.

Pages (GET) need a session; actions (POST) a session and its CSRF token
(:meth:`~swarmless.gateway.ui.site.Site.guard`); the login form and the static files
need neither. ``/`` leads to the dashboard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request as HTTPRequest
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from swarmless.gateway.ui import forms, live, pages
from swarmless.gateway.ui.site import HERE, Endpoint, Site

if TYPE_CHECKING:
    from swarmless.gateway.ui.context import DashboardGateway

__all__ = ["Dashboard"]


class Dashboard:
    """The ``/ui`` pages of one gateway, mounted by its app::

    routes = [..., *Dashboard(gateway).routes()]
    """

    def __init__(self, gw: DashboardGateway) -> None:
        self.site = Site(gw)

    def routes(self) -> list[BaseRoute]:
        site = self.site
        get, post, open_ = site.guard, site.guard_post, site.open
        table: list[tuple[str, str, Endpoint]] = [
            ("GET", "/ui/login", open_(forms.login_page)),
            ("POST", "/ui/login", open_(forms.login)),
            ("POST", "/ui/logout", post(forms.logout)),
            ("GET", "/ui", get(pages.functions)),
            ("GET", "/ui/", get(pages.functions)),
            ("POST", "/ui/deploy", post(forms.deploy)),
            ("GET", "/ui/functions/{name}", get(pages.function)),
            ("POST", "/ui/functions/{name}/{action}", post(forms.function_action)),
            ("GET", "/ui/invocations", get(pages.invocations)),
            ("GET", "/ui/invocations/{call_id}", get(pages.invocation)),
            ("POST", "/ui/invocations/{call_id}/redrive", post(forms.redrive)),
            ("GET", "/ui/dead-letters", get(pages.dead_letters)),
            ("GET", "/ui/schedules", get(pages.schedules)),
            ("GET", "/ui/cluster", get(pages.cluster)),
            ("GET", "/ui/events", get(live.events)),
        ]
        routes: list[BaseRoute] = [
            Route("/", self.root, methods=["GET"], include_in_schema=False),
            *(
                Route(path, endpoint, methods=[method], include_in_schema=False)
                for method, path, endpoint in table
            ),
            Mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static"),
        ]
        return routes

    async def root(self, _request: HTTPRequest) -> Response:
        """``/`` shows the dashboard."""
        return RedirectResponse("/ui/", status_code=307)
