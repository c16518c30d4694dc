"""Which containers are one instance's own, so that removing commands touch nothing else.

Every container swarmless makes (plain runs and gateway-made ones alike) carries
``swarmless.instance=<Settings.instance>`` and ``swarmless.owner=<id>``. The id is random
and kept in the instance's data directory (``<data_dir>/owner``, made on first use). A
command that removes things (``swarmless gc``, the voting app's ``down``, ``make clean``)
removes a container only when

1. it carries this instance's labels (an engine filter), and
2. those labels are the container's own, not its image's. A container inherits every
   label of its image, so ``LABEL swarmless.owner=...`` in a Dockerfile would otherwise
   make its containers look like ours. The engine merges the two sets and keeps no record
   of which label came from where, so a proving label whose key *and value* are also on
   the image counts as inherited: that container is never removed (fail closed), and
   neither is one whose image is gone (nothing to compare with).

Why both a name and an id: the instance name alone does not tell two users of one engine
apart (both run the instance ``default``). The id does. It is no secret from anyone who
can inspect containers on the engine (they could remove the containers anyway); it cannot
be guessed by an image author, and rule 2 means that even a known id planted in an image
proves nothing.

Replicas of one gateway that should count as one owner share the file: copy
``<data_dir>/owner`` into each replica's data directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import tempfile
import time
import urllib.parse
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import docker.errors

from swarmless.config import Settings
from swarmless.engine import engine_address, translate
from swarmless.labels import LABEL_INSTANCE, LABEL_KIND, LABEL_MANAGED, LABEL_OWNER

__all__ = [
    "EXITED",
    "OWNER_FILE",
    "STARTING",
    "Found",
    "Selection",
    "managed_without_owner",
    "owner_id",
    "ownership_labels",
    "remove_containers",
    "run_labels",
    "select_containers",
]

#: The file in the data directory that holds the instance's owner id.
OWNER_FILE = "owner"
#: Container states that nothing will ever run again (what ``gc`` removes; a ``created``
#: one only once it is older than :data:`STARTING`: a run creates, then starts).
EXITED = frozenset({"exited", "dead", "created"})
#: Seconds a ``created`` container may be on its way to start.
STARTING = 60.0
_ID = re.compile(r"[0-9a-f]{32}")


def owner_id(data_dir: Path, *, create: bool = True) -> str | None:
    """The owner id kept in ``data_dir`` (made with ``create``); None if there is none.

    A file that cannot be read, or holds something else than an id, gives None: the
    containers then carry no owner label and no removing command will ever claim them.
    """
    path = data_dir / OWNER_FILE
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        if not create:
            return None
        value = _create(path)
    except OSError:
        return None
    return value if value and _ID.fullmatch(value) else None


def _create(path: Path) -> str:
    """Write a new id to ``path`` unless another process did first (then: theirs)."""
    value = secrets.token_hex(16)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".owner-")
    except OSError:
        return ""
    try:
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        # A hard link appears complete or not at all and fails if the name exists: two
        # processes that start at once agree on the first one's id.
        os.link(tmp, path)
    except FileExistsError:
        with contextlib.suppress(OSError):
            return path.read_text().strip()
        return ""
    except OSError:
        return ""
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return value


def ownership_labels(settings: Settings, *, create: bool = True) -> dict[str, str]:
    """``swarmless.instance`` and ``swarmless.owner`` of the instance ``settings`` name."""
    labels = {LABEL_INSTANCE: settings.instance}
    owner = owner_id(settings.data_dir, create=create)
    if owner:
        labels[LABEL_OWNER] = owner
    return labels


def run_labels(settings: Settings) -> dict[str, str]:
    """The ownership labels a plain ``run()`` adds (:func:`ownership_labels`), except
    through an engine address with a path: that is a proxy (the scoped Docker API keeps
    its caller's token there), which forces its gateway's own labels on every child and
    refuses ``swarmless.*`` labels from callers."""
    url = urllib.parse.urlsplit(engine_address(settings.docker_host))
    if url.scheme in ("tcp", "http", "https") and url.path.strip("/"):
        return {}
    return ownership_labels(settings)


@dataclasses.dataclass(frozen=True)
class Found:
    """One container a selection looked at."""

    id: str
    name: str
    #: Its ``swarmless.kind`` (run, oneshot, cgi, worker, child, ...), or ``-``.
    kind: str
    state: str
    labels: Mapping[str, str]
    #: When it was created (Unix seconds).
    created: float = 0.0

    def line(self) -> str:
        """``<short id>  <name>  <kind>``, as removing commands print it."""
        return f"{self.id[:12]}  {self.name}  {self.kind}"


@dataclasses.dataclass
class Selection:
    """The containers that carry the asked labels, split by whether those are their own."""

    #: The proving labels are set on the container itself: it is the asker's.
    owned: list[Found]
    #: The proving labels are (or may be) its image's, or its image is gone: never removed.
    inherited: list[Found]


def _found(row: Mapping[str, Any]) -> Found:
    labels: Mapping[str, str] = row.get("Labels") or {}
    names = row.get("Names") or [row["Id"][:12]]
    return Found(
        id=str(row["Id"]),
        name=str(names[0]).lstrip("/"),
        kind=labels.get(LABEL_KIND) or "-",
        state=str(row.get("State", "")),
        labels=labels,
        created=float(row.get("Created") or 0),
    )


def select_containers(
    api: Any,
    proof: Mapping[str, str | None],
    *,
    where: Mapping[str, str | None] | None = None,
    states: Collection[str] | None = None,
) -> Selection:
    """The containers carrying every ``proof`` label (value None: any value) and ``where``.

    ``proof`` labels must be the container's own (see the module docstring); ``where``
    labels only narrow the search. ``states`` keeps only containers in those states (a
    ``created`` one only once it is older than :data:`STARTING`).
    """
    if not proof:
        raise ValueError("a selection needs at least one proving label")
    wanted = {**(where or {}), **proof}
    filters = [k if v is None else f"{k}={v}" for k, v in wanted.items()]
    with translate(api=api):
        rows = api.containers(all=True, filters={"label": filters})
    images: dict[str, Mapping[str, str] | None] = {}
    selection = Selection(owned=[], inherited=[])
    for row in rows:
        found = _found(row)
        if states is not None and found.state not in states:
            continue
        if (
            states is not None
            and found.state == "created"
            and time.time() - found.created < STARTING
        ):
            continue  # a run creates, then starts: it may be starting right now
        image_id = str(row.get("ImageID") or "")
        if image_id not in images:
            images[image_id] = _image_labels(api, image_id)
        image_labels = images[image_id]
        inherited = image_labels is None or any(
            key in image_labels and image_labels[key] == found.labels.get(key) for key in proof
        )
        (selection.inherited if inherited else selection.owned).append(found)
    return selection


def _image_labels(api: Any, image_id: str) -> Mapping[str, str] | None:
    """The labels of image ``image_id``; None when it is gone (nothing can be proven)."""
    if not image_id:
        return None
    with translate(api=api):
        try:
            attrs = api.inspect_image(image_id)
        except docker.errors.NotFound:
            return None
    labels: Mapping[str, str] = (attrs.get("Config") or {}).get("Labels") or {}
    return labels


def remove_containers(
    api: Any, containers: Iterable[Found], *, force: bool = False
) -> list[tuple[Found, str | None]]:
    """Remove each container (and its anonymous volumes); returns (container, why not).

    Without ``force`` the engine refuses a container that runs: one that started again
    after it was selected is left alone, so the check and the removal cannot disagree.
    A container already gone counts as removed.
    """
    done: list[tuple[Found, str | None]] = []
    with translate(api=api):  # engine unreachable: one clear error
        for found in containers:
            try:
                api.remove_container(found.id, v=True, force=force)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                done.append((found, str(e.explanation or e)))
                continue
            done.append((found, None))
    return done


def managed_without_owner(api: Any, states: Collection[str] = EXITED) -> list[Found]:
    """Containers labelled ``swarmless.managed=true`` without an owner label (made by an
    older swarmless, by hand, or from an image carrying the label): never removed."""
    with translate(api=api):
        rows = api.containers(all=True, filters={"label": f"{LABEL_MANAGED}=true"})
    return [f for f in map(_found, rows) if LABEL_OWNER not in f.labels and f.state in states]
