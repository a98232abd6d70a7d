"""The local database: control tables (schema.py), engine set-up (engine.py), migrations."""
