"""The arguments of one container run, validated before anything starts.

:class:`RunOptions` refuses bad input with an :class:`~swarmless.InvalidArgument` that names
it, and turns what it holds into the Engine API's create arguments (labelled as swarmless's,
with the owner labels winning over the caller's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import IO, Any, Literal

from swarmless.config import Settings
from swarmless.engine import managed_labels
from swarmless.exceptions import InvalidArgument
from swarmless.sdk.options import split_command

__all__ = ["Pull", "RunOptions", "Stdin"]

Pull = Literal["missing", "always", "never"]
Stdin = bytes | str | IO[bytes] | None


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
        "pull_timeout",
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
        pull_timeout: float = Settings.pull_timeout,
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
        if isinstance(pull_timeout, bool) or not (
            isinstance(pull_timeout, int | float) and pull_timeout > 0
        ):
            raise InvalidArgument(
                f"pull_timeout must be a positive number of seconds, got {pull_timeout!r}"
            )
        #: Seconds a pull of the image may take in all (the settings' ``pull_timeout``).
        self.pull_timeout = float(pull_timeout)
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
