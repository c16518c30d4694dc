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
    "completion": (
        "swarmless.cli.completion",
        "Print the shell completion script for SHELL (bash, zsh or fish).",
    ),
    "deploy": (
        "swarmless.cli.deploy",
        "Deploy the functions of a swarmless.yml (or a folder holding one): build, check "
        "all, then apply all.",
    ),
    "describe": (
        "swarmless.cli.describe",
        "Describe a function: spec, version, containers, scaling decisions, recent failures.",
    ),
    "doctor": (
        "swarmless.cli.doctor",
        "Check the engine, Swarm state and base images; print a fix for each problem.",
    ),
    "gc": (
        "swarmless.cli.gc",
        "Remove this instance's exited containers (left by detached runs and crashes).",
    ),
    "invocations": (
        "swarmless.cli.listing",
        "The latest call records of every function, newest first.",
    ),
    "invoke": (
        "swarmless.cli.functions",
        "Call a deployed function and print its answer (or, with --async, its call id).",
    ),
    "logs": (
        "swarmless.cli.logs",
        "Logs of one call (CALL_ID), or the latest records of a function (NAME).",
    ),
    "ls": ("swarmless.cli.listing", "List deployed functions and their containers."),
    "new": (
        "swarmless.cli.new",
        "Create a function folder NAME from a template (never overwrites).",
    ),
    "redrive": (
        "swarmless.cli.functions",
        "Queue dead async calls again (see `swarmless logs NAME` or status=dead records).",
    ),
    "registry": (
        "swarmless.cli.registry",
        "A registry on this engine, for Swarm nodes to pull function images from.",
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
    "schedules": ("swarmless.cli.listing", "Scheduled functions and when they fire next."),
    "secret": (
        "swarmless.cli.listing",
        "Secrets functions mount as /run/secrets/NAME (spec: secrets: [NAME]).",
    ),
    "up": (
        "swarmless.cli.up",
        "Start the gateway (SQLite store, local Docker backend) until Ctrl-C.",
    ),
}

#: What each command's ``--help`` ends with: lines to copy. tests/test_cli.py checks that
#: every command has some, and that they use only options the command has.
_EXAMPLES = {
    "build": ("swarmless build hello", "swarmless build . --tag registry.example/hello:1"),
    "completion": (
        'eval "$(swarmless completion bash)"     # in ~/.bashrc',
        'eval "$(swarmless completion zsh)"      # in ~/.zshrc',
        "swarmless completion fish > ~/.config/fish/completions/swarmless.fish",
    ),
    "deploy": (
        "swarmless deploy                        # ./swarmless.yml",
        "swarmless deploy hello --dry-run        # what would change",
        "swarmless deploy hello --no-build",
        "swarmless deploy stack.yml --only vote --only result",
    ),
    "describe": ("swarmless describe hello", "swarmless describe hello -o yaml"),
    "doctor": ("swarmless doctor",),
    "gc": ("swarmless gc --dry-run", "swarmless gc"),
    "invocations": (
        "swarmless invocations -s failed",
        "swarmless invocations -f hello -n 50 -o json | jq -r '.[].id'",
    ),
    "invoke": (
        'swarmless invoke hello -d \'{"name": "Ada"}\'',
        "swarmless invoke upper -d @input.txt",
        "swarmless invoke echo -a 'a b' -a c     # oneshot: arguments",
        "swarmless invoke -i hello -X GET --path greet",
        "swarmless invoke --async report -d '{}'",
    ),
    "logs": (
        "swarmless logs hello                    # its latest calls",
        "swarmless logs 0193b2c4d5e6-9f8a7b6c5d4e  # its output, how it ended",
        "swarmless logs -f hello                 # follow its calls (Ctrl-C ends)",
        "swarmless logs hello -o json | jq '.[] | select(.status != \"succeeded\")'",
    ),
    "ls": ("swarmless ls", "swarmless ls -o wide", "swarmless ls -o json | jq -r '.[].name'"),
    "new": ("swarmless new hello", "swarmless new shout --template cgi-shell"),
    "redrive": ("swarmless redrive $(swarmless invocations -s dead -o json | jq -r '.[].id')",),
    "registry": (
        "swarmless registry up                   # on 127.0.0.1:5000",
        "swarmless registry status",
        "swarmless registry down --volumes",
    ),
    "rm": ("swarmless rm hello upper",),
    "run": (
        "swarmless run swarmless/busybox echo hi",
        "echo data | swarmless run -i - swarmless/busybox tr a-z A-Z",
        "swarmless run --timeout 5 -e WHO=Ada swarmless/busybox sh -c 'echo $WHO'",
    ),
    "scale": (
        "swarmless scale hello 3",
        "swarmless scale hello 3 --wait 60",
        "swarmless scale hello auto",
    ),
    "schedules": ("swarmless schedules", "swarmless schedules -o json"),
    "secret": (
        "swarmless secret create db-password ./password.txt",
        "swarmless secret ls",
        "swarmless secret rm db-password",
    ),
    "up": ("swarmless up", "SWARMLESS_PORT=8081 swarmless up --data-dir /tmp/gw"),
}
main.add_lazy_commands(_COMMANDS, _EXAMPLES)

__all__ = ["main"]
