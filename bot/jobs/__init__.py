"""What the jobs process runs: scheduled posts (picking a line, the Twitter target), retrains and rollbacks,
and following model swaps made by another process. Imports `bot.inference` and `bot.core`."""
