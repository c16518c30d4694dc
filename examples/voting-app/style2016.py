"""``--style 2016``: the voting app's front ends as they were written in 2016, run unchanged.

- ``vote2016/``: a Flask app served as CGI (``vote.cgi``: ``wsgiref``'s CGIHandler), which
  fires the record task with the 2016 call, ``dockerrun.from_env(version="1.24").run(image,
  [voter_id, vote], detach=True, network_mode=...)``. The one change to its image is the
  one-line ``dockerrun.py`` (``from swarmless.compat.dockerrun import *``) and the swarmless
  package copied in. The task is a child container through the scoped Docker API; it
  outlives the CGI process that fired it (``children_timeout``), and how it ended is on
  the vote call's record.
- ``result2016/``: a Perl CGI script (Debian's CGI.pm and DBD::Pg) whose page polls the
  absolute path ``/result/votes``.

Both are served at their own routes (``/vote``, ``/result``) as well as under
``/function/NAME/``, in ``cgi`` mode (a container per request) or ``warm`` (vote's Flask app
under the runtime's WSGI handler; result's script forked per call by the ``cgi`` handler
kind). record-vote is the same one-shot task as the default style's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from swarmless.spec import FunctionSpec

__all__ = ["specs_2016"]


def specs_2016(
    *,
    vote_image: str,
    result_image: str,
    record_image: str,
    database_url: str,
    network: str,
    mode: str,
    front: Mapping[str, Any],
    options: Mapping[str, str],
    children_timeout: float = 60.0,
) -> list[FunctionSpec]:
    """vote and result in the 2016 shape, in ``mode`` (cgi or warm), at /vote and /result."""
    vote_mode: dict[str, Any] = {**front}
    result_mode: dict[str, Any] = {**front}
    if mode == "warm":
        vote_mode.update(handler="app:app", handler_kind="wsgi")
        result_mode.update(handler="perl /function/result.cgi", handler_kind="cgi")
    else:
        vote_mode.update(command=["python3", "/function/vote.cgi"])
        result_mode.update(command=["perl", "/function/result.cgi"])
    vote = FunctionSpec(
        name="vote",
        image=vote_image,
        env={
            **options,
            "RECORD_IMAGE": record_image,
            "DATABASE_URL": database_url,
            "NETWORK": network,
        },
        docker="scoped",
        children_timeout=children_timeout,
        routes=["/vote"],
        concurrency=1,
        **vote_mode,
    )
    result = FunctionSpec(
        name="result",
        image=result_image,
        env={**options, "DATABASE_URL": database_url},
        routes=["/result"],
        concurrency=4 if mode == "warm" else 1,
        **result_mode,
    )
    return [vote, result]
