"""The ``command`` handler kind: a shell command line run per invocation (``sh -c``), the
body on its stdin, its stdout the result, its stderr the log; killed, with its process
group, at the deadline. ``subprocess`` is imported only when a command handler is made."""

from __future__ import annotations

import os
import time

from swarmless.runtime.invocation import Handler, Invocation, Result

__all__ = ["CommandHandler"]


class CommandHandler(Handler):
    """Runs ``sh -c COMMAND`` per invocation; body on stdin, stdout back, stderr logged."""

    captures_output = False  # the child's stderr is the log, not this process's prints

    def __init__(self, command: str, *, workdir: str) -> None:
        import subprocess  # only command handlers pay for it

        self._subprocess = subprocess
        self.command = command
        self.workdir = workdir if os.path.isdir(workdir) else None

    def environ(self, inv: Invocation) -> dict[str, str]:
        env = dict(os.environ)
        event = inv.event
        env["SWARMLESS_CALL_ID"] = inv.call_id
        if inv.deadline is not None:
            env["SWARMLESS_DEADLINE"] = str(int(inv.deadline * 1000))
        env["REQUEST_METHOD"] = str(event.get("method") or "POST").upper()
        env["PATH_INFO"] = str(event.get("path") or "/")
        env["QUERY_STRING"] = str(event.get("query") or "")
        env["CONTENT_LENGTH"] = str(len(inv.body))
        for name, value in inv.header_pairs:
            if name.lower() == "content-type":
                env["CONTENT_TYPE"] = value
        return env

    def __call__(self, inv: Invocation) -> Result:
        sp = self._subprocess
        proc = sp.Popen(
            ["/bin/sh", "-c", self.command],
            stdin=sp.PIPE,
            stdout=sp.PIPE,
            stderr=sp.PIPE,
            cwd=self.workdir,
            env=self.environ(inv),
            start_new_session=True,  # its own process group: the deadline kills all of it
        )
        timeout = None if inv.deadline is None else max(0.0, inv.deadline - time.time())
        started = time.monotonic()
        killed = False
        try:
            out, err = proc.communicate(inv.body, timeout=timeout)
        except sp.TimeoutExpired:
            killed = True
            self._kill_group(proc.pid)
            try:
                out, err = proc.communicate(timeout=5)
            except sp.TimeoutExpired:  # something outside the group still holds the pipes
                proc.kill()
                out, err = b"", b""
        except BaseException:
            self._kill_group(proc.pid)
            proc.wait()
            raise
        code = proc.returncode
        exit_code = 128 - code if code < 0 else code  # killed by signal N: 128+N, as sh says
        if killed:
            elapsed = time.monotonic() - started
            result = Result(
                inv.call_id,
                err,
                status=504,
                error=f"deadline passed: the command was killed after {elapsed:.1f}s",
                exit_code=exit_code,
            )
        elif exit_code != 0:
            result = Result(
                inv.call_id,
                err,
                status=500,
                error=f"the command exited with status {exit_code}",
                exit_code=exit_code,
            )
        else:
            result = Result(inv.call_id, out, exit_code=0)
        result.stderr = err.decode("utf-8", "replace")
        return result

    @staticmethod
    def _kill_group(pid: int) -> None:
        import contextlib
        import signal

        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
