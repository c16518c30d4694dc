"""The ``command`` handler kind: a shell command line run per invocation (``sh -c``), the
body on its stdin, its stdout the result, its stderr the log; killed, with its process
group, at the deadline. ``subprocess`` is imported only when a command handler is made.

The ``cgi`` kind (:mod:`~swarmless.runtime.cgi`) forks the same way and differs only in
the environment it gives the command and in how it reads the command's stdout.
"""

from __future__ import annotations

import os
import time

from swarmless.runtime.invocation import Call, Handler, Result

__all__ = ["CommandHandler", "Outcome"]


class Outcome:
    """How one forked command ended."""

    __slots__ = ("elapsed", "exit_code", "killed", "stderr", "stdout")

    def __init__(
        self, exit_code: int, stdout: bytes, stderr: bytes, killed: bool, elapsed: float
    ) -> None:
        #: Its exit status; killed by signal N: 128+N, as sh says.
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        #: Killed at the deadline.
        self.killed = killed
        self.elapsed = elapsed


class CommandHandler(Handler):
    """Runs ``sh -c COMMAND`` per invocation; body on stdin, stdout back, stderr logged."""

    captures_output = False  # the child's stderr is the log, not this process's prints

    def __init__(self, command: str, *, workdir: str) -> None:
        import subprocess  # only command handlers pay for it

        self._subprocess = subprocess
        self.command = command
        self.workdir = workdir if os.path.isdir(workdir) else None

    def environ(self, inv: Call) -> dict[str, str]:
        env = dict(os.environ)
        event = inv.event
        env["SWARMLESS_CALL_ID"] = inv.call_id
        if inv.deadline is not None:
            env["SWARMLESS_DEADLINE"] = str(int(inv.deadline * 1000))
        env["REQUEST_METHOD"] = str(event.get("method") or "POST").upper()
        env["SCRIPT_NAME"] = str(event.get("prefix") or "")
        env["PATH_INFO"] = str(event.get("path") or "/")
        env["QUERY_STRING"] = str(event.get("query") or "")
        env["CONTENT_LENGTH"] = str(len(inv.body))
        for name, value in inv.header_pairs:
            if name.lower() == "content-type":
                env["CONTENT_TYPE"] = value
        return env

    def __call__(self, inv: Call) -> Result:
        done = self.run(inv)
        if done.killed:
            result = Result(
                inv.call_id,
                done.stderr,
                status=504,
                error=f"deadline passed: the command was killed after {done.elapsed:.1f}s",
                exit_code=done.exit_code,
            )
        elif done.exit_code != 0:
            result = Result(
                inv.call_id,
                done.stderr,
                status=500,
                error=f"the command exited with status {done.exit_code}",
                exit_code=done.exit_code,
            )
        else:
            result = self.answer(inv, done)
        result.stderr = done.stderr.decode("utf-8", "replace")
        return result

    def answer(self, inv: Call, done: Outcome) -> Result:
        """The result of a command that exited 0: its stdout."""
        return Result(inv.call_id, done.stdout, exit_code=0)

    def run(self, inv: Call) -> Outcome:
        """Fork the command with :meth:`environ`, the body on its stdin, and wait for it
        (at the deadline its whole process group is killed)."""
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
        exit_code = 128 - code if code < 0 else code
        return Outcome(exit_code, out, err, killed, time.monotonic() - started)

    @staticmethod
    def _kill_group(pid: int) -> None:
        import contextlib
        import signal

        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
