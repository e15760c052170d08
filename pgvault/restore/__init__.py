"""Restores: logical (dumps), pitr (base + WAL), and the damaging-transaction finder."""
