"""``python -m swarmless`` is the ``swarmless`` command."""

from swarmless.cli import main

main()
