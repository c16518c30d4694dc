"""The scoped Docker API: containers that start containers, without the host's socket.

- :mod:`~swarmless.proxy.policy`: what a caller may ask (pure, unit-tested), with
  :mod:`~swarmless.proxy.routes` (paths), :mod:`~swarmless.proxy.create` (container create)
  and :mod:`~swarmless.proxy.rules` (the request, the verdict, JSON read as Go reads it);
- :mod:`~swarmless.proxy.http`: HTTP/1.1 on both sides, framed by h11;
- :mod:`~swarmless.proxy.engine_view`: what the proxy itself asks the engine;
- :mod:`~swarmless.proxy.server`: the proxy the gateway starts on the function network,
  with :mod:`~swarmless.proxy.admission` (who asks, and may they: the verdict on each
  request) and :mod:`~swarmless.proxy.relay` (one client connection, relayed to the engine);
- :mod:`~swarmless.proxy.children`: children's lives after their parent's
  (``children_timeout``) and how each ended;
- :mod:`~swarmless.proxy.tokens`: which container is calling (the gateway and the proxy);
- :mod:`~swarmless.proxy.nodes`: ``GET /nodes`` and where a child may run;
- on a Swarm: :mod:`~swarmless.proxy.swarm_server` (the proxy), with
  :mod:`~swarmless.proxy.swarm_view` (what it asks the manager),
  :mod:`~swarmless.proxy.swarm_api` (the container API emulated over services) and
  :mod:`~swarmless.proxy.swarm_spec` (a child as a service, a service as a container);
- :mod:`~swarmless.proxy.start`: the one of the two the backend needs.
"""

from swarmless.proxy.policy import Caller, ProxyRequest, Verdict, check
from swarmless.proxy.server import DockerProxy
from swarmless.proxy.start import start_proxy
from swarmless.proxy.tokens import CallerTokens, Grant

__all__ = [
    "Caller",
    "CallerTokens",
    "DockerProxy",
    "Grant",
    "ProxyRequest",
    "Verdict",
    "check",
    "start_proxy",
]
