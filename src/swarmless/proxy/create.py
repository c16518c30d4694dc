"""``POST /containers/create``: what a child container may be (pure).

Every field of the body is known or zero-valued (unknown fields that carry a value are
refused, so a new engine field cannot slip through); privileged mode, capabilities,
devices, host binds, bind or volume mounts, host namespaces, unconfined security options,
sysctls, ports, links, log drivers and restart policies are refused; memory, CPUs and PIDs
are capped (and set when absent); tmpfs options come from a fixed set; names and network
aliases start with ``<function>-``; ``swarmless.*`` labels are forced (those the image
carries blanked); the caller's children are counted (the server reserves the place).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from swarmless.labels import (
    LABEL_CHILDREN_TIMEOUT,
    LABEL_KIND,
    LABEL_MANAGED,
    LABEL_PARENT,
    LABEL_PARENT_CALL,
)
from swarmless.proxy.rules import (
    SDK_LABELS,
    BadValue,
    Caller,
    ProxyRequest,
    Refused,
    Route,
    Verdict,
    allow,
    allowed_image,
    fields_of,
    integer,
    is_zero,
    parse_json,
    query_params,
    strings,
    to_json,
)

__all__ = ["check_create", "child_name", "placement"]


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


def check_create(req: ProxyRequest, route: Route) -> Verdict:
    caller = req.caller
    body = parse_json(req.body, "create")
    config = fields_of(body, _CONFIG, "body")
    host = fields_of(config.get("HostConfig"), _HOST_CONFIG, "HostConfig")
    for field, rule in _MUST_BE_ZERO.items():
        if not is_zero(host.get(field)):
            raise Refused(rule, f"HostConfig.{field} is not allowed ({host[field]!r})")
    if req.children >= caller.max_children:
        raise Refused(
            "max-children",
            f"you have {req.children} children running, the limit is {caller.max_children}",
        )
    if req.exited >= caller.max_children:
        raise Refused(
            "max-children",
            f"you keep {req.exited} exited children (at most {caller.max_children}): "
            "remove them (docker rm, or run with --rm / auto_remove)",
        )
    config["Image"] = allowed_image(config.get("Image"), req.images)
    if not is_zero(config.get("Volumes")):
        raise Refused("volumes", "anonymous volumes (Volumes) are not allowed")
    if not is_zero(config.get("MacAddress")):
        raise Refused("network", "a fixed MAC address is not allowed")
    if not is_zero(config.get("OnBuild")):
        raise Refused("unknown-field", "OnBuild is for images, not containers")
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
    env, where = placement(config.get("Env"))
    if where:
        config["Env"] = env
    query = query_params(req.query, allowed=("name", "platform"))
    name = dict(query).get("name")
    if name:
        child_name(name, caller, "name")
    return allow(req, route, "containers/create", query, to_json(config), placement=where)


#: Classic Swarm's placement in a create's Env (2016): ``constraint:node==HOSTNAME`` and
#: ``constraint:node!=HOSTNAME``. Any other ``constraint:`` or ``affinity:`` entry is refused.
_CONSTRAINT = re.compile(r"^constraint:node(==|!=)([A-Za-z0-9][A-Za-z0-9_.-]{0,252})$")
_DIRECTIVES = ("constraint:", "affinity:")


def placement(value: Any) -> tuple[list[str], tuple[tuple[str, str], ...]]:
    """A create's Env without its placement entries, and those entries as ``(op, host)``
    pairs (consumed: the child never sees them). An entry that looks like a classic Swarm
    directive but is not one of the two forms is refused (400), never ignored."""
    env = strings(value, "Env")
    kept: list[str] = []
    found: list[tuple[str, str]] = []
    for entry in env:
        if not entry.lower().startswith(_DIRECTIVES):
            kept.append(entry)
            continue
        m = _CONSTRAINT.match(entry)
        if m is None:
            raise BadValue(
                "constraint",
                f"Env entry {entry[:120]!r}: only constraint:node==HOSTNAME and "
                "constraint:node!=HOSTNAME place a child",
            )
        found.append((m[1], m[2]))
    if len(found) > 16:
        raise BadValue("constraint", "more than 16 placement constraints")
    return kept, tuple(found)


def _labels(
    value: Any, caller: Caller, inherited: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The child's labels: the caller's own (no ``swarmless.*``), then every
    ``swarmless.*`` label the image carries blanked (the engine would copy it onto the
    child), then the forced ones: whose child it is, the call it was made for, how long it
    may outlive its parent."""
    if value is None:
        value = {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise Refused("json", "Labels must map names to strings")
    for key in value:
        if key.startswith("swarmless.") and key not in SDK_LABELS:
            raise Refused("labels", f"label {key!r}: swarmless.* labels are set by swarmless")
    blanked = {k: "" for k in inherited or {} if k.startswith("swarmless.")}
    forced = {
        LABEL_MANAGED: "true",
        LABEL_KIND: "child",
        LABEL_PARENT: caller.container,
        LABEL_CHILDREN_TIMEOUT: f"{caller.children_timeout:g}",
    }
    if caller.call_id:
        forced[LABEL_PARENT_CALL] = caller.call_id
    return {
        **{k: v for k, v in value.items() if k not in SDK_LABELS},
        **blanked,
        **caller.labels,
        **forced,
    }


#: Names (and aliases) of children: the caller's function name, a dash, then a name.
_CHILD_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


def child_name(name: str, caller: Caller, what: str) -> str:
    """A child's name or network alias must start with ``<function>-``: it may not claim
    another container's DNS name on the shared network, nor squat one before it starts."""
    prefix = f"{caller.function}-"
    if not isinstance(name, str) or not _CHILD_NAME.match(name):
        raise Refused("name", f"{what} {name!r} is not a container name")
    if not name.lstrip("/").startswith(prefix) or name.lstrip("/") == prefix:
        raise Refused("name", f"{what} {name!r}: children's names start with {prefix!r}")
    return name


#: Options of a tmpfs mount (``HostConfig.Tmpfs``) a child may use: no ``dev``, ``suid``,
#: ``rbind`` or other mount flags that reach past a plain in-memory directory.
_TMPFS_FLAGS = frozenset({"ro", "rw", "noexec", "nosuid", "nodev", "noatime"})
_TMPFS_VALUE = re.compile(r"^(size|uid|gid|nr_inodes)=([0-9]+[kmgKMG%]?)$|^(mode)=([0-7]{1,4})$")
_MOUNT_TARGET = re.compile(r"^/[A-Za-z0-9_./-]*$")


def _tmpfs(host: dict[str, Any], caller: Caller) -> None:
    tmpfs = host.get("Tmpfs")
    if tmpfs is None:
        return
    if not isinstance(tmpfs, dict) or not all(isinstance(v, str) for v in tmpfs.values()):
        raise Refused("json", "Tmpfs must map paths to option strings")
    for target, options in tmpfs.items():
        if not _MOUNT_TARGET.match(target) or "/../" in f"{target}/" or "//" in target:
            raise Refused("tmpfs", f"tmpfs target {target!r} is not a plain absolute path")
        for option in filter(None, (o.strip() for o in options.split(","))):
            if option in _TMPFS_FLAGS:
                continue
            m = _TMPFS_VALUE.match(option)
            if m is None:
                raise Refused("tmpfs", f"tmpfs option {option!r} is not allowed")
            if m[3] == "mode" and int(m[4], 8) > 0o1777:
                raise Refused("tmpfs", f"tmpfs {option!r}: no setuid or setgid bits")
            if m[1] == "nr_inodes" and _size(m[2]) == 0:
                raise Refused("tmpfs", "tmpfs nr_inodes=0 (no limit) is not allowed")
            if m[1] == "size" and _size(m[2]) > caller.memory:
                raise Refused("memory", f"tmpfs {option!r} is over the memory cap")


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
            raise Refused(rule, f"HostConfig.{field}={value!r} is not allowed")
    for field in ("MaskedPaths", "ReadonlyPaths"):
        # An empty list is not the default here: it unmasks /proc and /sys paths.
        if host.get(field) is not None:
            raise Refused("masked-paths", f"HostConfig.{field} cannot be changed")
    restart = fields_of(host.get("RestartPolicy"), ("Name", "MaximumRetryCount"), "RestartPolicy")
    if restart.get("Name") not in (None, "", "no"):
        raise Refused("restart", f"restart policy {restart['Name']!r}: children do not restart")
    if restart:
        host["RestartPolicy"] = restart
    log = fields_of(host.get("LogConfig"), ("Type", "Config"), "LogConfig")
    if log.get("Type") not in (None, "", "json-file", "local") or not is_zero(log.get("Config")):
        raise Refused("log-config", f"log driver {log.get('Type')!r} with options is not allowed")
    if log:
        host["LogConfig"] = log


def _security(host: dict[str, Any]) -> None:
    for opt in strings(host.get("SecurityOpt"), "SecurityOpt"):
        if opt.strip().lower() not in _SAFE_SECURITY_OPTS:
            raise Refused("security-opt", f"security option {opt!r} is not allowed")


def _mounts(host: dict[str, Any], caller: Caller) -> None:
    mounts = host.get("Mounts")
    if mounts is None:
        return
    if not isinstance(mounts, list):
        raise Refused("json", "Mounts must be a list")
    checked = []
    for raw in mounts:
        m = fields_of(raw, (*_MOUNT, "TmpfsOptions"), "Mounts[]")
        if m.get("Type") != "tmpfs" or not all(
            is_zero(m.get(k)) for k in ("Source", "BindOptions", "VolumeOptions")
        ):
            raise Refused("mounts", f"mount of type {m.get('Type')!r}: only tmpfs mounts")
        options = fields_of(m.get("TmpfsOptions"), ("SizeBytes", "Mode"), "TmpfsOptions")
        for field in ("SizeBytes", "Mode"):
            if integer(options.get(field), field) < 0:
                raise Refused("tmpfs", f"TmpfsOptions.{field} cannot be negative")
        if integer(options.get("SizeBytes"), "SizeBytes") > caller.memory:
            raise Refused("memory", "a tmpfs mount over the memory cap")
        target = m.get("Target")
        if not isinstance(target, str) or not _MOUNT_TARGET.match(target) or ".." in target:
            raise Refused("tmpfs", f"tmpfs target {target!r} is not a plain absolute path")
        m["TmpfsOptions"] = options
        checked.append(m)
    host["Mounts"] = checked


def _resources(host: dict[str, Any], caller: Caller) -> None:
    memory = integer(host.get("Memory"), "Memory")
    if memory < 0 or memory > caller.memory:
        raise Refused("memory", f"Memory {memory} bytes is over the cap of {caller.memory}")
    memory = memory or caller.memory
    host["Memory"] = memory
    swap = integer(host.get("MemorySwap"), "MemorySwap")
    if swap < 0 or swap > 2 * caller.memory:
        raise Refused("memory", f"MemorySwap {swap} is over the cap of {2 * caller.memory}")
    host["MemorySwap"] = swap or memory
    for field in ("MemoryReservation", "ShmSize"):
        if integer(host.get(field), field) > caller.memory:
            raise Refused("memory", f"{field} is over the memory cap of {caller.memory}")
    cap = int(caller.cpus * 1e9)
    cpus = integer(host.get("NanoCpus"), "NanoCpus")
    if cpus < 0 or cpus > cap:
        raise Refused("cpus", f"NanoCpus {cpus} is over the cap of {cap} ({caller.cpus:g} CPUs)")
    host["NanoCpus"] = cpus or cap
    if integer(host.get("CpuShares"), "CpuShares") > 1024:
        raise Refused("cpus", "CpuShares over 1024 would outweigh other containers")
    pids = integer(host.get("PidsLimit"), "PidsLimit")
    if pids > caller.pids:
        raise Refused("pids", f"PidsLimit {pids} is over the cap of {caller.pids}")
    host["PidsLimit"] = pids if pids > 0 else caller.pids
    if integer(host.get("OomScoreAdj"), "OomScoreAdj") < 0:
        raise Refused("oom", "a negative OomScoreAdj would shield the child from the OOM killer")


def _network(host: dict[str, Any], caller: Caller) -> str:
    mode = host.get("NetworkMode") or "default"
    if mode == "default":
        mode = caller.network
    if mode not in (caller.network, "none"):
        raise Refused(
            "network", f"network mode {mode!r}: children join {caller.network!r} or 'none'"
        )
    host["NetworkMode"] = mode
    return str(mode)


def _networking(value: Any, network: str, caller: Caller) -> dict[str, Any]:
    cfg = fields_of(value, ("EndpointsConfig",), "NetworkingConfig")
    endpoints = cfg.get("EndpointsConfig") or {}
    if not isinstance(endpoints, dict):
        raise Refused("json", "EndpointsConfig must be an object")
    out: dict[str, Any] = {}
    for key, settings in endpoints.items():
        name = network if key == "default" else key  # the docker CLI names it "default"
        if name != network or name in out:
            raise Refused("network", f"network {name!r}: children join {network!r} only")
        ep = fields_of(settings, _ENDPOINT, f"EndpointsConfig.{name}")
        extra = {k: v for k, v in ep.items() if k != "Aliases" and not is_zero(v)}
        if extra:
            raise Refused("network", f"endpoint settings {sorted(extra)} are not allowed")
        aliases = strings(ep.get("Aliases"), "Aliases")
        out[name] = {"Aliases": [child_name(a, caller, "network alias") for a in aliases]}
    return {"EndpointsConfig": out}
