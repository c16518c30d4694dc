"""``python -m swarmless.runtime``: serve invocations until retired."""

from __future__ import annotations

from swarmless.runtime.loop import main

raise SystemExit(main())
