"""The personabot process: configuration, the persona and its generation, adapters (terminal, Discord)."""
