"""Settings, stated once.

Precedence, highest first:

1. keyword arguments (``Settings.load(gateway_url=...)``, ``swarmless.from_env(...)``);
2. ``SWARMLESS_*`` environment variables (``SWARMLESS_GATEWAY_URL``, ``SWARMLESS_TOKEN``, ...);
   the Docker address comes from ``DOCKER_HOST`` and friends, read by the Docker SDK;
3. the ``settings:`` section of ``swarmless.yml`` in the current directory (or the file named
   by ``SWARMLESS_CONFIG``);
4. the defaults below.

>>> Settings.load(gateway_url="http://127.0.0.1:9999").gateway_url
'http://127.0.0.1:9999'
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from swarmless.exceptions import InvalidArgument

if TYPE_CHECKING:
    from swarmless.retention import Retention
    from swarmless.scaling.settings import ScalingSettings

__all__ = ["Settings", "default_data_dir"]


def default_data_dir() -> Path:
    """Where the gateway keeps its store and token when nothing else is said."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "swarmless"


#: A DNS host name (letters, digits, hyphens; dot-separated labels).
_HOST_NAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """``entry`` as a network (an address is a /32 or /128), or None."""
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InvalidArgument(f"{name} must be true or false, got {value!r}")


#: A registry address: a host (name, IPv4 or [IPv6]) with an optional port and path.
_REGISTRY = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
    r"(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
)
_REGISTRY_KEYS = {"address": "registry", "push": "registry_push", "username": "registry_username"}


def _registry_mapping(value: Any) -> dict[str, Any]:
    """The ``registry:`` of swarmless.yml given as a mapping, as ``registry_*`` settings."""
    if not isinstance(value, dict):
        return {}
    unknown = set(value) - {*_REGISTRY_KEYS, "password_file"}
    if unknown:
        raise InvalidArgument(
            f"registry: unknown key(s) {', '.join(sorted(map(str, unknown)))} (known: "
            "address, push, username, password_file; a password is never written inline)"
        )
    out: dict[str, Any] = {"registry": ""}  # the mapping, not an address
    out.update({_REGISTRY_KEYS[k]: v for k, v in value.items() if k in _REGISTRY_KEYS})
    if "password_file" in value:
        out["registry_password_file"] = value["password_file"]
    return out


def _check_registry(values: dict[str, Any]) -> None:
    """Normalise and check the ``registry*`` values in place."""
    for name in ("registry", "registry_push"):
        if name in values:
            text = str(values[name] or "").strip().removeprefix("https://").rstrip("/")
            if text and not _REGISTRY.fullmatch(text):
                raise InvalidArgument(
                    f"{name} must be HOST[:PORT][/PATH] (e.g. 127.0.0.1:5000 or "
                    f"registry.example.com/team), got {values[name]!r}"
                )
            values[name] = text
    if values.get("registry_password_file"):
        values["registry_password_file"] = Path(values["registry_password_file"]).expanduser()
    else:
        values.pop("registry_password_file", None)
    if values.get("registry_push") and not values.get("registry"):
        raise InvalidArgument("registry_push is set but registry (where nodes pull) is not")
    if values.get("registry_password_file") and not values.get("registry_username"):
        raise InvalidArgument("registry_password_file is set but registry_username is not")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything swarmless reads from its environment, in one place."""

    #: Address of the gateway, for deployed functions (invoke, spawn, map); several,
    #: comma-separated, for replicas: a client moves to the next one that it cannot reach.
    gateway_url: str = "http://127.0.0.1:8080"
    #: Bearer token for the gateway's admin routes, or a worker's scoped token.
    token: str | None = None
    #: Where the gateway keeps its store, token and logs.
    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    #: The image warm functions and scaffolded functions are built on.
    base_image: str = "swarmless/python:bookworm"
    #: The user-defined bridge network function containers join.
    network: str = "swarmless"
    #: Address and port the gateway listens on.
    host: str = "127.0.0.1"
    port: int = 8080
    #: Store URL (SQLAlchemy); empty means SQLite in ``data_dir``.
    store_url: str = ""
    #: ``docker`` (one engine) or ``swarm``.
    backend: str = "docker"
    #: Docker Engine address; None lets the Docker SDK read DOCKER_HOST and friends.
    docker_host: str | None = None
    #: Seconds the gateway waits for the engine's answer to one call (create, start, kill,
    #: list, ping; a call that waits for a running container waits its timeout plus this).
    #: An engine that accepts connections and never answers is found within it: calls that
    #: need a container then get 503 ``engine_unavailable``.
    engine_timeout: float = 30.0
    #: Seconds an image pull may take in all (a registry that stops answering mid-pull
    #: is given up on after it: 504 ``pull_timeout``, nothing half-pulled is used).
    pull_timeout: float = 300.0
    #: Per-image bytecode folders of the runtime's imports kept in ``data_dir/bytecode``
    #: beyond those in use (a container of the image exists, or one started within the
    #: last 10 minutes): the least recently used go first; those of images the engine no
    #: longer holds always go.
    bytecode_keep: int = 16
    #: Address containers use to reach the gateway; empty means work it out from the network.
    advertise_url: str = ""
    #: Name of this gateway; its containers carry ``swarmless.gateway=<instance>``, so
    #: several gateways can share one engine without touching each other's containers.
    instance: str = "default"
    #: Where other replicas of this gateway reach it (they forward to the active one);
    #: empty means ``http://<host, or this machine's address>:<port>``.
    peer_url: str = ""
    #: Seconds the active replica's lease lasts unrenewed: a dead one is replaced after it.
    lease_ttl: float = 5.0
    #: Port of the scoped Docker API on the function network (0: a free port).
    proxy_port: int = 0
    #: Images children may run besides those of deployed functions (env: comma-separated).
    proxy_images: tuple[str, ...] = ()
    #: Caps on each child container when the caller's spec sets none (bytes, CPUs).
    proxy_memory: int = 256 * 1024 * 1024
    proxy_cpus: float = 1.0
    #: Limits on every function container whose spec sets none: CPUs, processes and
    #: threads (a fork bomb stops there), bytes of log the engine keeps (json-file or
    #: local driver; another driver is left as configured). 0: no limit of ours.
    function_cpus: float = 1.0
    function_pids: int = 1024
    function_log_size: int = 20 * 1024 * 1024
    #: The call this process serves (set inside function containers): calls made from
    #: here are recorded as its children.
    call_id: str | None = None
    #: Reverse proxies in front of the gateway (CIDRs; env: comma-separated) whose
    #: ``X-Forwarded-*`` headers it believes; empty: it sets them from the connection's peer.
    trusted_proxies: tuple[str, ...] = ()
    #: Where ``X-Callback-Url`` may point (CIDRs and host names; env: comma-separated).
    #: Empty: anywhere but loopback, link-local (cloud metadata), unspecified, multicast,
    #: the function network, the Docker engine and the gateway's own addresses.
    callback_allow: tuple[str, ...] = ()
    #: Whether ``/metrics`` answers without the admin token (it names every function).
    metrics_public: bool = False
    #: The autoscaler's windows and thresholds (seconds unless stated); see
    #: :class:`swarmless.scaling.settings.ScalingSettings` for what each one does.
    scale_interval: float = 1.0
    scale_stable_window: float = 60.0
    scale_panic_window: float = 6.0
    scale_panic_threshold: float = 2.0
    scale_target_utilization: float = 0.7
    scale_down_delay: float = 10.0
    scale_start_timeout: float = 60.0
    scale_pause_after: float = 2.0
    scale_drain_grace: float = 5.0
    scale_backoff_base: float = 1.0
    scale_backoff_max: float = 30.0
    scale_plan_history: int = 20
    #: Retention of what the store keeps (swarmless.store.retention; 0: no limit): records
    #: of finished calls, their logs, async results and dead letters, each by age (seconds)
    #: and count (the newest kept); a sweeper deletes the rest every retention_interval s.
    retention_records_age: float = 7 * 86400.0
    retention_records_count: int = 100_000
    retention_logs_age: float = 86400.0
    retention_logs_count: int = 10_000
    retention_results_age: float = 86400.0
    retention_results_count: int = 10_000
    retention_dead_age: float = 14 * 86400.0
    retention_dead_count: int = 10_000
    retention_interval: float = 60.0
    #: The registry function images are pushed to (``swarmless build``/``deploy``) and
    #: that Swarm nodes pull them from, ``HOST[:PORT][/PATH]``; empty: none (images stay on
    #: the engine that built them). ``registry_push``: where this machine's engine pushes,
    #: when it reaches the registry by another name (default: ``registry``). Credentials:
    #: a user name and a file holding the password (a mounted secret), never the password.
    #: In swarmless.yml also as a mapping: ``registry: {address, push, username,
    #: password_file}``. See docs/swarm-production.md.
    registry: str = ""
    registry_push: str = ""
    registry_username: str = ""
    registry_password_file: Path | None = None

    @classmethod
    def load(cls, config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
        """Settings from kwargs > ``SWARMLESS_*`` env > ``swarmless.yml`` > defaults."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(overrides) - set(fields)
        if unknown:
            raise InvalidArgument(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        path = Path(config_file or os.environ.get("SWARMLESS_CONFIG") or "swarmless.yml")
        if path.is_file():
            doc = yaml.safe_load(path.read_text()) or {}
            section = doc.get("settings") if isinstance(doc, dict) else None
            if isinstance(section, dict):
                values.update({k: v for k, v in section.items() if k in fields})
                values.update(_registry_mapping(section.get("registry")))
        for name in fields:
            env = os.environ.get(f"SWARMLESS_{name.upper()}")
            if env is not None and env != "":
                values[name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        ints = (
            "port",
            "proxy_port",
            "proxy_memory",
            "scale_plan_history",
            "function_pids",
            "function_log_size",
            "bytecode_keep",
        )
        for name, kind in ((n, int) for n in ints):
            if name in values:
                try:
                    values[name] = kind(values[name])
                except (TypeError, ValueError):
                    raise InvalidArgument(
                        f"{name} must be an integer, got {values[name]!r}"
                    ) from None
        for name in (n for n, f in fields.items() if n.startswith("retention_")):
            if name in values and fields[name].type == "int":
                try:
                    values[name] = int(values[name])
                except (TypeError, ValueError):
                    raise InvalidArgument(
                        f"{name} must be an integer, got {values[name]!r}"
                    ) from None
        floats = [n for n, f in fields.items() if f.type == "float"]
        for name in floats:
            if name in values:
                try:
                    values[name] = float(values[name])
                except (TypeError, ValueError):
                    raise InvalidArgument(
                        f"{name} must be a number, got {values[name]!r}"
                    ) from None
        for name in ("proxy_images", "trusted_proxies", "callback_allow"):
            if isinstance(values.get(name), str):
                values[name] = tuple(i.strip() for i in values[name].split(",") if i.strip())
            elif name in values:
                values[name] = tuple(str(i).strip() for i in values[name])
        for entry in values.get("trusted_proxies", ()):
            if _network(entry) is None:
                raise InvalidArgument(
                    f"trusted_proxies: {entry!r} is not an address or a network (CIDR), "
                    "e.g. 10.0.0.0/8"
                )
        for entry in values.get("callback_allow", ()):
            if _network(entry) is None and not _HOST_NAME.fullmatch(entry):
                raise InvalidArgument(
                    f"callback_allow: {entry!r} is neither a network (CIDR, e.g. 10.0.0.0/8) "
                    "nor a host name"
                )
        for name in ("function_cpus", "function_pids", "function_log_size"):
            if name in values and values[name] < 0:
                raise InvalidArgument(f"{name} must be >= 0 (0: no limit), got {values[name]!r}")
        engine_timeout = values.get("engine_timeout", 1.0)
        if not engine_timeout > 0:  # NaN too
            raise InvalidArgument(f"engine_timeout must be > 0 seconds, got {engine_timeout!r}")
        pull_timeout = values.get("pull_timeout", 1.0)
        if not pull_timeout > 0:  # NaN too
            raise InvalidArgument(f"pull_timeout must be > 0 seconds, got {pull_timeout!r}")
        if values.get("bytecode_keep", 0) < 0:
            raise InvalidArgument(f"bytecode_keep must be >= 0, got {values['bytecode_keep']!r}")
        if "metrics_public" in values:
            values["metrics_public"] = _boolean("metrics_public", values["metrics_public"])
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"]).expanduser()
        _check_registry(values)
        if values.get("backend", "docker") not in ("docker", "swarm"):
            raise InvalidArgument(f"backend must be 'docker' or 'swarm', got {values['backend']!r}")
        if "gateway_url" in values:
            urls = [u.strip().rstrip("/") for u in str(values["gateway_url"]).split(",")]
            values["gateway_url"] = ",".join(u for u in urls if u)
        settings = cls(**values)
        settings.retention  # noqa: B018  validated now, not when a gateway starts
        return settings

    @property
    def gateway_urls(self) -> tuple[str, ...]:
        """The gateway's address(es), in the order a client tries them."""
        return tuple(u for u in self.gateway_url.split(",") if u)

    @property
    def scaling(self) -> ScalingSettings:
        """The autoscaler's settings (the ``scale_*`` fields); InvalidArgument if bad."""
        from swarmless.scaling.settings import ScalingSettings

        values = {}
        for f in dataclasses.fields(self):
            if f.name.startswith("scale_"):
                # scale_down_delay keeps its name there; the others drop the prefix
                key = f.name if f.name == "scale_down_delay" else f.name[len("scale_") :]
                values[key] = getattr(self, f.name)
        return ScalingSettings(**values)

    @property
    def retention(self) -> Retention:
        """What the store keeps (the ``retention_*`` fields); InvalidArgument if bad."""
        from swarmless.retention import Retention

        prefix = "retention_"
        return Retention(
            **{
                f.name[len(prefix) :]: getattr(self, f.name)
                for f in dataclasses.fields(self)
                if f.name.startswith(prefix)
            }
        )

    @property
    def store(self) -> str:
        """The SQLAlchemy URL of the store."""
        return self.store_url or f"sqlite:///{self.data_dir / 'swarmless.db'}"
