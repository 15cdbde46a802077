"""The `personabot` command."""
def main() -> int:
    raise SystemExit("not yet")
