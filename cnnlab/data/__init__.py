"""Datasets (see docs/architecture.md)."""
