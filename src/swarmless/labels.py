"""The labels every object swarmless creates carries, so it can be found, reconciled and
removed (no dependencies: the pure proxy policy uses them too).

Which labels prove that an object is one instance's own (and why an image's labels cannot)
is in :mod:`swarmless.ownership`.
"""

from __future__ import annotations

__all__ = [
    "LABEL_CALL",
    "LABEL_CHILDREN_TIMEOUT",
    "LABEL_FUNCTION",
    "LABEL_GATEWAY",
    "LABEL_INSTANCE",
    "LABEL_KIND",
    "LABEL_MANAGED",
    "LABEL_OWNER",
    "LABEL_PARENT",
    "LABEL_PARENT_CALL",
    "LABEL_WORKER",
    "managed_labels",
]

#: Every object swarmless creates carries ``swarmless.managed=true``.
LABEL_MANAGED = "swarmless.managed"
#: What the object is: ``run``, ``oneshot``, ``cgi``, ``worker``, ``network``.
LABEL_KIND = "swarmless.kind"
#: The deployed function an object belongs to.
LABEL_FUNCTION = "swarmless.function"
#: The invocation a one-shot container serves.
LABEL_CALL = "swarmless.call"
#: The container that asked for this one (scoped Docker API).
LABEL_PARENT = "swarmless.parent"
#: A child's: the call its parent served when it asked for it (one-shot and cgi parents).
LABEL_PARENT_CALL = "swarmless.parent-call"
#: A child's: seconds it may go on running once its parent has exited (its function's
#: ``children_timeout`` when it was made).
LABEL_CHILDREN_TIMEOUT = "swarmless.children-timeout"
#: The gateway instance that owns an object (several gateways may share one engine).
LABEL_GATEWAY = "swarmless.gateway"
#: The worker (warm container) an object is, as the gateway knows it.
LABEL_WORKER = "swarmless.worker"
#: The instance (``Settings.instance``) of the process that made an object: plain runs and
#: gateway-made objects alike.
LABEL_INSTANCE = "swarmless.instance"
#: The random id kept in that instance's data directory (``<data_dir>/owner``): an image
#: author cannot know it in advance, so a container cannot get it from its image by chance.
LABEL_OWNER = "swarmless.owner"


def managed_labels(kind: str, extra: dict[str, str] | None = None, **more: str) -> dict[str, str]:
    """The labels every swarmless object carries, plus ``extra``."""
    labels = {LABEL_MANAGED: "true", LABEL_KIND: kind}
    labels.update({f"swarmless.{k}": v for k, v in more.items()})
    if extra:
        labels.update(extra)
    return labels
