"""The gateway client of the CLI's commands, made when a command runs (not when it is
imported: ``--help`` does not load httpx, YAML or the spec's rules)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import click
    from click.shell_completion import CompletionItem

    from swarmless.sdk.gateway import GatewayClient

__all__ = ["function_names", "gateway"]

#: Seconds a shell completion may wait for the gateway (a shell must not hang on TAB).
COMPLETION_TIMEOUT = 2.0


def gateway(timeout: float | None = None) -> GatewayClient:
    """A client of the gateway the settings name (``SWARMLESS_GATEWAY_URL``...); its token
    is ``SWARMLESS_TOKEN``, or the data directory's ``token`` file of a local gateway."""
    from swarmless.config import Settings
    from swarmless.sdk.gateway import GatewayClient

    settings = Settings.load()
    if not settings.token:
        token_file = settings.data_dir / "token"
        if token_file.is_file():
            settings = Settings.load(token=token_file.read_text().strip())
    return GatewayClient(settings, timeout=timeout)


def function_names(
    _ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shell completion of a function NAME: the deployed ones, asked of the gateway; none
    at all when it does not answer within :data:`COMPLETION_TIMEOUT`."""
    from click.shell_completion import CompletionItem

    try:
        with gateway(timeout=COMPLETION_TIMEOUT) as gw:
            names = [f["name"] for f in gw.functions()]
    except Exception:  # a completion says nothing rather than fail in the user's shell
        return []
    return [CompletionItem(n) for n in sorted(names) if n.startswith(incomplete)]
