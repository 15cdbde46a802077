"""Artifacts -> text: the `Backend` protocol and its errors, the local backends (torch, int8, ctranslate2),
the remote one (an OpenAI-compatible inference server), the persona, the persona pool and the engine.
Imports `bot.core` only, never `bot.storage`."""
