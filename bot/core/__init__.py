"""The domain: settings, post targets and modes, tenancy, the persona registry's rules, context windows, channel
memory, the output filters, and the Store protocol with its row types. Nothing here loads torch, discord.py,
a database driver or the network at import; every other layer may import it."""
