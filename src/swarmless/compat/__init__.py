"""Code written for swarmless's ancestors, run on swarmless unchanged.

- :mod:`swarmless.compat.dockerrun`: the 2016 ``dockerrun`` library (``from_env()``,
  ``Client.run``, ``ProcessError``) on :meth:`swarmless.Client.run`. An image that did
  ``import dockerrun`` needs one added file, ``dockerrun.py``::

      from swarmless.compat.dockerrun import *  # noqa: F403

Importing these modules costs next to nothing (no Docker SDK until a container runs).
"""

from __future__ import annotations

from swarmless.compat import dockerrun

__all__ = ["dockerrun"]
