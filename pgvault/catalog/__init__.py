"""The catalog: pgvault's on-site format (docs/site-format.md)."""
