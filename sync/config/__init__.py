"""Configuration: the typed frozen model, value parsers and credentials."""
