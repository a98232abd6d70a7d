"""Implementations of CLI commands that need more than a few lines (wired in sync/cli_*.py)."""
