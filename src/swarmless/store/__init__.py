"""The store: function specs, invocation records and logs, on SQLite or PostgreSQL::

store = await Store.open("sqlite:////var/lib/swarmless/swarmless.db")
await store.put_function(spec)
"""

from swarmless.retention import Retention
from swarmless.store.children import ChildOutcome
from swarmless.store.queue import Claimed, StoredResult
from swarmless.store.retention import Sweeper
from swarmless.store.store import Store, StoreStats

__all__ = ["ChildOutcome", "Claimed", "Retention", "Store", "StoreStats", "StoredResult", "Sweeper"]
