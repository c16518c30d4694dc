"""The ``swarmless`` command line: thin commands over the library, rendered with Rich.

Each command group lives in its own module and registers itself on :data:`main`.
User errors exit non-zero with one clear line, never a traceback.
"""

from __future__ import annotations

from swarmless.cli._base import main

# Importing the command modules registers their commands on ``main``.
from swarmless.cli import doctor as _doctor  # noqa: F401  isort: skip
from swarmless.cli import functions as _functions  # noqa: F401  isort: skip
from swarmless.cli import gc as _gc  # noqa: F401  isort: skip
from swarmless.cli import new as _new  # noqa: F401  isort: skip
from swarmless.cli import run as _run  # noqa: F401  isort: skip
from swarmless.cli import up as _up  # noqa: F401  isort: skip

__all__ = ["main"]
