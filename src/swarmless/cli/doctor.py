"""``swarmless doctor``: what the engine, Swarm and base images look like, with fixes."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.table import Table

from swarmless.cli._base import console, main
from swarmless.exceptions import SwarmlessError
from swarmless.labels import LABEL_INSTANCE, LABEL_MANAGED, LABEL_OWNER

if TYPE_CHECKING:  # the Docker SDK and the settings' YAML load when it runs, not for --help
    from swarmless.config import Settings

BUSYBOX_IMAGE = "swarmless/busybox:latest"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks(settings: Settings) -> list[Check]:
    """Look at the engine and say what is fine and what to do about the rest."""
    from swarmless.engine import connect, engine_address, translate

    address = engine_address(settings.docker_host)
    try:
        client = connect(settings.docker_host, timeout=10)
        with translate(docker_host=settings.docker_host):
            version = client.version()
            info = client.info()
    except SwarmlessError as e:
        return [Check("engine", False, f"{address}: {e.message}", "sudo scripts/engine.sh")]
    checks = [
        Check(
            "engine",
            True,
            f"{address}: Docker {version.get('Version')} (API {version.get('ApiVersion')}), "
            f"{info.get('Driver')}, cgroup v{info.get('CgroupVersion', '?')}",
        )
    ]
    swarm = info.get("Swarm", {})
    state = swarm.get("LocalNodeState", "inactive")
    if state == "active":
        nodes = swarm.get("Nodes", "?")
        role = "manager" if swarm.get("ControlAvailable") else "worker"
        checks.append(Check("swarm", True, f"active, this node is a {role}, {nodes} node(s)"))
        if swarm.get("ControlAvailable"):
            from swarmless.cli.nodes import node_rows

            for host, detail, ready, fns in node_rows(client):
                fix = "" if ready else "docker node ls; docker node update --availability active"
                checks.append(Check(f"node {host}", ready, f"{detail}; runs: {fns}", fix))
    else:
        checks.append(
            Check(
                "swarm",
                True,
                f"{state} (only needed for the swarm backend)",
                "scripts/engine.sh swarm   # docker swarm init",
            )
        )
    for image in (settings.base_image, BUSYBOX_IMAGE):
        try:
            with translate(image=image):
                img = client.images.get(image)
            size = img.attrs.get("Size", 0) / 1e6
            checks.append(Check(f"image {image}", True, f"present, {size:.0f} MB"))
        except SwarmlessError:
            checks.append(
                Check(f"image {image}", False, "missing", "scripts/base-images.sh  # builds it")
            )
    checks.append(containers_check(client.api, settings))
    client.close()
    checks += [gateway_check(url) for url in settings.gateway_urls]
    return checks


def containers_check(api: Any, settings: Settings) -> Check:
    """This instance's containers, and how many have exited (``swarmless gc`` removes those)."""
    from swarmless.ownership import EXITED, owner_id, select_containers

    owner = owner_id(settings.data_dir, create=False)
    if owner is None:
        return Check("containers", True, f"none of instance {settings.instance!r} yet")
    proof = {LABEL_INSTANCE: settings.instance, LABEL_OWNER: owner}
    mine = select_containers(api, proof, where={LABEL_MANAGED: "true"}).owned
    exited = [c for c in mine if c.state in EXITED]
    return Check(
        "containers",
        not exited,
        f"{len(mine)} container(s) of instance {settings.instance!r}, {len(exited)} exited",
        "swarmless gc   # removes this instance's exited containers" if exited else "",
    )


def gateway_check(url: str) -> Check:
    """The gateway at ``url``, and which replica it is (not needed by run())."""
    import httpx

    try:
        health = httpx.get(f"{url}/healthz", timeout=3).json()
    except (httpx.HTTPError, ValueError) as e:
        return Check(
            "gateway",
            True,
            f"none answers at {url} ({type(e).__name__}; only needed for deployed functions)",
            "swarmless up   # or set SWARMLESS_GATEWAY_URL",
        )
    role = health.get("role", "active")
    detail = f"{url}: version {health.get('version', '?')}, {role}"
    if role != "active":
        detail += f" replica (forwards to the active one at {health.get('active') or '?'})"
    return Check("gateway", True, detail)


@main.command()
def doctor() -> None:
    """Check the engine, Swarm state and base images; print a fix for each problem."""
    from swarmless.config import Settings

    checks = run_checks(Settings.load())
    table = Table(show_header=True, header_style="bold")
    table.add_column("check")
    table.add_column("")
    table.add_column("detail")
    table.add_column("fix")
    for c in checks:
        table.add_row(c.name, "[green]ok[/green]" if c.ok else "[red]!![/red]", c.detail, c.fix)
    console.print(table)
    if not all(c.ok for c in checks):
        sys.exit(1)
