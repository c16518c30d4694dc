"""Run a command on a real terminal (a pty) of a given size, as a person's shell runs it.

What a program prints there is what its reader sees: stdout and stderr together, a
terminal's width (its window size, not ``COLUMNS``), colours and all (stripped here).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ANSI", "run_in_terminal"]

#: Terminal control sequences (colours, cursor), stripped from a transcript.
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]|\x1b\][^\x07]*\x07")


def run_in_terminal(
    argv: Sequence[str],
    env: dict[str, str],
    *,
    cwd: Path | None = None,
    columns: int = 80,
    rows: int = 24,
    timeout: float = 120,
) -> tuple[int, str]:
    """Run ``argv`` on a pty of ``rows`` x ``columns``; its exit status and transcript
    (``\\r\\n`` as ``\\n``, control sequences stripped). AssertionError after ``timeout``
    seconds, with what it printed so far (the process group is killed)."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        list(argv),
        stdin=child,
        stdout=child,
        stderr=child,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    os.close(child)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                text = b"".join(chunks).decode(errors="replace")
                raise AssertionError(f"{argv[:3]} did not finish within {timeout} s:\n{text}")
            ready, _, _ = select.select([main], [], [], min(left, 1.0))
            if not ready:
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError as e:  # EIO: the last writer of the pty closed it
                if e.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            chunks.append(chunk)
        status = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        os.close(main)
    text = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return status, ANSI.sub("", text)
