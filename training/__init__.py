"""Offline half of personabot: chat exports -> conversations -> examples -> trained persona artifact.

Nothing in here imports `bot/` or `cogs/`: data flows one way, from exports to the artifact.
"""
