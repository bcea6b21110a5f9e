"""vworkspace_hub: the hub side of the vWorkspace hub-agent protocol v1.

See docs/hub-library.md. Modules: :mod:`.wire` (frames and codec),
:mod:`.intents` (signed intents, key rings), :mod:`.join_token`, :mod:`.ca`,
:mod:`.store` / :mod:`.sql_store` (the store interface and its memory, SQLite
and PostgreSQL implementations), :mod:`.hub` (enrollment, declaration,
signing), :mod:`.session` and :mod:`.server` (the asyncio tunnel),
:mod:`.sync` (helpers for synchronous callers such as Odoo models).
"""

from .hub import EnrollFailure, Hub, HubConfig
from .sql_store import PostgresStore, SQLiteStore
from .store import (ClusterRecord, IntentRecord, MemoryStore, ObjectRecord, StatusRecord, Store, StoreError,
                    TokenUse)
from .wire import ObjectRef

__version__ = "0.1.0"

__all__ = [
    "ClusterRecord", "EnrollFailure", "Hub", "HubConfig", "IntentRecord", "MemoryStore", "ObjectRecord",
    "ObjectRef", "PostgresStore", "SQLiteStore", "StatusRecord", "Store", "StoreError", "TokenUse",
]
