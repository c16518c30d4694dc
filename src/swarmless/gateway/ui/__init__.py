"""The gateway's web dashboard at ``/ui``: functions, invocations, dead letters, schedules,
the cluster; live over Server-Sent Events.

Server-rendered (Jinja2 templates in ``templates/``) with one small script and stylesheet in
``static/`` (shipped in the package: nothing is fetched from a CDN, nothing is built at
install time). Behind the admin token, through a login form and a session cookie with CSRF
tokens (:mod:`~swarmless.gateway.ui.auth`). It reads state through the same objects as the
admin API (:mod:`~swarmless.gateway.ui.views`), acts through them
(:mod:`~swarmless.gateway.ui.actions`), and computes its numbers from the store's records
(:mod:`~swarmless.gateway.ui.stats`). Pages and actions are :mod:`~swarmless.gateway.ui.pages`
and :mod:`~swarmless.gateway.ui.forms`, live updates :mod:`~swarmless.gateway.ui.live`, what
they share :mod:`~swarmless.gateway.ui.site`, the route table
:mod:`~swarmless.gateway.ui.routes`.

    dashboard = Dashboard(gateway)
    routes = dashboard.routes()     # mounted by the gateway's app
"""

from __future__ import annotations

from swarmless.gateway.ui.routes import Dashboard

__all__ = ["Dashboard"]
