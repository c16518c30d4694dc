"""One-shot (oneshot and cgi) calls on a Swarm, part of :class:`SwarmBackend`.

A call is a service with restart condition ``none`` and one replica, removed after the
call. Its stdin is a Docker config mounted at ``/run/swarmless-stdin`` and fed to the
command by ``/bin/sh`` (configs hold at most 500 KB); its stdout and stderr come back from
the task's logs, which the manager's log broker collects from the task's node (asked again
when the broker says the stream is incomplete). The call's node going down ends it with
status 137 and says so; a task Swarm could not start ends with 125 and Swarm's reason.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import docker
import docker.errors
import docker.types

from swarmless.backends.base import CallerGrants, OneShotResult
from swarmless.backends.swarm_limits import SwarmLimits, may_be_cut
from swarmless.engine import LABEL_CALL, translate
from swarmless.exceptions import FunctionFailed, PayloadTooLarge
from swarmless.spec import FunctionSpec

__all__ = ["LOST", "NOT_RUN", "TERMINAL", "OneShotServices", "exit_code", "latest"]

log = logging.getLogger("swarmless.backend.swarm")
T = TypeVar("T")

STDIN_PATH = "/run/swarmless-stdin"
#: Docker configs hold at most 500 KB: the largest stdin a one-shot call can get.
STDIN_LIMIT = 500 * 1000
#: Task states after which a task's container is gone or never ran.
TERMINAL = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})
#: The exit status reported for a container lost with its node (as if killed).
LOST = 137
#: The exit status reported for a task Swarm could not run (image missing, no node, ...).
NOT_RUN = 125
#: What the engine writes into a service's log stream when a node's logs could not be had.
LOGS_ERROR = b"Error grabbing logs: "
#: How long to keep asking for a finished one-shot task's complete logs.
LOGS_RETRY_S = 5.0
#: How long one-shot tasks avoid a node whose task logs could not be read.
LOGS_AVOID_S = 60.0


def latest(tasks: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The newest of a service's tasks."""
    if not tasks:
        return None
    return max(tasks, key=lambda t: ((t.get("Version") or {}).get("Index", 0), t["CreatedAt"]))


def exit_code(task: Mapping[str, Any]) -> int | None:
    """A finished task's container exit status, if it ran."""
    code = ((task.get("Status") or {}).get("ContainerStatus") or {}).get("ExitCode")
    return int(code) if isinstance(code, int) else None


def _clean_logs(data: bytes) -> tuple[bytes, bytes]:
    """``data`` without the engine's ``Error grabbing logs: ...`` lines, and the first one.

    The engine writes the line as a frame of its own, so it can follow output that did not
    end in a newline: it is cut from where it starts to its own newline.
    """
    first = b""
    while (at := data.find(LOGS_ERROR)) >= 0:
        end = data.find(b"\n", at)
        end = len(data) if end < 0 else end + 1
        first = first or data[at:end].strip()
        data = data[:at] + data[end:]
    return data, first


class OneShotServices:
    """The one-shot calls of :class:`swarmless.backends.swarm.SwarmBackend` (a mixin)."""

    _callers: CallerGrants | None
    _lock: threading.Lock
    _down: set[str]
    _hostnames: dict[str, str]
    _images: dict[str, tuple[list[str], list[str]]]
    #: Nodes whose task logs the manager could not deliver: node id -> until (monotonic).
    _no_logs: dict[str, float]
    #: Limits of the services (their log files hold a one-shot call's answer).
    limits: SwarmLimits

    if TYPE_CHECKING:  # provided by SwarmBackend and EngineBackend

        @property
        def client(self) -> docker.DockerClient:
            raise NotImplementedError

        async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
            raise NotImplementedError

        def _labels(self, kind: str, spec: FunctionSpec, **extra: str) -> dict[str, str]:
            raise NotImplementedError

        def _service_name(self, spec: FunctionSpec, suffix: str) -> str:
            raise NotImplementedError

        def _task_template(
            self,
            spec: FunctionSpec,
            *,
            labels: Mapping[str, str],
            env: Mapping[str, str],
            command: list[str] | None,
            args: list[str] | None,
            configs: list[Any] | None = None,
            avoid: Sequence[str] = (),
        ) -> Any:
            raise NotImplementedError

        def _create_service(self, name: str, template: Any, labels: dict[str, str]) -> str:
            raise NotImplementedError

    def _argv(self, image: str, command: list[str] | None) -> list[str]:
        """The full argv a container of ``image`` runs with ``command`` as its CMD."""
        if image not in self._images:
            config = self.client.api.inspect_image(image).get("Config") or {}
            self._images[image] = (
                list(config.get("Entrypoint") or []),
                list(config.get("Cmd") or []),
            )
        entrypoint, cmd = self._images[image]
        return [*entrypoint, *(command if command is not None else cmd)]

    async def run_once(
        self,
        spec: FunctionSpec,
        *,
        call_id: str,
        args: Sequence[str],
        env: Mapping[str, str],
        stdin: bytes,
        timeout: float,
    ) -> OneShotResult:
        if len(stdin) > STDIN_LIMIT:
            raise PayloadTooLarge(
                f"a {spec.mode} call on the swarm backend takes at most {STDIN_LIMIT} bytes of "
                f"input (a Docker config), got {len(stdin)}; use a warm function for more"
            )
        command = [*(spec.command or []), *args] or None
        labels = self._labels(spec.mode, spec, call=call_id)
        labels[LABEL_CALL] = call_id
        callers = self._callers
        grant, access = callers.grant(spec, call_id=call_id) if callers else (None, {})
        try:
            return await self._call(
                self._run_once, spec, labels, command, {**spec.env, **env, **access}, stdin, timeout
            )
        finally:
            if grant is not None and callers is not None:
                callers.revoke(grant.token)

    def _run_once(
        self,
        spec: FunctionSpec,
        labels: dict[str, str],
        command: list[str] | None,
        env: dict[str, str],
        stdin: bytes,
        timeout: float,
    ) -> OneShotResult:
        api = self.client.api
        t0 = time.monotonic()
        deadline = t0 + timeout
        suffix = secrets.token_hex(6)
        config_id = ""
        sid = ""
        try:
            with translate(image=spec.image, api=api):
                configs = None
                args = command
                entry = None
                if stdin:
                    name = f"swarmless-stdin-{suffix}"
                    config_id = str(api.create_config(name, stdin, labels=labels)["ID"])
                    configs = [docker.types.ConfigReference(config_id, name, filename=STDIN_PATH)]
                    argv = self._argv(spec.image or "", command)
                    entry = ["/bin/sh", "-c", f'exec "$@" <{STDIN_PATH}', "sh", *argv]
                    args = None
                template = self._task_template(
                    spec,
                    labels=labels,
                    env=env,
                    command=entry,
                    args=args,
                    configs=configs,
                    avoid=self._avoided(),
                )
                sid = self._create_service(self._service_name(spec, suffix), template, labels)
            return self._wait_once(spec, sid, t0, deadline)
        finally:
            if sid:
                with contextlib.suppress(docker.errors.APIError):
                    api.remove_service(sid)
            if config_id:
                with contextlib.suppress(docker.errors.APIError):
                    api.remove_config(config_id)

    def _wait_once(self, spec: FunctionSpec, sid: str, t0: float, deadline: float) -> OneShotResult:
        api = self.client.api
        started: float | None = None
        task: Mapping[str, Any] | None = None
        delay = 0.03
        while True:
            with translate(api=api):
                task = latest(api.tasks(filters={"service": sid}))
            state = ((task or {}).get("Status") or {}).get("State", "")
            now = time.monotonic()
            if started is None and state in ("running", *TERMINAL):
                started = now
            if state in TERMINAL:
                break
            if task is not None and task.get("NodeID") in self._down_nodes():
                node = self._hostnames.get(task["NodeID"], task["NodeID"])
                return self._result(sid, LOST, b"", f"node {node} went down".encode(), t0, started)
            if now >= deadline:
                break
            time.sleep(min(delay, max(deadline - now, 0.001)))
            delay = min(delay * 1.5, 0.25)
        status = (task or {}).get("Status") or {}
        state = status.get("State", "")
        if state not in TERMINAL:
            if started is None:  # never ran: say why Swarm could not place or start it
                why = status.get("Err") or status.get("Message") or state or "not scheduled"
                return self._result(
                    sid,
                    NOT_RUN,
                    b"",
                    f"Swarm did not start the task within the timeout: {why}".encode(),
                    t0,
                    None,
                )
            stdout, stderr, over = self._logs(spec, sid, (task or {}).get("NodeID", ""))
            return self._result(
                sid, LOST, stdout, stderr, t0, started, timed_out=True, output_exceeded=over
            )
        code = exit_code(task or {})
        if code is None:
            why = status.get("Err") or status.get("Message") or state
            return self._result(
                sid, NOT_RUN, b"", f"Swarm could not run it: {why}".encode(), t0, started
            )
        stdout, stderr, over = self._logs(spec, sid, (task or {}).get("NodeID", ""))
        oom = code == LOST and spec.memory is not None
        return self._result(sid, code, stdout, stderr, t0, started, oom=oom, output_exceeded=over)

    def _down_nodes(self) -> set[str]:
        with self._lock:
            return set(self._down)

    def _logs(self, spec: FunctionSpec, sid: str, node: str) -> tuple[bytes, bytes, bool]:
        """A finished task's stdout and stderr, as the manager's log broker collects them,
        each read up to ``spec.max_output`` (stderr past it dropped, a line says so), and
        whether stdout is over it or may have lost its beginning to the log's rotation
        (:func:`~.swarm_limits.may_be_cut`): an answer that is refused, never cut.

        The broker asks the task's node for the logs; when the node's answer is missing it
        writes ``Error grabbing logs: ... incomplete log stream`` into the stream in place
        of the data. Asked again shortly after, the node usually answers: retry for a few
        seconds, and never hand the engine's complaint to the caller as the function's
        output. A node that still does not (seen after a node restart) cannot serve
        one-shot calls: the call fails saying so, and the next ones avoid that node for
        ``LOGS_AVOID_S`` seconds.
        """
        deadline = time.monotonic() + LOGS_RETRY_S
        delay = 0.1
        limit = spec.max_output
        while True:
            out, more = self._service_logs(sid, stdout=True, limit=limit)
            err, err_more = self._service_logs(sid, stdout=False, limit=limit)
            out, out_bad = _clean_logs(out)
            err, err_bad = _clean_logs(err)
            if not (out_bad or err_bad):
                size = self.limits.log_file_size(spec, oneshot=True)
                over = more or len(out) > limit or may_be_cut(out, err, size)
                if err_more:
                    err = err[:limit] + b"\n[more of stderr dropped: over max_output]\n"
                return out, err, over
            if time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        why = (out_bad or err_bad).decode("utf-8", "replace")
        host = self._hostnames.get(node, node) or "?"
        if node:
            with self._lock:
                self._no_logs[node] = time.monotonic() + LOGS_AVOID_S
        log.warning("no logs from node %s for one-shot service %s: %s", host, sid, why)
        raise FunctionFailed(
            f"the call ran on node {host}, but the Swarm manager could not deliver its output "
            f"({why}); one-shot calls avoid that node for {LOGS_AVOID_S:g} s"
        )

    def _avoided(self) -> list[str]:
        """Nodes one-shot tasks stay off (their logs could not be read lately)."""
        now = time.monotonic()
        with self._lock:
            for node, until in list(self._no_logs.items()):
                if until < now:
                    del self._no_logs[node]
            return list(self._no_logs)

    def _service_logs(self, sid: str, *, stdout: bool, limit: int) -> tuple[bytes, bool]:
        """One stream of a service's log, at most ``limit`` + 1 bytes of it held; and
        whether there was more."""
        held = bytearray()
        with translate(api=self.client.api):
            chunks = self.client.api.service_logs(sid, stdout=stdout, stderr=not stdout)
            try:
                for chunk in chunks:
                    held += chunk
                    if len(held) > limit:
                        del held[limit + 1 :]
                        return bytes(held), True
            finally:
                with contextlib.suppress(Exception):
                    chunks.close()
        return bytes(held), False

    def _result(
        self,
        sid: str,
        code: int,
        stdout: bytes,
        stderr: bytes,
        t0: float,
        started: float | None,
        *,
        timed_out: bool = False,
        oom: bool = False,
        output_exceeded: bool = False,
    ) -> OneShotResult:
        now = time.monotonic()
        started = started if started is not None else now
        return OneShotResult(
            container=sid,
            exit_code=code,
            stdout=stdout,
            stderr=stderr,
            oom=oom,
            timed_out=timed_out,
            init_ms=(started - t0) * 1000,
            run_ms=(now - started) * 1000,
            output_exceeded=output_exceeded,
        )
