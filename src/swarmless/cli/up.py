"""``swarmless up``: run the gateway in the foreground."""

from __future__ import annotations

import click

from swarmless.cli._base import console, main


@main.command()
@click.option("--host", envvar="SWARMLESS_HOST", help="Address to listen on (127.0.0.1).")
@click.option("--port", envvar="SWARMLESS_PORT", type=int, help="Port to listen on (8080).")
@click.option("--data-dir", envvar="SWARMLESS_DATA_DIR", help="Store, token and runtime copy.")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning"]))
def up(host: str | None, port: int | None, data_dir: str | None, log_level: str) -> None:
    """Start the gateway (SQLite store, local Docker backend) until Ctrl-C."""
    # The gateway's stack is imported here, not with the module: `up --help` stays quick.
    import logging

    from swarmless.config import Settings
    from swarmless.gateway.app import Gateway, admin_token
    from swarmless.gateway.server import run

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    if log_level != "debug":  # httpx logs every Docker API request the scoped proxy makes
        logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = Settings.load(host=host, port=port, data_dir=data_dir)
    # Replicas of one gateway share their admin token: give it to each (SWARMLESS_TOKEN).
    token, new = (settings.token, False) if settings.token else admin_token(settings.data_dir)
    gateway = Gateway(settings, token=token)

    def started(gw: Gateway, bound: int) -> None:
        settle_gc()
        url = f"http://{gw.settings.host}:{bound}"
        console.print(f"[green]swarmless gateway[/green] on {url}  (data: {settings.data_dir})")
        if gw.not_ready is not None:
            console.print(
                f"[yellow]not ready[/yellow]: {gw.not_ready}\n"
                "  it tries again by itself; /healthz answers 503 until then"
            )
        elif gw.replicas is not None and not gw.replicas.active:
            console.print(
                f"standby replica: forwarding to the active one ({gw.replicas.leader_url})"
            )
        else:
            console.print(f"containers reach it at {gw.runtime_url}")
        if settings.token:
            return
        if new:
            console.print(
                f"admin token (printed once, kept in {settings.data_dir / 'token'}):\n  {token}"
            )
        token_file = settings.data_dir / "token"
        console.print(
            f"export SWARMLESS_GATEWAY_URL={url} SWARMLESS_TOKEN=$(cat {token_file})",
            soft_wrap=True,  # a line to copy: never cut in two
        )

    run(gateway, started=started, log_level="warning")
    if gateway.fatal:  # it lost the lease of the active replica: let it be restarted
        raise click.ClickException(f"the gateway stopped: {gateway.fatal}")


#: The cyclic collector's thresholds once the gateway runs (Python's default: 700, 10, 10).
GC_THRESHOLDS = (10_000, 10, 10)


def settle_gc() -> None:
    """The gateway answers: what it made until now (modules, clients, compiled statements,
    its pools) lives as long as it does, so the cyclic collector stops scanning it
    (``gc.freeze``), and it collects young objects less often (a call's garbage dies by its
    reference count, not by the collector). Measured on an async drain: the collector took
    ~18 % of the gateway's CPU per async call (its full scans of ~115,000 objects most of
    it) and ~8 % per sync call; ~3 % each after."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
