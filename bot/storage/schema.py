"""The store's schema changes, one ordered list for both dialects: `migrations/NNNN_what_it_does.sql` for
SQLite and `migrations/postgresql/NNNN_what_it_does.sql` for PostgreSQL, the same numbers and names in both
(a change made for one engine and forgotten for the other is an error here, not a difference found later)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bot.core.store import StoreError

MIGRATIONS = Path(__file__).parent / "migrations"
DIALECTS = {"sqlite": MIGRATIONS, "postgresql": MIGRATIONS / "postgresql"}
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# personabot's tables (the schema version's bookkeeping aside), in an order their foreign keys allow: each after
# the tables it references (`bot.storage.copy` fills a database in this order). A migration that adds a table
# lists it here; tests/test_db_copy.py compares this list with the tables of a migrated database.
TABLES = ("settings", "opt_outs", "channel_messages", "training_runs", "personas", "assignments", "artifact_owners",
          "schedules", "posts", "quiz_results")


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change: its number (the schema version it brings a database to) and its file per dialect."""

    version: int
    name: str
    files: dict[str, Path]

    def script(self, dialect: str) -> str:
        return self.files[dialect].read_text(encoding="utf-8")


def migrations() -> list[Migration]:
    """Every migration, in order; numbered 1, 2, 3, ... without gaps, with one file of the same name in each
    dialect."""
    names: dict[str, list[str]] = {}
    for dialect, folder in DIALECTS.items():
        found = []
        for path in folder.glob("*.sql"):
            if not _MIGRATION_NAME.match(path.name):
                raise StoreError(f"{path}: migration files are named NNNN_what_it_does.sql")
            found.append(path.name)
        names[dialect] = sorted(found)
    sqlite, postgresql = names["sqlite"], names["postgresql"]
    if sqlite != postgresql:
        missing = sorted(set(sqlite) ^ set(postgresql))
        raise StoreError(f"{MIGRATIONS}: the SQLite and PostgreSQL migrations differ ({', '.join(missing)}); "
                         "each migration has one file of the same name per dialect")
    if [int(name[:4]) for name in sqlite] != list(range(1, len(sqlite) + 1)):
        raise StoreError(f"{MIGRATIONS}: migrations must be numbered 0001, 0002, ... without gaps")
    return [Migration(int(name[:4]), name, {d: folder / name for d, folder in DIALECTS.items()}) for name in sqlite]
