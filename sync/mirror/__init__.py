"""The table runner: cursor, discovery, page decoding and the job that mirrors a table."""
