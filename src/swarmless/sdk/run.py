"""Run a Docker image as if it were a function call.

The successor of the 2016 ``dockerrun`` library: stdout comes back, a non-zero exit is
raised, and - unlike the original - every container is labelled and removed on every path
(success, error, timeout, Ctrl-C), timeouts are enforced, and stdin is streamed in.

How a foreground run works: the container is created, its stdio is attached *before* it
starts (as ``docker run -i`` does, so no output is lost and bytes come back exactly, not
through the log driver), stdin is written from a thread and half-closed, stdout and stderr
are read as multiplexed frames until the stream ends, then the exit status is read and the
container removed. A timer kills the container at the deadline. Five Engine API calls per
run: create, attach, start, wait, remove (the Docker SDK's own ``containers.run`` makes six).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import socket
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any, Literal

import docker.errors
import docker.utils
from docker.utils.socket import frames_iter

from swarmless.engine import managed_labels, translate
from swarmless.exceptions import ContainerError, InvalidArgument, OOMKilled, RunTimeout, WaitTimeout
from swarmless.sdk.options import split_command

__all__ = [
    "Outcome",
    "Pull",
    "Run",
    "RunOptions",
    "Stdin",
    "execute",
    "run_container",
    "start_container",
]

Pull = Literal["missing", "always", "never"]
Stdin = bytes | str | IO[bytes] | None

_STDOUT, _STDERR = 1, 2
_CHUNK = 1 << 16


class RunOptions:
    """Validated arguments of one run; refuses bad input before anything starts."""

    __slots__ = (
        "auto_remove",
        "binds",
        "command",
        "cpus",
        "entrypoint",
        "env",
        "hostname",
        "image",
        "labels",
        "memory",
        "name",
        "network",
        "owner",
        "pull",
        "remove",
        "stderr",
        "stderr_sink",
        "stdin",
        "stdout",
        "text",
        "timeout",
        "user",
        "workdir",
    )

    def __init__(
        self,
        image: str,
        command: str | Sequence[str] | None = None,
        *,
        stdin: Stdin = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        network: str | None = None,
        memory: int | str | None = None,
        cpus: float | None = None,
        user: str | int | None = None,
        workdir: str | None = None,
        labels: Mapping[str, str] | Sequence[str] | None = None,
        stdout: bool = True,
        stderr: bool | IO[bytes] = False,
        remove: bool = True,
        pull: Pull = "missing",
        text: bool = False,
        binds: Sequence[str] | None = None,
        owner: Mapping[str, str] | None = None,
        entrypoint: Sequence[str] | None = None,
        name: str | None = None,
        hostname: str | None = None,
        auto_remove: bool = False,
    ) -> None:
        if not isinstance(image, str) or not image.strip():
            raise InvalidArgument(f"image must be a non-empty string, got {image!r}")
        self.image = image.strip()
        if command is None:
            self.command: list[str] | None = None
        elif isinstance(command, str):
            # As docker-py and a shell: "echo hello world" is three arguments.
            self.command = split_command(command)
        elif isinstance(command, Sequence) and all(isinstance(a, str) for a in command):
            self.command = list(command)
        else:
            raise InvalidArgument(
                f"command must be a string or a list of strings, got {command!r}; "
                "convert numbers with str() first"
            )
        if stdin is not None and not isinstance(stdin, bytes | str) and not hasattr(stdin, "read"):
            raise InvalidArgument(
                f"stdin must be bytes, str or a binary file, got {type(stdin).__name__}"
            )
        self.stdin = stdin
        if env is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise InvalidArgument(f"env must map strings to strings, got {dict(env)!r}")
        self.env = dict(env or {})
        if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
            raise InvalidArgument(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout) if timeout is not None else None
        if cpus is not None and (not isinstance(cpus, int | float) or cpus <= 0):
            raise InvalidArgument(f"cpus must be a positive number, got {cpus!r}")
        self.cpus = cpus
        if memory is not None and not isinstance(memory, int | str):
            raise InvalidArgument(f"memory must be bytes (int) or a string like '256m': {memory!r}")
        self.memory = memory
        if pull not in ("missing", "always", "never"):
            raise InvalidArgument(f"pull must be 'missing', 'always' or 'never', got {pull!r}")
        self.pull: Pull = pull
        if isinstance(labels, Sequence) and not isinstance(labels, str):
            labels = dict.fromkeys(labels, "")  # docker-py: a list of names, no values
        if labels is not None and not (
            isinstance(labels, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
        ):
            raise InvalidArgument(f"labels must map strings to strings, got {labels!r}")
        self.labels = dict(labels or {})
        #: The labels that say which instance made the container (swarmless.ownership);
        #: they win over ``labels``.
        self.owner = dict(owner or {})
        if isinstance(user, int) and not isinstance(user, bool):
            user = str(user)  # a uid, as docker-py takes it
        if user is not None and not isinstance(user, str):
            raise InvalidArgument(f"user must be a name or a uid, got {user!r}")
        self.network, self.user, self.workdir = network, user, workdir
        # stderr=True returns it with stdout; a binary file receives it as it arrives.
        self.stderr = stderr is True
        self.stderr_sink: IO[bytes] | None = None if isinstance(stderr, bool) else stderr
        self.stdout, self.remove, self.text = stdout, remove, text
        #: Host paths mounted into the container (``host:container[:ro]``).
        self.binds = list(binds or [])
        self.entrypoint = list(entrypoint) if entrypoint is not None else None
        self.name, self.hostname = name, hostname
        #: The engine removes the container when it exits (``docker run --rm``).
        self.auto_remove = auto_remove

    def stdin_bytes(self) -> bytes | None:
        if self.stdin is None:
            return None
        if isinstance(self.stdin, str):
            return self.stdin.encode()
        if isinstance(self.stdin, bytes):
            return self.stdin
        data = self.stdin.read()
        return data.encode() if isinstance(data, str) else bytes(data)

    def create_kwargs(self, api: Any, kind: str) -> dict[str, Any]:
        host_config: dict[str, Any] = {}
        if self.memory is not None:
            host_config["mem_limit"] = self.memory
        if self.cpus is not None:
            host_config["nano_cpus"] = int(self.cpus * 1e9)
        if self.network:
            host_config["network_mode"] = self.network
        if self.binds:
            host_config["binds"] = self.binds
        if self.auto_remove:
            host_config["auto_remove"] = True
        with_stdin = self.stdin is not None
        return {
            "image": self.image,
            "command": self.command,
            "entrypoint": self.entrypoint,
            "environment": self.env or None,
            "user": self.user,
            "working_dir": self.workdir,
            "name": self.name,
            "hostname": self.hostname,
            "labels": managed_labels(kind, {**self.labels, **self.owner}, image=self.image),
            # with detach=False the SDK also sets StdinOnce: stdin closes at our EOF.
            "stdin_open": with_stdin,
            "host_config": api.create_host_config(**host_config),
        }


def _create(
    api: Any, opts: RunOptions, kind: str, host_config: Mapping[str, Any] | None = None
) -> str:
    """Create the container, pulling its image first when the options allow; the Engine
    API's ``host_config`` entries (``PidsLimit``, ``LogConfig``) are added as they are."""
    kwargs = opts.create_kwargs(api, kind)
    if host_config:
        kwargs["host_config"].update(host_config)
    with translate(image=opts.image, api=api):
        if opts.pull == "always":
            _pull(api, opts.image)
        try:
            return str(api.create_container(**kwargs)["Id"])
        except docker.errors.ImageNotFound:
            if opts.pull == "never":
                raise
        _pull(api, opts.image)
        return str(api.create_container(**kwargs)["Id"])


def _pull(api: Any, image: str) -> None:
    repo, tag = docker.utils.parse_repository_tag(image)
    try:
        api.pull(repo, tag=tag or "latest")
    except docker.errors.APIError as e:
        raise docker.errors.ImageNotFound(str(e.explanation or e)) from e


def _remove(api: Any, container_id: str) -> None:
    # Removal must not mask the error that brought us here; a container that is already
    # gone (removed by someone else, or by the engine) is fine.
    with contextlib.suppress(Exception):
        api.remove_container(container_id, force=True, v=True)


def _raw_socket(sock: Any) -> socket.socket:
    return getattr(sock, "_sock", sock)  # type: ignore[no-any-return]


def _feed_stdin(sock: Any, data: bytes) -> None:
    raw = _raw_socket(sock)
    with contextlib.suppress(OSError):
        view = memoryview(data)
        for i in range(0, len(view), _CHUNK):
            raw.sendall(view[i : i + _CHUNK])
    with contextlib.suppress(OSError):
        raw.shutdown(socket.SHUT_WR)


class _Killer:
    """Kills a container when its deadline passes; remembers that it did."""

    def __init__(self, api: Any, container_id: str, timeout: float | None) -> None:
        self.fired = False
        self._api, self._id = api, container_id
        self._timer: threading.Timer | None = None
        if timeout is not None:
            self._timer = threading.Timer(timeout, self._kill)
            self._timer.daemon = True
            self._timer.start()

    def _kill(self) -> None:
        self.fired = True
        with contextlib.suppress(Exception):
            self._api.kill(self._id)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _start(api: Any, opts: RunOptions, container_id: str) -> None:
    """Start the container; a command that cannot be executed fails like ``docker run``."""
    try:
        api.start(container_id)
    except docker.errors.APIError as e:
        text = str(e.explanation or e)
        if "executable file not found" in text or "no such file or directory" in text:
            status = 127
        elif "permission denied" in text:
            status = 126
        else:
            raise
        raise ContainerError(
            image=opts.image,
            command=opts.command,
            exit_status=status,
            stderr=text.encode(),
            container=container_id,
        ) from None


def _exit_status(api: Any, container_id: str) -> tuple[int, bool]:
    status = int(api.wait(container_id)["StatusCode"])
    oom = False
    if status != 0:
        with contextlib.suppress(Exception):
            oom = bool(api.inspect_container(container_id)["State"].get("OOMKilled"))
    return status, oom


def _failure(opts: RunOptions, status: int, stderr: bytes, cid: str, oom: bool) -> ContainerError:
    cls = OOMKilled if oom else ContainerError
    return cls(
        image=opts.image, command=opts.command, exit_status=status, stderr=stderr, container=cid
    )


def _output(opts: RunOptions, data: bytes) -> bytes | str:
    return data.decode("utf-8", "replace") if opts.text else data


@dataclasses.dataclass
class Outcome:
    """What one foreground container run produced (the gateway's one-shot modes use it)."""

    container_id: str
    status: int
    stdout: bytes
    stderr: bytes
    #: Both streams in arrival order, when both were asked for.
    combined: bytes | None
    oom: bool
    timed_out: bool
    #: Monotonic seconds: before create, after start, after exit.
    t_create: float
    t_started: float
    t_exited: float
    #: stdout passed ``max_output``: the container was killed, ``stdout`` holds its first
    #: ``max_output`` bytes.
    output_exceeded: bool = False


class _Capped:
    """One stream's bytes, at most ``limit`` of them (None: all); counts what it dropped."""

    def __init__(self, limit: int | None) -> None:
        self._buf = io.BytesIO()
        self._limit = limit
        self.size = 0
        self.dropped = 0

    def write(self, chunk: bytes) -> bool:
        """Keep what fits; False once something did not."""
        room = len(chunk) if self._limit is None else self._limit - self.size
        if room >= len(chunk):
            self._buf.write(chunk)
            self.size += len(chunk)
            return True
        if room > 0:
            self._buf.write(chunk[:room])
            self.size += room
        self.dropped += len(chunk) - max(room, 0)
        return False

    def getvalue(self) -> bytes:
        return self._buf.getvalue()


def execute(
    api: Any,
    opts: RunOptions,
    kind: str = "run",
    *,
    max_output: int | None = None,
    host_config: Mapping[str, Any] | None = None,
) -> Outcome:
    """Run to completion and report what happened, without raising for the exit status.

    With ``max_output``, at most that many bytes of each stream are held: the container is
    killed as soon as its stdout passes it (``Outcome.output_exceeded``), and stderr past
    it is dropped (a line at its end says how much). ``host_config`` entries of the Engine
    API (``PidsLimit``, ``LogConfig``) go into the container's as they are.
    """
    t_create = time.monotonic()
    container_id = _create(api, opts, kind, host_config)
    killer: _Killer | None = None
    exceeded = False
    try:
        stdin = opts.stdin_bytes()
        out, err = _Capped(max_output), _Capped(max_output)
        both = io.BytesIO() if (opts.stdout and opts.stderr) else None
        with translate(image=opts.image, api=api):
            params = {"stdout": 1, "stderr": 1, "stream": 1, "stdin": int(stdin is not None)}
            sock = api.attach_socket(container_id, params=params)
            try:
                _start(api, opts, container_id)
                t_started = time.monotonic()
                killer = _Killer(api, container_id, opts.timeout)
                feeder = None
                if stdin is not None:
                    feeder = threading.Thread(target=_feed_stdin, args=(sock, stdin), daemon=True)
                    feeder.start()
                sink = opts.stderr_sink
                for stream, chunk in frames_iter(sock, tty=False):
                    if not (out if stream == _STDOUT else err).write(chunk) and stream == _STDOUT:
                        exceeded = True  # no more of it is read: stop the container now
                        break
                    if both is not None:
                        both.write(chunk)
                    if sink is not None and stream == _STDERR:
                        sink.write(chunk)
                        sink.flush()
                if feeder is not None:
                    feeder.join(timeout=5)
            finally:
                if exceeded:
                    # The engine reports no exit (and a kill waits for one) while a stream
                    # of the container waits for its reader: end the stream first, for
                    # real (close() alone leaves the socket open while a reference lives).
                    with contextlib.suppress(OSError):
                        _raw_socket(sock).shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(Exception):
                    sock.close()
            if exceeded:
                with contextlib.suppress(Exception):
                    api.kill(container_id)
            status, oom = _exit_status(api, container_id)
        stderr = err.getvalue()
        if err.dropped:
            stderr += f"\n[{err.dropped} more bytes of stderr dropped]\n".encode()
        return Outcome(
            container_id=container_id,
            status=status,
            stdout=out.getvalue(),
            stderr=stderr,
            combined=both.getvalue() if both is not None else None,
            oom=oom,
            timed_out=killer.fired,
            t_create=t_create,
            t_started=t_started,
            t_exited=time.monotonic(),
            output_exceeded=exceeded,
        )
    finally:
        if killer is not None:
            killer.cancel()
        if opts.remove:
            _remove(api, container_id)


def run_container(api: Any, opts: RunOptions, kind: str = "run") -> bytes | str:
    """Run to completion and return stdout; see :meth:`swarmless.Client.run`."""
    o = execute(api, opts, kind)
    if o.timed_out:
        raise RunTimeout(image=opts.image, timeout=opts.timeout or 0, container=o.container_id)
    if o.status != 0:
        raise _failure(opts, o.status, o.stderr, o.container_id, o.oom)
    if o.combined is not None:
        return _output(opts, o.combined)
    return _output(opts, o.stdout if opts.stdout else o.stderr)


def start_container(api: Any, opts: RunOptions, kind: str = "run") -> Run:
    """Start a container and return its handle; see :meth:`swarmless.Client.run`."""
    container_id = _create(api, opts, kind)
    try:
        stdin = opts.stdin_bytes()
        with translate(image=opts.image, api=api):
            if stdin is None:
                _start(api, opts, container_id)
            else:
                sock = api.attach_socket(container_id, params={"stdin": 1, "stream": 1})
                _start(api, opts, container_id)
                _feed_stdin(sock, stdin)
                sock.close()
        return Run(api, container_id, opts)
    except BaseException:
        if opts.remove:
            _remove(api, container_id)
        raise


def _reap(api: Any, container_id: str) -> None:
    """Remove an abandoned detached container once it exits (in a daemon thread)."""

    def wait_and_remove() -> None:
        with contextlib.suppress(Exception):
            api.wait(container_id)
        _remove(api, container_id)

    threading.Thread(target=wait_and_remove, daemon=True, name="swarmless-reap").start()


class Run:
    """A handle on a detached container run.

    >>> import swarmless
    >>> with swarmless.from_env().run("swarmless/busybox", ["echo", "hi"], detach=True) as r:
    ...     r.result()
    b'hi\\n'

    The container is removed once ``result()`` has collected its outcome or the handle is
    closed (``close()``, the end of a ``with`` block). A handle that is dropped without
    either leaves the container to finish, then removes it.
    """

    def __init__(self, api: Any, container_id: str, opts: RunOptions) -> None:
        self._api = api
        self._opts = opts
        self.id = container_id
        self.image = opts.image
        self.command = opts.command
        self._status: tuple[int, bool] | None = None
        self._closed = False
        self._killer = _Killer(api, container_id, opts.timeout)
        self._finalizer = weakref.finalize(self, _reap, api, container_id) if opts.remove else None

    def __repr__(self) -> str:
        return f"<Run {self.id[:12]} {self.image}>"

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def done(self) -> bool:
        """True once the container has exited."""
        if self._status is not None:
            return True
        with translate(image=self.image, api=self._api):
            state = self._api.inspect_container(self.id)["State"]
        return not state.get("Running") and state.get("Status") != "created"

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the container to exit and return its exit status.

        Raises :class:`~swarmless.WaitTimeout` if it is still running after ``timeout``
        seconds (the container keeps running; ``kill()`` stops it).
        """
        if self._status is None:
            self._status = self._wait(timeout)
        return self._status[0]

    def _wait(self, timeout: float | None) -> tuple[int, bool]:
        if timeout is None:
            with translate(image=self.image, api=self._api):
                return _exit_status(self._api, self.id)
        done: list[tuple[int, bool]] = []
        errors: list[BaseException] = []

        def waiter() -> None:
            try:
                with translate(image=self.image, api=self._api):
                    done.append(_exit_status(self._api, self.id))
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=waiter, daemon=True)
        t.start()
        t.join(timeout)
        if errors:
            raise errors[0]
        if not done:
            raise WaitTimeout(
                f"{self.image} ({self.id[:12]}) still running after {timeout:g}s; it goes on "
                "(wait again, or kill() it)",
                timeout=timeout,
            )
        return done[0]

    def result(self, timeout: float | None = None) -> bytes | str:
        """Wait, then return stdout; raise :class:`ContainerError` on a non-zero exit."""
        status = self.wait(timeout)
        assert self._status is not None
        try:
            if self._killer.fired:
                raise RunTimeout(
                    image=self.image, timeout=self._opts.timeout or 0, container=self.id
                )
            if status != 0:
                stderr = self._logs(stdout=False, stderr=True)
                raise _failure(self._opts, status, stderr, self.id, self._status[1])
            data = self._logs(stdout=self._opts.stdout, stderr=self._opts.stderr)
            return _output(self._opts, data)
        finally:
            self.close()

    def _logs(self, *, stdout: bool, stderr: bool) -> bytes:
        with translate(image=self.image, api=self._api):
            return bytes(self._api.logs(self.id, stdout=stdout, stderr=stderr))

    def logs(self, follow: bool = False) -> Any:
        """The output so far as bytes; with ``follow=True``, an iterator of lines as they come."""
        if not follow:
            return self._logs(stdout=True, stderr=True)
        return self._follow()

    def _follow(self) -> Iterator[bytes]:
        with translate(image=self.image, api=self._api):
            stream = self._api.logs(self.id, stdout=True, stderr=True, stream=True, follow=True)
        pending = b""
        with translate(image=self.image, api=self._api):
            for chunk in stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line + b"\n"
        if pending:
            yield pending

    def kill(self) -> None:
        """Stop the container now (SIGKILL)."""
        with (
            translate(image=self.image, api=self._api),
            contextlib.suppress(docker.errors.APIError),
        ):
            self._api.kill(self.id)

    def close(self) -> None:
        """Release the handle: stop the container if still running and remove it."""
        if self._closed:
            return
        self._closed = True
        self._killer.cancel()
        if self._finalizer is not None:
            self._finalizer.detach()
            _remove(self._api, self.id)
