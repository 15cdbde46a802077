#!/usr/bin/env bash
# Install what the tests need (first run only) and run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
# No test may reach a model hub: everything it loads is built locally.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# bot/ in layers, imports pointing down only ([tool.importlinter] in pyproject.toml), and the domain's settings
# read without torch, discord.py or a database driver (aiosqlite, asyncpg) loaded.
.venv/bin/lint-imports --no-cache
.venv/bin/python -c "import sys, bot.core.config; loaded = {'torch', 'discord', 'aiosqlite', 'asyncpg'} & set(sys.modules); \
sys.exit(f'bot.core.config loaded {sorted(loaded)}' if loaded else 0)"
# Two workers, each taking whole test files (their module fixtures, such as a started server, are built once);
# PYTEST_WORKERS=0 runs in this process (a debugger, or -x to stop at the first failure at once).
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
