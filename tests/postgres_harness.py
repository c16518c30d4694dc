"""PostgreSQL for the tests and benchmarks: the throwaway cluster of scripts/postgres.sh
(started, installed if need be) and empty databases on it, dropped after use."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cluster_url() -> str:
    """The admin URL of the cluster; RuntimeError with the script's reason when it fails."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "postgres.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/postgres.sh exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def database(base: str, name: str) -> Iterator[str]:
    """The URL of a new empty database ``name`` on the cluster at ``base``; dropped after."""
    asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
    try:
        yield f"{base.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(_admin(base, f'DROP DATABASE "{name}" WITH (FORCE)'))
