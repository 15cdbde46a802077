"""The Discord adapter: the bot subclass (`bot.adapters.discord.bot`) and how a persona speaks in a channel
(`bot.adapters.discord.speaking`)."""
