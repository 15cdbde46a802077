"""discord.py extensions, one feature each (loaded by the bot's setup_hook)."""
