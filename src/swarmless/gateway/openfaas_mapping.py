"""OpenFaaS's function definitions as swarmless specs, and back (the mapping itself: pure,
no I/O; :mod:`swarmless.gateway.openfaas` serves it, docs/openfaas.md tells it).

``to_spec``: a FunctionDeployment as a spec dict for the admin route to validate, with
where each spec field came from (an error then names OpenFaaS's field). ``to_status``: a
function as swarmless describes it, as OpenFaaS's FunctionStatus.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from swarmless.exceptions import InvalidArgument, SpecError
from swarmless.gateway.openfaas_models import FunctionDeployment

__all__ = ["ANNOTATIONS", "NAMESPACE", "SPEC_ANNOTATION", "to_spec", "to_status"]

#: Labels that hold OpenFaaS annotations (faasd keeps them the same way).
ANNOTATIONS = "com.openfaas.annotations."
#: Annotations that set a field of the swarmless spec: ``com.swarmless.timeout: "10"``.
SPEC_ANNOTATION = "com.swarmless."
#: OpenFaaS's only namespace, which swarmless reports.
NAMESPACE = "openfaas-fn"


def _flag(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError("true or false")
    return value.lower() == "true"


def _whole(value: str) -> int:
    if not re.fullmatch(r"\d{1,9}", value):
        raise ValueError("a whole number")
    return int(value)


def _number(value: str) -> float:
    if not re.fullmatch(r"\d{1,9}(\.\d{1,9})?", value):
        raise ValueError("a number")
    return float(value)


#: The spec fields an annotation may set, and how its text becomes the field's value (the
#: spec then checks the value as it checks any other). Not the name, image, command,
#: environment, labels, secrets, limits or placement: their OpenFaaS fields set those.
_SETTABLE: dict[str, Callable[[str], Any]] = {
    **dict.fromkeys(("mode", "handler", "handler_kind", "schedule", "timezone", "docker"), str),
    **dict.fromkeys(("max_body", "max_output", "log_size", "network"), str),
    **dict.fromkeys(("timeout", "idle_timeout", "backoff", "max_age"), _number),
    **dict.fromkeys(("concurrency", "min_containers", "max_containers", "buffer"), _whole),
    **dict.fromkeys(("queue_size", "retries", "async_concurrency", "pids"), _whole),
    **dict.fromkeys(("private", "paused_buffer", "retry_sync"), _flag),
}
#: OpenFaaS's scaling labels.
_SCALE_LABELS = {
    "com.openfaas.scale.min": "min_containers",
    "com.openfaas.scale.max": "max_containers",
}
_QUANTITY = re.compile(r"(\d{1,12}(?:\.\d{1,9})?)(Ki|Mi|Gi|Ti|k|K|M|G|T|m|g)?")
#: Memory units: Kubernetes' (binary Ki..Ti, decimal k..T) and Docker's m and g (MiB, GiB).
_BYTES = {
    **{"": 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4},
    **{"k": 1000, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4},
    **{"m": 1024**2, "g": 1024**3},
}


def _memory(text: str) -> int:
    m = _QUANTITY.fullmatch(text.strip())
    if m is None:
        raise ValueError("a quantity like '128Mi', '1G' or '256m' (MiB, as Docker has it)")
    return int(float(m[1]) * _BYTES[m[2] or ""])


def _cpus(text: str) -> float:
    m = _QUANTITY.fullmatch(text.strip())
    if m is None or m[2] not in (None, "m"):
        raise ValueError("CPUs like '0.5', '2' or '500m' (millicores)")
    return float(m[1]) / (1000 if m[2] == "m" else 1)


def to_spec(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """An OpenFaaS FunctionDeployment as a swarmless spec (a dict, for the admin route to
    validate), and where each spec field came from (to name OpenFaaS's field in an error).

    InvalidArgument (400) for a body that is not a FunctionDeployment (unknown fields, wrong
    types); the spec's own rules (a name, an image, sizes...) are the admin route's.
    """
    read_only = body.get("readOnlyRootFilesystem")
    if read_only is not None and read_only is not False:  # (0 == False, and true is refused)
        raise InvalidArgument(
            "not an OpenFaaS FunctionDeployment: readOnlyRootFilesystem: swarmless does not "
            f"offer a read-only root filesystem; false or leave it out (got {read_only!r:.50})"
        )
    try:
        d = FunctionDeployment.model_validate(dict(body), strict=True)
    except ValidationError as e:
        raise InvalidArgument(
            "not an OpenFaaS FunctionDeployment: "
            + "; ".join(f"{'.'.join(map(str, x['loc'])) or 'body'}: {x['msg']}" for x in e.errors())
        ) from None
    spec: dict[str, Any] = {"name": d.service, "image": d.image, "mode": "oneshot"}
    origin = {"name": "service", "image": "image"}
    errors: dict[str, str] = {}

    def put(field: str, value: Any, source: str) -> None:
        if field in origin:
            errors[source] = f"sets {field}, which {origin[field]} sets already"
            return
        spec[field], origin[field] = value, source

    if d.envProcess:
        put("command", d.envProcess, "envProcess")  # split by the spec, as a shell would
    if d.envVars:
        put("env", dict(d.envVars), "envVars")
    if d.constraints:
        put("placement", list(d.constraints), "constraints")
    if d.secrets:
        put("secrets", list(d.secrets), "secrets")
    for field, text, convert in (
        ("memory", d.limits and d.limits.memory, _memory),
        ("cpus", d.limits and d.limits.cpu, _cpus),
    ):
        if text:
            try:
                put(field, convert(text), f"limits.{'cpu' if field == 'cpus' else field}")
            except ValueError as e:
                errors[f"limits.{'cpu' if field == 'cpus' else field}"] = f"must be {e}"
    for field, text, convert in (
        ("memory", d.requests and d.requests.memory, _memory),
        ("cpus", d.requests and d.requests.cpu, _cpus),
    ):
        if text:  # checked, not kept: swarmless reserves nothing
            try:
                convert(text)
            except ValueError as e:
                errors[f"requests.{'cpu' if field == 'cpus' else field}"] = f"must be {e}"
    labels: dict[str, str] = {}
    for key, value in (d.labels or {}).items():
        if key.startswith(ANNOTATIONS):
            errors[f"labels.{key}"] = f"{ANNOTATIONS}* labels hold annotations: give annotations"
        elif key in _SCALE_LABELS:
            try:
                put(_SCALE_LABELS[key], _whole(value), f"labels.{key}")
            except ValueError as e:
                errors[f"labels.{key}"] = f"must be {e}, got {value!r}"
        labels[key] = value
    annotations = dict(d.annotations or {})
    for key, value in annotations.items():
        if not key.startswith(SPEC_ANNOTATION):
            labels[ANNOTATIONS + key] = value
            continue
        field = key[len(SPEC_ANNOTATION) :]
        if field not in _SETTABLE:
            errors[f"annotations.{key}"] = (
                f"swarmless has no such field to set; one of {', '.join(sorted(_SETTABLE))}"
            )
            continue
        try:
            put(field, _SETTABLE[field](value), f"annotations.{key}")
        except ValueError as e:
            errors[f"annotations.{key}"] = f"must be {e}, got {value!r}"
    if annotations.get("topic") == "cron-function":  # OpenFaaS's cron-connector
        if "schedule" not in annotations:
            errors["annotations.schedule"] = "required with topic: cron-function"
        else:
            put("schedule", annotations["schedule"], "annotations.schedule")
    if labels:
        spec["labels"] = labels
        origin.setdefault("labels", "labels")
    if errors:
        raise SpecError(errors)
    return spec, origin


def _quantity(n: int) -> str:
    for unit in ("Gi", "Mi", "Ki"):
        if n % (size := _BYTES[unit]) == 0:
            return f"{n // size}{unit}"
    return str(n)


def to_status(item: Mapping[str, Any], calls: float = 0) -> dict[str, Any]:
    """A function as swarmless describes it, as OpenFaaS's FunctionStatus."""
    spec: Mapping[str, Any] = item["spec"]
    counts: Mapping[str, int] = item.get("containers") or {}
    scale: Mapping[str, Any] = item.get("scale") or {}
    labels: dict[str, str] = {}
    annotations = {f"{SPEC_ANNOTATION}mode": str(spec.get("mode"))}
    for key, value in (spec.get("labels") or {}).items():
        if key.startswith(ANNOTATIONS):
            annotations[key[len(ANNOTATIONS) :]] = value
        else:
            labels[key] = value
    if spec.get("mode") == "warm":
        running = counts.get("ready", 0) + counts.get("starting", 0)
        wanted = scale.get("pinned")
        replicas = wanted if wanted is not None else scale.get("desired")
        available = counts.get("ready", 0)
    else:  # a container per call: those running now
        running = available = counts.get("busy", 0)
        replicas = None
    status: dict[str, Any] = {
        "name": item["name"],
        "image": spec.get("image") or "",
        "namespace": NAMESPACE,
        "envVars": dict(spec.get("env") or {}),
        "constraints": list(spec.get("placement") or []),
        "secrets": list(spec.get("secrets") or []),
        "labels": labels,
        "annotations": annotations,
        "invocationCount": calls,
        "replicas": int(replicas if replicas is not None else running),
        "availableReplicas": int(available),
    }
    command = spec.get("command")
    if spec.get("handler_kind") == "command" and spec.get("handler"):
        status["envProcess"] = spec["handler"]
    elif command:
        status["envProcess"] = shlex.join(command)
    limits = {}
    if spec.get("memory"):
        limits["memory"] = _quantity(int(spec["memory"]))
    if spec.get("cpus"):
        limits["cpu"] = format(float(spec["cpus"]), "g")
    if limits:
        status["limits"] = limits
    return status
