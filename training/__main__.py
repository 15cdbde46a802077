"""`python -m training ...`: the training entry point for child processes (same options as `personabot train`)."""

import sys

from training.cli import train_main

sys.exit(train_main())
