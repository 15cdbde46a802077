"""Where the bot's state lives: implementations of `bot.core.store.Store`, SQLite (`sqlite`, the embedded
default: one machine) and PostgreSQL (`postgres`, shared by processes on several machines), with their
numbered migrations (`schema`). Only the entry points (`bot.runner`, `bot.cli`) name one, through
`open_store`; the rest types against the protocol."""

from __future__ import annotations

from bot.core.config import Settings
from bot.core.store import Store


async def open_store(settings: Settings) -> Store:
    """The store the settings name: PostgreSQL at `DATABASE_URL` when it is set, else SQLite at
    `DATABASE_PATH`; opened and migrated. Raises `StoreError`."""
    # Each driver is imported only when its store is opened.
    if settings.database_url:
        from bot.storage.postgres import PostgresStore

        return await PostgresStore.open(settings.database_url)
    from bot.storage.sqlite import SQLiteStore

    return await SQLiteStore.open(settings.database_path)
