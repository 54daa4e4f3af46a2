"""The edit memory of memory-based editors (SERAC, LU, RP): a durable journal of edits (store.py: the contract,
sqlite.py: the default store, urls.py: stores opened by URL) and a vector index over their keys (index.py).

They are separate because they fail differently: the journal is the record of what users asked for and must
survive crashes; the index is a cache of it, rebuilt from the journal's stored vectors whenever a memory opens.
"""

from editkit.memory.index import VectorIndex
from editkit.memory.sqlite import SQLiteStore
from editkit.memory.store import (
    MAX_AUTHOR_CHARS,
    MAX_DESCRIPTOR_CHARS,
    SCHEMA_VERSION,
    AddOutcome,
    EditRecord,
    EditStore,
    MemoryCorruptError,
    conflict_key,
)
from editkit.memory.urls import StoreFactory, open_store, register_store, store_schemes

__all__ = [
    "MAX_AUTHOR_CHARS",
    "MAX_DESCRIPTOR_CHARS",
    "SCHEMA_VERSION",
    "AddOutcome",
    "EditRecord",
    "EditStore",
    "MemoryCorruptError",
    "SQLiteStore",
    "StoreFactory",
    "VectorIndex",
    "conflict_key",
    "open_store",
    "register_store",
    "store_schemes",
]
