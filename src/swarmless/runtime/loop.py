"""The pollers and the life of the runtime process.

Each of ``SWARMLESS_CONCURRENCY`` poller threads owns one keep-alive connection and loops::

    result = None
    forever:
        POST /runtime/next  (carrying result, when there is one)
        200 -> run the invocation, result = its result
        204 -> poll again
        410 -> retired: drain, then the process exits 0
        401 -> the token is refused: the process exits 1

A poller first opens a framed connection (:mod:`~swarmless.runtime.frames`: a HELLO frame,
else ``POST /runtime/connect``): the same loop, a NEXT frame for the request and a CALL,
IDLE, RETIRE or REFUSED frame for its answer (200, 204, 410, 401), without HTTP on the
way. A gateway that takes neither (a standby replica) is asked again after
``FRAMED_RETRY`` seconds; until then the poller uses ``/runtime/next``. The connection is
a poller's :class:`~swarmless.runtime.poll_frames.Channel` (the frames there, the HTTP
requests in :mod:`~swarmless.runtime.poll_http`, imported only when needed); this module
re-exports ``POLL_TIMEOUT`` and ``FRAMED_RETRY``, every import path unchanged.

Draining: on 410 (or SIGTERM) no poller starts a new poll without a result in hand; pollers
that are running a call finish it and deliver its result (the gateway answers 410 again),
and pollers waiting in a long poll take what it answers (410 from a retiring gateway, or a
call, which they run and deliver). The process exits 0 when every poller has ended, or
``DRAIN_GRACE`` seconds after the last call in hand was delivered (a gateway that does not
know the container is stopping, on SIGTERM, may hold the long polls for 25 s).

Connection errors and 5xx answers are retried with capped, jittered backoff, re-sending the
result in hand (the gateway ignores a result for a call it has already finished). After
``SWARMLESS_RUNTIME_GIVE_UP`` seconds (60) without any 200/204 from the gateway, the
process exits 1.
"""

from __future__ import annotations

import importlib  # noqa: F401  the handler's loader: imported with the runtime's bytecode
import os
import signal
import threading
import time

from swarmless.runtime import bytecode, capture
from swarmless.runtime.config import RuntimeConfig, log
from swarmless.runtime.handlers import (
    FailedHandler,
    Handler,
    import_kind,
    load_handler,
    run_handler,
)
from swarmless.runtime.invocation import Call, Result, error_result
from swarmless.runtime.poll_common import POLL_TIMEOUT as POLL_TIMEOUT
from swarmless.runtime.poll_common import Dropped, Refused, Retry
from swarmless.runtime.poll_frames import FRAMED_RETRY as FRAMED_RETRY
from swarmless.runtime.poll_frames import Channel

__all__ = ["Poller", "Runtime", "RuntimeConfig", "main", "serve"]

BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
#: Once drained, how long pollers still in a long poll may take to come back.
DRAIN_GRACE = 2.0


class Runtime:
    """The shared state of the pollers: draining, calls in hand, last contact, exit code."""

    def __init__(self, config: RuntimeConfig, handler: Handler) -> None:
        self.config = config
        self.handler = handler
        self._cond = threading.Condition()
        self._finished = threading.Event()
        self.stopping = False
        self.exit_code: int | None = None
        self.busy = 0
        self.last_contact = time.monotonic()

    # -- state changes, all under the condition -----------------------------------------

    def contact(self) -> None:
        self.last_contact = time.monotonic()

    def gave_up(self) -> bool:
        return time.monotonic() - self.last_contact > self.config.give_up

    def took_call(self) -> None:
        with self._cond:
            self.busy += 1

    def delivered(self) -> None:
        with self._cond:
            self.busy -= 1
            # Only a draining process waits for the count (run()): waking its main thread
            # on every call would cost a thread switch per call.
            if self.stopping:
                self._cond.notify_all()

    def poller_ended(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def retire(self, why: str) -> None:
        """Drain: finish the calls in hand, then exit 0."""
        with self._cond:
            if not self.stopping:
                log(f"retiring ({why})")
            self.stopping = True
            self._cond.notify_all()

    def finish(self, code: int, why: str) -> None:
        """Stop now with ``code``."""
        with self._cond:
            if self.exit_code is None:
                log(f"exiting {code}: {why}")
                self.exit_code = code
            self._finished.set()
            self._cond.notify_all()

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early when the process is finishing."""
        self._finished.wait(seconds)

    # -- the process --------------------------------------------------------------------

    def run(self) -> int:
        """Start the pollers and wait until retired (0) or failed (1)."""
        pollers = [Poller(self, i) for i in range(self.config.concurrency)]
        for p in pollers:
            p.start()
        idle_since: float | None = None
        with self._cond:
            while True:
                if self.exit_code is not None:
                    return self.exit_code
                if not any(p.is_alive() for p in pollers):
                    self.exit_code = 0 if self.stopping else 1
                    return self.exit_code
                # The timeout only bounds how long a poller that died unexpectedly goes
                # unnoticed; every normal change notifies.
                wait = 5.0
                if self.stopping and self.busy == 0:
                    # Drained. Pollers still in a long poll end on their own (a retiring
                    # gateway answers them 410 at once); without one, give them a grace.
                    now = time.monotonic()
                    idle_since = idle_since or now
                    wait = idle_since + DRAIN_GRACE - now
                    if wait <= 0:
                        self.exit_code = 0
                        return 0
                else:
                    idle_since = None
                self._cond.wait(wait)


class Poller(threading.Thread):
    """One poll loop with its own keep-alive connection."""

    def __init__(self, runtime: Runtime, index: int) -> None:
        super().__init__(name=f"swarmless-poller-{index}", daemon=True)
        self.rt = runtime
        self.channel = Channel(runtime.config, runtime.contact)

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # a bug of ours: say so, and let the process end
            log(f"{self.name} crashed: {type(e).__name__}: {e}")
            self.rt.finish(1, f"{self.name} crashed")
            raise
        finally:
            self.channel.close()
            self.rt.poller_ended()

    def _loop(self) -> None:
        rt = self.rt
        pending: Result | None = None
        backoff = BACKOFF_MIN
        while True:
            if rt.exit_code is not None or (pending is None and rt.stopping):
                return
            try:
                status, call = self.channel.exchange(pending)
            except Retry as e:
                if rt.gave_up():
                    silence = f"{rt.config.give_up:g}s"
                    rt.finish(1, f"no contact with {rt.config.api} for {silence} (last: {e})")
                    return
                import random  # only after a failed exchange: not on every start's path

                rt.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            except Refused as e:
                rt.finish(1, str(e))
                return
            except Dropped:
                pending = None
                rt.delivered()
                rt.sleep(backoff)
                continue
            backoff = BACKOFF_MIN
            if status == 200:
                rt.took_call()  # before delivered(): the count never drops to 0 in between
            if pending is not None:
                pending = None
                rt.delivered()
            if status == 200:
                assert call is not None
                pending = self._run(*call)
            elif status == 410:
                rt.retire("the gateway answered 410")

    # -- one invocation -----------------------------------------------------------------

    def _run(self, call_id: str, raw_deadline: object, event: object, body: bytes) -> Result:
        try:
            if isinstance(event, ValueError):
                raise event
            deadline = int(str(raw_deadline)) / 1000 if raw_deadline else None
            if not isinstance(event, dict):
                raise ValueError("the call's event is not a JSON object")
        except ValueError as e:
            return error_result(call_id, e, status=400)
        inv = Call(call_id, event, body, deadline)
        if deadline is not None and time.time() > deadline:
            return Result(call_id, status=504, error="the deadline passed before the call started")
        return run_handler(self.rt.handler, inv)


def serve(config: RuntimeConfig) -> int:
    """Load the handler and serve until retired; the process's exit status."""
    # Before the handler is imported: a logging handler it sets up at import time then
    # writes through the router too, so its records land in each call's log.
    capture.install()
    # Everything the runtime needs is imported (with its handler kind's module): the
    # handler's modules use their own __pycache__, not the backend's cache of the
    # runtime's imports.
    import_kind(config.handler_kind)
    bytecode.release()
    handler = load_handler(
        config.handler_kind,
        config.handler,
        workdir=config.workdir,
        function=config.function,
        concurrency=config.concurrency,
    )
    if isinstance(handler, FailedHandler):
        log(handler.message)
    runtime = Runtime(config, handler)
    _on_signals(runtime)
    return runtime.run()


def _on_signals(runtime: Runtime) -> None:
    def drain(signum: int, frame: object) -> None:
        runtime.retire(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, drain)


def main() -> int:
    """Entry point of ``python -m swarmless.runtime``."""
    try:
        config = RuntimeConfig.from_env()
    except ValueError as e:
        log(f"cannot start: {e}")
        return 1
    # The token is the runtime's, not the function's: keep it out of handler code and
    # out of the environment of forked commands.
    os.environ.pop("SWARMLESS_WORKER_TOKEN", None)
    return serve(config)
