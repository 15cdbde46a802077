"""Where the bot's state lives: implementations of `bot.core.store.Store` (SQLite today, with its numbered
migrations beside it). Only the entry points (`bot.runner`, `bot.cli`) name one; the rest types against the
protocol."""
