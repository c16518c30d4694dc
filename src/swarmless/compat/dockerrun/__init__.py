"""The 2016 ``dockerrun`` library's API, on :meth:`swarmless.Client.run`.

``dockerrun`` (github.com/bfirsh/dockerrun) ran an image like a function call; the 2016
serverless voting app's CGI front end fired its background task with it::

    import dockerrun
    client = dockerrun.from_env(version="1.24")
    client.run("record-vote-task", [voter_id, vote], detach=True, network_mode="votes")

That code runs unchanged on swarmless with one added file, ``dockerrun.py``, beside it::

    from swarmless.compat.dockerrun import *  # noqa: F403

What it keeps: the names (``from_env``, ``Client``, ``Client.from_env`` here, as dockerrun's
package offered them; ``client.ProcessError``, ``client.CREATE_KWARGS``,
``client.START_KWARGS`` in its ``client`` module); ``run``'s parameters and
the option names it passed on to the engine; string commands split as a shell would;
the return shapes (stdout as bytes; ``{"Id": ..., "Warnings": None}`` when detached);
:class:`ProcessError` with ``container``, ``exit_status``, ``command``, ``image`` and
``stderr`` on a non-zero exit; and the Docker API of the client it subclassed
(``client.logs(container)``, ``client.wait(container)``...: passed to the Docker SDK's
``APIClient``). What it gains: containers are labelled and removed (a detached one by the
engine when it exits), and importing it or calling ``from_env()`` imports neither the
Docker SDK nor anything else heavy: a CGI request that never runs a container does not pay
for it. See ``docs/compat.md``.
"""

from __future__ import annotations

from swarmless.compat.dockerrun import client
from swarmless.compat.dockerrun.client import Client, from_env

__all__ = ["Client", "client", "from_env"]
