"""The scoped Docker API: containers that start containers, without the host's socket.

- :mod:`~swarmless.proxy.policy`: what a caller may ask (pure, unit-tested);
- :mod:`~swarmless.proxy.server`: the proxy the gateway starts on the function network;
- :mod:`~swarmless.proxy.tokens`: which container is calling (the gateway and the proxy).
"""

from swarmless.proxy.policy import Caller, ProxyRequest, Verdict, check
from swarmless.proxy.server import DockerProxy, start_proxy
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
