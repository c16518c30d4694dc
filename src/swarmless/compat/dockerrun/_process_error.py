"""dockerrun's ``ProcessError``, apart from the client: it brings ``swarmless.exceptions``,
which a front end that only builds a client must not pay for (see ``client.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from swarmless.exceptions import FunctionFailed

__all__ = ["ProcessError"]


class ProcessError(FunctionFailed):
    """A container exited with a non-zero status (dockerrun's error, as it was).

    ``container`` is what ``create_container`` answered (``{"Id": ..., "Warnings": None}``),
    ``command`` the command as given, ``stderr`` the bytes the container wrote there.
    """

    code = "process_error"

    def __init__(
        self,
        container: dict[str, Any],
        exit_status: int,
        command: str | Sequence[str] | None,
        image: str,
        stderr: bytes,
    ) -> None:
        text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
        super().__init__(
            f"Command '{command}' in image '{image}' returned non-zero exit status "
            f"{exit_status}: {text.rstrip()}"
        )
        self.container = container
        self.exit_status = exit_status
        self.command = command
        self.image = image
        self.stderr = stderr

    def __reduce__(self) -> tuple[Any, ...]:
        # Its fields are its constructor's arguments (it never crosses the gateway's wire).
        args = (self.container, self.exit_status, self.command, self.image, self.stderr)
        return (type(self), args)
