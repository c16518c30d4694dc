"""The demo ``make up`` runs: an image as a function call, the 2016 way and ours."""

from __future__ import annotations

import time

from rich.console import Console

import swarmless

BUSYBOX = "swarmless/busybox:latest"


def main() -> None:
    console = Console()
    client = swarmless.from_env()
    console.rule("swarmless: run an image like a function")
    t0 = time.perf_counter()
    out = client.run(BUSYBOX, ["echo", "hello from a container"], text=True)
    ms = (time.perf_counter() - t0) * 1000
    console.print(f"client.run(busybox, ['echo', ...]) -> {out!r}  ({ms:.0f} ms)")
    out = client.run(BUSYBOX, ["tr", "a-z", "A-Z"], stdin=b"piped through stdin", text=True)
    console.print(f"with stdin -> {out!r}")
    try:
        client.run(BUSYBOX, ["sh", "-c", "echo 'no such voter' >&2; exit 3"])
    except swarmless.ContainerError as e:
        console.print(
            f"non-zero exit raises ContainerError: status={e.exit_status} stderr={e.stderr!r}"
        )
    try:
        client.run(BUSYBOX, ["sleep", "60"], timeout=1)
    except swarmless.RunTimeout as e:
        console.print(f"timeout: {e}")
    with client.run(BUSYBOX, ["sh", "-c", "echo detached; sleep 0.2"], detach=True) as handle:
        console.print(f"detach=True -> {handle!r}, result {handle.result()!r}")
    console.print("every container was labelled swarmless.managed=true and removed.")


if __name__ == "__main__":
    main()
