"""Optimizers (see docs/architecture.md)."""
