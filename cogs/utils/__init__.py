"""Helpers shared by the cogs (Discord-side only; services live in `bot/`)."""
