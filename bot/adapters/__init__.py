"""Where people come in: Discord (the bot subclass and speaking through webhooks), the terminal chat, and the
metrics endpoint. Imports the layers below; `cogs/` builds on the Discord adapter."""
