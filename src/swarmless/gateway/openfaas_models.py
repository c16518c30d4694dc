"""The shapes of OpenFaaS's gateway API that swarmless serves, as Pydantic models.

They follow OpenFaaS's published API description (``api-docs/spec.openapi.yml`` of
openfaas/faas) and faas-provider's Go types (what faas-cli sends and reads), field for field;
:mod:`swarmless.gateway.openfaas` serves them and :mod:`swarmless.gateway.schemas` lists the
routes. Like the other models they describe the API (``/openapi.json``); the route parses
and checks the bodies itself.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DeleteFunctionRequest",
    "FunctionDeployment",
    "FunctionResources",
    "FunctionStatus",
    "GatewayInfo",
    "ProviderInfo",
    "ScaleServiceRequest",
    "VersionInfo",
]

NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
SECRET = r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$"
#: A Kubernetes-style quantity: ``128Mi``, ``1G``, ``0.5``, ``500m`` (CPU: millicores).
QUANTITY = r"^\d{1,12}(\.\d{1,9})?(Ki|Mi|Gi|Ti|k|K|M|G|T|m|g)?$"
#: The only namespace swarmless has: OpenFaaS's default one (or none named).
Namespace = Literal["", "openfaas-fn"]


class FunctionResources(BaseModel):
    """Memory and CPU: ``{"memory": "128Mi", "cpu": "0.5"}`` (quantities as strings)."""

    model_config = ConfigDict(extra="forbid")

    memory: str | None = Field(None, pattern=QUANTITY, examples=["128Mi"])
    cpu: str | None = Field(None, pattern=QUANTITY, examples=["500m"])


class FunctionDeployment(BaseModel):
    """OpenFaaS's function definition (``POST``/``PUT /system/functions``): a body with
    ``service`` is one of these; swarmless maps it onto a function spec (docs/openfaas.md)."""

    model_config = ConfigDict(
        extra="forbid",
        title="FunctionDeployment",
        json_schema_extra={
            "examples": [
                {"service": "upper", "image": "swarmless/busybox:latest", "envProcess": "rev"},
                {
                    "service": "env",
                    "image": "swarmless/busybox:latest",
                    "envProcess": "env",
                    "envVars": {"GREETING": "hi"},
                    "labels": {"com.openfaas.scale.max": "2"},
                    "annotations": {"com.swarmless.timeout": "10"},
                    "limits": {"memory": "64Mi"},
                },
            ]
        },
    )

    service: str = Field(pattern=NAME, description="The function's name.")
    image: str = Field(max_length=512, description="The image (on the engine, or pullable).")
    namespace: Namespace | None = Field(None, description="Only OpenFaaS's default one.")
    envProcess: str | None = Field(
        None,
        max_length=4096,
        description="The process run per call (the watchdog's fprocess): a oneshot "
        "function's command, body on stdin, stdout answers.",
    )
    envVars: dict[str, str] | None = Field(None, description="Environment.")
    constraints: list[str] | None = Field(None, description="Swarm placement constraints.")
    secrets: list[str] | None = Field(
        None, description="Secrets mounted as /run/secrets/NAME (names of existing ones)."
    )
    labels: dict[str, str] | None = Field(
        None, description="Container labels; com.openfaas.scale.min/max set the scaling range."
    )
    annotations: dict[str, str] | None = Field(
        None,
        description="Kept as labels com.openfaas.annotations.KEY; com.swarmless.FIELD sets a "
        "spec field (mode, handler, timeout...); topic=cron-function with schedule schedules it.",
    )
    limits: FunctionResources | None = Field(None, description="Memory and CPU limits.")
    requests: FunctionResources | None = Field(
        None, description="Checked, not kept: swarmless reserves nothing."
    )
    readOnlyRootFilesystem: Literal[False] | None = Field(
        None, description="Not supported: true is refused."
    )
    registryAuth: str | None = Field(None, description="Deprecated in OpenFaaS; ignored.")
    network: str | None = Field(None, description="Deprecated in OpenFaaS; ignored.")


class FunctionStatus(BaseModel):
    """A deployed function as OpenFaaS lists it (``GET /system/function/{name}``; the items
    of ``GET /system/functions`` carry these fields beside swarmless's own)."""

    model_config = ConfigDict(extra="allow", title="FunctionStatus")

    name: str
    image: str
    namespace: str | None = None
    envProcess: str | None = None
    envVars: dict[str, str] | None = None
    constraints: list[str] | None = None
    secrets: list[str] | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    limits: FunctionResources | None = None
    readOnlyRootFilesystem: bool | None = None
    invocationCount: float = Field(0, description="Calls finished since this gateway started.")
    replicas: int = Field(0, description="Containers wanted (warm) or running (oneshot, cgi).")
    availableReplicas: int = Field(0, description="Containers ready for calls.")


class DeleteFunctionRequest(BaseModel):
    """``DELETE /system/functions``: which function to remove."""

    model_config = ConfigDict(extra="forbid")

    functionName: str = Field(pattern=NAME, examples=["hello"])


class ScaleServiceRequest(BaseModel):
    """``POST /system/scale-function/{name}``: pin a warm function to N containers."""

    model_config = ConfigDict(extra="forbid")

    serviceName: str | None = Field(None, pattern=NAME, description="The URL's function, if given.")
    replicas: int = Field(ge=0, le=1000, examples=[2])
    namespace: Namespace | None = None


class VersionInfo(BaseModel):
    """A release and its commit."""

    sha: str
    release: str
    commit_message: str | None = None


class ProviderInfo(BaseModel):
    """Who runs the functions: swarmless, on Docker or on a Swarm."""

    provider: str
    orchestration: str
    version: VersionInfo


class GatewayInfo(BaseModel):
    """``GET /system/info``: what faas-cli version shows of a gateway."""

    model_config = ConfigDict(title="GatewayInfo")

    provider: ProviderInfo
    version: VersionInfo
    arch: str
