#!/usr/bin/env bash
# Install what personabot needs (first run only) and start it: `personabot run` builds the demo persona
# when no model exists yet, then chats on Discord (DISCORD_TOKEN set) or in this terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/personabot run "$@"
