"""What a function container may ask the Docker Engine, as a pure function of the request.

The scoped Docker API (:mod:`swarmless.proxy.server`) parses each request, looks up the facts
the policy needs (who the caller is, the container the path names, the image allowlist, how
many children the caller has) and asks :func:`check`; only an allowed :class:`Verdict` is
forwarded, and then exactly as the verdict spells it: the path is rebuilt from its parsed
parts (a container reference becomes the full id that was checked), the query re-encoded
and a JSON body re-serialised from what was checked, so the engine never reads anything
the policy did not.

Decisions are taken on the request body as well as the path:

- ``POST /containers/create``: every field of the body is known or zero-valued (unknown
  fields that carry a value are refused, so a new engine field cannot slip through);
  field names are matched case-insensitively (Go's JSON decoder does so), duplicate keys
  are refused; privileged mode, added capabilities, devices, host binds, bind or volume
  mounts, volume drivers, host or foreign network/PID/IPC/UTS/user/cgroup namespaces,
  unconfined security options, sysctls, published ports, links, log drivers, restart
  policies and images off the allowlist are refused; memory, CPUs and PIDs are capped
  (and set when absent) and the ``swarmless.*`` labels are forced.
- Container routes (inspect, logs, wait, kill, remove, attach, exec...) only for the
  caller's own children; ``GET /containers/json`` and ``/events`` are filtered to them.
- Everything else (build, swarm, services, nodes, secrets, plugins, volumes, networks,
  prune, commit, update...) is refused.

Every refusal names its rule: ``{"message": "... (rule privileged)"}``.

>>> caller = Caller(container="c" * 64, function="f", network="net")
>>> body = b'{"Image": "busybox", "HostConfig": {"Privileged": true}}'
>>> v = check(ProxyRequest("POST", "/v1.41/containers/create", "", body, caller=caller,
...                        images={"docker.io/library/busybox:latest": ""}))
>>> v.allowed, v.rule
(False, 'privileged')
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from swarmless.labels import (
    LABEL_GATEWAY,
    LABEL_INSTANCE,
    LABEL_KIND,
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_PARENT,
)

__all__ = [
    "LABEL_GATEWAY",
    "MIN_API",
    "Caller",
    "ProxyRequest",
    "Route",
    "Target",
    "Verdict",
    "check",
    "normalize_image",
    "route",
]


#: Labels swarmless's own ``Client.run`` puts on every container: dropped, not refused (the
#: proxy sets managed and kind itself), so ``swarmless.from_env().run()`` works inside.
_SDK_LABELS = frozenset({LABEL_MANAGED, LABEL_KIND, LABEL_INSTANCE, LABEL_OWNER, "swarmless.image"})

#: Older API versions accept a HostConfig at start time, past the create checks.
MIN_API = (1, 24)

MiB = 1024**2


@dataclasses.dataclass(frozen=True, kw_only=True)
class Caller:
    """The function container that sent the request, and the caps on its children."""

    container: str
    function: str
    #: The network children join (the caller's own).
    network: str
    #: Caps per child: memory (bytes), CPUs, PIDs; and children at once.
    memory: int = 256 * MiB
    cpus: float = 1.0
    pids: int = 512
    max_children: int = 20
    #: Labels forced on every child besides the swarmless ones (gateway instance, tests).
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Target:
    """The container a request names, as the engine knows it."""

    id: str
    labels: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class ProxyRequest:
    """One request and the facts about it the server looked up."""

    method: str
    #: The path without the token prefix, as sent (not decoded).
    path: str
    query: str
    body: bytes
    caller: Caller
    #: The container the path names (for an exec route: the exec's container); None
    #: when the route names none or the engine knows no such container.
    target: Target | None = None
    #: Allowed images: normalised name -> image id ("" when not on the engine).
    images: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: How many children the caller has now that have not exited, creates in flight
    #: included, and how many exited ones it keeps (asked for create only).
    children: int = 0
    exited: int = 0
    #: Labels of the allowed images, by image id (a child inherits them).
    image_labels: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Route:
    """A request path the proxy knows: which endpoint, naming which object."""

    endpoint: str
    #: ``"v1.41"`` or ``""`` (unversioned), kept on the forwarded path.
    version: str
    #: A container name or id (container routes), an exec id (exec routes), an image name.
    ref: str | None = None
    action: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Verdict:
    """Allowed (with the exact request to forward) or refused (with the rule's name)."""

    allowed: bool
    rule: str
    reason: str = ""
    status: int = 200
    method: str = ""
    path: str = ""
    query: str = ""
    #: The body to forward (None: none); stdio endpoints hijack the connection.
    body: bytes | None = None
    hijack: bool = False

    @property
    def message(self) -> str:
        return f"swarmless proxy refused this request: {self.reason} (rule {self.rule})"

    def url(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")


def refuse(rule: str, reason: str, status: int = 403) -> Verdict:
    return Verdict(allowed=False, rule=rule, reason=reason, status=status)


# -- paths --------------------------------------------------------------------------------

_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@+-]*$")
_VERSION = re.compile(r"^v(\d+)\.(\d+)$")
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SECTIONS = {
    "build": "build",
    "session": "build",
    "grpc": "build",
    "swarm": "swarm",
    "services": "services",
    "nodes": "nodes",
    "tasks": "tasks",
    "secrets": "secrets",
    "configs": "configs",
    "plugins": "plugins",
    "volumes": "volumes",
    "networks": "networks",
    "system": "system",
    "info": "info",
    "auth": "auth",
    "commit": "commit",
    "distribution": "distribution",
    "images": "images",
}
#: (method, action) on /containers/{ref}/{action}: the endpoint name.
_CONTAINER_ACTIONS = {
    ("GET", "json"): "inspect",
    ("GET", "logs"): "logs",
    ("GET", "top"): "top",
    ("GET", "stats"): "stats",
    ("GET", "changes"): "changes",
    ("GET", "export"): "export",
    ("GET", "archive"): "archive",
    ("HEAD", "archive"): "archive",
    ("PUT", "archive"): "archive-put",
    ("POST", "start"): "start",
    ("POST", "stop"): "stop",
    ("POST", "restart"): "restart",
    ("POST", "kill"): "kill",
    ("POST", "wait"): "wait",
    ("POST", "pause"): "pause",
    ("POST", "unpause"): "unpause",
    ("POST", "resize"): "resize",
    ("POST", "attach"): "attach",
    ("POST", "rename"): "rename",
    ("POST", "exec"): "exec-create",
}


def route(method: str, path: str) -> Route | Verdict:
    """Which endpoint ``path`` is; a refusal for paths that are malformed or never allowed.

    Paths are compared as sent: percent-escapes, dot segments, empty segments and
    characters outside names are refused rather than decoded, so the proxy and the
    engine cannot read one path two ways.
    """
    if not path.startswith("/") or path == "/":
        return refuse("path", f"path {path[:80]!r} is not an engine API path")
    parts = path[1:].split("/")
    if any(not _SEGMENT.match(p) or p in (".", "..") for p in parts):
        return refuse(
            "path", f"path {path[:120]!r} has encoded, dot or empty segments or odd characters"
        )
    version = ""
    m = _VERSION.match(parts[0])
    if m:
        if (int(m[1]), int(m[2])) < MIN_API:
            return refuse("api-version", f"API {parts[0]} is older than v{MIN_API[0]}.{MIN_API[1]}")
        version, parts = parts[0], parts[1:]
        if not parts:
            return refuse("path", "no endpoint after the version")
    head, rest = parts[0], parts[1:]
    if head == "_ping" and not rest and method in ("GET", "HEAD"):
        return Route(endpoint="ping", version=version)
    if head == "version" and not rest and method == "GET":
        return Route(endpoint="version", version=version)
    if head == "events" and not rest and method == "GET":
        return Route(endpoint="events", version=version)
    if head == "containers":
        return _container_route(method, rest, version)
    if head == "exec" and len(rest) == 2 and _REF.match(rest[0]):
        endpoint = {("POST", "start"): "exec-start", ("POST", "resize"): "exec-resize"}.get(
            (method, rest[1])
        ) or ("exec-inspect" if (method, rest[1]) == ("GET", "json") else None)
        if endpoint:
            return Route(endpoint=endpoint, version=version, ref=rest[0], action=rest[1])
    if head == "images":
        if rest == ["create"] and method == "POST":
            return Route(endpoint="pull", version=version)
        if len(rest) >= 2 and rest[-1] == "json" and method == "GET":
            return Route(endpoint="image-inspect", version=version, ref="/".join(rest[:-1]))
    if head == "exec":
        return refuse("exec", f"{method} {path} is not an exec route of your children")
    rule = _SECTIONS.get(head, "endpoint")
    return refuse(rule, f"{method} /{head} is not part of the scoped API")


def _container_route(method: str, rest: list[str], version: str) -> Route | Verdict:
    if rest == ["create"] and method == "POST":
        return Route(endpoint="create", version=version)
    if rest == ["json"] and method == "GET":
        return Route(endpoint="list", version=version)
    if rest == ["prune"]:
        return refuse("prune", "pruning would remove containers that are not yours")
    if not rest or not _REF.match(rest[0]):
        return refuse("endpoint", "no container named")
    ref = rest[0]
    if len(rest) == 1 and method == "DELETE":
        return Route(endpoint="remove", version=version, ref=ref)
    if len(rest) == 2:
        if rest[1] == "update":
            return refuse("update", "changing a container's resources after create")
        endpoint = _CONTAINER_ACTIONS.get((method, rest[1]))
        if endpoint:
            return Route(endpoint=endpoint, version=version, ref=ref, action=rest[1])
    return refuse("endpoint", f"{method} /containers/{'/'.join(rest)} is not in the scoped API")


# -- JSON -----------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.rule, self.reason = rule, reason


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seen: set[str] = set()
    for key, value in pairs:
        if not key.isascii():
            raise _Refused("json", f"non-ASCII key {key!r}: the engine may fold it to a field")
        if key.lower() in seen:
            raise _Refused("duplicate-key", f"key {key!r} appears twice (keys match any case)")
        seen.add(key.lower())
        out[key] = value
    return out


def _loads(body: bytes, what: str) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body, object_pairs_hook=_pairs)
    except _Refused:
        raise
    except (ValueError, RecursionError) as e:
        raise _Refused("json", f"the {what} body is not valid JSON: {e}") from None


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode()


def _zero(value: Any) -> bool:
    """Go's zero value (what the engine reads when the field is absent).

    An object counts as a map: any key makes it non-zero (the struct-valued fields are
    checked field by field).
    """
    if value is None or value is False or value == "" or value == 0:
        return True
    if isinstance(value, dict | list):
        return not value
    return False


def _struct(obj: Any, fields: tuple[str, ...], where: str) -> dict[str, Any]:
    """``obj`` with its keys mapped to the canonical field names, Go-style (any case).

    Unknown fields are dropped when zero-valued (what the engine would read anyway) and
    refused otherwise.
    """
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise _Refused("json", f"{where} must be a JSON object")
    canonical = {f.lower(): f for f in fields}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = canonical.get(key.lower())
        if name is None:
            if _zero(value):
                continue
            raise _Refused("unknown-field", f"{where}.{key} is not a field the proxy knows")
        out[name] = value
    return out


def _int(value: Any, where: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Refused("json", f"{where} must be an integer, got {value!r}")
    return value


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Refused("json", f"{where} must be a list of strings")
    return value


# -- images -----------------------------------------------------------------------------

_HEX64 = re.compile(r"^(sha256:)?[0-9a-f]{64}$")


def normalize_image(ref: str) -> str:
    """A full image reference: ``busybox`` -> ``docker.io/library/busybox:latest``.

    Image ids come back as ``sha256:<64 hex>``; anything that is not a plain reference
    comes back unchanged (and matches no allowlist entry).
    """
    ref = ref.strip()
    if _HEX64.match(ref):
        return ref if ref.startswith("sha256:") else f"sha256:{ref}"
    name, at, digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    first, sep, _ = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"):
        name = f"docker.io/{name}" if sep else f"docker.io/library/{name}"
    if at:
        return f"{name}@{digest}"
    return f"{name}:{tag or 'latest'}"


def _image(ref: Any, images: Mapping[str, str]) -> str:
    """The reference to forward for an allowed image (its id when on the engine)."""
    if not isinstance(ref, str) or not ref.strip():
        raise _Refused("image", "no image given")
    key = normalize_image(ref)
    if key in images:
        return images[key] or ref
    if key.startswith("sha256:") and key in images.values():
        return key
    # The allowlist is not listed: it names other functions' images.
    raise _Refused(
        "image", f"image {ref!r} is not on this gateway's allowlist for children (proxy_images)"
    )


# -- container create ---------------------------------------------------------------------


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_CONFIG = _names(
    "Hostname Domainname User AttachStdin AttachStdout AttachStderr ExposedPorts Tty "
    "OpenStdin StdinOnce Env Cmd Healthcheck ArgsEscaped Image Volumes WorkingDir "
    "Entrypoint NetworkDisabled MacAddress OnBuild Labels StopSignal StopTimeout "
    "Shell HostConfig NetworkingConfig"
)
#: HostConfig fields that must keep their zero value, with the rule that refuses them.
_MUST_BE_ZERO = {
    "Binds": "binds",
    "VolumeDriver": "volumes",
    "VolumesFrom": "volumes",
    "Privileged": "privileged",
    "CapAdd": "cap-add",
    "Capabilities": "cap-add",
    "Devices": "devices",
    "DeviceCgroupRules": "devices",
    "DeviceRequests": "devices",
    "BlkioWeightDevice": "devices",
    "BlkioDeviceReadBps": "devices",
    "BlkioDeviceWriteBps": "devices",
    "BlkioDeviceReadIOps": "devices",
    "BlkioDeviceWriteIOps": "devices",
    "PortBindings": "ports",
    "PublishAllPorts": "ports",
    "Links": "links",
    "Sysctls": "sysctls",
    "StorageOpt": "storage-opt",
    "CgroupParent": "cgroup",
    "Cgroup": "cgroup",
    "Ulimits": "ulimits",
    "OomKillDisable": "oom",
    "KernelMemory": "memory",
    "KernelMemoryTCP": "memory",
    "CpuPeriod": "cpus",
    "CpuQuota": "cpus",
    "CpuRealtimePeriod": "cpus",
    "CpuRealtimeRuntime": "cpus",
    "CpuCount": "cpus",
    "CpuPercent": "cpus",
    "IOMaximumIOps": "io",
    "IOMaximumBandwidth": "io",
    "ContainerIDFile": "unknown-field",
}
#: HostConfig fields allowed with any value the engine accepts.
_FREE = _names(
    "CpuShares BlkioWeight CpusetCpus CpusetMems MemoryReservation MemorySwappiness "
    "Init AutoRemove CapDrop Dns DnsOptions DnsSearch ExtraHosts GroupAdd "
    "ReadonlyRootfs ConsoleSize OomScoreAdj ShmSize"
)
_CHECKED = _names(
    "Memory MemorySwap NanoCpus PidsLimit NetworkMode PidMode IpcMode UTSMode "
    "UsernsMode CgroupnsMode SecurityOpt Runtime Isolation MaskedPaths ReadonlyPaths "
    "RestartPolicy LogConfig Mounts Tmpfs"
)
_HOST_CONFIG = (*_MUST_BE_ZERO, *_FREE, *_CHECKED)
_ENDPOINT = _names(
    "IPAMConfig Links Aliases NetworkID EndpointID Gateway IPAddress IPPrefixLen "
    "IPv6Gateway GlobalIPv6Address GlobalIPv6PrefixLen MacAddress DriverOpts"
)
_MOUNT = ("Target", "Source", "Type", "ReadOnly", "Consistency", "BindOptions", "VolumeOptions")
_SAFE_SECURITY_OPTS = {"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"}
#: Namespace modes: the values allowed, the rule that refuses the others.
_MODES = {
    "PidMode": ({""}, "pid"),
    "IpcMode": ({"", "private", "none", "shareable"}, "ipc"),
    "UTSMode": ({""}, "uts"),
    "UsernsMode": ({""}, "userns"),
    "CgroupnsMode": ({"", "private"}, "cgroupns"),
    "Runtime": ({"", "runc"}, "runtime"),
    "Isolation": ({"", "default"}, "isolation"),
}


def _create(req: ProxyRequest, route: Route) -> Verdict:
    caller = req.caller
    body = _loads(req.body, "create")
    config = _struct(body, _CONFIG, "body")
    host = _struct(config.get("HostConfig"), _HOST_CONFIG, "HostConfig")
    for field, rule in _MUST_BE_ZERO.items():
        if not _zero(host.get(field)):
            raise _Refused(rule, f"HostConfig.{field} is not allowed ({host[field]!r})")
    if req.children >= caller.max_children:
        raise _Refused(
            "max-children",
            f"you have {req.children} children running, the limit is {caller.max_children}",
        )
    if req.exited >= caller.max_children:
        raise _Refused(
            "max-children",
            f"you keep {req.exited} exited children (at most {caller.max_children}): "
            "remove them (docker rm, or run with --rm / auto_remove)",
        )
    config["Image"] = _image(config.get("Image"), req.images)
    if not _zero(config.get("Volumes")):
        raise _Refused("volumes", "anonymous volumes (Volumes) are not allowed")
    if not _zero(config.get("MacAddress")):
        raise _Refused("network", "a fixed MAC address is not allowed")
    if not _zero(config.get("OnBuild")):
        raise _Refused("unknown-field", "OnBuild is for images, not containers")
    inherited = req.image_labels.get(config["Image"], {})
    config["Labels"] = _labels(config.get("Labels"), caller, inherited)
    _namespaces(host)
    _security(host)
    _mounts(host, caller)
    _tmpfs(host, caller)
    _resources(host, caller)
    network = _network(host, caller)
    config["NetworkingConfig"] = _networking(config.get("NetworkingConfig"), network, caller)
    config["HostConfig"] = host
    query = _query(req.query, allowed=("name", "platform"))
    name = dict(query).get("name")
    if name:
        _child_name(name, caller, "name")
    return _allow(req, route, "containers/create", query, _dumps(config))


def _labels(
    value: Any, caller: Caller, inherited: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The child's labels: the caller's own (no ``swarmless.*``), then every
    ``swarmless.*`` label the image carries blanked (the engine would copy it onto the
    child), then the forced ones."""
    if value is None:
        value = {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _Refused("json", "Labels must map names to strings")
    for key in value:
        if key.startswith("swarmless.") and key not in _SDK_LABELS:
            raise _Refused("labels", f"label {key!r}: swarmless.* labels are set by swarmless")
    blanked = {k: "" for k in inherited or {} if k.startswith("swarmless.")}
    return {
        **{k: v for k, v in value.items() if k not in _SDK_LABELS},
        **blanked,
        **caller.labels,
        LABEL_MANAGED: "true",
        LABEL_KIND: "child",
        LABEL_PARENT: caller.container,
    }


#: Names (and aliases) of children: the caller's function name, a dash, then a name.
_CHILD_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


def _child_name(name: str, caller: Caller, what: str) -> str:
    """A child's name or network alias must start with ``<function>-``: it may not claim
    another container's DNS name on the shared network, nor squat one before it starts."""
    prefix = f"{caller.function}-"
    if not isinstance(name, str) or not _CHILD_NAME.match(name):
        raise _Refused("name", f"{what} {name!r} is not a container name")
    if not name.lstrip("/").startswith(prefix) or name.lstrip("/") == prefix:
        raise _Refused("name", f"{what} {name!r}: children's names start with {prefix!r}")
    return name


#: Options of a tmpfs mount (``HostConfig.Tmpfs``) a child may use: no ``dev``, ``suid``,
#: ``rbind`` or other mount flags that reach past a plain in-memory directory.
_TMPFS_FLAGS = frozenset({"ro", "rw", "noexec", "exec", "nosuid", "nodev", "noatime"})
_TMPFS_VALUE = re.compile(r"^(size|mode|uid|gid|nr_inodes)=([0-9]+[kmgKMG%]?)$")
_MOUNT_TARGET = re.compile(r"^/[A-Za-z0-9_./-]*$")


def _tmpfs(host: dict[str, Any], caller: Caller) -> None:
    tmpfs = host.get("Tmpfs")
    if tmpfs is None:
        return
    if not isinstance(tmpfs, dict) or not all(isinstance(v, str) for v in tmpfs.values()):
        raise _Refused("json", "Tmpfs must map paths to option strings")
    for target, options in tmpfs.items():
        if not _MOUNT_TARGET.match(target) or "/../" in f"{target}/" or "//" in target:
            raise _Refused("tmpfs", f"tmpfs target {target!r} is not a plain absolute path")
        for option in filter(None, (o.strip() for o in options.split(","))):
            if option in _TMPFS_FLAGS:
                continue
            m = _TMPFS_VALUE.match(option)
            if m is None:
                raise _Refused("tmpfs", f"tmpfs option {option!r} is not allowed")
            if m[1] == "size" and _size(m[2]) > caller.memory:
                raise _Refused("memory", f"tmpfs {option!r} is over the memory cap")


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    unit = text[-1].lower()
    if unit in units:
        return int(text[:-1]) * units[unit]
    return 0 if unit == "%" else int(text)


def _namespaces(host: dict[str, Any]) -> None:
    for field, (allowed, rule) in _MODES.items():
        value = host.get(field) or ""
        if not isinstance(value, str) or value not in allowed:
            raise _Refused(rule, f"HostConfig.{field}={value!r} is not allowed")
    for field in ("MaskedPaths", "ReadonlyPaths"):
        # An empty list is not the default here: it unmasks /proc and /sys paths.
        if host.get(field) is not None:
            raise _Refused("masked-paths", f"HostConfig.{field} cannot be changed")
    restart = _struct(host.get("RestartPolicy"), ("Name", "MaximumRetryCount"), "RestartPolicy")
    if restart.get("Name") not in (None, "", "no"):
        raise _Refused("restart", f"restart policy {restart['Name']!r}: children do not restart")
    if restart:
        host["RestartPolicy"] = restart
    log = _struct(host.get("LogConfig"), ("Type", "Config"), "LogConfig")
    if log.get("Type") not in (None, "", "json-file", "local") or not _zero(log.get("Config")):
        raise _Refused("log-config", f"log driver {log.get('Type')!r} with options is not allowed")
    if log:
        host["LogConfig"] = log


def _security(host: dict[str, Any]) -> None:
    for opt in _strings(host.get("SecurityOpt"), "SecurityOpt"):
        if opt.strip().lower() not in _SAFE_SECURITY_OPTS:
            raise _Refused("security-opt", f"security option {opt!r} is not allowed")


def _mounts(host: dict[str, Any], caller: Caller) -> None:
    mounts = host.get("Mounts")
    if mounts is None:
        return
    if not isinstance(mounts, list):
        raise _Refused("json", "Mounts must be a list")
    checked = []
    for raw in mounts:
        m = _struct(raw, (*_MOUNT, "TmpfsOptions"), "Mounts[]")
        if m.get("Type") != "tmpfs" or not all(
            _zero(m.get(k)) for k in ("Source", "BindOptions", "VolumeOptions")
        ):
            raise _Refused("mounts", f"mount of type {m.get('Type')!r}: only tmpfs mounts")
        options = _struct(m.get("TmpfsOptions"), ("SizeBytes", "Mode"), "TmpfsOptions")
        for field in ("SizeBytes", "Mode"):
            if _int(options.get(field), field) < 0:
                raise _Refused("tmpfs", f"TmpfsOptions.{field} cannot be negative")
        if _int(options.get("SizeBytes"), "SizeBytes") > caller.memory:
            raise _Refused("memory", "a tmpfs mount over the memory cap")
        target = m.get("Target")
        if not isinstance(target, str) or not _MOUNT_TARGET.match(target) or ".." in target:
            raise _Refused("tmpfs", f"tmpfs target {target!r} is not a plain absolute path")
        m["TmpfsOptions"] = options
        checked.append(m)
    host["Mounts"] = checked


def _resources(host: dict[str, Any], caller: Caller) -> None:
    memory = _int(host.get("Memory"), "Memory")
    if memory < 0 or memory > caller.memory:
        raise _Refused("memory", f"Memory {memory} bytes is over the cap of {caller.memory}")
    memory = memory or caller.memory
    host["Memory"] = memory
    swap = _int(host.get("MemorySwap"), "MemorySwap")
    if swap < 0 or swap > 2 * caller.memory:
        raise _Refused("memory", f"MemorySwap {swap} is over the cap of {2 * caller.memory}")
    host["MemorySwap"] = swap or memory
    for field in ("MemoryReservation", "ShmSize"):
        if _int(host.get(field), field) > caller.memory:
            raise _Refused("memory", f"{field} is over the memory cap of {caller.memory}")
    cap = int(caller.cpus * 1e9)
    cpus = _int(host.get("NanoCpus"), "NanoCpus")
    if cpus < 0 or cpus > cap:
        raise _Refused("cpus", f"NanoCpus {cpus} is over the cap of {cap} ({caller.cpus:g} CPUs)")
    host["NanoCpus"] = cpus or cap
    if _int(host.get("CpuShares"), "CpuShares") > 1024:
        raise _Refused("cpus", "CpuShares over 1024 would outweigh other containers")
    pids = _int(host.get("PidsLimit"), "PidsLimit")
    if pids > caller.pids:
        raise _Refused("pids", f"PidsLimit {pids} is over the cap of {caller.pids}")
    host["PidsLimit"] = pids if pids > 0 else caller.pids
    if _int(host.get("OomScoreAdj"), "OomScoreAdj") < 0:
        raise _Refused("oom", "a negative OomScoreAdj would shield the child from the OOM killer")


def _network(host: dict[str, Any], caller: Caller) -> str:
    mode = host.get("NetworkMode") or "default"
    if mode == "default":
        mode = caller.network
    if mode not in (caller.network, "none"):
        raise _Refused(
            "network", f"network mode {mode!r}: children join {caller.network!r} or 'none'"
        )
    host["NetworkMode"] = mode
    return str(mode)


def _networking(value: Any, network: str, caller: Caller) -> dict[str, Any]:
    cfg = _struct(value, ("EndpointsConfig",), "NetworkingConfig")
    endpoints = cfg.get("EndpointsConfig") or {}
    if not isinstance(endpoints, dict):
        raise _Refused("json", "EndpointsConfig must be an object")
    out: dict[str, Any] = {}
    for key, settings in endpoints.items():
        name = network if key == "default" else key  # the docker CLI names it "default"
        if name != network or name in out:
            raise _Refused("network", f"network {name!r}: children join {network!r} only")
        ep = _struct(settings, _ENDPOINT, f"EndpointsConfig.{name}")
        extra = {k: v for k, v in ep.items() if k != "Aliases" and not _zero(v)}
        if extra:
            raise _Refused("network", f"endpoint settings {sorted(extra)} are not allowed")
        aliases = _strings(ep.get("Aliases"), "Aliases")
        out[name] = {"Aliases": [_child_name(a, caller, "network alias") for a in aliases]}
    return {"EndpointsConfig": out}


# -- the other endpoints ---------------------------------------------------------------


def _query(query: str, *, allowed: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """The query's parameters, each at most once (the engine reads the first of repeats)."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise _Refused("query", "the query string does not decode") from None
    names = [k for k, _ in pairs]
    if len(set(names)) != len(names):
        raise _Refused("query", "a query parameter appears twice")
    if allowed is not None:
        for name in names:
            if name not in allowed:
                raise _Refused("query", f"query parameter {name!r} is not allowed here")
    return pairs


def _allow(
    req: ProxyRequest,
    route: Route,
    path: str,
    query: list[tuple[str, str]],
    body: bytes | None = None,
    *,
    hijack: bool = False,
) -> Verdict:
    prefix = f"/{route.version}" if route.version else ""
    return Verdict(
        allowed=True,
        rule=route.endpoint,
        method=req.method,
        path=f"{prefix}/{path}",
        query=urlencode(query),
        body=body,
        hijack=hijack,
    )


class _NotFound(_Refused):
    """A container or exec instance the caller may not see: 404, as if it did not exist."""


def _own(req: ProxyRequest, route: Route) -> Target:
    """The caller's own child the request names. Anything else is "no such container",
    word for word what a container that does not exist gets (no existence oracle)."""
    target = req.target
    labels = target.labels if target is not None else {}
    if (
        target is None
        or labels.get(LABEL_PARENT) != req.caller.container
        or labels.get(LABEL_KIND) != "child"
        or labels.get(LABEL_MANAGED) != "true"
    ):
        what = "exec instance" if route.endpoint.startswith("exec-") else "container"
        if route.endpoint == "exec-create":
            what = "container"
        raise _NotFound("own-children", f"no such {what}: {route.ref}")
    return target


def _filters(
    query: list[tuple[str, str]], caller: Caller, *, events: bool
) -> list[tuple[str, str]]:
    out = [(k, v) for k, v in query if k != "filters"]
    raw = dict(query).get("filters")
    filters = _loads(raw.encode(), "filters") if raw else {}
    if filters is None:
        filters = {}
    if not isinstance(filters, dict):
        raise _Refused("query", "filters must be a JSON object")
    normal: dict[str, list[str]] = {}
    for key, value in filters.items():
        if isinstance(value, dict):
            value = [k for k, on in value.items() if on is True]
        normal[key] = _strings(value, f"filters.{key}")
    normal["label"] = [*normal.get("label", []), f"{LABEL_PARENT}={caller.container}"]
    if events:
        normal["type"] = ["container"]
    out.append(("filters", json.dumps(normal, separators=(",", ":"))))
    return out


_NO_BODY = {"stop", "restart", "kill", "wait", "pause", "unpause", "resize", "rename", "attach"}
_LIST_PARAMS = ("all", "limit", "size", "filters", "before", "since", "trunc_cmd")
#: The query parameters each endpoint takes (anything else is refused).
_PARAMS: dict[str, tuple[str, ...]] = {
    "inspect": ("size",),
    "logs": ("follow", "stdout", "stderr", "since", "until", "timestamps", "tail", "details"),
    "top": ("ps_args",),
    "stats": ("stream", "one-shot"),
    "changes": (),
    "export": (),
    "archive": ("path",),
    "archive-put": ("path", "noOverwriteDirNonDir", "copyUIDGID"),
    "start": ("detachKeys",),
    "stop": ("t", "signal"),
    "restart": ("t", "signal"),
    "kill": ("signal",),
    "wait": ("condition",),
    "pause": (),
    "unpause": (),
    "resize": ("h", "w"),
    "attach": ("detachKeys", "logs", "stream", "stdin", "stdout", "stderr"),
    "rename": ("name",),
    "remove": ("v", "force", "link"),
    "exec-create": (),
    "exec-start": (),
    "exec-resize": ("h", "w"),
    "exec-inspect": (),
}


def _decide(req: ProxyRequest, r: Route) -> Verdict:
    endpoint = r.endpoint
    if endpoint in ("ping", "version"):
        return _allow(req, r, endpoint.replace("ping", "_ping"), _query(req.query, allowed=()))
    if endpoint == "create":
        return _create(req, r)
    if endpoint in ("list", "events"):
        names = ("since", "until", "filters") if endpoint == "events" else _LIST_PARAMS
        query = _filters(_query(req.query, allowed=names), req.caller, events=endpoint == "events")
        return _allow(req, r, "containers/json" if endpoint == "list" else "events", query)
    if endpoint == "pull":
        query = _query(req.query, allowed=("fromImage", "tag", "platform"))
        params = dict(query)
        ref = params.get("fromImage", "")
        tag = params.get("tag", "")
        _image(f"{ref}:{tag}" if tag and "@" not in ref else ref, req.images)
        return _allow(req, r, "images/create", query)
    if endpoint == "image-inspect":
        _image(r.ref, req.images)
        return _allow(req, r, f"images/{r.ref}/json", [])
    target = _own(req, r)
    query = _query(req.query, allowed=_PARAMS[endpoint])
    if endpoint.startswith("exec-"):
        if endpoint == "exec-create":
            return _exec_create(req, r, target, query)
        body = None
        hijack = False
        if endpoint == "exec-start":
            start = _struct(_loads(req.body, "exec start"), ("Detach", "Tty", "ConsoleSize"), "")
            body = _dumps(start)
            # A detached start answers like any request: nothing switches, nothing after
            # it on the connection is a raw stream.
            hijack = start.get("Detach") is not True
            if not isinstance(start.get("Detach", False), bool):
                raise _Refused("json", "Detach must be true or false")
        return _allow(req, r, f"exec/{r.ref}/{r.action}", query, body, hijack=hijack)
    if endpoint == "rename":
        _child_name(dict(query).get("name", ""), req.caller, "name")
    if endpoint == "remove":
        if dict(query).get("link", "") not in ("", "0", "false", "False"):
            raise _Refused("links", "removing links")
        return _allow(req, r, f"containers/{target.id}", query)
    body = None
    if endpoint == "start":
        if not _zero(_loads(req.body, "start")):
            raise _Refused("start-config", "a start request carries no configuration")
    elif endpoint == "archive-put":
        body = req.body
    elif endpoint not in _NO_BODY and req.body.strip():
        raise _Refused("body", f"{endpoint} takes no body")
    return _allow(
        req, r, f"containers/{target.id}/{r.action}", query, body, hijack=endpoint == "attach"
    )


def _exec_create(
    req: ProxyRequest, r: Route, target: Target, query: list[tuple[str, str]]
) -> Verdict:
    fields = (
        "AttachStdin",
        "AttachStdout",
        "AttachStderr",
        "ConsoleSize",
        "DetachKeys",
        "Tty",
        "Env",
        "Cmd",
        "Privileged",
        "User",
        "WorkingDir",
    )
    body = _struct(_loads(req.body, "exec"), (*fields, "Container", "Detach"), "exec")
    body.pop("Container", None)  # the Docker SDK repeats the path's container: not forwarded
    if not _zero(body.get("Privileged")):
        raise _Refused("privileged", "a privileged exec is not allowed")
    return _allow(req, r, f"containers/{target.id}/exec", query, _dumps(body))


def check(request: ProxyRequest) -> Verdict:
    """Allow ``request`` (with the exact request to forward) or refuse it, naming the rule."""
    r = route(request.method, request.path)
    if isinstance(r, Verdict):
        return r
    try:
        return _decide(request, r)
    except _NotFound as e:
        return refuse(e.rule, e.reason, status=404)
    except _Refused as e:
        return refuse(e.rule, e.reason)
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        # A shape the checks above did not foresee: refused, never forwarded.
        return refuse("json", f"the request has a value of an unexpected type ({e})")
