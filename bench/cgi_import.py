"""What ``import swarmless`` costs a CGI front end (issue 15), measured against one without it.

    .venv/bin/python bench/cgi_import.py [--requests 40] [--imports 30]

One image (the Python base with the swarmless package copied in and compiled, as an install
leaves it) holds two CGI scripts that answer the same page:

- ``front.py``: the 2016 voting app's front end, module level as written then: ``import
  dockerrun`` (the one-line ``dockerrun.py`` of ``swarmless.compat``) and
  ``client = dockerrun.from_env(version="1.24")``, then the page;
- ``plain.py``: the page alone, importing nothing of swarmless.

A gateway (``swarmless up``, its own data dir, instance and network) serves both as ``cgi``
functions: one fresh container per request. The two are called in turn (the order flips
each round); the ratio is the median over the rounds of ``front / plain``, each pair taken
back to back, so that the load of a shared machine, which moves a container's start by
hundreds of milliseconds from one minute to the next, weighs on both sides of each pair.
Target: ratio <= 1.1. A GET of the front end runs no container of its own, so the
difference is what importing swarmless and making the client cost. The same two scripts
are also timed inside one container (no container start at all): that difference is the
cost itself, in milliseconds.

Beside it, on this machine and interleaved the same way: ``python3 -c "import swarmless"``
vs ``python3 -c "pass"`` (target: under 50 ms more) and ``swarmless --help`` (target:
under 300 ms). The last line is the verdict on the cgi ratio::

    cgi_import ratio 1.01 (target 1.1: PASS)

Everything it creates carries ``swarmless.bench=cgi-import-<run id>`` or is the gateway's
(removed with it); the image is removed on every exit path.
"""

from __future__ import annotations

import argparse
import io
import secrets
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import docker
import httpx

from _common import PYTHON, gateway, pct

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "swarmless"

PAGE = (
    "import sys\nsys.stdout.write('Content-Type: text/html\\r\\n\\r\\n<p>Cats or dogs?</p>\\n')\n"
)
FRONT = "import dockerrun\n\nclient = dockerrun.from_env(version='1.24')\n" + PAGE
DOCKERRUN = "from swarmless.compat.dockerrun import *  # noqa: F403\n"
DOCKERFILE = f"""\
FROM {PYTHON}
COPY swarmless /opt/swarmless/swarmless
COPY function /function
ENV PYTHONPATH=/opt/swarmless
RUN python3 -m compileall -q /opt/swarmless /function
WORKDIR /function
"""


def build(engine: docker.DockerClient, tag: str, label: str) -> None:
    """The function image: the swarmless package (sources only) and the two scripts."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))

        add("Dockerfile", DOCKERFILE.encode())
        for path in sorted(PACKAGE.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                add(f"swarmless/{path.relative_to(PACKAGE)}", path.read_bytes())
        add("function/front.py", FRONT.encode())
        add("function/plain.py", PAGE.encode())
        add("function/dockerrun.py", DOCKERRUN.encode())
    buf.seek(0)
    engine.images.build(
        fileobj=buf, custom_context=True, tag=tag, rm=True, labels={"swarmless.bench": label}
    )


def cgi_requests(url: str, token: str, image: str, n: int) -> dict[str, list[float]]:
    """Seconds per GET of each function, interleaved (the order flips every round)."""
    headers = {"Authorization": f"Bearer {token}"}
    samples: dict[str, list[float]] = {"front": [], "plain": []}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
        for name in samples:
            spec = {
                "name": f"cgi-{name}",
                "image": image,
                "mode": "cgi",
                "command": ["python3", f"/function/{name}.py"],
            }
            r = http.post("/system/functions", json=spec)
            if r.status_code not in (200, 201):
                raise SystemExit(f"deploy {name} failed: {r.status_code} {r.text}")
        order = list(samples)
        for i in range(n + 1):  # the first round warms both paths and is not counted
            for name in order:
                t0 = time.perf_counter()
                r = http.get(f"/function/cgi-{name}")
                took = time.perf_counter() - t0
                if r.status_code != 200 or b"Cats or dogs?" not in r.content:
                    raise SystemExit(f"cgi-{name} answered {r.status_code}: {r.text[:300]}")
                if i:
                    samples[name].append(took)
            order.reverse()
    return samples


#: Run inside one container of the image: each script as its own process, interleaved.
IN_CONTAINER = """
import json, subprocess, sys, time
n = int(sys.argv[1])
took = {"front": [], "plain": []}
for i in range(n + 1):
    for name in (["front", "plain"] if i % 2 else ["plain", "front"]):
        t0 = time.perf_counter()
        subprocess.run(["python3", f"/function/{name}.py"], stdout=subprocess.DEVNULL, check=True)
        if i:
            took[name].append(time.perf_counter() - t0)
print(json.dumps(took))
"""


def in_container(image: str, n: int, label: str) -> dict[str, list[float]]:
    """Seconds per process of each script, inside one container (no container start)."""
    import json

    import swarmless

    client = swarmless.from_env()
    try:
        out = client.run(
            image, ["python3", "-c", IN_CONTAINER, str(n)], labels={"swarmless.bench": label}
        )
    finally:
        client.close()
    return dict(json.loads(out))


def processes(n: int) -> dict[str, list[float]]:
    """Seconds per interpreter run on this machine, interleaved."""
    swarmless_cli = shutil.which("swarmless", path=str(Path(sys.executable).parent))
    commands = {
        "pass": [sys.executable, "-c", "pass"],
        "import swarmless": [sys.executable, "-c", "import swarmless"],
        "swarmless --help": [swarmless_cli or "swarmless", "--help"],
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    order = list(commands)
    for i in range(n + 1):
        for name in order:
            t0 = time.perf_counter()
            subprocess.run(commands[name], check=True, stdout=subprocess.DEVNULL)
            if i:
                samples[name].append(time.perf_counter() - t0)
        order.reverse()
    return samples


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="cgi requests per function")
    parser.add_argument("--imports", type=int, default=30, help="interpreter runs per command")
    args = parser.parse_args()
    verdict = {True: "PASS", False: "FAIL"}

    local = processes(args.imports)
    base = statistics.median(local["pass"])
    added = statistics.median(local["import swarmless"]) - base
    cli = statistics.median(local["swarmless --help"])
    print(
        f"python3 -c pass {ms(base)} | import swarmless {ms(base + added)} "
        f"(+{ms(added)}, target < 50 ms: {verdict[added < 0.050]}) | "
        f"swarmless --help {ms(cli)} (target < 300 ms: {verdict[cli < 0.300]})  "
        f"(medians of {args.imports}, interleaved)",
        flush=True,
    )

    engine = docker.from_env()
    run_id = secrets.token_hex(4)
    label = f"cgi-import-{run_id}"
    image = f"swarmless-bench/cgi-import:{run_id}"
    try:
        build(engine, image, label)
        inside = in_container(image, args.imports, label)
        with gateway(engine, "cgi-import") as gw:
            samples = cgi_requests(gw.url, gw.token, image, args.requests)
    finally:
        try:
            engine.images.remove(image, force=True)
        except docker.errors.ImageNotFound:
            pass
        except Exception as e:  # a slow engine: say so, keep the numbers
            print(f"warning: could not remove {image} ({e}); docker rmi it", file=sys.stderr)
    f_in, p_in = statistics.median(inside["front"]), statistics.median(inside["plain"])
    print(
        f"in one container: front.py {ms(f_in)}, plain.py {ms(p_in)} per process "
        f"(+{ms(f_in - p_in)}; medians of {args.imports})"
    )
    front, plain = samples["front"], samples["plain"]
    for name, values in (("front (imports swarmless)", front), ("plain (does not)", plain)):
        print(
            f"cgi {name:<26} p50 {ms(statistics.median(values))}  p90 {ms(pct(values, 90))}  "
            f"min {ms(min(values))}  (n={len(values)})"
        )
    medians = statistics.median(front) / statistics.median(plain)
    ratio = statistics.median(f / p for f, p in zip(front, plain, strict=True))
    print(f"ratio of the medians {medians:.2f}; the verdict is on the {len(front)} paired ratios:")
    print(f"cgi_import ratio {ratio:.2f} (target 1.1: {verdict[ratio <= 1.1]})")


if __name__ == "__main__":
    main()
