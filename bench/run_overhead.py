"""Client.run vs the Docker SDK's own containers.run(..., remove=True), interleaved.

    .venv/bin/python bench/run_overhead.py [--runs 30] [--image swarmless/busybox]

Prints both medians and the ratio ours/sdk. Target: ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import statistics
import time

import docker

import swarmless


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--image", default="swarmless/busybox")
    args = parser.parse_args()
    client = swarmless.from_env()
    sdk = docker.from_env()
    cmd = ["echo", "hello"]
    labels = {"swarmless.bench": "run_overhead"}
    # Warm both paths once (image layers in page cache, connections open).
    client.run(args.image, cmd, labels=labels)
    sdk.containers.run(args.image, cmd, remove=True, labels=labels)
    ours: list[float] = []
    theirs: list[float] = []
    for i in range(args.runs):
        order = [("ours", ours), ("sdk", theirs)]
        if i % 2:
            order.reverse()
        for name, samples in order:
            t0 = time.perf_counter()
            if name == "ours":
                out = client.run(args.image, cmd, labels=labels)
            else:
                out = sdk.containers.run(args.image, cmd, remove=True, labels=labels)
            samples.append(time.perf_counter() - t0)
            assert out == b"hello\n", out
    m_ours, m_sdk = statistics.median(ours), statistics.median(theirs)
    print(f"runs:                {args.runs} each, interleaved, image {args.image}")
    print(
        f"swarmless Client.run median: {m_ours * 1000:.1f} ms (p90 "
        f"{statistics.quantiles(ours, n=10)[-1] * 1000:.1f} ms)"
    )
    print(
        f"docker SDK containers.run median: {m_sdk * 1000:.1f} ms (p90 "
        f"{statistics.quantiles(theirs, n=10)[-1] * 1000:.1f} ms)"
    )
    ratio = m_ours / m_sdk
    print(f"ratio ours/sdk: {ratio:.3f}  (target <= 1.10: {'PASS' if ratio <= 1.10 else 'FAIL'})")


if __name__ == "__main__":
    main()
