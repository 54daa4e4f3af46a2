"""The edit memory of memory-based editors (SERAC, LU, RP): a durable journal of edits (store.py) and a vector
index over their keys (index.py).

They are separate because they fail differently: the journal is the record of what users asked for and must
survive crashes; the index is a cache of it, rebuilt from the journal's stored vectors whenever a memory opens.
"""

from editkit.memory.index import VectorIndex
from editkit.memory.store import (
    MAX_AUTHOR_CHARS,
    MAX_DESCRIPTOR_CHARS,
    SCHEMA_VERSION,
    AddOutcome,
    EditRecord,
    EditStore,
    MemoryCorruptError,
    SQLiteStore,
    conflict_key,
)

__all__ = [
    "MAX_AUTHOR_CHARS",
    "MAX_DESCRIPTOR_CHARS",
    "SCHEMA_VERSION",
    "AddOutcome",
    "EditRecord",
    "EditStore",
    "MemoryCorruptError",
    "SQLiteStore",
    "VectorIndex",
    "conflict_key",
]
