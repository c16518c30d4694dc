"""Deploys that roll out, and what a deploy would change (the admin routes' deploy path).

A spec names its image by a tag (``swarmless-fn/hello:latest``) that a rebuild moves, so
the spec alone cannot tell that the code changed. At deploy the gateway pins what the tag
holds now: :func:`pin` sets the spec's ``image_id`` to the engine's id of the image. The
id is part of the spec's digest, so a deploy whose image changed is a new version, and a
warm function rolls out as for any new version (the planner: once a container of the new
version is ready, or none is wanted, the old ones are retired; a retired worker is handed
no new call and finishes what it holds). :func:`settle` waits for that before the deploy
answers, so no call made after ``deploy`` returned is served by the old version; if the
new version cannot start, the old one goes on serving and the answer says why.

:func:`preview` is the dry run: every check of a deploy (capacity, image, secrets, a name
that is not another's), nothing applied, and what would change.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

from swarmless.backends.base import Backend
from swarmless.dispatch.dispatcher import Dispatcher
from swarmless.exceptions import InvocationTimeout, SpecError, SwarmlessError
from swarmless.gateway.capacity import EngineCapacity, check_deployable
from swarmless.spec import FunctionSpec

__all__ = ["ROLLOUT_WAIT", "Rollout", "check_name", "pin", "preview", "settle"]

#: Seconds a deploy waits by default for the old version to stop taking calls.
ROLLOUT_WAIT = 60.0
#: Seconds between two looks at a rollout that no change of the containers woke.
RECHECK = 1.0
#: Worker states in which a worker can still be handed a call (or becomes able to).
_SERVING = ("starting", "ready", "paused")
#: The label of the functions a Python-native app deploys (swarmless.native).
_NATIVE = "native.app"


async def pin(spec: FunctionSpec, backend: Backend) -> FunctionSpec:
    """``spec`` with ``image_id`` set to what its image holds on the engine (pulled first
    if needed); SpecError naming the image when it is not there."""
    if not spec.image:
        return spec
    try:
        await backend.ensure_image(spec.image)
        image_id = await backend.image_id(spec.image)
    except InvocationTimeout:
        raise  # the pull outlasted pull_timeout: not the spec's fault (504)
    except SwarmlessError as e:
        raise SpecError({"image": e.message}) from e
    if image_id is None or image_id == spec.image_id:
        return spec
    return spec.replace(image_id=image_id)


def check_name(spec: FunctionSpec, current: FunctionSpec | None) -> None:
    """SpecError when deploying ``spec`` would take over another's function (the pool of a
    Python-native app, unless ``spec`` is that app's)."""
    if current is None:
        return
    owner = current.labels.get(_NATIVE)
    if owner is not None and spec.labels.get(_NATIVE) != owner:
        raise SpecError(
            {
                "name": f"{spec.name!r} is taken: it runs the native functions of app "
                f"{owner!r}; pick another name, or remove it first (swarmless rm {spec.name})"
            }
        )


async def preview(
    spec: FunctionSpec, d: Dispatcher, backend: Backend, capacity: EngineCapacity
) -> dict[str, Any]:
    """Every check of a deploy of ``spec``, nothing applied: what would change.

    A given ``image_id`` (an image built, not tagged yet: ``swarmless deploy`` checks every
    function of a file before it applies any) must be on the engine; else the image's tag
    is resolved as a deploy would. Raises SpecError for what a deploy would refuse.
    """
    current, version = d.functions.get(spec.name, (None, None))
    check_name(spec, current)
    await check_deployable(spec, capacity)
    if spec.image_id is not None:
        if await backend.image_id(spec.image_id) is None:
            raise SpecError({"image_id": f"no image {spec.image_id} on the engine"})
    else:
        spec = await pin(spec, backend)
    if spec.secrets:
        missing = set(spec.secrets) - set(await backend.list_secrets())
        if missing:
            raise SpecError(
                {
                    "secrets": f"no secret named {', '.join(sorted(missing))}; create it "
                    "first: swarmless secret create NAME FILE"
                }
            )
    changes: dict[str, dict[str, Any]] = {}
    if current is not None:
        old, new = current.to_dict(), spec.to_dict()
        changes = {
            k: {"from": old.get(k), "to": new.get(k)} for k in new if old.get(k) != new.get(k)
        }
    next_version: int | None
    if current is None:
        action, next_version = "create", 1
    elif current.digest == spec.digest:
        action, next_version = "unchanged", version
    else:
        action, next_version = "update", (version or 0) + 1
    return {
        "name": spec.name,
        "dry_run": True,
        "action": action,
        "version": version,
        "next_version": next_version,
        "image_changed": "image_id" in changes or "image" in changes,
        "changes": changes,
        "spec": spec.to_dict(),
    }


@dataclasses.dataclass(frozen=True)
class Rollout:
    """How a deploy's rollout went, as the deploy answers it (``rollout``)."""

    #: ``none`` (nothing to roll: new, unchanged, or no warm container of an old version),
    #: ``done`` (no old container takes calls any more), ``pending`` (still some after
    #: the wait), ``failed`` (the new version's containers crash: the old ones serve on).
    state: str
    #: Containers of older versions still able to take calls.
    old: int = 0
    waited: float = 0.0
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _old_serving(d: Dispatcher, name: str, version: int) -> int:
    pool = d.pools.get(name)
    if pool is None:
        return 0
    return sum(1 for w in pool.workers.values() if w.version != version and w.state in _SERVING)


async def settle(d: Dispatcher, name: str, version: int, timeout: float) -> Rollout:
    """Wait until no container of an older version of warm function ``name`` can be handed
    a call (retired ones finish what they hold), for ``timeout`` seconds at most.

    Woken by each change of the function's containers (:meth:`WarmPool.changes
    <swarmless.dispatch.pool.WarmPool.changes>`: one ready, draining, gone, crashed), as a
    scale's wait is, not by polling; looked at again every :data:`RECHECK` seconds all the
    same (a pool replaced meanwhile tells its changes to nobody who waits on the old one)."""
    start = time.monotonic()
    if _old_serving(d, name, version) == 0:
        return Rollout("none")
    deadline = start + timeout
    # One turn of the event loop first: what the deploy set in motion without a wait (the
    # planner retiring the old containers when none of the new version is wanted) is seen.
    await asyncio.sleep(0)
    while True:
        pool = d.pools.get(name)
        # Taken before the look: a change that comes after it wakes the wait below.
        change = pool.changes() if pool is not None else None
        old = _old_serving(d, name, version)
        waited = round(time.monotonic() - start, 3)
        if old == 0:
            return Rollout("done", waited=waited)
        if pool is not None and pool.crashed and (pool.crashed_at or 0) > start:
            return Rollout(
                "failed",
                old=old,
                waited=waited,
                reason=f"a container of version {version} crashed before it was ready "
                f"({pool.crashed}); version {version - 1} and older serve on",
            )
        left = deadline - time.monotonic()
        if left <= 0:
            return Rollout(
                "pending",
                old=old,
                waited=waited,
                reason=f"no container of version {version} was ready after {timeout:g}s; "
                f"{old} of an older version still serve (the rollout goes on)",
            )
        assert change is not None  # old > 0: the pool is there
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(change.wait(), min(left, RECHECK))
