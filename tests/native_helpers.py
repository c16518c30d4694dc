"""Plain functions in a module of the test suite's own (not installed in any container):
tests/test_native.py decorates them, so they travel by value."""

from __future__ import annotations

from collections.abc import Iterator

OFFSET = 1000


def shifted(x: int) -> int:
    """Uses a global of this module and another function of it."""
    return _double(x) + OFFSET


def _double(x: int) -> int:
    return 2 * x


def countdown(n: int) -> Iterator[int]:
    """A generator."""
    while n > 0:
        yield n
        n -= 1


class Unlucky(ValueError):
    """An exception class of this module (rebuilt on the caller's side)."""


def check(number: int) -> int:
    if number == 13:
        raise Unlucky(f"{number} is unlucky")
    return number
