"""The ``swarmless`` command line: thin commands over the library, rendered with Rich.

Each command group lives in its own module and registers itself on :data:`main`.
User errors exit non-zero with one clear line, never a traceback.
"""

from __future__ import annotations

from swarmless.cli._base import main

#: Every command: the module whose import registers it (done when the command runs or shows
#: its own help) and its help line for ``swarmless --help``, which imports none of them.
#: tests/test_import_cost.py checks this table against the commands themselves.
_COMMANDS = {
    "build": (
        "swarmless.cli.new",
        "Build the images of TARGET: a folder or swarmless.yml (every function with "
        "'build:'), or a function's name (declared in ./swarmless.yml, or deployed from a "
        "folder here).",
    ),
    "deploy": (
        "swarmless.cli.deploy",
        "Deploy the functions of a swarmless.yml (or a folder holding one): build, check "
        "all, then apply all.",
    ),
    "doctor": (
        "swarmless.cli.doctor",
        "Check the engine, Swarm state and base images; print a fix for each problem.",
    ),
    "gc": (
        "swarmless.cli.gc",
        "Remove this instance's exited containers (left by detached runs and crashes).",
    ),
    "invoke": (
        "swarmless.cli.functions",
        "Call a deployed function and print its answer (or, with --async, its call id).",
    ),
    "logs": (
        "swarmless.cli.functions",
        "Logs of one call (CALL_ID), or the latest records of a function (NAME).",
    ),
    "ls": ("swarmless.cli.functions", "List deployed functions and their containers."),
    "new": (
        "swarmless.cli.new",
        "Create a function folder NAME from a template (never overwrites).",
    ),
    "redrive": (
        "swarmless.cli.functions",
        "Queue dead async calls again (see `swarmless logs NAME` or status=dead records).",
    ),
    "rm": (
        "swarmless.cli.functions",
        "Remove deployed functions (their containers drain and go).",
    ),
    "run": (
        "swarmless.cli.run",
        "Run IMAGE with ARGS; print its stdout, propagate its exit status.",
    ),
    "scale": (
        "swarmless.cli.functions",
        "Pin a warm function to REPLICAS containers (`auto` gives it back to the autoscaler).",
    ),
    "schedules": ("swarmless.cli.functions", "Scheduled functions and when they fire next."),
    "secret": (
        "swarmless.cli.functions",
        "Secrets functions mount as /run/secrets/NAME (spec: secrets: [NAME]).",
    ),
    "up": (
        "swarmless.cli.up",
        "Start the gateway (SQLite store, local Docker backend) until Ctrl-C.",
    ),
}
main.add_lazy_commands(_COMMANDS)

__all__ = ["main"]
