"""Encryption at rest in the age format (age-encryption.org/v1), openable with the stock `age`
CLI: ``age.py`` the format (streaming, push-style), ``keys.py`` where identities come from.
docs/encryption.md says why age and why this implementation."""
