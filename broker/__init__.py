"""exai-broker: one shared MCP tool daemon, many thin stdio shims."""

__version__ = "0.1.0"
