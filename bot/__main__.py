"""`python -m bot run` (the Procfile's worker) and every other `personabot` command."""

import sys

from bot.cli import main

sys.exit(main())
